/**
 * faasd's front for runc (shim/faasd-runc.c, built by `deno task gen`) on runc's containers: it answers `start` and
 * the `delete` of a stopped container itself, and hands everything else to runc, here found on PATH through a script
 * that records its arguments and execs the real runc. These bundles have runc's own example config (`runc spec`),
 * which faasd-runc's create (tests/runtime_create_test.ts) hands to runc. The first tests drive real containers in
 * a temporary directory with its own state root; the last runs faasd under a real containerd and counts runc's
 * commands.
 */

import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { BUILT_RUNTIME, resolveRuntime, RUNC } from "../lib/shim.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildHandlerImage, compileHandler } from "./harness/images.ts";
import { startTestPlatform } from "./harness/platform.ts";
import { waitUntil } from "./harness/wait.ts";
import { curl } from "./curl.ts";
import { ownCreateHost } from "./harness/cgroups.ts";
import { goRunc, REAL_RUNC, recordingRunc, stopped } from "./harness/runtime.ts";

/** A bundle running the test handler, a state root, and a PATH whose runc records each call before running runc. */
async function scene() {
  const dir = await Deno.makeTempDir({ prefix: "faasd-runc-test-" });
  const bundle = `${dir}/bundle`, root = `${dir}/state`, bin = `${dir}/bin`, calls = `${dir}/calls`;
  await Deno.mkdir(`${bundle}/rootfs`, { recursive: true });
  await Deno.mkdir(bin);
  await Deno.copyFile(await compileHandler(), `${bundle}/rootfs/handler`);
  await Deno.chmod(`${bundle}/rootfs/handler`, 0o755);
  const runcCalls = await recordingRunc(bin, calls);
  await new Deno.Command(REAL_RUNC, { args: ["spec", "--bundle", dir] }).output();
  const template = await Deno.readTextFile(`${dir}/config.json`);
  const parent = `faasd-runc-test-${crypto.randomUUID().slice(0, 8)}`;
  const cgroupDirs: string[] = [];

  const dirs = { root, log: `${dir}/log.json`, bin };
  /** Runs faasd-runc as the runc v2 shim does. */
  const runtime = (...args: string[]) => goRunc(BUILT_RUNTIME, dirs, ...args);
  /** Creates container `id` running the handler in `mode` (through runc) and returns its init pid and cgroups. */
  const create = async (id: string, mode: string) => {
    const spec = JSON.parse(template);
    spec.process.terminal = false;
    spec.process.args = ["/handler", mode];
    spec.root = { path: "rootfs", readonly: true };
    spec.linux.cgroupsPath = `/${parent}/${id}`;
    await Deno.writeTextFile(`${bundle}/config.json`, JSON.stringify(spec));
    const r = await runtime("create", "--bundle", bundle, "--pid-file", `${dir}/${id}.pid`, id);
    assertEquals(r.code, 0, `runc create: ${await Deno.readTextFile(`${dir}/log.json`).catch(() => "")}`);
    const state = JSON.parse(await Deno.readTextFile(`${root}/${id}/state.json`));
    const cgroups = Object.values(state.cgroup_paths as Record<string, string>);
    assert(cgroups.length > 0, "runc recorded the container's cgroups");
    cgroupDirs.push(...cgroups.map((p) => p.slice(0, p.lastIndexOf("/"))));
    return { pid: state.init_process_pid as number, cgroups };
  };
  const cleanup = async () => {
    for (const id of await Array.fromAsync(Deno.readDir(root)).catch(() => [])) {
      await new Deno.Command(REAL_RUNC, { args: ["--root", root, "delete", "--force", id.name], stderr: "null" })
        .output();
    }
    for (const d of new Set(cgroupDirs)) await Deno.remove(d).catch(() => {});
    await Deno.remove(dir, { recursive: true });
  };
  return { root, runtime, runcCalls, create, cleanup };
}

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

Deno.test("faasd-runc is built (deno task gen builds it), and --runtime auto picks it", async () => {
  assert(await exists(BUILT_RUNTIME), `${BUILT_RUNTIME} missing: run deno task gen`);
  assertEquals(await resolveRuntime("auto"), BUILT_RUNTIME);
  assertEquals(await resolveRuntime("auto", "/nonexistent/faasd-runc"), RUNC);
  assertEquals(await resolveRuntime("crun"), "crun");
});

Deno.test("faasd-runc starts a created container and deletes it once stopped without running runc", async () => {
  const s = await scene();
  try {
    const { pid, cgroups } = await s.create("c1", "exit");
    assertEquals((await s.runcCalls()).map((c) => c.split(" ")[0]), ["create"]);
    assert(await exists(`${s.root}/c1/exec.fifo`), "a created container waits on its exec fifo");

    const started = await s.runtime("start", "c1");
    assertEquals([started.code, started.stderr], [0, ""]);
    assert(!await exists(`${s.root}/c1/exec.fifo`), "start removes the exec fifo, as runc does");
    assert(await waitUntil(() => stopped(pid)), "the handler ran and exited");
    const state = await s.runtime("state", "c1"); // runc's own view of what start left
    assertEquals(JSON.parse(state.stdout).status, "stopped");

    const deleted = await s.runtime("delete", "c1");
    assertEquals([deleted.code, deleted.stderr], [0, ""]);
    assert(!await exists(`${s.root}/c1`), "the state directory is gone");
    for (const cgroup of cgroups) assert(!await exists(cgroup), `${cgroup} is gone`);
    assertEquals(await s.runcCalls(), ["state c1"], "start and delete never ran runc");
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-runc hands a delete to runc while the container runs or was never started", async () => {
  const s = await scene();
  try {
    // Created, never started (a shim group's anchor): runc kills its init and deletes it.
    const created = await s.create("anchor", "noconnect");
    await s.runcCalls();
    const r1 = await s.runtime("delete", "anchor");
    assertEquals(r1.code, 0, r1.stderr);
    assertEquals(await s.runcCalls(), ["delete anchor"]);
    assert(!await exists(`${s.root}/anchor`) && await waitUntil(() => stopped(created.pid)), "runc removed it");

    // Running: runc refuses, as it would without faasd-runc; once killed and stopped, faasd-runc deletes it.
    const running = await s.create("busy", "noconnect");
    assertEquals((await s.runtime("start", "busy")).code, 0);
    await s.runcCalls();
    const r2 = await s.runtime("delete", "busy");
    assert(r2.code !== 0, "a running container is not deleted");
    assertStringIncludes(r2.stderr, "not stopped");
    assertEquals((await s.runtime("kill", "busy", "KILL")).code, 0);
    assert(await waitUntil(() => stopped(running.pid)), "killed");
    assertEquals((await s.runtime("delete", "busy")).code, 0);
    assertEquals(await s.runcCalls(), ["delete busy", "kill busy KILL"]);
    for (const cgroup of running.cgroups) assert(!await exists(cgroup), `${cgroup} is gone`);
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-runc hands runc every other command and shape, with the same arguments", async () => {
  const s = await scene();
  try {
    const version = await s.runtime("--version");
    assertEquals(version.code, 0);
    assertStringIncludes(version.stdout, "runc version");
    assertEquals(await s.runcCalls(), ["--version"]);

    const unknown = await s.runtime("start", "nosuch");
    assert(unknown.code !== 0, "no such container");
    assertEquals(await s.runcCalls(), ["start nosuch"], "an unknown container is runc's to report");

    for (const args of [["delete", "--force", "nosuch"], ["start", "../x"], ["delete", "a", "b"]]) {
      await s.runtime(...args);
      assertEquals(await s.runcCalls(), [args.join(" ")]);
    }
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-runc leaves a second start of a stopped container to runc, which refuses it", async () => {
  const s = await scene();
  try {
    const { pid } = await s.create("once", "exit");
    assertEquals((await s.runtime("start", "once")).code, 0);
    assert(await waitUntil(() => stopped(pid)), "exited");
    await s.runcCalls();
    const again = await s.runtime("start", "once");
    assert(again.code !== 0, "a stopped container does not start again");
    assertEquals(await s.runcCalls(), ["start once"]);
  } finally {
    await s.cleanup();
  }
});

Deno.test("faasd-runc under real containerd: requests create, start and delete their containers without runc", async () => {
  const dir = await Deno.makeTempDir({ prefix: "faasd-runc-e2e-" });
  const calls = `${dir}/calls`;
  try {
    await Deno.writeTextFile(`${dir}/runc`, `#!/bin/sh\necho "$*" >> ${calls}\nexec ${REAL_RUNC} "$@"\n`);
    await Deno.chmod(`${dir}/runc`, 0o755);
    // containerd's shims inherit its environment: the stand-in on its PATH is found there.
    await using ctd = await startContainerd({ pathPrefix: dir });
    await using p = await startTestPlatform(ctd, { flags: ["--shim-group-size", "0"] });
    const tarball = await buildHandlerImage("hello");
    const res = await p.request("POST", "/api/new", {
      headers: { "x-image-name": "hello" },
      body: (await Deno.open(tarball)).readable,
    });
    const { ip } = await res.json();
    assertEquals(res.status, 201);
    for (let i = 0; i < 5; i++) {
      const r = await curl(`http://${ip}:${p.port}/`);
      assertEquals([r.exit, r.status, r.body], [0, 200, "hello from faasd\n"]);
    }
    assert(await waitUntil(async () => (await p.client.listTasks()).length === 0), "every container removed");
    const text = await Deno.readTextFile(calls).catch(() => "");
    const commands = text.split("\n").filter(Boolean).map((l) => l.split(" ")[6]);
    if (await ownCreateHost()) {
      // faasd-runc built every container, and answered every command on them.
      assertEquals(commands, []);
    } else {
      // runc creates them; ready containers retired unused are killed through it; none is started or deleted by it.
      assertEquals(commands.filter((c) => c === "start" || c === "delete"), [], commands.join(" "));
      assert(commands.filter((c) => c === "create").length >= 5, commands.join(" "));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
