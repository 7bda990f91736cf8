/**
 * `deno task gen`: generates the containerd and etcd v3 client code into `proto/gen/`, and builds faasd's shim
 * (`shim/faasd-shim.c`), runc front (`shim/faasd-runc.c`) and adapter (`adapter/faasd-adapter.c`) with gcc, static,
 * into `.tools/bin/`.
 *
 * No `.proto` file is kept in this repository: they are staged from Debian's packages, then compiled together by buf
 * with protoc-gen-es:
 * - containerd's API from `golang-github-containerd-containerd-dev` (the same version as the daemon) and
 *   `gogoproto/gogo.proto` from `golang-github-gogo-protobuf-dev`;
 * - etcd's v3 API (`rpc.proto` and the `kv.proto`/`auth.proto` it imports) from `golang-etcd-server-dev`, staged under
 *   `etcd/` because that is how `rpc.proto` imports its siblings, and `google/api/{annotations,http}.proto` from
 *   `golang-github-gogo-googleapis-dev`. The etcd files are staged unchanged (the `google.api.http` options are kept,
 *   not stripped): rewriting Debian's files would be one more thing to break when they change, and the price is two
 *   small generated files that only `rpc_pb.ts`'s descriptor refers to.
 *
 * Re-running is cheap: generation is skipped while `proto/gen/.stamp` holds the digest of every staged input (path
 * and content), of the buf template and of this script, so a new, changed or removed input regenerates.
 *
 * @module
 */

import { createHash } from "node:crypto";

const GOCODE = Deno.env.get("FAASD_GOCODE") ?? "/usr/share/gocode/src";
const root = new URL("..", import.meta.url).pathname;
const outDir = `${root}proto/gen`;
const stamp = `${outDir}/.stamp`;

/** Directories (relative to GOCODE) whose .proto files are all staged, and the package that ships them. */
const SOURCE_DIRS: ReadonlyArray<{ dir: string; pkg: string }> = [
  { dir: "github.com/containerd/containerd/api", pkg: "golang-github-containerd-containerd-dev" },
  { dir: "github.com/containerd/containerd/protobuf/plugin", pkg: "golang-github-containerd-containerd-dev" },
  { dir: "github.com/containerd/containerd/runtime/v2/runc/options", pkg: "golang-github-containerd-containerd-dev" },
  { dir: "github.com/gogo/protobuf/gogoproto", pkg: "golang-github-gogo-protobuf-dev" },
];

/** Single .proto files (relative to GOCODE), the path they are staged at (what their importers name), their package. */
const SOURCE_FILES: ReadonlyArray<{ file: string; staged: string; pkg: string }> = [
  ...["etcdserver/etcdserverpb/rpc.proto", "mvcc/mvccpb/kv.proto", "auth/authpb/auth.proto"].map((f) => ({
    file: `go.etcd.io/etcd/${f}`,
    staged: `etcd/${f}`,
    pkg: "golang-etcd-server-dev",
  })),
  ...["annotations.proto", "http.proto"].map((f) => ({
    file: `github.com/gogo/googleapis/google/api/${f}`,
    staged: `google/api/${f}`,
    pkg: "golang-github-gogo-googleapis-dev",
  })),
];

/** A .proto file to stage: where it is, and where it goes in the staged module. */
interface Input {
  path: string;
  staged: string;
  pkg: string;
}

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

function missingPackage(path: string, pkg: string, cause: unknown): Error {
  return new Error(`${path} is missing: install the Debian package ${pkg}`, { cause });
}

/** Every .proto file to stage, in a stable order. */
async function collectInputs(): Promise<Input[]> {
  const inputs: Input[] = [];
  for (const { dir, pkg } of SOURCE_DIRS) {
    try {
      for await (const path of protoFiles(`${GOCODE}/${dir}`)) {
        const staged = path.slice(GOCODE.length + 1).replace(/^github\.com\/gogo\/protobuf\//, "");
        inputs.push({ path, staged, pkg });
      }
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw missingPackage(`${GOCODE}/${dir}`, pkg, e);
      throw e;
    }
  }
  for (const { file, staged, pkg } of SOURCE_FILES) {
    const path = `${GOCODE}/${file}`;
    try {
      await Deno.stat(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw missingPackage(path, pkg, e);
      throw e;
    }
    inputs.push({ path, staged, pkg });
  }
  // Left out: the ttrpc events service (a twin of the gRPC one) and introspection (it needs googleapis' rpc
  // status, which Debian does not ship here); faasd uses neither.
  return inputs
    .filter((i) => !i.path.includes("/ttrpc/") && !i.path.includes("/introspection/"))
    .sort((a, b) => a.staged < b.staged ? -1 : a.staged > b.staged ? 1 : 0);
}

/** Digest over the staged paths and contents of the inputs, the buf template and this script. */
async function digest(inputs: Input[]): Promise<string> {
  const hash = createHash("sha256");
  const files = [
    ...inputs,
    { path: `${root}proto/buf.gen.yaml`, staged: "buf.gen.yaml", pkg: "" },
    { path: import.meta.filename!, staged: "gen.ts", pkg: "" },
  ];
  for (const { path, staged } of files) {
    const content = await Deno.readFile(path);
    hash.update(`${staged}\0${content.length}\0`);
    hash.update(content);
  }
  return hash.digest("hex");
}

async function main(): Promise<void> {
  const inputs = await collectInputs();
  const sum = await digest(inputs);
  await buildPrograms();
  const previous = await Deno.readTextFile(stamp).catch(() => "");
  if (previous.split("\n")[0] === sum) return;

  const stage = await Deno.makeTempDir({ prefix: "faasd-proto-" });
  try {
    for (const { path, staged } of inputs) {
      const dest = `${stage}/${staged}`;
      await Deno.mkdir(dest.slice(0, dest.lastIndexOf("/")), { recursive: true });
      await Deno.copyFile(path, dest);
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
    const packages = [...new Set(inputs.map((i) => i.pkg))].join(", ");
    await Deno.writeTextFile(stamp, `${sum}\ngenerated from the .proto files of ${packages}\n`);
  } finally {
    await Deno.remove(stage, { recursive: true });
  }
}

/** Builds faasd's static C programs (its shim, its runc front and its adapter), each unless its binary is newer than its sources. */
async function buildPrograms(): Promise<void> {
  const programs: { name: string; sources: string[]; headers?: string[]; libs?: string[] }[] = [
    { name: "faasd-shim", sources: ["shim/faasd-shim.c"] },
    {
      name: "faasd-runc",
      sources: ["shim/faasd-runc.c", "shim/create.c", "shim/own.c", "shim/json.c"],
      headers: ["shim/faasd-runc.h", "shim/json.h"],
      libs: ["-lseccomp"],
    },
    { name: "faasd-adapter", sources: ["adapter/faasd-adapter.c"] },
  ];
  for (const { name, sources, headers = [], libs = [] } of programs) {
    const binary = `${root}.tools/bin/${name}`;
    const newest = Math.max(...await Promise.all([...sources, ...headers].map((s) => mtime(`${root}${s}`))));
    if (await mtime(binary) > newest) continue;
    await Deno.mkdir(`${root}.tools/bin`, { recursive: true });
    await run("gcc", [
      "-static",
      "-O2",
      "-Wall",
      "-Wextra",
      "-Werror",
      "-o",
      `${binary}.tmp`,
      ...sources.map((s) => `${root}${s}`),
      ...libs,
    ]);
    await Deno.rename(`${binary}.tmp`, binary);
  }
}

if (import.meta.main) await main();
