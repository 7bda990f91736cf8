/**
 * Assertions in the shape of `@std/assert` (which lives on JSR, out of reach here), built on `node:assert`.
 *
 * @module
 */

import nodeAssert from "node:assert/strict";

/** Asserts `value` is truthy. */
export function assert(value: unknown, message?: string): asserts value {
  nodeAssert.ok(value, message);
}

/** Asserts deep equality. */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, message);
}

/** Asserts `text` contains `part`. */
export function assertStringIncludes(text: string, part: string, message?: string): void {
  nodeAssert.ok(text.includes(part), message ?? `expected ${JSON.stringify(text)} to include ${JSON.stringify(part)}`);
}

/** Asserts `text` matches `re`. */
export function assertMatch(text: string, re: RegExp, message?: string): void {
  nodeAssert.match(text, re, message);
}

// deno-lint-ignore no-explicit-any
type ErrorClass = abstract new (...args: any[]) => Error;

function checkError(e: unknown, cls?: ErrorClass, includes?: string): Error {
  if (cls && !(e instanceof cls)) {
    throw new nodeAssert.AssertionError({ message: `expected ${cls.name}, got ${(e as Error)?.name}: ${e}` });
  }
  if (includes !== undefined && !(e as Error).message.includes(includes)) {
    throw new nodeAssert.AssertionError({
      message: `expected error message to include ${JSON.stringify(includes)}, got ${
        JSON.stringify((e as Error).message)
      }`,
    });
  }
  return e as Error;
}

/** Asserts `fn` throws (an instance of `cls`, with `includes` in its message); returns the error. */
export function assertThrows(fn: () => unknown, cls?: ErrorClass, includes?: string): Error {
  try {
    fn();
  } catch (e) {
    return checkError(e, cls, includes);
  }
  throw new nodeAssert.AssertionError({ message: "expected the function to throw" });
}

/** Asserts `fn` rejects (an instance of `cls`, with `includes` in its message); returns the error. */
export async function assertRejects(fn: () => Promise<unknown>, cls?: ErrorClass, includes?: string): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return checkError(e, cls, includes);
  }
  throw new nodeAssert.AssertionError({ message: "expected the promise to reject" });
}
