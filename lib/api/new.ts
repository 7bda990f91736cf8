/**
 * `POST /api/new`: header `X-Image-Name` names the function, the body is an image tarball (`docker save` /
 * `podman save`, docker-archive or OCI layout). Query parameters set the function's settings, as
 * `PATCH /api/functions/<name>` takes them (`?memory=256MiB&cpu=0.5&pids=64&timeout=30s&rootfs=writable`, and the
 * pool's `min_ready=1&max_ready=4`, adapter mode's `http_port=8080&ready_timeout=30s`, and the repeatable
 * `env=KEY=VALUE` and `secret=NAME`); they are checked, merged into those a replaced function had, before the body is
 * read. A secret that does not exist is a 400. Answers `{"name", "ip"}`: 201 for a new function, 200 when an existing one was replaced (it keeps its
 * address).
 *
 * @module
 */

import type { DaemonLimits } from "../config.ts";
import type { Functions } from "../functions.ts";
import { isValidName } from "../names.ts";
import type { Metrics } from "../metrics.ts";
import { parseSettings, type SettingsPatch } from "../settings.ts";
import { holdRequirements, type RequirementDeps } from "./requirements.ts";
import { HttpError, json } from "./http.ts";

/**
 * The settings in the query string.
 *
 * @throws {HttpError} 400 for a repeated one.
 * @throws {SettingsError} (400) for an unknown or invalid one.
 */
function querySettings(url: URL, limits: DaemonLimits): SettingsPatch {
  const fields: Record<string, unknown> = {};
  for (const [key, value] of url.searchParams) {
    // Repeatable: each `env=KEY=VALUE` and `secret=NAME` adds one.
    if (key === "env" || key === "secret") {
      const list = key === "env" ? "env" : "secrets";
      fields[list] = [...(fields[list] as string[] | undefined ?? []), value];
      continue;
    }
    if (Object.hasOwn(fields, key)) throw new HttpError(400, `query parameter ${JSON.stringify(key)} given twice`);
    fields[key] = value;
  }
  return parseSettings(fields, limits);
}

/** Builds the handler. */
export function newFunction(
  deps: { functions: Functions; metrics: Metrics; maxImageBytes: number; limits: DaemonLimits } & RequirementDeps,
) {
  return async (req: Request): Promise<Response> => {
    const name = req.headers.get("x-image-name")?.trim();
    if (!name) throw new HttpError(400, "missing X-Image-Name header: it names the function");
    if (!isValidName(name)) {
      throw new HttpError(
        400,
        `invalid function name ${JSON.stringify(name)}: use 1-63 lowercase letters, digits and inner hyphens`,
      );
    }
    const settings = querySettings(new URL(req.url), deps.limits);
    if (!req.body) throw new HttpError(400, "empty body: send an image tarball (docker save / podman save)");
    const length = Number(req.headers.get("content-length") ?? NaN);
    if (length > deps.maxImageBytes) {
      throw new HttpError(413, `image of ${length} bytes is over the limit of ${deps.maxImageBytes} bytes`);
    }
    // Its secrets stay until the function that mounts them is registered (or the deploy failed).
    const release = holdRequirements(settings, deps);
    try {
      const { record, created } = await deps.functions.deploy(name, req.body, settings);
      deps.metrics.deploys.inc({ outcome: "ok" });
      return json({ name: record.name, ip: record.ip }, created ? 201 : 200);
    } catch (e) {
      deps.metrics.deploys.inc({ outcome: "error" });
      throw e;
    } finally {
      release();
    }
  };
}
