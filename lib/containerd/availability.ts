/**
 * Whether containerd answers, and waiting until it does again: for start-up, and for requests in flight while
 * containerd restarts.
 *
 * @module
 */

import type { Containerd } from "./client.ts";

/** Whether containerd answers a `Version` call now. */
export async function answers(containerd: Containerd): Promise<boolean> {
  try {
    await containerd.version();
    return true;
  } catch {
    return false;
  }
}

/** Waits (polling every 250 ms) until containerd answers or `deadline` (a `Date.now()` value) passes. */
export async function untilContainerdAnswers(containerd: Containerd, deadline: number): Promise<void> {
  while (Date.now() < deadline && !(await answers(containerd))) await new Promise((r) => setTimeout(r, 250));
}
