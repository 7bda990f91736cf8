/**
 * A faasd cluster made by `tools/cluster.sh` in a temp dir, for tests and benches: the hosts' control APIs, the
 * router's next hops for an address, and the script's commands.
 *
 * @module
 */

import { readClusterEnv } from "./cluster_env.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const SCRIPT = `${ROOT}tools/cluster.sh`;
const ROUTER = "faasd-router";

export async function run(cmd: string[], env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(cmd[0]!, { args: cmd.slice(1), env, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`${cmd.join(" ")} failed:\n${text}\n${new TextDecoder().decode(out.stderr)}`);
  return text;
}

/** A cluster made by tools/cluster.sh in a temp dir. */
export class Cluster implements AsyncDisposable {
  /** The first three octets of the cluster's network (tools/cluster.sh picks it; see cluster_env.ts). */
  net = "";

  constructor(readonly dir: string) {}

  static async up(hosts: number): Promise<Cluster> {
    const cluster = new Cluster(await Deno.makeTempDir({ prefix: "faasd-cluster-" }));
    try {
      await cluster.sh("up", String(hosts));
      cluster.net = (await readClusterEnv(cluster.dir)).net;
    } catch (e) {
      await cluster[Symbol.asyncDispose]();
      throw e;
    }
    return cluster;
  }

  /** Host I's address on the cluster network: the router's next hop for what it announces. */
  hop(i: number): string {
    return `${this.net}.${10 + i}`;
  }

  sh(...args: string[]): Promise<string> {
    return run([SCRIPT, ...args], { FAASD_CLUSTER_DIR: this.dir });
  }

  /** Host I's control API. */
  api(i: number): string {
    return `http://${this.hop(i)}:8080`;
  }

  async request(i: number, method: string, path: string, init: RequestInit = {}): Promise<Response> {
    return await fetch(`${this.api(i)}${path}`, { ...init, method });
  }

  async list(i: number): Promise<Record<string, { ip: string; digest: string; hosts: Placement[] }>> {
    const res = await this.request(i, "GET", "/api/list");
    if (res.status !== 200) throw new Error(`GET /api/list on host ${i}: ${res.status} ${await res.text()}`);
    return await res.json();
  }

  async deploy(i: number, name: string, tarball: string): Promise<Response> {
    const body = await Deno.readFile(tarball);
    return await this.request(i, "POST", "/api/new", { headers: { "x-image-name": name }, body });
  }

  async requests(i: number, name: string): Promise<number> {
    const res = await this.request(i, "GET", `/api/stats/${name}`);
    return res.status === 200 ? (await res.json()).requests : 0;
  }

  /** The next hops the router's kernel has for `ip`. */
  async nextHops(ip: string): Promise<string[]> {
    const text = await run(["ip", "-n", ROUTER, "route", "show", ip]);
    return [...text.matchAll(/via (\S+)/g)].map((m) => m[1]!).sort();
  }

  /** Kills one daemon of host `i` with SIGKILL (its pid file is in the cluster dir) and waits until it is gone. */
  async kill(i: number, daemon: "faasd" | "containerd"): Promise<void> {
    const pid = Number(await Deno.readTextFile(`${this.dir}/host${i}/${daemon}.pid`));
    Deno.kill(pid, "SIGKILL");
    while (await Deno.stat(`/proc/${pid}`).then(() => true, () => false)) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Whether host `i` answers `http://ip/` itself (from inside its namespace, not through the router). */
  async answersOn(i: number, ip: string): Promise<boolean> {
    const out = await new Deno.Command("ip", {
      args: ["netns", "exec", `faasd-host${i}`, "curl", "-sf", "-m", "10", `http://${ip}/`],
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.sh("down").catch((e) => console.error(e));
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

export interface Placement {
  host: string;
  digest: string;
}
