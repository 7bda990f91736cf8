/**
 * The seed's Python handler (examples/hello-python/handler.py) as written, on the host's Python in a `FROM scratch`
 * image, under the default platform flags (containment included): it answers without reading the request and
 * without a Content-Length, and closes through `socket.fromfd`, so the client's clean end depends on faasd keeping
 * its reference to the socket until the container exits.
 */

import { assertEquals } from "./assert.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildPythonHandlerImage } from "./harness/images.ts";
import { leftovers, NONE, openFds, startTestPlatform, type TestPlatform } from "./harness/platform.ts";
import { curl, type CurlResult } from "./curl.ts";

/** Polls until containerd holds nothing from requests (cleanup runs right after the client is answered). */
async function settled(p: TestPlatform): Promise<void> {
  for (let i = 0; i < 100 && p.platform.server.outstanding > 0; i++) await new Promise((r) => setTimeout(r, 100));
  assertEquals(p.platform.server.outstanding, 0);
}

Deno.test("the seed's Python handler is answered in full and ends cleanly", async (t) => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const tarball = await buildPythonHandlerImage();
  const res = await p.request("POST", "/api/new", {
    headers: { "x-image-name": "hello-python" },
    body: (await Deno.open(tarball)).readable,
  });
  const deployed = await res.json();
  assertEquals(res.status, 201, JSON.stringify(deployed));
  const url = `http://${deployed.ip}:${p.port}/`;
  assertEquals(await leftovers(p.client), NONE); // also opens the test's own containerd connection before counting
  const fdsBefore = openFds();

  /** Asserts a complete answer; on failure the message carries curl's stderr and the handler's log. */
  const assertHello = async (r: CurlResult) => {
    const log = async () => await (await p.request("GET", "/api/logs/hello-python")).text();
    if (r.exit !== 0 || r.status !== 200 || r.body !== "Hello World!") {
      assertEquals([r.exit, r.status, r.body], [0, 200, "Hello World!"], `${r.stderr}\nlog:\n${await log()}`);
    }
  };

  await t.step("three GETs get the whole answer and a clean close", async () => {
    for (let i = 0; i < 3; i++) await assertHello(await curl(url));
  });

  await t.step("three POSTs of 200 kB the handler never reads get the whole answer and a clean close", async () => {
    for (let i = 0; i < 3; i++) await assertHello(await curl(url, { data: "x".repeat(200_000) }));
  });

  await t.step("afterwards no fd, container, task, snapshot or control socket is left", async () => {
    await settled(p);
    assertEquals(openFds(), fdsBefore);
    assertEquals(await leftovers(p.client), NONE);
    assertEquals([...Deno.readDirSync(`${p.stateDir}/run`)], []);
  });
});
