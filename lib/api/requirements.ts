/**
 * What settings need from this host before a deploy or a change may take them: every secret they name must exist
 * (400), and adapter mode (`http_port`) needs faasd-adapter built (503: the operator's to fix, not the user's).
 *
 * @module
 */

import type { Secrets } from "../secrets.ts";
import type { SettingsPatch } from "../settings.ts";
import { HttpError } from "./http.ts";

/** What the check needs. */
export interface RequirementDeps {
  secrets?: Secrets;
  adapterBuilt?: boolean;
}

/**
 * Checks what `patch` needs, and holds its secrets (they cannot be deleted) until the returned function is called,
 * once the deploy or change is recorded or has failed.
 *
 * @throws {SecretNotFoundError} (400) for a secret that does not exist.
 * @throws {HttpError} 503 for adapter mode where the adapter is not built.
 */
export function holdRequirements(patch: SettingsPatch, deps: RequirementDeps): () => void {
  if (patch.httpPort != null && deps.adapterBuilt === false) {
    throw new HttpError(503, "adapter mode (http_port) needs faasd-adapter, which is not built on this host");
  }
  return deps.secrets?.hold(patch.secrets ?? []) ?? (() => {});
}
