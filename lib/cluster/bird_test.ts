import { assert, assertEquals, assertRejects, assertStringIncludes, assertThrows } from "../../tests/assert.ts";
import { waitUntil } from "../../tests/harness/wait.ts";
import { BirdAnnouncer, birdConfigText, BirdError } from "./bird.ts";

// The real-BIRD tests run BIRD in this namespace with no protocol but faasd's static one (no device, kernel or BGP
// protocol): it opens no socket but its control socket and touches no route.
const FRAGMENT = "router id 203.0.113.99;\n";

/** A temp dir with an operator fragment, removed at dispose. */
async function fixture(fragment = FRAGMENT) {
  const dir = await Deno.makeTempDir({ prefix: "faasd-bird-" });
  const operatorConfig = `${dir}/operator.conf`;
  await Deno.writeTextFile(operatorConfig, fragment);
  return {
    dir,
    operatorConfig,
    stateDir: `${dir}/state`,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** The routes BIRD holds from faasd's static protocol, as addresses. */
async function birdRoutes(socket: string): Promise<string[]> {
  const out = await new Deno.Command("birdc", { args: ["-s", socket, "show", "route", "protocol", "faasd_functions"] })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  assert(out.success, text);
  const ips = [...text.matchAll(/(\d+\.\d+\.\d+\.\d+)\/32\s+blackhole/g)].map((m) => m[1]!);
  return ips.sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
}

function processGone(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

Deno.test("birdConfigText() includes the fragment and lists each address once, in numeric order", () => {
  const text = birdConfigText("/etc/faasd/bird.conf", ["198.51.100.10", "198.51.100.9", "10.0.0.1", "198.51.100.10"]);
  assertEquals(
    text,
    [
      "# Written by faasd (lib/cluster/bird.ts), rewritten at every change of its function IPs: edit the included file.",
      "log stderr all;",
      'include "/etc/faasd/bird.conf";',
      "",
      "protocol static faasd_functions {",
      "  ipv4;",
      "  route 10.0.0.1/32 blackhole;",
      "  route 198.51.100.9/32 blackhole;",
      "  route 198.51.100.10/32 blackhole;",
      "}",
      "",
    ].join("\n"),
  );
});

Deno.test("birdConfigText() writes an empty static protocol for no address", () => {
  assertStringIncludes(birdConfigText("/x.conf", []), "protocol static faasd_functions {\n  ipv4;\n}\n");
});

Deno.test("birdConfigText() refuses relative or unquotable fragment paths and non-IPv4 addresses", () => {
  assertThrows(() => birdConfigText("bird.conf", []), TypeError, "absolute");
  assertThrows(() => birdConfigText('/etc/"x".conf', []), TypeError);
  assertThrows(() => birdConfigText("/etc/x\n.conf", []), TypeError);
  for (const bad of ["198.51.100.256", "198.51.100", "198.51.100.010", "198.51.100.1/32", "::1", " 198.51.100.1"]) {
    assertThrows(() => birdConfigText("/x.conf", [bad]), TypeError, "IPv4");
  }
});

Deno.test("birdConfigText() output is accepted by bird's parser, with and without routes", async () => {
  await using f = await fixture();
  for (const ips of [[], ["198.51.100.10", "198.51.100.11"]]) {
    const path = `${f.dir}/check.conf`;
    await Deno.writeTextFile(path, birdConfigText(f.operatorConfig, ips));
    const out = await new Deno.Command("bird", { args: ["-p", "-c", path] }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
  }
});

Deno.test("BirdAnnouncer.announce() makes BIRD hold exactly the given routes, withdrawAll() none", async () => {
  await using f = await fixture();
  const logged: string[] = [];
  await using bird = await BirdAnnouncer.start({ ...f, onLog: (line) => logged.push(line) });
  assertEquals(await birdRoutes(bird.socketPath), []);
  await bird.announce(["198.51.100.11", "198.51.100.10"]);
  assertEquals(await birdRoutes(bird.socketPath), ["198.51.100.10", "198.51.100.11"]);
  assertEquals(bird.announced, ["198.51.100.10", "198.51.100.11"]);
  await bird.announce(["198.51.100.11"]);
  assertEquals(await birdRoutes(bird.socketPath), ["198.51.100.11"]);
  await bird.withdrawAll();
  assertEquals(await birdRoutes(bird.socketPath), []);
  assertEquals(bird.announced, []);
  assert(logged.some((line) => line.includes("Reconfigured")), `BIRD's log reaches onLog: ${logged.join("\n")}`);
});

Deno.test("BirdAnnouncer.announce() coalesces a burst into one reconfiguration after the one in flight", async () => {
  await using f = await fixture();
  // A birdc that counts `configure` calls and is slow at them, so that the burst surely arrives during the first.
  const counter = `${f.dir}/configures`;
  const birdcPath = `${f.dir}/birdc`;
  await Deno.writeTextFile(
    birdcPath,
    `#!/bin/sh\nfor a; do [ "$a" = configure ] && { echo >>"${counter}"; sleep 0.3; }; done\nexec birdc "$@"\n`,
    { mode: 0o755 },
  );
  const configures = async () => (await Deno.readTextFile(counter).catch(() => "")).split("\n").length - 1;
  await using bird = await BirdAnnouncer.start({ ...f, birdcPath });
  const first = bird.announce(["198.51.100.10"]);
  assert(await waitUntil(async () => await configures() === 1, 10_000), "the first configure never started");
  const burst = Array.from({ length: 20 }, (_, i) => bird.announce([`198.51.100.${20 + i}`]));
  await Promise.all([first, ...burst]);
  assertEquals(await configures(), 2);
  assertEquals(bird.announced, ["198.51.100.39"]);
  assertEquals(await birdRoutes(bird.socketPath), ["198.51.100.39"]);
});

Deno.test("BirdAnnouncer.announce() rejects with birdc's answer when BIRD refuses the config, which it keeps", async () => {
  await using f = await fixture();
  await using bird = await BirdAnnouncer.start(f);
  await bird.announce(["198.51.100.10"]);
  await Deno.writeTextFile(f.operatorConfig, `${FRAGMENT}protocol static { ipv4; bogus; }\n`);
  const err = await assertRejects(() => bird.announce(["198.51.100.11"]), BirdError, "refused");
  assertStringIncludes((err as BirdError).output, "operator.conf");
  assertEquals(await birdRoutes(bird.socketPath), ["198.51.100.10"]);
  assertEquals(bird.announced, ["198.51.100.10"]);
  await Deno.writeTextFile(f.operatorConfig, FRAGMENT);
  await bird.announce(["198.51.100.11"]);
  assertEquals(await birdRoutes(bird.socketPath), ["198.51.100.11"]);
  await assertRejects(() => bird.announce(["nope"]), TypeError);
});

Deno.test("BirdAnnouncer.start() rejects with BIRD's message for a broken fragment and leaves no BIRD", async () => {
  await using f = await fixture(`${FRAGMENT}protocol static { ipv4; bogus; }\n`);
  const err = await assertRejects(() => BirdAnnouncer.start(f), BirdError, "operator.conf");
  assert(err.message.includes("exited"), err.message);
  const pid = Number((await Deno.readTextFile(`${f.stateDir}/bird/bird.pid`).catch(() => "0")).trim());
  assert(pid === 0 || processGone(pid), "the failed BIRD is still there");
});

Deno.test("BirdAnnouncer.died resolves when BIRD is killed from outside; announce() then rejects", async () => {
  await using f = await fixture();
  await using bird = await BirdAnnouncer.start(f);
  Deno.kill(bird.pid, "SIGKILL");
  const died = await bird.died;
  assert(died instanceof BirdError);
  assertStringIncludes(died.message, "SIGKILL");
  const err = await assertRejects(() => bird.announce(["198.51.100.10"]), BirdError, "not running");
  assertEquals(err.cause, died);
});

Deno.test("BirdAnnouncer.close() stops BIRD, is idempotent, and leaves died pending", async () => {
  await using f = await fixture();
  const bird = await BirdAnnouncer.start(f);
  await bird.announce(["198.51.100.10"]);
  await Promise.all([bird.close(), bird.close()]);
  await bird.close();
  assert(processGone(bird.pid), "BIRD still runs after close()");
  const outcome = await Promise.race([bird.died.then(() => "died"), new Promise((r) => setTimeout(r, 100, "pending"))]);
  assertEquals(outcome, "pending");
  await assertRejects(() => bird.announce([]), BirdError, "closed");
});

Deno.test("BirdAnnouncer.start() kills a BIRD an earlier run left with the same state dir", async () => {
  await using f = await fixture();
  await using earlier = await BirdAnnouncer.start(f);
  await earlier.announce(["198.51.100.10"]);
  await using later = await BirdAnnouncer.start(f);
  assertStringIncludes((await earlier.died).message, "SIGKILL");
  assertEquals(await birdRoutes(later.socketPath), []);
  assert(later.pid !== earlier.pid);
});
