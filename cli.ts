/**
 * `faas`: the command-line client of a faasd control API.
 *
 *     deno task faas [--url URL] [--token TOKEN] new IMAGE [--name N] [--tar FILE] [LIMITS] [POOL] [PROCESS]
 *     deno task faas [--url URL] [--token TOKEN] scale NAME [LIMITS] [POOL] [PROCESS] [--default KEY]
 *     deno task faas [--url URL] [--token TOKEN] ip NAME | list [--json] | delete NAME | logs NAME [-f]
 *     deno task faas [--url URL] [--token TOKEN] stats NAME [--json]
 *     deno task faas [--url URL] [--token TOKEN] secret create NAME [--from-file F] | secret list | secret delete NAME
 *
 * LIMITS are `--memory SIZE --cpu N --pids N --timeout D --rootfs readonly|writable`, POOL `--min-ready N
 * --max-ready N`, PROCESS `--http-port N --ready-timeout D --env KEY=VALUE... --secret NAME...`, each optional, sent
 * as they were typed: faasd checks them against its own flags.
 *
 * `FAAS_URL` is the default for `--url` (else http://127.0.0.1:8080), `FAAS_TOKEN` for `--token`. Every failure
 * prints one line and exits 1.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { nameFromImage } from "./lib/names.ts";
import { upload, type UploadAnswer } from "./lib/client/upload.ts";
import { initTemplate, TEMPLATE_LANGUAGES } from "./lib/client/init.ts";
import type { FunctionSnapshot } from "./lib/stats.ts";
import { formatDuration, formatSize, SETTING_KEYS } from "./lib/settings.ts";

const USAGE = `Usage: faas [--url URL] [--token TOKEN] <command> [options]

Commands:
  new IMAGE [--name N] [--tar FILE] [LIMITS] [POOL]
                                      deploy a local image (docker save / podman save streamed to faasd), print its IP
  scale NAME [LIMITS] [POOL] [--default KEY]
                                      change a function's limits and pool sizing; --default KEY returns one to
                                      faasd's default
  ip NAME                             print the IP of a function
  list [--json]                       list functions: IMAGE  IP  STATUS  READY (ready/min-max) [HOSTS]
  delete NAME                         stop serving a function, free its IP, remove its image
  logs NAME [-f]                      print a function's container output; -f follows it
  stats NAME [--json]                 requests, latency, CPU and peak memory per request, OOM kills
  init LANG NAME [--dir D]            write a ready-to-build handler directory (LANG: c, python, go, http)
  secret create NAME [--from-file F]  store a secret (its value from F, else from stdin)
  secret list                         list secrets (names only)
  secret delete NAME                  delete a secret no function uses

LIMITS, of each request's container (at most faasd's own, which apply where none is given):
  --memory SIZE  --cpu N  --pids N  --timeout D  --rootfs readonly|writable
POOL, ready containers kept for the function (at most faasd's --pool-max; default 0 and 8):
  --min-ready N  --max-ready N
PROCESS, how the function's process runs:
  --http-port N  --ready-timeout D  --env KEY=VALUE (repeatable)  --secret NAME (repeatable)

Options:
  --url URL      faasd control API (env FAAS_URL, default http://127.0.0.1:8080)
  --token TOKEN  API token, when faasd wants one (env FAAS_TOKEN; prefer the env variable)
  --help         help for faas or for a command
`;

/** The limits options of new and scale, one per setting key (faasd checks the values). */
const LIMITS_HELP = `  --memory SIZE    memory, e.g. 256MiB (at most faasd's --memory-limit)
  --cpu N          CPUs, e.g. 0.5 (at most faasd's --cpu-limit)
  --pids N         processes and threads at once (at most faasd's --pids-limit)
  --timeout D      how long one request may run, e.g. 30s (at most faasd's --request-timeout)
  --rootfs MODE    readonly (default: only /tmp is writable) or writable
  --min-ready N    ready containers kept even when idle (default 0; at most --max-ready and faasd's --pool-max)
  --max-ready N    ready containers kept at most (default 8; at most faasd's --pool-max)
  --http-port N    adapter mode: the image is a plain HTTP server listening on port N; faasd's adapter starts it,
                   waits for the port and relays each connection to it
  --ready-timeout D  adapter mode: how long the server may take to listen (default 30s)
  --env KEY=VALUE  environment over the image's ENV; repeatable (all given replace those set before)
  --secret NAME    mount secret NAME at /run/secrets/NAME; repeatable (all given replace those set before)
`;

const COMMAND_HELP: Record<string, string> = {
  new: `Usage: faas new IMAGE [--name N] [--tar FILE] [--memory SIZE] [--cpu N] [--pids N] [--timeout D]
                [--rootfs readonly|writable] [--min-ready N] [--max-ready N]

Exports IMAGE with \`docker save\` (or \`podman save\` where docker has no such image) and streams it straight to
faasd, which imports it into containerd and serves it on its own IP. Prints the IP. Limits given are set for the
function (a redeploy keeps those set before); the others follow faasd's flags.
  --name N         function name (default: derived from IMAGE, e.g. registry/my-handler:1 → my-handler)
  --tar FILE       upload FILE (a docker save / podman save tarball) instead of exporting IMAGE
${LIMITS_HELP}`,
  scale: `Usage: faas scale NAME [--memory SIZE] [--cpu N] [--pids N] [--timeout D] [--rootfs readonly|writable]
                  [--min-ready N] [--max-ready N] [--default KEY]...

Changes the limits of function NAME's containers from its next request on, and how many ready containers faasd
keeps for it, and prints them all. Those not given stay as they are.
${LIMITS_HELP}  --default KEY    return KEY (${SETTING_KEYS.join(", ")}) to faasd's default; may be repeated
`,
  ip: "Usage: faas ip NAME\n\nPrints the IP address of function NAME.\n",
  list: `Usage: faas list [--json]

Lists deployed functions as a table IMAGE  IP  STATUS  READY, or as faasd's JSON. READY is ready/min-max: the ready
containers the function has now, and how many faasd keeps for it at least (once idle) and at most. In a cluster,
HOSTS lists the hosts serving the function (the ready count is this host's), a host marked * still serves an older
image; --json shows each host's image digest.
`,
  delete: "Usage: faas delete NAME\n\nStops serving NAME, frees its IP and removes its image.\n",
  init: `Usage: faas init LANG NAME [--dir D]

Writes a ready-to-build handler for function NAME into ./NAME (or D): a Containerfile, the source, build.sh (builds
localhost/NAME:latest with podman, offline) and a README. LANG is one of ${TEMPLATE_LANGUAGES.join(", ")}; "http" is
any plain HTTP server, deployed with --http-port. Never overwrites anything.
`,
  secret: `Usage: faas secret create NAME [--from-file F] | faas secret list | faas secret delete NAME

create stores a secret (at most 512 KiB), its value read from F or else from stdin; functions deployed with
--secret NAME see it at /run/secrets/NAME. list prints the names; values are never shown. delete refuses while a
function uses it.
`,
  logs: "Usage: faas logs NAME [-f]\n\nPrints the output of NAME's containers; -f keeps following it.\n",
  stats: `Usage: faas stats NAME [--json]

Prints what function NAME used since faasd started: requests by outcome, latency (p50, p99), CPU time and peak
memory of a request's container (its start included), and OOM kills; or faasd's JSON. Percentiles cover the last
1024 requests.
`,
};

/** A failure to report as one line. */
class CliError extends Error {}

/** The faasd API the CLI talks to. */
interface Target {
  url: string;
  /** Headers every request carries (the API token's). */
  headers: Record<string, string>;
}

function target(url: string | undefined, token: string | undefined): Target {
  const t = token ?? Deno.env.get("FAAS_TOKEN") ?? "";
  return {
    url: (url ?? Deno.env.get("FAAS_URL") ?? "http://127.0.0.1:8080").replace(/\/+$/, ""),
    headers: t ? { authorization: `Bearer ${t}` } : {},
  };
}

async function call(api: Target, path: string, init: RequestInit = {}): Promise<Response> {
  const { url } = api;
  let res: Response;
  try {
    res = await fetch(`${url}${path}`, { ...init, headers: { ...api.headers, ...init.headers } });
  } catch (e) {
    const cause = (e as Error).cause instanceof Error ? ((e as Error).cause as Error).message : "";
    throw new CliError(`cannot reach faasd at ${url}: ${cause || (e as Error).message}`);
  }
  if (!res.ok) {
    const text = await res.text();
    let message = text.trim();
    try {
      message = (JSON.parse(text) as { error?: string }).error ?? message;
    } catch { /* not JSON: show as is */ }
    throw new CliError(`${message || res.statusText} (HTTP ${res.status})`);
  }
  return res;
}

function formatBytes(n: number): string {
  return n >= 1024 ** 3
    ? `${(n / 1024 ** 3).toFixed(2)} GiB`
    : n >= 1024 ** 2
    ? `${(n / 1024 ** 2).toFixed(1)} MiB`
    : `${(n / 1024).toFixed(0)} KiB`;
}

/** Counts bytes through a stream and shows progress on a terminal's stderr. */
function withProgress(source: ReadableStream<Uint8Array>, total?: number): ReadableStream<Uint8Array> {
  if (!Deno.stderr.isTerminal()) return source;
  let sent = 0;
  let last = 0;
  const encoder = new TextEncoder();
  const show = () => {
    const pct = total ? ` (${Math.floor((sent / total) * 100)}%)` : "";
    Deno.stderr.writeSync(encoder.encode(`\ruploading ${formatBytes(sent)}${pct}   `));
  };
  return source.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        sent += chunk.length;
        if (Date.now() - last > 100) {
          last = Date.now();
          show();
        }
        controller.enqueue(chunk);
      },
      flush() {
        show();
        Deno.stderr.writeSync(encoder.encode("\n"));
      },
    }),
  );
}

/** A file as a stream of 1 MiB chunks (fewer, larger writes than `file.readable`'s 64 KiB). */
function fileChunks(file: Deno.FsFile): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const buf = new Uint8Array(1 << 20);
      const n = await file.read(buf);
      if (n === null) {
        file.close();
        controller.close();
      } else controller.enqueue(buf.subarray(0, n));
    },
    cancel: () => file.close(),
  });
}

async function succeeds(cmd: string, args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output()).success;
  } catch {
    return false; // not installed
  }
}

/** Which engine holds `image`: docker when its engine has it, else podman. */
async function engineFor(image: string): Promise<string> {
  const forced = Deno.env.get("FAAS_ENGINE");
  if (forced) return forced;
  for (const engine of ["docker", "podman"]) {
    if (await succeeds(engine, ["image", "inspect", image])) return engine;
  }
  throw new CliError(`image ${image} not found in docker or podman (build it first, or pass --tar FILE)`);
}

/** `ENGINE save IMAGE` as a stream that errors when the export fails, so a broken export aborts the upload. */
function exportImage(engine: string, image: string): ReadableStream<Uint8Array> {
  const child = new Deno.Command(engine, { args: ["save", image], stdout: "piped", stderr: "piped" }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (!done) return controller.enqueue(value);
      const status = await child.status;
      if (status.success) return controller.close();
      const message = (await stderr).trim().split("\n").pop();
      controller.error(new CliError(`${engine} save ${image} failed: ${message || `exit ${status.code}`}`));
    },
    cancel() {
      child.kill();
    },
  });
}

/** The limits and pool options, one per settings key faasd takes (`--min-ready` for `min_ready`). */
const LIMIT_OPTIONS = {
  memory: { type: "string" },
  cpu: { type: "string" },
  pids: { type: "string" },
  timeout: { type: "string" },
  rootfs: { type: "string" },
  "min-ready": { type: "string" },
  "max-ready": { type: "string" },
  "http-port": { type: "string" },
  "ready-timeout": { type: "string" },
} as const;

/** The repeatable process options: each `--env KEY=VALUE` and `--secret NAME` adds one. */
const LIST_OPTIONS = {
  env: { type: "string", multiple: true },
  secret: { type: "string", multiple: true },
} as const;

/** `--env` and `--secret` as given (absent when not given, so that a redeploy keeps those set before). */
function givenLists(values: { env?: string[]; secret?: string[] }): { env?: string[]; secrets?: string[] } {
  for (const e of values.env ?? []) {
    if (!e.includes("=")) throw new CliError(`invalid --env ${JSON.stringify(e)}: expected KEY=VALUE`);
  }
  return { ...(values.env ? { env: values.env } : {}), ...(values.secret ? { secrets: values.secret } : {}) };
}

/** The settings key of an option (or of a `--default` argument, which may be given either way). */
const settingKey = (option: string) => option.replaceAll("-", "_");

/** The limits and pool options that were given, as settings (text, as typed). */
function givenLimits(values: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const option of Object.keys(LIMIT_OPTIONS)) {
    const value = values[option];
    if (typeof value === "string") out[settingKey(option)] = value;
  }
  return out;
}

async function cmdNew(api: Target, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: { name: { type: "string" }, tar: { type: "string" }, ...LIMIT_OPTIONS, ...LIST_OPTIONS },
    allowPositionals: true,
  });
  const lists = givenLists(values);
  const image = positionals[0];
  if (!image && !values.tar) throw new CliError("faas new needs an IMAGE (or --tar FILE); see faas new --help");
  if (positionals.length > 1) throw new CliError(`unexpected argument ${positionals[1]}`);
  const name = values.name ?? nameFromImage(image ?? values.tar!.replace(/^.*\//, "").replace(/\.tar(\.gz)?$/, ""));
  let body: ReadableStream<Uint8Array>;
  let total: number | undefined;
  if (values.tar) {
    try {
      const file = await Deno.open(values.tar);
      total = (await file.stat()).size;
      body = fileChunks(file);
    } catch (e) {
      throw new CliError(`cannot read ${values.tar}: ${(e as Error).message}`);
    }
  } else {
    body = exportImage(await engineFor(image!), image!);
  }
  let answer: UploadAnswer;
  try {
    const params = new URLSearchParams(givenLimits(values));
    for (const e of lists.env ?? []) params.append("env", e);
    for (const name of lists.secrets ?? []) params.append("secret", name);
    const query = params.toString();
    answer = await upload(
      `${api.url}/api/new${query ? `?${query}` : ""}`,
      { ...api.headers, "x-image-name": name, "content-type": "application/x-tar" },
      withProgress(body, total),
      total,
    );
  } catch (e) {
    if (e instanceof CliError) throw e; // the export failed: say why
    throw new CliError(`cannot reach faasd at ${api.url}: ${(e as Error).message}`);
  }
  const parsed = parseAnswer(answer.body);
  if (answer.status < 200 || answer.status > 299) {
    throw new CliError(`${parsed?.error ?? answer.body.trim()} (HTTP ${answer.status})`);
  }
  console.log(parsed?.ip);
}

function parseAnswer(text: string): { ip?: string; error?: string } | null {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

async function cmdIp(api: Target, args: string[]): Promise<void> {
  const [name] = parseArgs({ args, allowPositionals: true }).positionals;
  if (!name) throw new CliError("faas ip needs a NAME");
  console.log((await (await call(api, `/api/ip/${encodeURIComponent(name)}`)).json() as { ip: string }).ip);
}

/** A function as `GET /api/list` and `PATCH /api/functions/NAME` show it (the fields list and scale print). */
interface Entry {
  ip: string;
  status: string;
  memory_bytes: number;
  cpus: number;
  pids: number;
  timeout_ms: number;
  rootfs: string;
  min_ready: number;
  max_ready: number;
  ready: number;
  settings: Record<string, unknown>;
  digest: string | null;
  /** In a cluster: which hosts serve which image. */
  hosts?: Array<{ host: string; digest: string }>;
}

async function cmdList(api: Target, args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { json: { type: "boolean" } } });
  const data = await (await call(api, "/api/list")).json() as Record<string, Entry>;
  if (values.json) return console.log(JSON.stringify(data, null, 2));
  // A cluster's faasd says which hosts serve each function: HOSTS lists them, `*` marking a host still on another image.
  const cluster = Object.values(data).some((f) => f.hosts);
  const hosts = (f: Entry) => f.hosts?.map((h) => `${h.host}${h.digest === f.digest ? "" : "*"}`).join(",") || "-";
  const rows = [
    ["IMAGE", "IP", "STATUS", "READY", ...(cluster ? ["HOSTS"] : [])],
    ...Object.entries(data).map((
      [name, f],
    ) => [name, f.ip, f.status, `${f.ready}/${f.min_ready}-${f.max_ready}`, ...(cluster ? [hosts(f)] : [])]),
  ];
  const last = rows[0]!.length - 1;
  const width = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)) + 2);
  for (const r of rows) console.log(r.map((cell, i) => i === last ? cell : cell.padEnd(width[i]!)).join(""));
}

/**
 * `hello: memory 256MiB, cpu 0.5, pids 256 (default), …, max_ready 8 (default)`: what each request's container gets
 * (a limit of 0 is none) and how many ready containers faasd keeps for the function.
 */
function limitsLine(name: string, f: Entry): string {
  const shown: [string, string][] = [
    ["memory", f.memory_bytes ? formatSize(f.memory_bytes) : "unlimited"],
    ["cpu", f.cpus ? String(f.cpus) : "unlimited"],
    ["pids", f.pids ? String(f.pids) : "unlimited"],
    ["timeout", f.timeout_ms ? formatDuration(f.timeout_ms) : "unlimited"],
    ["rootfs", f.rootfs],
    ["min_ready", String(f.min_ready)],
    ["max_ready", String(f.max_ready)],
  ];
  const parts = shown.map(([key, value]) => `${key} ${value}${key in f.settings ? "" : " (default)"}`);
  return `${name}: ${parts.join(", ")}`;
}

async function cmdScale(api: Target, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: { ...LIMIT_OPTIONS, ...LIST_OPTIONS, default: { type: "string", multiple: true } },
    allowPositionals: true,
  });
  const name = positionals[0];
  if (!name) throw new CliError("faas scale needs a NAME; see faas scale --help");
  if (positionals.length > 1) throw new CliError(`unexpected argument ${positionals[1]}`);
  const patch: Record<string, string | string[] | null> = { ...givenLimits(values), ...givenLists(values) };
  for (const given of values.default ?? []) {
    const key = settingKey(given);
    if (!SETTING_KEYS.includes(key)) {
      throw new CliError(`unknown --default ${JSON.stringify(given)}: one of ${SETTING_KEYS.join(", ")}`);
    }
    if (key in patch) throw new CliError(`--${key.replaceAll("_", "-")} and --default ${given} contradict each other`);
    patch[key] = null;
  }
  if (Object.keys(patch).length === 0) {
    const options = [...Object.keys(LIMIT_OPTIONS), ...Object.keys(LIST_OPTIONS)].map((o) => `--${o}`).join(", ");
    throw new CliError(`faas scale needs at least one of ${options}, --default KEY`);
  }
  const res = await call(api, `/api/functions/${encodeURIComponent(name)}`, {
    method: "PATCH",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(patch),
  });
  console.log(limitsLine(name, await res.json() as Entry));
}

async function cmdDelete(api: Target, args: string[]): Promise<void> {
  const [name] = parseArgs({ args, allowPositionals: true }).positionals;
  if (!name) throw new CliError("faas delete needs a NAME");
  await call(api, `/api/functions/${encodeURIComponent(name)}`, { method: "DELETE" });
  console.log(`deleted ${name}`);
}

async function cmdLogs(api: Target, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: { follow: { type: "boolean", short: "f" } },
    allowPositionals: true,
  });
  const name = positionals[0];
  if (!name) throw new CliError("faas logs needs a NAME");
  const res = await call(api, `/api/logs/${encodeURIComponent(name)}${values.follow ? "?follow=1" : ""}`);
  await res.body?.pipeTo(Deno.stdout.writable, { preventClose: true });
}

async function cmdStats(api: Target, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: { json: { type: "boolean" } }, allowPositionals: true });
  const name = positionals[0];
  if (!name) throw new CliError("faas stats needs a NAME");
  if (positionals.length > 1) throw new CliError(`unexpected argument ${positionals[1]}`);
  const s = await (await call(api, `/api/stats/${encodeURIComponent(name)}`)).json() as FunctionSnapshot;
  if (values.json) return console.log(JSON.stringify(s, null, 2));
  const ms = (n: number | null) => n === null ? "-" : `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`;
  const bytes = (n: number | null) => n === null ? "-" : formatBytes(n);
  const outcomes = Object.entries(s.outcomes).sort(([, a], [, b]) => b - a).map(([o, n]) => `${o} ${n}`);
  const rows = [
    ["requests", String(s.requests), outcomes.join(", ")],
    ["latency", `p50 ${ms(s.latency.p50Ms)}`, `p99 ${ms(s.latency.p99Ms)}`],
    ["cpu/request", `mean ${ms(s.cpuPerRequestMs.mean)}`, `p99 ${ms(s.cpuPerRequestMs.p99)}`],
    ["peak memory", `mean ${bytes(s.peakMemoryBytes.mean)}`, `max ${bytes(s.peakMemoryBytes.max)}`],
    ["oom kills", String(s.oomKills), ""],
  ];
  const width = [0, 1].map((i) => Math.max(...rows.map((r) => r[i]!.length)) + 2);
  for (const r of rows) console.log(`${r[0]!.padEnd(width[0]!)}${r[1]!.padEnd(width[1]!)}${r[2]}`.trimEnd());
}

/** `faas init` needs no faasd: it only writes files. */
async function cmdInit(_api: Target, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: { dir: { type: "string" } }, allowPositionals: true });
  const [lang, name, extra] = positionals;
  if (!lang || !name) throw new CliError("faas init needs LANG and NAME; see faas init --help");
  if (extra !== undefined) throw new CliError(`unexpected argument ${extra}`);
  let dir: string;
  try {
    // `deno task` runs in the project's folder; INIT_CWD is where the user typed the command.
    const cwd = Deno.env.get("INIT_CWD") ?? Deno.cwd();
    dir = (await initTemplate(lang, name, { dir: values.dir ?? `${cwd}/${name}` })).dir;
  } catch (e) {
    if (e instanceof TypeError || e instanceof Deno.errors.AlreadyExists) throw new CliError(e.message);
    throw e;
  }
  console.log(
    `wrote ${dir}/: build it with (cd ${dir} && ./build.sh), then deploy it with faas new ` +
      `localhost/${name}:latest --name ${name}${lang === "http" ? " --http-port 8080" : ""}`,
  );
}

async function cmdSecret(api: Target, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    options: { "from-file": { type: "string" } },
    allowPositionals: true,
  });
  const [verb, name, extra] = positionals;
  if (extra !== undefined) throw new CliError(`unexpected argument ${extra}`);
  if (verb === "list") {
    const secrets = await (await call(api, "/api/secrets")).json() as { name: string; created_at: string }[];
    const width = Math.max(4, ...secrets.map((s) => s.name.length)) + 2;
    console.log(`${"NAME".padEnd(width)}CREATED`);
    for (const s of secrets) console.log(`${s.name.padEnd(width)}${s.created_at}`);
    return;
  }
  if (!name) throw new CliError(`faas secret ${verb ?? ""} needs a NAME; see faas secret --help`.replace("  ", " "));
  const path = `/api/secrets/${encodeURIComponent(name)}`;
  if (verb === "create") {
    let value: Uint8Array<ArrayBuffer>;
    try {
      value = values["from-file"]
        ? await Deno.readFile(values["from-file"])
        : new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer());
    } catch (e) {
      throw new CliError(`cannot read the secret's value: ${(e as Error).message}`);
    }
    await call(api, path, { method: "POST", body: value });
    return console.log(`created secret ${name}`);
  }
  if (verb === "delete") {
    await call(api, path, { method: "DELETE" });
    return console.log(`deleted secret ${name}`);
  }
  throw new CliError(`unknown secret command ${JSON.stringify(verb ?? "")}: create, list or delete`);
}

const COMMANDS: Record<string, (api: Target, args: string[]) => Promise<void>> = {
  init: cmdInit,
  secret: cmdSecret,
  new: cmdNew,
  scale: cmdScale,
  ip: cmdIp,
  list: cmdList,
  delete: cmdDelete,
  logs: cmdLogs,
  stats: cmdStats,
};

/** Runs the CLI; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  try {
    const { values, positionals, tokens } = parseArgs({
      args: argv,
      options: { url: { type: "string" }, token: { type: "string" }, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: false,
      tokens: true,
    });
    const first = tokens.find((t) => t.kind === "positional");
    const command = positionals[0];
    if (!command) {
      if (values.help) return console.log(USAGE), 0;
      throw new CliError("no command given; see faas --help");
    }
    const rest = argv.slice(first!.index + 1);
    if (rest.includes("--help") || rest.includes("-h")) {
      console.log(COMMAND_HELP[command] ?? USAGE);
      return 0;
    }
    const run = COMMANDS[command];
    if (!run) throw new CliError(`unknown command ${JSON.stringify(command)}; see faas --help`);
    await run(target(values.url as string | undefined, values.token as string | undefined), rest);
    return 0;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    console.error(`faas: ${message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
