import { assertEquals, assertMatch } from "../../tests/assert.ts";
import { ImageImportError, TooManyLayersError, withoutHostPaths } from "./errors.ts";

Deno.test("withoutHostPaths() hides the host paths of containerd's and the system's messages", () => {
  const mount = "/var/lib/containerd/tmpmounts/containerd-mount1525487685";
  assertEquals(
    withoutHostPaths(
      `containerd Diff.Apply: mount callback failed on ${mount}: link ${mount}/missing ${mount}/x: ` +
        "no such file or directory",
    ),
    "containerd Diff.Apply: mount callback failed on <path>: link <path> <path>: no such file or directory",
  );
  // Deno quotes the path; faasd's errno errors name the mount point bare.
  assertEquals(
    withoutHostPaths("Permission denied (os error 13): lstat '/run/faasd/mnt/faasd-rootfs-1a2b/etc/my passwd'"),
    "Permission denied (os error 13): lstat '<path>'",
  );
  assertEquals(
    withoutHostPaths("mount overlay on /run/faasd/mnt/faasd-rootfs-1a2b: Invalid argument (EINVAL)"),
    "mount overlay on <path>: Invalid argument (EINVAL)",
  );
  // Go's %q, mount options, a socket address.
  assertEquals(
    withoutHostPaths('failed to mount "/var/lib/containerd/x y": lowerdir=/a/1/fs:/a/2/fs,upperdir=/a/3/fs'),
    'failed to mount "<path>": lowerdir=<path>:<path>,upperdir=<path>',
  );
  assertEquals(withoutHostPaths("dial unix:///run/containerd/containerd.sock"), "dial unix:<path>");
  assertEquals(withoutHostPaths("/var/lib/containerd/x: no space left on device"), "<path>: no space left on device");
});

Deno.test("withoutHostPaths() keeps what is not a path", () => {
  for (
    const text of [
      "failed to extract layer sha256:169eca6e7ad6d532be46e65d69d94e069426a270961821299e1641639af0e127: unexpected EOF",
      "archive/tar: invalid tar header",
      "unsupported media type application/vnd.docker.image.rootfs.diff.tar.gzip",
      "snapshot 12/fs: not found",
    ]
  ) assertEquals(withoutHostPaths(text), text);
});

Deno.test("TooManyLayersError is a 400 telling the count, the limit and what to do", () => {
  const listed = new TooManyLayersError(125, 600);
  assertEquals(listed instanceof ImageImportError, true);
  assertEquals(listed.kind, "invalid");
  assertEquals(listed.maxLayers, 125);
  assertMatch(listed.message, /^image has 600 layers; faasd runs images of at most 125 .*: rebuild it with fewer/);
  assertMatch(new TooManyLayersError(125, null).message, /^image archive holds more than 125 layers; /);
});
