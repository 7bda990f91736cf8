/**
 * faasd's shim (shim/faasd-shim.c, built by `deno task gen`): it answers containerd's redundant clean-up call and the
 * start of a task joining a running shim group itself, and hands everything else to the real runc v2 shim, here a
 * stand-in script on PATH that records its arguments. One test runs it under a real containerd and counts the real
 * shim's starts.
 */

import { createHash } from "node:crypto";
import { assert, assertEquals } from "./assert.ts";
import { BUILT_SHIM, resolveShim, RUNC_V2 } from "../lib/shim.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildHandlerImage } from "./harness/images.ts";
import { startTestPlatform } from "./harness/platform.ts";
import { waitUntil } from "./harness/wait.ts";
import { curl } from "./curl.ts";

const RUNC_ROOT = "/run/containerd/runc";
/** Where containerd's runc v2 shims listen (defaults.DefaultStateDir + "/s"). */
const SHIM_SOCKETS = "/run/containerd/s";
const GROUP_ANNOTATION = "io.containerd.runc.v2.group";

/** A bundle directory, a PATH whose containerd-shim-runc-v2 records its arguments, and a unique namespace. */
async function scene() {
  const dir = await Deno.makeTempDir({ prefix: "faasd-shim-test-" });
  const bundle = `${dir}/bundle`;
  await Deno.mkdir(`${bundle}/rootfs`, { recursive: true });
  const bin = `${dir}/bin`;
  await Deno.mkdir(bin);
  const record = `${dir}/real-shim-args`;
  await Deno.writeTextFile(
    `${bin}/containerd-shim-runc-v2`,
    `#!/bin/sh\necho "$0 $*" > ${record}\nprintf real\n`,
  );
  await Deno.chmod(`${bin}/containerd-shim-runc-v2`, 0o755);
  const ns = `faasd-shim-test-${crypto.randomUUID().slice(0, 8)}`;
  const runWith = async (env: Record<string, string>, ...args: string[]) => {
    const out = await new Deno.Command(BUILT_SHIM, {
      args,
      cwd: bundle,
      env: { PATH: `${bin}:/usr/bin:/bin`, ...env },
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const real = await Deno.readTextFile(record).catch(() => null);
    await Deno.remove(record).catch(() => {});
    return { code: out.code, stdout: out.stdout, text: new TextDecoder().decode(out.stdout), real };
  };
  const run = (...args: string[]) => runWith({}, ...args);
  const cleanup = async () => {
    await new Deno.Command("umount", { args: [`${bundle}/rootfs`], stderr: "null" }).output();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(`${RUNC_ROOT}/${ns}`, { recursive: true }).catch(() => {});
  };
  return { bundle, ns, run, runWith, cleanup };
}

const deleteArgs = (ns: string, id: string, bundle: string) => [
  "-namespace",
  ns,
  "-address",
  "/run/containerd/containerd.sock",
  "-publish-binary",
  "/usr/bin/containerd",
  "-id",
  id,
  "-bundle",
  bundle,
  "delete",
];

/** Reads varint fields 1 (pid) and 2 (exit status) of a DeleteResponse, and whether field 3 (the time) is there. */
function decodeDeleteResponse(bytes: Uint8Array): { pid: number; status: number; at: boolean } {
  const out = { pid: 0, status: 0, at: false };
  let i = 0;
  const varint = () => {
    let v = 0, shift = 0;
    while (true) {
      const b = bytes[i++]!;
      v += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if (!(b & 0x80)) return v;
    }
  };
  while (i < bytes.length) {
    const key = varint();
    if (key === 0x08) out.pid = varint();
    else if (key === 0x10) out.status = varint();
    else if (key === 0x1a) {
      const length = varint();
      i += length;
      out.at = true;
    } else throw new Error(`unexpected field ${key}`);
  }
  return out;
}

Deno.test("faasd-shim is built (deno task gen builds it)", async () => {
  const info = await Deno.stat(BUILT_SHIM);
  assert(info.isFile && ((info.mode ?? 0) & 0o111) !== 0, `${BUILT_SHIM} is executable`);
  assertEquals(await resolveShim("auto"), BUILT_SHIM);
  assertEquals(await resolveShim("runc-v2"), RUNC_V2);
  assertEquals(await resolveShim("auto", "/nonexistent/faasd-shim"), RUNC_V2);
});

Deno.test("faasd-shim answers a delete with nothing left to clean without starting the real shim", async () => {
  const s = await scene();
  try {
    await Deno.writeTextFile(`${s.bundle}/init.pid`, "4242");
    const r = await s.run(...deleteArgs(s.ns, "c1", s.bundle));
    assertEquals([r.code, r.real], [0, null]);
    assertEquals(decodeDeleteResponse(r.stdout), { pid: 4242, status: 137, at: true });
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-shim hands a delete to the real shim while runc still knows the container", async () => {
  const s = await scene();
  try {
    await Deno.mkdir(`${RUNC_ROOT}/${s.ns}/c1`, { recursive: true });
    const r = await s.run(...deleteArgs(s.ns, "c1", s.bundle));
    assertEquals(r.text, "real");
    const real = r.real ?? "";
    assert(real.includes(`-namespace ${s.ns}`) && real.endsWith(`-id c1 -bundle ${s.bundle} delete\n`), real);
    assert(real.split(" ")[0]!.endsWith("containerd-shim-runc-v2"), real);
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-shim hands a delete to the real shim while the bundle's rootfs is still mounted", async () => {
  const s = await scene();
  try {
    const mount = await new Deno.Command("mount", { args: ["-t", "tmpfs", "tmpfs", `${s.bundle}/rootfs`] }).output();
    assert(mount.success, "mount a tmpfs");
    const r = await s.run(...deleteArgs(s.ns, "c1", s.bundle));
    assertEquals(r.text, "real");
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-shim hands every other call, and odd ids, to the real shim with the same arguments", async () => {
  const s = await scene();
  try {
    const start = await s.run("-namespace", s.ns, "-address", "/a", "-id", "c1", "start");
    assertEquals(start.text, "real");
    assert(start.real?.endsWith(`-namespace ${s.ns} -address /a -id c1 start\n`), start.real ?? "");
    for (const id of ["..", "a/b", ""]) {
      const r = await s.run(...deleteArgs(s.ns, id, s.bundle));
      assertEquals(r.text, "real", `id ${JSON.stringify(id)}`);
    }
  } finally {
    await s.cleanup();
  }
});

/** The socket containerd's runc v2 shim serves `group` on: sha256 of `address/ns/group` (shim.SocketAddress). */
function groupSocket(address: string, ns: string, group: string): string {
  return `${SHIM_SOCKETS}/${createHash("sha256").update(`${address}/${ns}/${group}`).digest("hex")}`;
}

/** A unix socket listening at `path`, as a group's shim does (nothing accepts: connecting is all the shim does). */
async function listenAt(path: string): Promise<AsyncDisposable> {
  await Deno.mkdir(SHIM_SOCKETS, { recursive: true });
  const listener = Deno.listen({ transport: "unix", path });
  return {
    [Symbol.asyncDispose]: async () => {
      listener.close();
      await Deno.remove(path).catch(() => {});
    },
  };
}

/** The arguments containerd 1.6 starts a shim with, in a unique fake containerd address. */
function startArgs(ns: string, address: string, id = "c1"): string[] {
  return ["-namespace", ns, "-address", address, "-publish-binary", "/usr/bin/containerd", "-id", id, "start"];
}

const fakeAddress = () => `/run/faasd-shim-test-${crypto.randomUUID().slice(0, 8)}/containerd.sock`;

/** A config.json as containerd writes it (Go's encoding/json: compact, `<>&` escaped) with these annotations. */
const spec = (annotations?: Record<string, string>) =>
  JSON.stringify({
    ociVersion: "1.0.2-dev",
    process: { args: ["/handler", "a<b&c"], env: ["PATH=/bin"], cwd: "/", noNewPrivileges: true },
    root: { path: "rootfs", readonly: true },
    linux: { namespaces: [{ type: "pid" }, { type: "network", path: "/proc/1/ns/net" }], resources: { pids: null } },
    ...(annotations ? { annotations } : {}),
  }).replaceAll("<", "\\u003c").replaceAll("&", "\\u0026");

Deno.test("faasd-shim answers a start joining a listening group shim: prints its address and writes the address file", async () => {
  const s = await scene();
  try {
    const address = fakeAddress();
    const path = groupSocket(address, s.ns, "faasd.hello.0a1b2c");
    await Deno.writeTextFile(
      `${s.bundle}/config.json`,
      spec({ "io.kubernetes.cri.sandbox-id": "other", [GROUP_ANNOTATION]: "faasd.hello.0a1b2c", x: "y" }),
    );
    {
      await using _shim = await listenAt(path);
      const r = await s.run(...startArgs(s.ns, address));
      assertEquals([r.code, r.text, r.real], [0, `unix://${path}`, null]);
      assertEquals(await Deno.readTextFile(`${s.bundle}/address`), `unix://${path}`);
      assertEquals(await Deno.stat(`${s.bundle}/.address`).catch(() => null), null, "no temp file left");

      // With -debug (containerd adds it at debug level), and again over the address file: same answer.
      const again = await s.run(...startArgs(s.ns, address).toSpliced(8, 0, "-debug"));
      assertEquals([again.code, again.text, again.real], [0, `unix://${path}`, null]);

      // Turned off for comparisons: the real shim, with the same arguments.
      const off = await s.runWith({ FAASD_SHIM_NO_FAST_START: "1" }, ...startArgs(s.ns, address));
      assertEquals(off.text, "real");
      assert(off.real?.endsWith(` ${startArgs(s.ns, address).join(" ")}\n`), off.real ?? "");
    }
    // The CRI sandbox annotation counts when the runc one is absent (containerd checks them in this order).
    const sandbox = groupSocket(address, s.ns, "sandbox-1");
    await Deno.writeTextFile(`${s.bundle}/config.json`, spec({ "io.kubernetes.cri.sandbox-id": "sandbox-1" }));
    await using _sandbox = await listenAt(sandbox);
    const r = await s.run(...startArgs(s.ns, address, "c2"));
    assertEquals([r.code, r.text, r.real], [0, `unix://${sandbox}`, null]);
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-shim hands a start to the real shim when no group shim answers at the group's socket", async () => {
  const s = await scene();
  try {
    const address = fakeAddress();
    const path = groupSocket(address, s.ns, "faasd.hello.1");
    await Deno.writeTextFile(`${s.bundle}/config.json`, spec({ [GROUP_ANNOTATION]: "faasd.hello.1" }));
    const args = startArgs(s.ns, address);
    const none = await s.run(...args);
    assertEquals(none.text, "real");
    assert(none.real?.endsWith(` ${args.join(" ")}\n`), none.real ?? "");
    // A socket file left by a shim that is gone (bound, never listening: connect() is refused): the real shim
    // replaces it with a new shim.
    await Deno.mkdir(SHIM_SOCKETS, { recursive: true });
    const bind = await new Deno.Command("python3", {
      args: ["-c", "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", path],
    }).output();
    assert(bind.success && (await Deno.stat(path)).isSocket, "a stale socket file");
    try {
      const stale = await s.run(...args);
      assertEquals(stale.text, "real");
    } finally {
      await Deno.remove(path).catch(() => {});
    }
    assertEquals(await Deno.stat(`${s.bundle}/address`).catch(() => null), null, "no address file of its own");
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-shim hands a start without a group annotation to the real shim", async () => {
  const s = await scene();
  try {
    const address = fakeAddress();
    // A shim listening where the task's own id would lead: the real shim decides what that means.
    await using _shim = await listenAt(groupSocket(address, s.ns, "c1"));
    for (const config of [spec(), spec({ "io.containerd.runc.v2.groupx": "g", x: "y" }), '{"annotations":null}']) {
      await Deno.writeTextFile(`${s.bundle}/config.json`, config);
      const r = await s.run(...startArgs(s.ns, address));
      assertEquals(r.text, "real", config);
    }
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-shim hands an unusual start to the real shim: escapes, bad JSON, paths Go would clean", async () => {
  const s = await scene();
  try {
    const address = fakeAddress();
    const listeners: AsyncDisposable[] = [];
    // Listening wherever a sloppy reading would look, so that only a correct refusal sends these to the real shim.
    const cases: [string, string, string[]][] = [
      ["escaped value", `{"annotations":{"${GROUP_ANNOTATION}":"g\\u0031"}}`, ["g1", "g\\u0031"]],
      ["escaped quote", `{"annotations":{"${GROUP_ANNOTATION}":"g\\"1"}}`, ['g"1', 'g\\"1']],
      ["escaped key", `{"annotations":{"io.containerd.runc.v2.gr\\u006fup":"g1"}}`, ["g1"]],
      ["not JSON", `annotations: {${GROUP_ANNOTATION}: g1}`, ["g1"]],
      ["truncated", `{"annotations":{"${GROUP_ANNOTATION}":"g1"}`, ["g1"]],
      ["trailing comma", `{"annotations":{"${GROUP_ANNOTATION}":"g1"},}`, ["g1"]],
      ["bad number elsewhere", `{"a":01,"annotations":{"${GROUP_ANNOTATION}":"g1"}}`, ["g1"]],
      ["non-string annotation", `{"annotations":{"${GROUP_ANNOTATION}":"g1","n":1}}`, ["g1"]],
      ["key case", `{"Annotations":{"${GROUP_ANNOTATION}":"g1"}}`, ["g1"]],
      ["dot element", spec({ [GROUP_ANNOTATION]: "g/./1" }), ["g/./1", "g/1"]],
      ["empty group", spec({ [GROUP_ANNOTATION]: "" }), [""]],
    ];
    for (const g of new Set(cases.flatMap(([, , groups]) => groups))) {
      listeners.push(await listenAt(groupSocket(address, s.ns, g)));
    }
    try {
      for (const [what, config] of cases) {
        await Deno.writeTextFile(`${s.bundle}/config.json`, config);
        const r = await s.run(...startArgs(s.ns, address));
        assertEquals(r.text, "real", what);
      }
      await Deno.remove(`${s.bundle}/config.json`);
      assertEquals((await s.run(...startArgs(s.ns, address))).text, "real", "no config.json");

      // An address filepath.Join would clean: hashed as given it would match a listener, but containerd hashes it
      // cleaned.
      const unclean = address.replace("/containerd.sock", "//containerd.sock");
      await Deno.writeTextFile(`${s.bundle}/config.json`, spec({ [GROUP_ANNOTATION]: "g1" }));
      listeners.push(await listenAt(groupSocket(unclean, s.ns, "g1")));
      assertEquals((await s.run(...startArgs(s.ns, unclean))).text, "real", "unclean address");
      // Flags in a shape containerd does not use.
      assertEquals((await s.run(...startArgs(s.ns, address).toSpliced(0, 1, "--namespace"))).text, "real", "--flag");
      // A temp file left by an earlier writer: the real shim's write would fail on it too; it is left as it was.
      await Deno.writeTextFile(`${s.bundle}/.address`, "stale");
      assertEquals((await s.run(...startArgs(s.ns, address))).text, "real", "existing .address");
      assertEquals(await Deno.readTextFile(`${s.bundle}/.address`), "stale");
      // And the same start, once .address is gone, is answered: the listeners above are where they should be.
      await Deno.remove(`${s.bundle}/.address`);
      const ok = await s.run(...startArgs(s.ns, address));
      assertEquals([ok.text, ok.real], [`unix://${groupSocket(address, s.ns, "g1")}`, null]);
    } finally {
      for (const l of listeners) await l[Symbol.asyncDispose]();
    }
  } finally {
    await s.cleanup();
  }
});

/** A directory with a containerd-shim-runc-v2 that logs its arguments, then execs the real one. */
async function countingShimDir(dir: string): Promise<{ bin: string; starts: () => Promise<string[]> }> {
  const isFile = (p: string) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  };
  const real = (Deno.env.get("PATH") ?? "").split(":").map((d) => `${d}/containerd-shim-runc-v2`).find(isFile);
  assert(real, "containerd-shim-runc-v2 on PATH");
  const bin = `${dir}/bin`;
  const log = `${dir}/calls`;
  await Deno.mkdir(bin, { recursive: true });
  await Deno.writeTextFile(`${bin}/containerd-shim-runc-v2`, `#!/bin/sh\necho "$*" >> ${log}\nexec ${real} "$@"\n`);
  await Deno.chmod(`${bin}/containerd-shim-runc-v2`, 0o755);
  const starts = async () =>
    (await Deno.readTextFile(log).catch(() => "")).split("\n").filter((l) => l.endsWith(" start"));
  return { bin, starts };
}

Deno.test("faasd-shim under real containerd: a function's group members start without the real shim", async () => {
  const dir = await Deno.makeTempDir({ prefix: "faasd-shim-e2e-" });
  try {
    const counting = await countingShimDir(dir);
    // containerd's shims inherit its environment: the stand-in on its PATH is found there.
    await using ctd = await startContainerd({ pathPrefix: counting.bin });
    await using p = await startTestPlatform(ctd, { flags: ["--shim", BUILT_SHIM, "--shim-group-size", "64"] });
    const tarball = await buildHandlerImage("hello");
    const res = await p.request("POST", "/api/new?min_ready=3&max_ready=3", {
      headers: { "x-image-name": "hello" },
      body: (await Deno.open(tarball)).readable,
    });
    const { ip } = await res.json();
    assertEquals(res.status, 201);
    assert(await waitUntil(() => p.platform.server.ready("hello") === 3), "3 ready");
    // Starts in flight together go to up to as many groups as the host has cores (shim_groups.ts), each anchored.
    const anchors = (await p.client.listTasks()).length - 3;
    assert(anchors >= 1 && anchors <= Math.min(4, navigator.hardwareConcurrency), `${anchors} anchors`);
    const starts = await counting.starts();
    assertEquals(starts.length, anchors, `only the anchors' starts run the real shim: ${starts.join("; ")}`);
    assert(starts[0]!.includes(`-namespace ${p.namespace} `), starts[0]);

    // The members joined through faasd-shim's answer serve, and their replacements join the same way.
    for (let i = 0; i < 3; i++) {
      const r = await curl(`http://${ip}:${p.port}/`);
      assertEquals([r.exit, r.status], [0, 200]);
    }
    assert(await waitUntil(() => p.platform.server.ready("hello") === 3), "3 ready again");
    assertEquals((await counting.starts()).length, anchors, "no more real starts");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
