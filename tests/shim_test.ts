/**
 * faasd's shim (shim/faasd-shim.c, built by `deno task gen`): it answers containerd's redundant clean-up call itself
 * and hands everything else to the real runc v2 shim, here a stand-in script on PATH that records its arguments.
 */

import { assert, assertEquals } from "./assert.ts";
import { BUILT_SHIM, resolveShim, RUNC_V2 } from "../lib/shim.ts";

const RUNC_ROOT = "/run/containerd/runc";

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
  const run = async (...args: string[]) => {
    const out = await new Deno.Command(BUILT_SHIM, {
      args,
      cwd: bundle,
      env: { PATH: `${bin}:/usr/bin:/bin` },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const real = await Deno.readTextFile(record).catch(() => null);
    await Deno.remove(record).catch(() => {});
    return { code: out.code, stdout: out.stdout, real };
  };
  const cleanup = async () => {
    await new Deno.Command("umount", { args: [`${bundle}/rootfs`], stderr: "null" }).output();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(`${RUNC_ROOT}/${ns}`, { recursive: true }).catch(() => {});
  };
  return { bundle, ns, run, cleanup };
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
    assertEquals(new TextDecoder().decode(r.stdout), "real");
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
    assertEquals(new TextDecoder().decode(r.stdout), "real");
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-shim hands every other call, and odd ids, to the real shim with the same arguments", async () => {
  const s = await scene();
  try {
    const start = await s.run("-namespace", s.ns, "-address", "/a", "-id", "c1", "start");
    assertEquals(new TextDecoder().decode(start.stdout), "real");
    assert(start.real?.endsWith(`-namespace ${s.ns} -address /a -id c1 start\n`), start.real ?? "");
    for (const id of ["..", "a/b", ""]) {
      const r = await s.run(...deleteArgs(s.ns, id, s.bundle));
      assertEquals(new TextDecoder().decode(r.stdout), "real", `id ${JSON.stringify(id)}`);
    }
  } finally {
    await s.cleanup();
  }
});
