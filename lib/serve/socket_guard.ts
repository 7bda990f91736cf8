/**
 * The socket guard: a handed-over client socket reaches its client and nothing else.
 *
 * The socket a container receives was accepted in the host's network namespace, so its network is the host's: a
 * handler that disconnects it (`connect(fd, AF_UNSPEC)`) could connect it anywhere the host can, the control API
 * included. faasd marks every accepted socket ({@linkcode GUARD_MARK}, `SO_MARK`, which only CAP_NET_ADMIN in the
 * host's network namespace can change) and installs one nftables rule that drops every TCP packet opening a
 * connection (SYN without ACK) that carries the mark. The client's established connection never sends such a
 * packet; a reconnect, or `sendto` with `MSG_FASTOPEN`, always does. (`listen` on a disconnected accepted socket
 * fails with EINVAL on Linux.)
 *
 * Each faasd (each containerd namespace) owns one table, `inet faasd-<namespace>`, installed at start, replaced
 * whole if a crashed run left it, checked every few seconds (and put back if someone removed it), and deleted at a
 * stop that left no container running.
 *
 * @module
 */

import { errorText, log } from "../log.ts";

/** The mark on every accepted client socket ("faas" in ASCII): chosen to stay clear of common policy-routing marks. */
export const GUARD_MARK = 0x66616173;

/** Raised when the guard cannot be installed: faasd does not serve unguarded unless told to. */
export class SocketGuardError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SocketGuardError";
  }
}

/** The nftables table name of the faasd serving containerd namespace `namespace`. */
export function guardTable(namespace: string): string {
  return `faasd-${namespace.replace(/[^A-Za-z0-9_-]/g, "_")}`;
}

/** The nftables script that (re)creates the guard table atomically. */
export function guardRuleset(table: string, mark = GUARD_MARK): string {
  // The first line makes the delete safe when the table is absent; nft applies the whole script as one transaction.
  // Priority raw (-300): before conntrack and before any mangle chain could rewrite the mark.
  return `table inet ${table}
delete table inet ${table}
table inet ${table} {
  chain output {
    type filter hook output priority -300; policy accept;
    meta mark 0x${
    mark.toString(16)
  } tcp flags & (syn | ack) == syn counter drop comment "handed-over sockets open no connection"
  }
}
`;
}

async function nft(script: string): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    const child = new Deno.Command("nft", { args: ["-f", "-"], stdin: "piped", stdout: "piped", stderr: "piped" })
      .spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(script));
    await writer.close();
    out = await child.output();
  } catch (e) {
    throw new SocketGuardError(`cannot run nft (install Debian's nftables): ${(e as Error).message}`, { cause: e });
  }
  if (!out.success) {
    throw new SocketGuardError(`nft refused the rule: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
}

/** The installed guard of one faasd. */
export class SocketGuard implements AsyncDisposable {
  readonly table: string;
  #removed: Promise<void> | null = null;

  private constructor(table: string) {
    this.table = table;
  }

  /**
   * Installs the guard table for `namespace`, replacing one a previous run left.
   *
   * @throws {SocketGuardError} when nft is missing or refuses (no CAP_NET_ADMIN, no nf_tables in the kernel).
   */
  static async install(namespace: string): Promise<SocketGuard> {
    const table = guardTable(namespace);
    await nft(guardRuleset(table));
    return new SocketGuard(table);
  }

  /**
   * Deletes a guard table a previous run left (when the operator has since opted out); never throws, and does nothing
   * when there is none or nft is missing.
   */
  static async removeLeftover(namespace: string): Promise<void> {
    const table = guardTable(namespace);
    await nft(`table inet ${table}\ndelete table inet ${table}\n`).catch(() => {});
  }

  /**
   * Checks that the table is still there and installs it again if not (an operator's `nft flush ruleset`, or a
   * reload of nftables.service, removes it). Never throws: a failure is logged, and the next check tries again.
   */
  async ensure(log: (message: string) => void): Promise<void> {
    const out = await new Deno.Command("nft", {
      args: ["list", "table", "inet", this.table],
      stdout: "null",
      stderr: "null",
    }).output().catch(() => null);
    if (out?.success) return;
    log(`socket guard table ${this.table} was removed; installing it again`);
    await nft(guardRuleset(this.table)).catch((e) => log(`socket guard: ${(e as Error).message}`));
  }

  /** How many connection attempts of handed-over sockets the rule dropped so far (the rule's counter). */
  async dropped(): Promise<number> {
    const out = await new Deno.Command("nft", { args: ["list", "table", "inet", this.table], stdout: "piped" })
      .output();
    const m = /counter packets (\d+)/.exec(new TextDecoder().decode(out.stdout));
    return m ? Number(m[1]) : 0;
  }

  /** Deletes the table. Idempotent; a failure is logged (the next start replaces the table anyway). */
  remove(): Promise<void> {
    return this.#removed ??= nft(`table inet ${this.table}\ndelete table inet ${this.table}\n`).catch((e) =>
      log.error("removing the socket guard failed", { error: errorText(e) })
    );
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.remove();
  }
}
