import assert from "node:assert/strict";
import { check, ErrnoError, errnoName } from "./errno.ts";
import { libc } from "./libc.ts";

Deno.test("errnoName() names Linux errno values and falls back to E<n>", () => {
  assert.equal(errnoName(11), "EAGAIN");
  assert.equal(errnoName(99), "EADDRNOTAVAIL");
  assert.equal(errnoName(4242), "E4242");
});

Deno.test("ErrnoError carries errno, code, syscall and strerror's text", () => {
  const cause = new Error("inner");
  const error = new ErrnoError(98, "bind", "127.0.0.1:80", { cause });
  assert.ok(error instanceof Error);
  assert.equal(error.name, "ErrnoError");
  assert.equal(error.errno, 98);
  assert.equal(error.code, "EADDRINUSE");
  assert.equal(error.syscall, "bind");
  assert.equal(error.cause, cause);
  assert.equal(error.message, "bind 127.0.0.1:80: Address already in use (EADDRINUSE)");
});

Deno.test("check() passes results through and throws the errno of a failed call", () => {
  assert.equal(check(3, "socket"), 3);
  assert.throws(() => check(libc().close(-1), "close"), (error) => {
    assert.ok(error instanceof ErrnoError);
    assert.equal(error.code, "EBADF");
    assert.equal(error.syscall, "close");
    return true;
  });
});
