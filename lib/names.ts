/**
 * Function names. A name becomes part of container ids, file names and image records, so it is held to a DNS label:
 * lowercase letters, digits and inner hyphens, at most 63 characters.
 *
 * @module
 */

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Whether `name` is a valid function name. */
export function isValidName(name: string): boolean {
  return DNS_LABEL.test(name);
}

/**
 * Returns `name` when it is a valid function name.
 *
 * @throws {TypeError} when it is not, with a message fit to show the user.
 */
export function assertValidName(name: string): string {
  if (!isValidName(name)) {
    throw new TypeError(
      `invalid function name ${
        JSON.stringify(name)
      }: use 1-63 lowercase letters, digits and inner hyphens (a DNS label)`,
    );
  }
  return name;
}

/**
 * Derives a function name from an image reference as `faas new IMAGE` does without `--name`:
 * `docker.io/library/my-handler:1.0` → `my-handler`.
 */
export function nameFromImage(image: string): string {
  const withoutDigest = image.split("@")[0]!;
  const lastPart = withoutDigest.slice(withoutDigest.lastIndexOf("/") + 1);
  const withoutTag = lastPart.includes(":") ? lastPart.slice(0, lastPart.indexOf(":")) : lastPart;
  return withoutTag.toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63);
}
