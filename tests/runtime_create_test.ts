/**
 * faasd-runc's own `create` (shim/create.c): a container of faasd's spec (lib/serve/spec.ts, with the default seccomp
 * profile) built without runc, compared field by field with the same bundle under runc; its lifecycle commands
 * (shim/own.c); a failed create that leaves nothing; and the configs it hands to runc unchanged.
 *
 * The create path needs the memory, pids, cpu and devices controllers on cgroup v1 (this host's hybrid layout); on a
 * cgroup v2 host faasd-runc hands every create to runc, which the last test checks instead.
 */

import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { BUILT_RUNTIME } from "../lib/shim.ts";
import { buildSpec, CAPABILITIES } from "../lib/serve/spec.ts";
import { loadSeccompProfile } from "../lib/seccomp.ts";
import { compileHandler } from "./harness/images.ts";
import { waitUntil } from "./harness/wait.ts";
import { ownCreateHost } from "./harness/cgroups.ts";
import { goRunc, REAL_RUNC, recordingRunc, stopped } from "./harness/runtime.ts";

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

/** Waits until pid runs the handler: `start` returns once the init has its byte, a moment before it execs. */
async function execed(pid: number): Promise<void> {
  const running = async () => (await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() => "")).startsWith("/handler");
  assert(await waitUntil(running), `${pid} did not exec the handler`);
}

/** A bundle with the test handler and faasd's spec, a state root, and runc on PATH recording its calls. */
async function scene() {
  const dir = await Deno.makeTempDir({ prefix: "faasd-runc-create-" });
  const bundle = `${dir}/bundle`, root = `${dir}/state`, bin = `${dir}/bin`, calls = `${dir}/calls`;
  await Deno.mkdir(`${bundle}/rootfs`, { recursive: true });
  await Deno.mkdir(bin);
  await Deno.copyFile(await compileHandler(), `${bundle}/rootfs/handler`);
  await Deno.chmod(`${bundle}/rootfs/handler`, 0o755);
  await Deno.writeTextFile(`${dir}/control.sock`, "");
  const runcCalls = await recordingRunc(bin, calls);
  const parent = `faasd-runc-create-${crypto.randomUUID().slice(0, 8)}`;
  const seccomp = await loadSeccompProfile("default", { capabilities: CAPABILITIES });

  /** faasd's spec for container id, running the handler in mode, with edit applied to it. */
  const writeSpec = async (id: string, mode: string, edit: (spec: Record<string, unknown>) => void = () => {}) => {
    const spec = buildSpec({
      hostname: `host-${id}`,
      process: {
        entrypoint: ["/handler"],
        cmd: [mode],
        env: ["GREETING=hi"],
        workingDir: "/tmp",
        user: "1000:1000",
        resolvedUser: { uid: 1000, gid: 1000, additionalGids: [1001, 1002] },
      },
      controlSocket: `${dir}/control.sock`,
      cgroupsPath: `/${parent}/${id}`,
      limits: { memoryBytes: 64 << 20, pids: 32, cpus: 0.5, scratchBytes: 8 << 20 },
      seccomp: seccomp as unknown as Record<string, unknown>,
    });
    edit(spec);
    await Deno.writeTextFile(`${bundle}/config.json`, JSON.stringify(spec));
  };

  const dirs = { root, log: `${dir}/log.json`, bin };
  const run = (binary: string, ...args: string[]) => goRunc(binary, dirs, ...args);
  const runtime = (...args: string[]) => run(BUILT_RUNTIME, ...args);
  const runc = (...args: string[]) => run(REAL_RUNC, ...args);
  const create = async (binary: string, id: string) => {
    const r = await run(binary, "create", "--bundle", bundle, "--pid-file", `${dir}/${id}.pid`, id);
    const log = await Deno.readTextFile(`${dir}/log.json`).catch(() => "");
    const pid = r.code === 0 ? Number(await Deno.readTextFile(`${dir}/${id}.pid`)) : 0;
    return { code: r.code, log, pid };
  };
  const cgroupDir = (controller: string, id: string) => `/sys/fs/cgroup/${controller}/${parent}/${id}`;
  const cleanup = async () => {
    for (const e of await Array.fromAsync(Deno.readDir(root)).catch(() => [])) {
      if (!e.isDirectory) continue;
      const own = await exists(`${root}/${e.name}/faasd-state.json`);
      await run(own ? BUILT_RUNTIME : REAL_RUNC, "delete", "--force", e.name);
    }
    for (const controller of await Array.fromAsync(Deno.readDir("/sys/fs/cgroup"))) {
      const d = `/sys/fs/cgroup/${controller.name}/${parent}`;
      for (const leaf of await Array.fromAsync(Deno.readDir(d)).catch(() => [])) {
        if (leaf.isDirectory) await Deno.remove(`${d}/${leaf.name}`).catch(() => {});
      }
      await Deno.remove(d).catch(() => {});
    }
    await Deno.remove(dir, { recursive: true });
  };
  return { dir, bundle, root, writeSpec, runtime, runc, runcCalls, create, cgroupDir, cleanup };
}

/** What a container process looks like from the host, with what differs by container id or instance taken out. */
async function portrait(pid: number, id: string, cgroupDir: (c: string, id: string) => string) {
  const status = Object.fromEntries(
    (await Deno.readTextFile(`/proc/${pid}/status`)).split("\n").map((l) => l.split(":\t")).filter((kv) =>
      /^(Uid|Gid|Groups|Cap\w+|NoNewPrivs|Seccomp|Seccomp_filters|Umask)$/.test(kv[0])
    ),
  );
  const mounts = (await Deno.readTextFile(`/proc/${pid}/mountinfo`)).trim().split("\n").map((l) => {
    const f = l.split(" ");
    const post = l.split(" - ")[1].split(" ");
    return `${f[3]} ${f[4]} ${f[5]} ${post[0]} ${post[1]} ${post[2]}`; // root, point, options, type, source, super
  }).sort();
  const dev = [];
  for (const e of await Array.fromAsync(Deno.readDir(`/proc/${pid}/root/dev`))) {
    const st = await Deno.lstat(`/proc/${pid}/root/dev/${e.name}`);
    const target = st.isSymlink ? await Deno.readLink(`/proc/${pid}/root/dev/${e.name}`) : "";
    dev.push(`${e.name} ${st.mode?.toString(8)} ${st.rdev} ${st.uid}:${st.gid} ${target}`);
  }
  const cgroupFiles: Record<string, string> = {};
  for (
    const [controller, file] of [
      ["memory", "memory.limit_in_bytes"],
      ["pids", "pids.max"],
      ["cpu", "cpu.cfs_quota_us"],
      ["cpu", "cpu.cfs_period_us"],
      ["devices", "devices.list"],
    ]
  ) {
    // devices.list is a set, listed in the order the rules were written.
    const lines = (await Deno.readTextFile(`${cgroupDir(controller, id)}/${file}`)).trim().split("\n");
    cgroupFiles[file] = lines.sort().join("\n");
  }
  const ns: Record<string, boolean> = {};
  for (const n of ["pid", "mnt", "net", "ipc", "uts", "cgroup", "user", "time"]) {
    ns[n] = await Deno.readLink(`/proc/${pid}/ns/${n}`) !== await Deno.readLink(`/proc/self/ns/${n}`);
  }
  const hostname = new TextDecoder().decode(
    (await new Deno.Command("nsenter", { args: [`--uts=/proc/${pid}/ns/uts`, "hostname"] }).output()).stdout,
  ).trim().replace(id, "ID");
  const links = new TextDecoder().decode(
    (await new Deno.Command("nsenter", { args: [`--net=/proc/${pid}/ns/net`, "ip", "-o", "link"] }).output()).stdout,
  );
  return {
    status,
    links,
    mounts,
    dev: dev.sort(),
    cgroup: (await Deno.readTextFile(`/proc/${pid}/cgroup`)).replaceAll(`/${id}\n`, "/ID\n"),
    cgroupFiles,
    ns,
    hostname,
    fds: (await Array.fromAsync(Deno.readDir(`/proc/${pid}/fd`))).map((e) => e.name).sort(),
    environ: await Deno.readTextFile(`/proc/${pid}/environ`),
    cwd: await Deno.readLink(`/proc/${pid}/cwd`),
    limits: await Deno.readTextFile(`/proc/${pid}/limits`),
  };
}

Deno.test({
  name: "faasd-runc create builds faasd's spec without runc, as runc builds it: ids, capabilities, seccomp, mounts, " +
    "devices, cgroups, namespaces",
  ignore: !await ownCreateHost(),
  fn: async () => {
    const s = await scene();
    try {
      await s.writeSpec("r", "noconnect");
      const viaRunc = await s.create(REAL_RUNC, "r");
      assertEquals(viaRunc.code, 0, viaRunc.log);
      await s.writeSpec("f", "noconnect");
      const own = await s.create(BUILT_RUNTIME, "f");
      assertEquals(own.code, 0, own.log);
      assertEquals(await s.runcCalls(), [], "runc never ran");
      assert(await exists(`${s.root}/f/faasd-state.json`) && !await exists(`${s.root}/f/state.json`));
      assertEquals(JSON.parse((await s.runtime("state", "f")).stdout).status, "created");

      assertEquals((await s.runc("start", "r")).code, 0);
      const started = await s.runtime("start", "f");
      assertEquals([started.code, started.stderr], [0, ""]);
      assertEquals(JSON.parse((await s.runtime("state", "f")).stdout).status, "running");
      await execed(viaRunc.pid);
      await execed(own.pid);
      const [a, b] = [await portrait(viaRunc.pid, "r", s.cgroupDir), await portrait(own.pid, "f", s.cgroupDir)];
      assertEquals(b, a);
      // What the comparison rests on: the spec's own asks, seen in the faasd-runc container.
      assertEquals([b.status.Uid, b.status.Groups, b.status.NoNewPrivs, b.status.Seccomp], [
        "1000\t1000\t1000\t1000",
        "1001 1002 ",
        "1",
        "2",
      ]);
      assertEquals(b.cgroupFiles["memory.limit_in_bytes"], String(64 << 20));
      assertEquals(b.fds, ["0", "1", "2"]);
      assert(b.mounts.some((m) => m.includes(" / ro,")), "read-only root");
      assertStringIncludes(b.links, "lo: <LOOPBACK,UP,LOWER_UP>");
      assertEquals(b.hostname, "host-ID");
      assertEquals(await s.runcCalls(), [], "start and state never ran runc");
    } finally {
      await s.cleanup();
    }
  },
});

Deno.test({
  name: "faasd-runc's own containers: kill, delete (a created one, a stopped one; a running one only with --force), " +
    "ps; and a failed create leaves nothing",
  ignore: !await ownCreateHost(),
  fn: async () => {
    const s = await scene();
    try {
      await s.writeSpec("c1", "noconnect");
      const c1 = await s.create(BUILT_RUNTIME, "c1");
      assertEquals(c1.code, 0, c1.log);
      // Created, never started: delete kills and removes it (the shim deletes never-started containers so).
      assertEquals((await s.runtime("delete", "c1")).code, 0);
      assert(await waitUntil(() => stopped(c1.pid)), "the init was killed");
      assert(!await exists(`${s.root}/c1`) && !await exists(s.cgroupDir("memory", "c1")), "c1 removed");

      await s.writeSpec("c2", "noconnect");
      const c2 = await s.create(BUILT_RUNTIME, "c2");
      assertEquals((await s.runtime("start", "c2")).code, 0);
      assertEquals(JSON.parse((await s.runtime("ps", "--format", "json", "c2")).stdout), [c2.pid]);
      const refused = await s.runtime("delete", "c2");
      assertEquals(refused.code, 1);
      assertStringIncludes(refused.stderr, "not stopped");
      assertEquals((await s.runtime("start", "c2")).stderr.trim(), "cannot start an already running container");
      assertEquals((await s.runtime("kill", "c2", "9")).code, 0);
      assert(await waitUntil(() => stopped(c2.pid)), "killed");
      const again = await s.runtime("kill", "c2", "9");
      assertEquals([again.code, again.stderr.trim()], [1, "container not running"]); // what the shim expects
      assertEquals(JSON.parse((await s.runtime("state", "c2")).stdout).status, "stopped");
      assertEquals((await s.runtime("delete", "c2")).code, 0);
      assert(!await exists(`${s.root}/c2`), "state directory removed");
      for (const c of ["memory", "pids", "cpu", "devices", "unified"]) {
        assert(!await exists(s.cgroupDir(c, "c2")), `${c} cgroup removed`);
      }

      await s.writeSpec("c3", "noconnect");
      const c3 = await s.create(BUILT_RUNTIME, "c3");
      assertEquals((await s.runtime("start", "c3")).code, 0);
      assertStringIncludes((await s.runtime("pause", "c3")).stderr, "pause is not supported");
      assertEquals((await s.runtime("delete", "--force", "c3")).code, 0);
      assert(await stopped(c3.pid) && !await exists(`${s.root}/c3`), "force-deleted");

      // An executable the image lacks: a clear error in the log the shim reports, and nothing left.
      await s.writeSpec("bad", "noconnect", (spec) => {
        (spec.process as { args: string[] }).args = ["/nonexistent"];
      });
      const bad = await s.create(BUILT_RUNTIME, "bad");
      assertEquals(bad.code, 1);
      assertStringIncludes(bad.log, "/nonexistent");
      assertStringIncludes(JSON.parse(bad.log.trim().split("\n").at(-1)!).msg, "unable to start container process");
      assert(!await exists(`${s.root}/bad`), "no state directory");
      assert(!await exists(s.cgroupDir("memory", "bad")), "no cgroup");
      assertEquals(await s.runcCalls(), []);
    } finally {
      await s.cleanup();
    }
  },
});

Deno.test({
  name: "faasd-runc create: an image cannot reach the host through the runtime's descriptors or binary " +
    "(magic links as cwd, executable or through a symlink), nor hang it with a device as /etc/passwd",
  ignore: !await ownCreateHost(),
  fn: async () => {
    const s = await scene();
    try {
      const attempts: [string, (spec: Record<string, unknown>) => void][] = [
        ["cwd", (spec) => (spec.process as { cwd: string }).cwd = "/proc/self/fd/3"],
        ["cwd-exe", (spec) => (spec.process as { cwd: string }).cwd = "/proc/self/root/../../.."],
        ["exe", (spec) => (spec.process as { args: string[] }).args = ["/proc/self/exe"]],
        ["fd", (spec) => (spec.process as { args: string[] }).args = ["/proc/self/fd/4"]],
        ["link", (spec) => (spec.process as { args: string[] }).args = ["/runtime"]],
      ];
      await Deno.symlink("/proc/self/exe", `${s.bundle}/rootfs/runtime`);
      for (const [id, edit] of attempts) {
        await s.writeSpec(id, "noconnect", edit);
        const r = await s.create(BUILT_RUNTIME, id);
        assertEquals(r.code, 1, `${id}: created (${r.pid})`);
        assertStringIncludes(r.log, "unable to start container process");
        assert(!await exists(`${s.root}/${id}`) && !await exists(s.cgroupDir("pids", id)), `${id}: left behind`);
      }
      // /etc/passwd as a device that never ends: HOME falls back to "/", and the create does not hang.
      await Deno.mkdir(`${s.bundle}/rootfs/etc`);
      await Deno.symlink("/dev/zero", `${s.bundle}/rootfs/etc/passwd`);
      await s.writeSpec("zero", "noconnect");
      const zero = await s.create(BUILT_RUNTIME, "zero");
      assertEquals(zero.code, 0, zero.log);
      assertEquals((await s.runtime("start", "zero")).code, 0);
      await execed(zero.pid);
      const environ = await Deno.readTextFile(`/proc/${zero.pid}/environ`);
      assert(environ.split("\0").includes("HOME=/"), environ);
      assertEquals(await s.runcCalls(), []);
    } finally {
      await s.cleanup();
    }
  },
});

Deno.test({
  name: "faasd-runc create compiles a seccomp profile once into /run/faasd-runc, and recompiles over a cache file " +
    "that holds another profile's text",
  ignore: !await ownCreateHost(),
  fn: async () => {
    const s = await scene();
    // A profile no other test uses: a rule for a syscall name libseccomp does not know (skipped, as runc skips it).
    const marker = `faasd_test_${crypto.randomUUID().replaceAll("-", "")}`;
    const unique = (spec: Record<string, unknown>) => {
      const linux = spec.linux as { seccomp: { syscalls: unknown[] } };
      // A copy: the spec shares the profile object with every other spec of the scene.
      linux.seccomp = {
        ...linux.seccomp,
        syscalls: [...linux.seccomp.syscalls, { names: [marker], action: "SCMP_ACT_ALLOW" }],
      };
    };
    const cacheFile = async () => {
      for (const e of await Array.fromAsync(Deno.readDir("/run/faasd-runc"))) {
        const path = `/run/faasd-runc/${e.name}`;
        if (e.name.startsWith("seccomp-") && (await Deno.readTextFile(path)).includes(marker)) return path;
      }
      return null;
    };
    let file: string | null = null;
    try {
      await s.writeSpec("s1", "noconnect", unique);
      assertEquals((await s.create(BUILT_RUNTIME, "s1")).code, 0);
      file = await cacheFile();
      assert(file, "the compiled profile is cached");
      const { mode, uid } = await Deno.stat("/run/faasd-runc");
      assertEquals([mode! & 0o777, uid], [0o700, 0]);

      // Same hash, other text (as a collision would be): not trusted, compiled again and rewritten.
      const bytes = await Deno.readFile(file);
      const at = new TextDecoder("latin1").decode(bytes).indexOf(marker); // one char per byte
      assert(at > 0, "the cache holds the profile's text");
      bytes[at] = "X".charCodeAt(0);
      await Deno.writeFile(file, bytes);
      await s.writeSpec("s2", "noconnect", unique);
      const s2 = await s.create(BUILT_RUNTIME, "s2");
      assertEquals(s2.code, 0, s2.log);
      assert((await Deno.readTextFile(file)).includes(marker), "the cache file was rewritten for this profile");
      assertEquals((await s.runtime("start", "s2")).code, 0);
      await execed(s2.pid);
      const status = await Deno.readTextFile(`/proc/${s2.pid}/status`);
      assertStringIncludes(status, "Seccomp:\t2");
    } finally {
      if (file) await Deno.remove(file).catch(() => {});
      await s.cleanup();
    }
  },
});

Deno.test("faasd-runc hands runc a create it does not know in full, unchanged: another shape, a symlink on a mount's way", async () => {
  const s = await scene();
  try {
    const own = await ownCreateHost();
    // A member faasd's spec never has.
    await s.writeSpec("sysctl", "noconnect", (spec) => {
      (spec.linux as Record<string, unknown>).sysctl = { "net.ipv4.ip_forward": "0" };
    });
    const r1 = await s.create(BUILT_RUNTIME, "sysctl");
    assertEquals(r1.code, 0, r1.log);
    assertEquals((await s.runcCalls())[0]?.split(" ")[0], "create");
    assert(await exists(`${s.root}/sysctl/state.json`), "runc's container");

    // /tmp in the image is a symlink: runc resolves mount destinations inside the rootfs; faasd-runc leaves them to it.
    await Deno.remove(`${s.bundle}/rootfs/tmp`).catch(() => {}); // the mount point runc made for the first
    await Deno.mkdir(`${s.bundle}/rootfs/var/tmp`, { recursive: true });
    await Deno.symlink("var/tmp", `${s.bundle}/rootfs/tmp`);
    await s.writeSpec("link", "noconnect");
    const r2 = await s.create(BUILT_RUNTIME, "link");
    assertEquals(r2.code, 0, r2.log);
    assertEquals((await s.runcCalls())[0]?.split(" ")[0], "create");
    assert(await exists(`${s.root}/link/state.json`), "runc's container");
    if (own) {
      // The attempt left nothing behind for runc to trip on: no state of faasd-runc's, one init (runc's).
      assert(!await exists(`${s.root}/link/faasd-state.json`));
      const procs = (await Deno.readTextFile(`${s.cgroupDir("pids", "link")}/cgroup.procs`)).trim().split("\n");
      assertEquals(procs.length, 1, procs.join(" "));
    }
  } finally {
    await s.cleanup();
  }
});
