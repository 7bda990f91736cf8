/**
 * {@linkcode drained}: waiting for back-pressure to lift on a node:stream or streamx writable (zlib, tar-stream).
 *
 * @module
 */

/** The part of a node:stream or streamx writable that back-pressure needs. */
export interface DrainableStream {
  on(event: "drain" | "close", listener: () => void): unknown;
  off(event: "drain" | "close", listener: () => void): unknown;
  readonly destroyed?: boolean;
  /** streamx: set while a destroy is under way. */
  readonly destroying?: boolean;
}

/**
 * Resolves once `stream` wants more input, or is gone: a destroyed stream emits no `drain`, and its `close` may be
 * over already, so that resolves at once.
 */
export function drained(stream: DrainableStream): Promise<void> {
  if (stream.destroyed || stream.destroying) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      stream.off("close", done);
      resolve();
    };
    stream.on("drain", done);
    stream.on("close", done);
  });
}
