/**
 * Waiting in tests and benches: for a deadline on a promise, and for a local server to accept connections.
 *
 * @module
 */

/**
 * `promise`, or a rejection naming `what` once `ms` have passed: a broken relay or server fails the test instead of
 * hanging it.
 */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Resolves once something accepts TCP connections on 127.0.0.1:`port` (each probe is closed at once).
 *
 * @throws the last connection error after about 5 s of trying.
 */
export async function untilListening(port: number): Promise<void> {
  for (let i = 0;; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch (e) {
      if (i > 500) throw e;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/** Polls `check` every 50 ms for up to `ms`; returns whether it became true. */
export async function waitUntil(check: () => boolean | Promise<boolean>, ms = 20_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return await check();
}
