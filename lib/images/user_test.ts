import { assertEquals, assertRejects, assertThrows } from "../../tests/assert.ts";
import { ReadOnlyMount } from "../../ffi/mod.ts";
import { ImageImportError } from "./errors.ts";
import { isNumericUser, lookupUser, readFileInRoot, reapRootfsMounts } from "./user.ts";

const PASSWD = [
  "root:x:0:0:root:/root:/bin/sh",
  "# a comment",
  "",
  "app:x:1000:1000::/home/app:/bin/sh",
  "svc:x:1001:50::/:/bin/false",
].join("\n");
const GROUP = ["root:x:0:", "app:x:1000:", "staff:x:50:app", "audio:x:63:app,svc", "video:x:44:svc"].join("\n");
const FILES = { passwd: PASSWD, group: GROUP };

Deno.test("lookupUser() resolves a name to its uid, primary gid and supplementary groups", () => {
  assertEquals(lookupUser("app", FILES), { uid: 1000, gid: 1000, additionalGids: [50, 63] });
  assertEquals(lookupUser("svc", FILES), { uid: 1001, gid: 50, additionalGids: [63, 44] });
});

Deno.test("lookupUser() takes a numeric uid with or without a passwd entry", () => {
  assertEquals(lookupUser("1000", FILES), { uid: 1000, gid: 1000, additionalGids: [50, 63] });
  assertEquals(lookupUser("4242", FILES), { uid: 4242, gid: 0, additionalGids: [] });
  assertEquals(lookupUser("4242", { passwd: null, group: null }), { uid: 4242, gid: 0, additionalGids: [] });
  assertEquals(lookupUser("", { passwd: null, group: null }), { uid: 0, gid: 0, additionalGids: [] });
});

Deno.test("lookupUser() uses a given group, by name or number, and then no supplementary groups", () => {
  assertEquals(lookupUser("app:staff", FILES), { uid: 1000, gid: 50, additionalGids: [] });
  assertEquals(lookupUser("app:7", FILES), { uid: 1000, gid: 7, additionalGids: [] });
  assertEquals(lookupUser("5:video", FILES), { uid: 5, gid: 44, additionalGids: [] });
});

Deno.test("lookupUser() throws ImageImportError for unknown names and malformed users", () => {
  assertThrows(() => lookupUser("ghost", FILES), ImageImportError, `"ghost" is not in the image's /etc/passwd`);
  assertThrows(() => lookupUser("app", { passwd: null, group: null }), ImageImportError, "(it has none)");
  assertThrows(
    () => lookupUser("app:nogroup", FILES),
    ImageImportError,
    `group "nogroup" is not in the image's /etc/group`,
  );
  assertThrows(() => lookupUser("a:b:c", FILES), ImageImportError, "user[:group]");
  assertThrows(() => lookupUser(":50", FILES), ImageImportError, "user[:group]");
  assertThrows(() => lookupUser("99999999999", FILES), ImageImportError, "not a valid id");
});

Deno.test("isNumericUser() tells which users need no lookup", () => {
  assertEquals(["", "0:0", "1000:50"].map(isNumericUser), [true, true, true]);
  assertEquals(["1000", "app", "app:50", "1000:staff"].map(isNumericUser), [false, false, false, false]);
});

Deno.test("readFileInRoot() follows symlinks inside the root, never out to the host", async () => {
  const root = await Deno.makeTempDir();
  const outside = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${root}/etc`);
    await Deno.mkdir(`${root}/data`);
    await Deno.writeTextFile(`${root}/data/passwd`, "inside\n");
    await Deno.writeTextFile(`${outside}/secret`, "host secret\n");
    // Absolute and climbing links resolve against the image's root, as they would in the container.
    await Deno.symlink("/data/passwd", `${root}/etc/passwd`);
    await Deno.symlink("../../../../../../data/passwd", `${root}/etc/climb`);
    await Deno.symlink(`${outside}/secret`, `${root}/etc/host`);
    await Deno.symlink("loop", `${root}/etc/loop`);
    await Deno.symlink("/etc", `${root}/etc2`);
    assertEquals(await readFileInRoot(root, "/etc/passwd"), "inside\n");
    assertEquals(await readFileInRoot(root, "/etc/climb"), "inside\n");
    assertEquals(await readFileInRoot(root, "/etc2/passwd"), "inside\n");
    assertEquals(await readFileInRoot(root, "/etc/host"), null); // the host path does not exist inside the root
    assertEquals(await readFileInRoot(root, "/etc/group"), null);
    assertEquals(await readFileInRoot(root, "/data/passwd/x"), null);
    await assertRejects(() => readFileInRoot(root, "/etc/loop"), ImageImportError, "too many symlinks");
    await assertRejects(() => readFileInRoot(root, "/etc"), ImageImportError, "not a regular file");
    await assertRejects(() => readFileInRoot(root, "/etc/passwd", 3), ImageImportError, "larger than 3 bytes");
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("lookupUser() reads lines as runc does: trimmed, CRLF endings too", () => {
  const files = { passwd: "  app:x:1000:1000::/:/bin/sh\r\n", group: "staff:x:50:root,app\r\n" };
  assertEquals(lookupUser("app", files), { uid: 1000, gid: 1000, additionalGids: [50] });
});

Deno.test("reapRootfsMounts() detaches and removes only the lookup mounts in its directory", async () => {
  const dir = await Deno.makeTempDir();
  const source = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/faasd-rootfs-left`);
    await Deno.mkdir(`${dir}/faasd-rootfs-with space`);
    await Deno.mkdir(`${source}/inner`);
    await Deno.mkdir(`${dir}/other`);
    // As if faasd died during lookups: one mount with another inside it, one whose path mountinfo escapes.
    ReadOnlyMount.open([{ type: "bind", source, options: ["bind"] }], `${dir}/faasd-rootfs-left`);
    ReadOnlyMount.open([{ type: "bind", source, options: ["bind"] }], `${dir}/faasd-rootfs-left/inner`);
    ReadOnlyMount.open([{ type: "bind", source, options: ["bind"] }], `${dir}/faasd-rootfs-with space`);
    using _other = ReadOnlyMount.open([{ type: "bind", source, options: ["rbind"] }], `${dir}/other`);
    // Through a symlink, as a --state-dir may be given.
    await Deno.symlink(dir, `${dir}-link`);
    assertEquals(await reapRootfsMounts(`${dir}-link`), 2);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["other"]);
    assertEquals(mountPoints().includes(`${dir}/other`), true);
    assertEquals(await reapRootfsMounts(dir), 0);
  } finally {
    await Deno.remove(`${dir}-link`).catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.remove(source, { recursive: true });
  }
});

function mountPoints(): string[] {
  return Deno.readTextFileSync("/proc/self/mountinfo").split("\n").map((line) => line.split(" ")[4] ?? "");
}
