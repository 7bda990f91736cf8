import { assert, assertEquals, assertRejects, assertThrows } from "../tests/assert.ts";
import { MAX_SECRET_BYTES, SecretConflictError, SecretNotFoundError, Secrets } from "./secrets.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

Deno.test("Secrets.create() stores a value root can reach only through a 0700 directory, readable in containers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const secrets = Secrets.open(dir);
    await secrets.create("db-password", bytes("s3cret"));
    assertEquals(await Deno.readTextFile(secrets.path("db-password")), "s3cret");
    assertEquals((await Deno.stat(secrets.dir)).mode! & 0o777, 0o700);
    assertEquals((await Deno.stat(secrets.path("db-password"))).mode! & 0o777, 0o444);
    assert(secrets.has("db-password"));
    assertEquals(secrets.list().map((s) => s.name), ["db-password"]);
    assert(!Number.isNaN(Date.parse(secrets.list()[0]!.createdAt)));
    assertEquals([...Deno.readDirSync(secrets.dir)].length, 1, "no temporary file left");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Secrets.create() refuses a bad name, an empty or oversized value, and an existing name", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const secrets = Secrets.open(dir);
    for (const name of ["../x", ".hidden", "a/b", ""]) {
      await assertRejects(() => secrets.create(name, bytes("x")), TypeError, "invalid secret name");
    }
    await assertRejects(() => secrets.create("empty", new Uint8Array()), TypeError, "empty");
    await assertRejects(() => secrets.create("big", new Uint8Array(MAX_SECRET_BYTES + 1)), TypeError, "over the limit");
    await secrets.create("db", bytes("one"));
    await assertRejects(() => secrets.create("db", bytes("two")), SecretConflictError, "exists already");
    assertEquals(await Deno.readTextFile(secrets.path("db")), "one", "the first value is kept");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Secrets.delete() refuses a secret in use, naming the functions, and an unknown one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const secrets = Secrets.open(dir);
    await secrets.create("db", bytes("x"));
    await assertRejects(() => secrets.delete("db", ["api", "worker"]), SecretConflictError, "used by api, worker");
    assert(secrets.has("db"));
    await secrets.delete("db", []);
    assert(!secrets.has("db"));
    await assertRejects(() => secrets.delete("db", []), SecretNotFoundError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Secrets.assertExist() names the first missing secret; open() removes half-written files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const secrets = Secrets.open(dir);
    await secrets.create("a", bytes("x"));
    secrets.assertExist(["a"]);
    assertThrows(() => secrets.assertExist(["a", "b"]), SecretNotFoundError, 'secret "b" does not exist');
    await Deno.writeTextFile(`${secrets.dir}/.a.partial`, "half");
    Secrets.open(dir);
    assertEquals(secrets.list().map((s) => s.name), ["a"]);
    assertEquals([...Deno.readDirSync(secrets.dir)].map((e) => e.name), ["a"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Secrets.hold() keeps a secret a deploy in progress names from being deleted, until released", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const secrets = Secrets.open(dir);
    await secrets.create("db", bytes("x"));
    assertThrows(() => secrets.hold(["db", "nope"]), SecretNotFoundError);
    const first = secrets.hold(["db"]);
    const second = secrets.hold(["db"]);
    await assertRejects(() => secrets.delete("db", []), SecretConflictError, "deploy in progress");
    first();
    first(); // idempotent
    await assertRejects(() => secrets.delete("db", []), SecretConflictError, "deploy in progress");
    second();
    await secrets.delete("db", []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Secrets.share() sends creates and deletes to the replica first; sync() mirrors the cluster's copy", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const secrets = Secrets.open(dir);
    const shared = new Map<string, Uint8Array>();
    secrets.share({
      create: (name, value) => {
        if (shared.has(name)) return Promise.reject(new SecretConflictError(`${name} exists`));
        shared.set(name, value);
        return Promise.resolve();
      },
      delete: (name) => (shared.delete(name), Promise.resolve()),
    });
    await secrets.create("a", new TextEncoder().encode("one"));
    assertEquals(new TextDecoder().decode(shared.get("a")), "one");
    // Created on another host: refused here although this host has no file of it.
    shared.set("b", new TextEncoder().encode("two"));
    await assertRejects(() => secrets.create("b", new TextEncoder().encode("x")), SecretConflictError);
    assertEquals(secrets.has("b"), false);
    // sync() writes what the cluster has, replaces what changed, removes what is gone.
    shared.set("a", new TextEncoder().encode("changed"));
    await secrets.sync(shared);
    assertEquals(await Deno.readTextFile(secrets.path("b")), "two");
    assertEquals(await Deno.readTextFile(secrets.path("a")), "changed");
    assertEquals((await Deno.stat(secrets.path("a"))).mode! & 0o777, 0o444);
    await secrets.delete("a", []);
    assertEquals(shared.has("a"), false);
    assertEquals(secrets.has("a"), false);
    shared.delete("b");
    await secrets.sync(shared);
    assertEquals(secrets.list(), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
