/**
 * `PATCH /api/functions/<name>`: changes a function's settings. The body is a JSON object of the keys `GET
 * /api/list` shows under `settings` (`{"memory": "256MiB", "cpu": 0.5, "timeout": null, "min_ready": 1}`); null
 * returns a key to the daemon's default, a key left out keeps its value. A change that would leave min_ready above
 * max_ready (the stored value or the default standing for the one not given) is a 400. Answers 200 with the
 * function's entry as the list shows it, plus its `name`. The next connection's container gets the new settings;
 * requests in flight keep theirs.
 *
 * @module
 */

import { concatBytes } from "../bytes.ts";
import type { DaemonLimits } from "../config.ts";
import type { Functions } from "../functions.ts";
import { parseSettings, SETTING_KEYS, type SettingsPatch } from "../settings.ts";
import { holdRequirements, type RequirementDeps } from "./requirements.ts";
import { HttpError, json } from "./http.ts";
import { functionEntry, type PoolState } from "./list.ts";

/** Settings take a few dozen bytes; a larger body is refused before it is all read. */
const MAX_BODY_BYTES = 64 * 1024;

async function readBody(req: Request): Promise<string> {
  const tooLarge = () => new HttpError(413, `body over ${MAX_BODY_BYTES} bytes: send only the settings to change`);
  if (Number(req.headers.get("content-length") ?? 0) > MAX_BODY_BYTES) throw tooLarge();
  if (!req.body) return "";
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of req.body) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw tooLarge(); // leaving the loop cancels the rest of the body
    parts.push(chunk);
  }
  return new TextDecoder().decode(concatBytes(parts, size));
}

/**
 * The change the body asks for: every key is a setting, the pool's `min_ready` and `max_ready` among them.
 *
 * @throws {HttpError} 400 for a body that is not a non-empty JSON object.
 * @throws {SettingsError} (400) for an unknown key or an invalid value.
 */
function parsePatch(text: string, limits: DaemonLimits): SettingsPatch {
  const example = 'e.g. {"memory": "256MiB", "cpu": 0.5, "timeout": null}';
  let fields: unknown;
  try {
    fields = JSON.parse(text);
  } catch {
    throw new HttpError(400, `body is not valid JSON: send an object of settings, ${example}`);
  }
  if (typeof fields !== "object" || fields === null || Array.isArray(fields)) {
    throw new HttpError(400, `body must be a JSON object of settings, ${example}`);
  }
  if (Object.keys(fields).length === 0) {
    throw new HttpError(400, `nothing to change: give at least one of ${SETTING_KEYS.join(", ")}`);
  }
  return parseSettings(fields as Record<string, unknown>, limits);
}

/** Builds the handler. */
export function updateFunction(
  deps: { functions: Functions; limits: DaemonLimits; pool?: PoolState } & RequirementDeps,
) {
  return async (req: Request, name: string): Promise<Response> => {
    const patch = parsePatch(await readBody(req), deps.limits);
    const release = holdRequirements(patch, deps);
    let record;
    try {
      record = await deps.functions.update(name, patch);
    } finally {
      release();
    }
    return json({ name: record.name, ...functionEntry(record, deps.limits, deps.pool) });
  };
}
