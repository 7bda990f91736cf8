import { assertEquals, assertThrows } from "../tests/assert.ts";
import { IpPool, PoolExhaustedError } from "./ipam.ts";

Deno.test("IpPool.allocate() hands out the lowest free address from host .10", () => {
  const pool = new IpPool("10.0.0.0/24");
  assertEquals(pool.allocate([]), "10.0.0.10");
  assertEquals(pool.allocate(["10.0.0.10", "10.0.0.12"]), "10.0.0.11");
  assertEquals(pool.capacity, 245);
});

Deno.test("IpPool.allocate() throws PoolExhaustedError when the pool is full", () => {
  const pool = new IpPool("127.10.0.0/28");
  const used = ["127.10.0.10", "127.10.0.11", "127.10.0.12", "127.10.0.13", "127.10.0.14"];
  assertEquals(pool.capacity, 5);
  assertThrows(() => pool.allocate(used), PoolExhaustedError, "127.10.0.0/28");
});

Deno.test("IpPool() normalises the network and refuses bad or too small pools", () => {
  assertEquals(new IpPool("10.0.0.77/24").cidr, "10.0.0.0/24");
  assertThrows(() => new IpPool("10.0.0/24"), TypeError);
  assertThrows(() => new IpPool("10.0.0.0/33"), TypeError);
  assertThrows(() => new IpPool("10.0.0.0/29"), RangeError);
});

Deno.test("IpPool.contains() accepts only addresses the pool hands out", () => {
  const pool = new IpPool("10.0.0.0/24");
  assertEquals(pool.contains("10.0.0.10"), true);
  assertEquals(pool.contains("10.0.0.9"), false);
  assertEquals(pool.contains("10.0.0.255"), false);
  assertEquals(pool.contains("nonsense"), false);
});
