import { assertEquals, assertThrows } from "../../tests/assert.ts";
import { bearerAuth } from "./auth.ts";

const req = (authorization?: string) =>
  new Request("http://faasd/api/list", authorization === undefined ? {} : { headers: { authorization } });

Deno.test("bearerAuth() accepts exactly the token, as a Bearer credential", () => {
  const check = bearerAuth("s3cret-token-0123456789");
  assertEquals(check(req("Bearer s3cret-token-0123456789")), true);
  assertEquals(check(req("bearer s3cret-token-0123456789")), true);
  assertEquals(check(req()), false);
  assertEquals(check(req("")), false);
  assertEquals(check(req("Bearer s3cret-token-012345678")), false);
  assertEquals(check(req("Bearer s3cret-token-0123456789x")), false);
  assertEquals(check(req("Basic s3cret-token-0123456789")), false);
  assertEquals(check(req("s3cret-token-0123456789")), false);
});

Deno.test("bearerAuth() refuses an empty token", () => {
  assertThrows(() => bearerAuth(""), TypeError);
});
