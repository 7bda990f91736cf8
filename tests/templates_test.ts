/**
 * The `faas init` templates as a user takes them: {@linkcode initTemplate} writes each into a temporary directory, its
 * own `build.sh` builds the image offline (host gcc / Go / Python, podman), `podman save` exports it, and a real faasd
 * (private containerd) deploys it and serves a GET and a POST with the answer naming the function. The `http` template
 * is deployed in adapter mode (`?http_port=8080`).
 *
 * podman runs against a private storage beside the test image cache (`$FAASD_TEST_CACHE/podman-templates`, driver
 * `vfs` unless `FAASD_TEST_STORAGE_DRIVER` says otherwise), passed to `build.sh` through its `PODMAN` override: the
 * host's images are never touched, and each built image is removed once saved. The first Go build compiles the
 * standard library (about a minute); Go's build cache makes later ones take seconds.
 */

import { join } from "node:path";
import { assertEquals } from "./assert.ts";
import { startContainerd } from "./harness/containerd.ts";
import { cacheDir } from "./harness/images.ts";
import { startTestPlatform, type TestPlatform } from "./harness/platform.ts";
import { curl, type CurlResult } from "./curl.ts";
import { initTemplate, TEMPLATE_LANGUAGES } from "../lib/client/init.ts";

const decoder = new TextDecoder();

/** The podman command line `build.sh` gets as `PODMAN` (word-split by the script, so no spaces in the paths). */
function podmanCommand(): string[] {
  const base = join(cacheDir(), "podman-templates");
  return [
    "podman",
    ...["--root", join(base, "root"), "--runroot", join(base, "runroot"), "--tmpdir", join(base, "tmp")],
    ...["--storage-driver", Deno.env.get("FAASD_TEST_STORAGE_DRIVER") || "vfs"],
    ...["--events-backend", "none", "--cgroup-manager", "cgroupfs"],
  ];
}

/** Runs a command to completion; fails with its output when it does not succeed. */
async function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<void> {
  const out = await new Deno.Command(cmd, { args, env, stdin: "null" }).output();
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} exited with ${out.code}\n${decoder.decode(out.stdout)}${decoder.decode(out.stderr)}`,
    );
  }
}

/**
 * Writes the `lang` template as function `name` into `work`, builds it with its `build.sh`, and saves the image as a
 * docker-archive tarball; the image is removed from podman's storage afterwards.
 *
 * @returns the tarball's path
 */
async function buildTemplate(lang: string, name: string, work: string): Promise<string> {
  const { dir } = await initTemplate(lang, name, { dir: join(work, name) });
  const [podman, ...storage] = podmanCommand();
  const tmp = join(cacheDir(), "podman-templates", "tmp");
  await Deno.mkdir(tmp, { recursive: true });
  const tag = `localhost/${name}:latest`; // build.sh's default tag
  const tarball = join(work, `${name}.tar`);
  try {
    await run(join(dir, "build.sh"), [], { PODMAN: [podman, ...storage].join(" "), TMPDIR: tmp });
    await run(podman!, [...storage, "save", "--format", "docker-archive", "-o", tarball, tag], { TMPDIR: tmp });
  } finally {
    await run(podman!, [...storage, "rmi", "-f", "--ignore", tag]).catch(() => {});
  }
  return tarball;
}

/** Deploys `tarball` as `name` with the query string `query`; returns the function's URL. */
async function deploy(p: TestPlatform, name: string, tarball: string, query = ""): Promise<string> {
  const res = await p.request("POST", `/api/new${query}`, {
    headers: { "x-image-name": name },
    body: (await Deno.open(tarball)).readable,
  });
  const deployed = await res.json();
  assertEquals(res.status, 201, JSON.stringify(deployed));
  return `http://${deployed.ip}:${p.port}/`;
}

/** Polls until no request is being served (its container is removed right after the client is answered). */
async function settled(p: TestPlatform): Promise<void> {
  for (let i = 0; i < 100 && p.platform.server.outstanding > 0; i++) await new Promise((r) => setTimeout(r, 100));
  assertEquals(p.platform.server.outstanding, 0);
}

for (const lang of TEMPLATE_LANGUAGES) {
  Deno.test(`the ${lang} template builds offline with its build.sh, deploys and answers naming the function`, async () => {
    const work = await Deno.makeTempDir({ prefix: "faasd-template-test-" });
    try {
      const name = `tpl-${lang}`;
      const tarball = await buildTemplate(lang, name, work);

      await using ctd = await startContainerd();
      await using p = await startTestPlatform(ctd);
      const url = await deploy(p, name, tarball, lang === "http" ? "?http_port=8080" : "");

      /** Asserts a complete answer; on failure the message carries curl's stderr and the function's log. */
      const assertHello = async (r: CurlResult) => {
        if (r.exit !== 0 || r.status !== 200 || r.body !== `hello from ${name}\n`) {
          const log = await (await p.request("GET", `/api/logs/${name}`)).text();
          assertEquals([r.exit, r.status, r.body], [0, 200, `hello from ${name}\n`], `${r.stderr}\nlog:\n${log}`);
        }
      };
      await assertHello(await curl(url));
      await assertHello(await curl(`${url}some/path?q=1`, { data: "x".repeat(100_000) }));
      await settled(p);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  });
}

Deno.test("examples/hello-http, a plain Go net/http server, builds offline and is served through the adapter", async () => {
  const work = await Deno.makeTempDir({ prefix: "faasd-example-test-" });
  try {
    // A copy: build-local.sh builds in its own folder.
    const dir = join(work, "hello-http");
    await Deno.mkdir(dir);
    const source = new URL("../examples/hello-http/", import.meta.url).pathname;
    for (const e of Deno.readDirSync(source)) await Deno.copyFile(join(source, e.name), join(dir, e.name));
    await Deno.chmod(join(dir, "build-local.sh"), 0o755);
    const [podman, ...storage] = podmanCommand();
    const tmp = join(cacheDir(), "podman-templates", "tmp");
    await Deno.mkdir(tmp, { recursive: true });
    const tag = "localhost/hello-http-example:latest";
    const tarball = join(work, "hello-http.tar");
    try {
      await run(join(dir, "build-local.sh"), [], { PODMAN: [podman, ...storage].join(" "), TMPDIR: tmp, TAG: tag });
      await run(podman!, [...storage, "save", "--format", "docker-archive", "-o", tarball, tag], { TMPDIR: tmp });
    } finally {
      await run(podman!, [...storage, "rmi", "-f", "--ignore", tag]).catch(() => {});
    }
    await using ctd = await startContainerd();
    await using p = await startTestPlatform(ctd);
    const url = await deploy(p, "hello-http", tarball, "?http_port=8080");
    for (let i = 0; i < 3; i++) {
      const r = await curl(url);
      assertEquals([r.exit, r.status], [0, 200], r.stderr);
      assertEquals(r.body.startsWith("hello from a plain HTTP server in hello-http (up "), true, r.body);
    }
    await settled(p);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
