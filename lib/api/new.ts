/**
 * `POST /api/new`: header `X-Image-Name` names the function, the body is an image tarball (`docker save` /
 * `podman save`, docker-archive or OCI layout). Answers `{"name", "ip"}`: 201 for a new function, 200 when an
 * existing one was replaced (it keeps its address).
 *
 * @module
 */

import type { Functions } from "../functions.ts";
import { isValidName } from "../names.ts";
import type { Metrics } from "../metrics.ts";
import { HttpError, json } from "./http.ts";

/** Builds the handler. */
export function newFunction(deps: { functions: Functions; metrics: Metrics; maxImageBytes: number }) {
  return async (req: Request): Promise<Response> => {
    const name = req.headers.get("x-image-name")?.trim();
    if (!name) throw new HttpError(400, "missing X-Image-Name header: it names the function");
    if (!isValidName(name)) {
      throw new HttpError(
        400,
        `invalid function name ${JSON.stringify(name)}: use 1-63 lowercase letters, digits and inner hyphens`,
      );
    }
    if (!req.body) throw new HttpError(400, "empty body: send an image tarball (docker save / podman save)");
    const length = Number(req.headers.get("content-length") ?? NaN);
    if (length > deps.maxImageBytes) {
      throw new HttpError(413, `image of ${length} bytes is over the limit of ${deps.maxImageBytes} bytes`);
    }
    try {
      const { record, created } = await deps.functions.deploy(name, req.body);
      deps.metrics.deploys.inc({ outcome: "ok" });
      return json({ name: record.name, ip: record.ip }, created ? 201 : 200);
    } catch (e) {
      deps.metrics.deploys.inc({ outcome: "error" });
      throw e;
    }
  };
}
