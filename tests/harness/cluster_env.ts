/**
 * What `tools/cluster.sh` wrote about a running cluster, read from its dir: the network prefix, the router's URLs and
 * the hosts' control APIs. Tests read these instead of assuming addresses: the cluster's network is 203.0.113.0/24 by
 * default, or 192.0.2.0/24 with `FAASD_CLUSTER_NET=192.0.2` on machines whose own uplink is not there.
 *
 * @module
 */

/** One running host, from the `hosts` file. */
export interface ClusterHost {
  /** `hostI`. */
  name: string;
  /** I. */
  index: number;
  /** Its control API, e.g. `http://203.0.113.11:8080`. */
  api: string;
  /** Its address on the cluster's network: the router's next hop for its function IPs. */
  ip: string;
  /** Its network namespace, `faasd-hostI`. */
  netns: string;
}

/** A cluster as `tools/cluster.sh` describes it. */
export interface ClusterEnv {
  /** The first three octets of the cluster's /24, e.g. `203.0.113`. */
  net: string;
  routerIp: string;
  routerNetns: string;
  /** etcd's client URL. */
  etcd: string;
  /** The registry's base URL. */
  registry: string;
  /** The function IP pool, `198.51.100.0/24`. */
  functionPool: string;
  /** The hosts that run (not those killed), by index. */
  hosts: ClusterHost[];
}

/**
 * Reads `<dir>/env` and `<dir>/hosts`.
 *
 * @throws {Deno.errors.NotFound} when the cluster was not brought up in `dir`.
 * @throws {Error} when a file lacks what cluster.sh writes.
 */
export async function readClusterEnv(dir: string): Promise<ClusterEnv> {
  const vars = new Map<string, string>();
  for (const line of (await Deno.readTextFile(`${dir}/env`)).split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) vars.set(line.slice(0, eq), line.slice(eq + 1));
  }
  const get = (name: string) => {
    const value = vars.get(name);
    if (value === undefined) throw new Error(`${dir}/env has no ${name}`);
    return value;
  };
  const hosts = (await Deno.readTextFile(`${dir}/hosts`)).split("\n").filter(Boolean).map((line) => {
    const match = /^host(\d+) (http:\/\/([\d.]+):\d+)$/.exec(line);
    if (!match) throw new Error(`unexpected line in ${dir}/hosts: ${line}`);
    const index = Number(match[1]);
    return { name: `host${index}`, index, api: match[2]!, ip: match[3]!, netns: `faasd-host${index}` };
  });
  return {
    net: get("FAASD_CLUSTER_NET"),
    routerIp: get("FAASD_CLUSTER_ROUTER_IP"),
    routerNetns: get("FAASD_CLUSTER_ROUTER_NS"),
    etcd: get("FAASD_CLUSTER_ETCD"),
    registry: get("FAASD_CLUSTER_REGISTRY"),
    functionPool: get("FAASD_CLUSTER_FUNCTION_POOL"),
    hosts,
  };
}
