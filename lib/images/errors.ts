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
