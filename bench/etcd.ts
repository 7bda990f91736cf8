/**
 * faasd's etcd client (`lib/cluster/etcd.ts`: generated with protoc-gen-es, Connect's gRPC transport over
 * `node:http2`) against the npm package `etcd3` (`@grpc/grpc-js`), both under Deno against one private etcd: sequential
 * puts and gets, interleaved in rounds (each round runs both clients, in alternating order) so that drift of the
 * machine hits both alike. Every get is checked to return what was put.
 *
 *     deno run -A bench/etcd.ts [--ops 1000] [--rounds 10]
 *
 * Prints per-call p50/p99 and totals with the ratios faasd / etcd3 (below 1: faasd's client is faster), writes
 * bench/out/etcd.json. Asserts nothing about time.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Etcd } from "../lib/cluster/etcd.ts";
import { startEtcd } from "../tests/harness/etcd.ts";
import { percentile } from "./common.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { ops: { type: "string", default: "1000" }, rounds: { type: "string", default: "10" } },
});
const ops = Number(values.ops);
const rounds = Number(values.rounds);
const perRound = Math.ceil(ops / rounds);
const WARMUP = 50;

/**
 * The slice of etcd3's API the bench uses, typed here instead of imported: etcd3 depends on protobufjs, whose
 * dependency on `@types/node` would replace Deno's Node types in a `deno check` of the whole project (`deno task check`
 * then fails in `tests/assert.ts`). A specifier held in a variable keeps the import out of the type graph.
 */
interface Etcd3Client {
  put(key: string): { value(value: string): { exec(): Promise<unknown> } };
  get(key: string): { string(): Promise<string | null> };
  close(): void;
}
const ETCD3 = "etcd3";
const { Etcd3 } = await import(ETCD3) as { Etcd3: new (options: { hosts: string }) => Etcd3Client };

/** The two calls timed, the same for both clients. */
interface Subject {
  name: string;
  put(key: string, value: string): Promise<unknown>;
  get(key: string): Promise<string | null>;
}

await using etcd = await startEtcd();
using ours = new Etcd({ endpoints: [etcd.endpoint] });
const theirs = new Etcd3({ hosts: etcd.endpoint });
const subjects: Subject[] = [
  {
    name: "faasd",
    put: (k, v) => ours.put(k, v),
    get: async (k) => (await ours.get(k))?.value ?? null,
  },
  {
    name: "etcd3",
    put: (k, v) => theirs.put(k).value(v).exec(),
    get: (k) => theirs.get(k).string(),
  },
];

const samples = new Map(subjects.map((s) => [s.name, { put: [] as number[], get: [] as number[] }]));

async function runBatch(subject: Subject, round: number, count: number, record: boolean): Promise<void> {
  const keys = Array.from({ length: count }, (_, i) => `bench/${subject.name}/${round}/${i}`);
  for (const [i, key] of keys.entries()) {
    const start = performance.now();
    await subject.put(key, `value ${i}`);
    if (record) samples.get(subject.name)!.put.push(performance.now() - start);
  }
  for (const [i, key] of keys.entries()) {
    const start = performance.now();
    const value = await subject.get(key);
    if (record) samples.get(subject.name)!.get.push(performance.now() - start);
    if (value !== `value ${i}`) throw new Error(`${subject.name}: get ${key} returned ${JSON.stringify(value)}`);
  }
}

try {
  for (const subject of subjects) await runBatch(subject, -1, WARMUP, false);
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? subjects : [...subjects].reverse();
    for (const subject of order) await runBatch(subject, round, perRound, true);
  }
} finally {
  theirs.close();
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const summary = Object.fromEntries(
  [...samples].map(([name, s]) => [name, {
    n: s.put.length,
    put: { p50: percentile(s.put, 50), p99: percentile(s.put, 99), totalMs: sum(s.put) },
    get: { p50: percentile(s.get, 50), p99: percentile(s.get, 99), totalMs: sum(s.get) },
  }]),
);
const ratios = {
  putP50: summary.faasd.put.p50 / summary.etcd3.put.p50,
  putTotal: summary.faasd.put.totalMs / summary.etcd3.put.totalMs,
  getP50: summary.faasd.get.p50 / summary.etcd3.get.p50,
  getTotal: summary.faasd.get.totalMs / summary.etcd3.get.totalMs,
};

console.log(`etcd: ${summary.faasd.n} sequential puts then gets per client, ${rounds} interleaved rounds`);
for (const [name, s] of Object.entries(summary)) {
  for (const op of ["put", "get"] as const) {
    const v = s[op];
    console.log(
      `  ${name.padEnd(5)} ${op}  p50 ${v.p50.toFixed(3).padStart(7)} ms  p99 ${
        v.p99.toFixed(3).padStart(7)
      } ms  total ${v.totalMs.toFixed(0).padStart(6)} ms  (${(s.n / v.totalMs * 1000).toFixed(0)}/s)`,
    );
  }
}
console.log(
  `  faasd / etcd3: put p50 ${ratios.putP50.toFixed(2)}, total ${ratios.putTotal.toFixed(2)}; ` +
    `get p50 ${ratios.getP50.toFixed(2)}, total ${ratios.getTotal.toFixed(2)}`,
);
await Deno.mkdir(new URL("./out", import.meta.url), { recursive: true });
await Deno.writeTextFile(new URL("./out/etcd.json", import.meta.url), JSON.stringify({ summary, ratios }, null, 2));
