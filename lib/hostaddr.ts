/**
 * Function addresses on the host. An address the host does not have yet is added as a /32 to the loopback
 * interface (this kernel has no dummy interfaces), labelled `lo:faasd` so that faasd removes only what it added —
 * the kernel, not a file, remembers which addresses are ours.
 *
 * @module
 */

/** The interface label marking addresses faasd added. */
export const LABEL = "lo:faasd";

/** Raised when the `ip` command fails. */
export class HostAddressError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "HostAddressError";
  }
}

async function ip(args: string[]): Promise<string> {
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    throw new HostAddressError(`cannot run ip ${args.join(" ")}: ${(e as Error).message}`, { cause: e });
  }
  const err = new TextDecoder().decode(output.stderr).trim();
  if (!output.success) throw new HostAddressError(`ip ${args.join(" ")}: ${err || `exit ${output.code}`}`);
  return new TextDecoder().decode(output.stdout);
}

/** Whether the host already accepts traffic for `address` locally (an assigned address or a local route). */
export async function isLocal(address: string): Promise<boolean> {
  try {
    return (await ip(["-o", "-4", "route", "get", address])).startsWith("local ");
  } catch {
    return false; // "Network is unreachable": no route at all, so certainly not local
  }
}

/** The addresses faasd added to loopback (carrying its label). */
export async function ownAddresses(): Promise<string[]> {
  const out = await ip(["-o", "-4", "addr", "show", "dev", "lo", "label", LABEL]);
  return [...out.matchAll(/\binet (\d+\.\d+\.\d+\.\d+)\/32\b/g)].map((m) => m[1]!);
}

/**
 * Makes `address` local, adding it to loopback when needed.
 *
 * @returns whether it was added.
 * @throws {HostAddressError} when `ip addr add` fails.
 */
export async function ensureAddress(address: string): Promise<boolean> {
  if (await isLocal(address)) return false;
  try {
    await ip(["addr", "add", `${address}/32`, "dev", "lo", "label", LABEL]);
  } catch (e) {
    // Someone added it meanwhile (in a cluster, the converger and a deploy may both ensure a new function's address).
    if (await isLocal(address)) return false;
    throw e;
  }
  return true;
}

/**
 * Removes `address` from loopback if faasd added it; an address faasd did not add is left alone.
 *
 * @throws {HostAddressError} when `ip addr del` fails.
 */
export async function releaseAddress(address: string): Promise<void> {
  if ((await ownAddresses()).includes(address)) await ip(["addr", "del", `${address}/32`, "dev", "lo"]);
}
