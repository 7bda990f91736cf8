/**
 * Errors of image import. Their messages are written for the user who uploaded the tarball.
 *
 * @module
 */

/**
 * Why an import failed: `invalid` — the upload is not a usable image archive (answer 400); `too-large` — it is over
 * the size limit (413); `internal` — containerd failed (500).
 */
export type ImageImportErrorKind = "invalid" | "too-large" | "internal";

/** An image import failed; nothing it wrote is left in containerd. */
export class ImageImportError extends Error {
  readonly kind: ImageImportErrorKind;

  constructor(message: string, options?: ErrorOptions & { kind?: ImageImportErrorKind }) {
    super(message, options);
    this.name = "ImageImportError";
    this.kind = options?.kind ?? "invalid";
  }
}

/** The upload is larger than the allowed maximum. */
export class ImageTooLargeError extends ImageImportError {
  /** The limit in bytes. */
  readonly maxBytes: number;

  /** `unpacked`: the limit was passed by what compressed layers inflate to, not by the upload itself. */
  constructor(maxBytes: number, options?: ErrorOptions & { unpacked?: boolean }) {
    super(
      options?.unpacked
        ? `image unpacks to more than the limit of ${maxBytes} bytes (its compressed layers inflate past it)`
        : `image archive is larger than the limit of ${maxBytes} bytes`,
      { ...options, kind: "too-large" },
    );
    this.name = "ImageTooLargeError";
    this.maxBytes = maxBytes;
  }
}

/** An absolute path quoted as a whole (`'…'`, `"…"`), as Deno and Go's `%q` write them. */
const QUOTED_PATH = /(["'`])\/[^"'`\n]*\1/g;
/** An absolute path standing alone: after the start, a space or punctuation, up to the next space or punctuation. */
const BARE_PATH = /(^|[\s=:(\[,;])\/[^\s"'`:,;)\]]*/g;

/**
 * `text` with every absolute path replaced by `<path>`. containerd's messages, and the system's, name files under
 * its root and state directories and faasd's own (`/var/lib/containerd/…/snapshots/12/fs`, a temporary mount
 * point): the operator's business, not the client's. Use it on foreign text only; faasd's own messages name paths
 * inside the image, which the client needs.
 */
export function withoutHostPaths(text: string): string {
  return text.replace(QUOTED_PATH, "$1<path>$1").replace(BARE_PATH, "$1<path>");
}

/** The image has more layers than faasd lets a function have (one overlay mount stacks them all). */
export class TooManyLayersError extends ImageImportError {
  /** The limit. */
  readonly maxLayers: number;

  /**
   * @param layers how many layers the image has; null when the archive was refused while streaming, after its first
   *   `maxLayers + 1` layer blobs
   */
  constructor(maxLayers: number, layers: number | null, options?: ErrorOptions) {
    super(
      `${layers === null ? `image archive holds more than ${maxLayers}` : `image has ${layers}`} layers; ` +
        `faasd runs images of at most ${maxLayers} (a container stacks them all in one overlay mount): ` +
        "rebuild it with fewer, e.g. by merging RUN steps or copying the result of a multi-stage build",
      { ...options, kind: "invalid" },
    );
    this.name = "TooManyLayersError";
    this.maxLayers = maxLayers;
  }
}
