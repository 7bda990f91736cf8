/**
 * `deno task gen`: generates the containerd client code into `proto/gen/`, and builds faasd's shim
 * (`shim/faasd-shim.c`) and adapter (`adapter/faasd-adapter.c`) with gcc, static, into `.tools/bin/`.
 *
 * containerd's `.proto` files are not kept in this repository: they are staged from Debian's
 * `golang-github-containerd-containerd-dev` (the same version as the daemon) and `gogoproto/gogo.proto` from
 * `golang-github-gogo-protobuf-dev`, then compiled by buf with protoc-gen-es. Re-running is cheap: generation is
 * skipped while the output is newer than every input.
 *
 * @module
 */

const GOCODE = Deno.env.get("FAASD_GOCODE") ?? "/usr/share/gocode/src";
const CONTAINERD = `${GOCODE}/github.com/containerd/containerd`;
const root = new URL("..", import.meta.url).pathname;
const outDir = `${root}proto/gen`;
const stamp = `${outDir}/.stamp`;

/** Directories (relative to GOCODE) whose .proto files are staged, and the package that ships them. */
const SOURCES: ReadonlyArray<{ dir: string; pkg: string }> = [
  { dir: "github.com/containerd/containerd/api", pkg: "golang-github-containerd-containerd-dev" },
  { dir: "github.com/containerd/containerd/protobuf/plugin", pkg: "golang-github-containerd-containerd-dev" },
  { dir: "github.com/containerd/containerd/runtime/v2/runc/options", pkg: "golang-github-containerd-containerd-dev" },
  { dir: "github.com/gogo/protobuf/gogoproto", pkg: "golang-github-gogo-protobuf-dev" },
];

async function* protoFiles(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* protoFiles(path);
    else if (entry.isFile && entry.name.endsWith(".proto")) yield path;
  }
}

async function mtime(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).mtime?.getTime() ?? 0;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    throw e;
  }
}

async function run(cmd: string, args: string[], cwd = root): Promise<void> {
  const { code, stderr } = await new Deno.Command(cmd, { args, cwd, stdout: "inherit", stderr: "piped" }).output();
  if (code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed:\n${new TextDecoder().decode(stderr)}`);
}

async function main(): Promise<void> {
  const inputs: string[] = [];
  for (const { dir, pkg } of SOURCES) {
    try {
      for await (const file of protoFiles(`${GOCODE}/${dir}`)) inputs.push(file);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error(`${GOCODE}/${dir} is missing: install the Debian package ${pkg}`, { cause: e });
      }
      throw e;
    }
  }
  // Left out: the ttrpc events service (a twin of the gRPC one) and introspection (it needs googleapis' rpc
  // status, which Debian does not ship here); faasd uses neither.
  const wanted = inputs.filter((f) => !f.includes("/ttrpc/") && !f.includes("/introspection/"));
  const newest = Math.max(
    ...(await Promise.all([...wanted, `${root}proto/buf.gen.yaml`, import.meta.filename!].map(mtime))),
  );
  await buildPrograms();
  if (await mtime(stamp) > newest) return;

  const stage = await Deno.makeTempDir({ prefix: "faasd-proto-" });
  try {
    for (const file of wanted) {
      const rel = file.slice(GOCODE.length + 1).replace(/^github\.com\/gogo\/protobuf\//, "");
      const dest = `${stage}/${rel}`;
      await Deno.mkdir(dest.slice(0, dest.lastIndexOf("/")), { recursive: true });
      await Deno.copyFile(file, dest);
    }
    await Deno.writeTextFile(`${stage}/buf.yaml`, "version: v2\n");
    const tmpOut = `${outDir}.tmp`;
    await Deno.remove(tmpOut, { recursive: true }).catch(() => {});
    await run(`${root}node_modules/.bin/buf`, [
      "generate",
      stage,
      "--template",
      `${root}proto/buf.gen.yaml`,
      "-o",
      tmpOut,
    ]);
    await Deno.remove(outDir, { recursive: true }).catch(() => {});
    await Deno.rename(`${tmpOut}/gen`, outDir);
    await Deno.remove(tmpOut, { recursive: true });
    await Deno.writeTextFile(stamp, `generated from ${CONTAINERD}\n`);
  } finally {
    await Deno.remove(stage, { recursive: true });
  }
}

/** Builds faasd's static C programs (its shim and its adapter), each unless its binary is newer than its source. */
async function buildPrograms(): Promise<void> {
  for (const [source, name] of [["shim/faasd-shim.c", "faasd-shim"], ["adapter/faasd-adapter.c", "faasd-adapter"]]) {
    const binary = `${root}.tools/bin/${name}`;
    if (await mtime(binary) > await mtime(`${root}${source}`)) continue;
    await Deno.mkdir(`${root}.tools/bin`, { recursive: true });
    await run("gcc", ["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", `${binary}.tmp`, `${root}${source}`]);
    await Deno.rename(`${binary}.tmp`, binary);
  }
}

if (import.meta.main) await main();
