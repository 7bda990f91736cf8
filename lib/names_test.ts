import { assertEquals, assertThrows } from "../tests/assert.ts";
import { assertValidName, isValidName, nameFromImage } from "./names.ts";

Deno.test("isValidName() accepts DNS labels only", () => {
  for (const ok of ["a", "my-handler", "x1", "a".repeat(63)]) assertEquals(isValidName(ok), true, ok);
  for (const bad of ["", "-a", "a-", "A", "a_b", "a.b", "../x", "a".repeat(64), "a b"]) {
    assertEquals(isValidName(bad), false, bad);
  }
});

Deno.test("assertValidName() throws a TypeError naming the rule", () => {
  assertThrows(() => assertValidName("Bad_Name"), TypeError, "DNS label");
});

Deno.test("nameFromImage() derives the function name from an image reference", () => {
  assertEquals(nameFromImage("my-handler"), "my-handler");
  assertEquals(nameFromImage("docker.io/library/My_Handler:1.0"), "my-handler");
  assertEquals(nameFromImage("localhost:5000/team/api@sha256:abc"), "api");
});
