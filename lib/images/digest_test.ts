import { assertEquals, assertThrows } from "../../tests/assert.ts";
import { chainIds, isDigest, sha256Digest } from "./digest.ts";
import { normalizeEntryName } from "./archive.ts";
import { ImageImportError } from "./errors.ts";
import { detectCompression } from "./mediatypes.ts";

const A = sha256Digest("a");
const B = sha256Digest("b");

Deno.test("chainIds() starts with the first diff id and hashes each next one onto the previous", () => {
  assertEquals(chainIds([]), []);
  assertEquals(chainIds([A]), [A]);
  assertEquals(chainIds([A, B]), [A, sha256Digest(`${A} ${B}`)]);
  assertThrows(() => chainIds(["sha256:nope"]), TypeError);
});

Deno.test("isDigest() accepts only sha256 digests", () => {
  assertEquals(isDigest(A), true);
  assertEquals(isDigest("sha512:" + "0".repeat(128)), false);
  assertEquals(isDigest(A.toUpperCase()), false);
});

Deno.test("normalizeEntryName() drops ./ and trailing slashes and refuses escapes", () => {
  assertEquals(normalizeEntryName("./blobs/sha256/x"), "blobs/sha256/x");
  assertEquals(normalizeEntryName("blobs//sha256/"), "blobs/sha256");
  assertEquals(normalizeEntryName("./"), "");
  assertThrows(() => normalizeEntryName("/etc/passwd"), ImageImportError, "absolute path");
  assertThrows(() => normalizeEntryName("a/../../b"), ImageImportError, "outside the archive");
});

Deno.test("detectCompression() tells gzip and zstd by their magic bytes", () => {
  assertEquals(detectCompression(new Uint8Array([0x1f, 0x8b, 8])), "gzip");
  assertEquals(detectCompression(new Uint8Array([0x28, 0xb5, 0x2f, 0xfd])), "zstd");
  assertEquals(detectCompression(new Uint8Array([0x68, 0x65])), "none");
  assertEquals(detectCompression(new Uint8Array()), "none");
});
