/**
 * `faasd`: the daemon. Parses the configuration, starts the platform (lib/platform.ts, the composition root),
 * serves the control API with `Deno.serve`, and on SIGTERM or SIGINT stops accepting, lets requests in flight
 * finish within the grace period, then kills and cleans up what is left.
 *
 *     deno task faasd [--api HOST:PORT] [--state-dir DIR] [--ip-pool CIDR] [--port N] [--containerd PATH] …
 *
 * @module
 */

import { daemonHelp, parseDaemonConfig } from "./lib/config.ts";
import { type Platform, startPlatform } from "./lib/platform.ts";
import { configureLog, defaultLogFormat, errorText, log } from "./lib/log.ts";

async function main(): Promise<void> {
  const config = parseDaemonConfig(Deno.args);
  if (config === "help") return console.log(daemonHelp());
  configureLog({
    format: config.logFormat === "auto" ? defaultLogFormat() : config.logFormat,
    level: config.logLevel,
  });
  // The API address is taken first: a second faasd started by mistake must fail here, before its start-up reaps
  // the first one's containers and images. Requests wait until the platform is up.
  const starting = Promise.withResolvers<Platform>();
  starting.promise.catch(() => {}); // a failed start is reported below; waiting requests end with the process
  const http = Deno.serve({
    hostname: config.api.hostname,
    port: config.api.port,
    onListen: ({ hostname, port }) => log.info(`control API on http://${hostname}:${port}`),
  }, async (req) => (await starting.promise).api(req));
  let platform: Platform;
  try {
    platform = await startPlatform(config, (message) => log.info(message));
  } catch (e) {
    starting.reject(e);
    await http.shutdown();
    throw e;
  }
  starting.resolve(platform);

  const stopped = Promise.withResolvers<string>();
  for (const signal of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(signal, () => stopped.resolve(signal));
  const signal = await stopped.promise;
  log.info(`${signal}: stopping`, { grace_ms: config.shutdownGraceMs, outstanding: platform.server.outstanding });
  // Serving drains (and `logs -f` answers end) while the control API finishes what it is answering.
  await Promise.all([platform.drain(), http.shutdown()]);
  await platform.close();
  log.info("stopped");
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    log.error(errorText(e));
    Deno.exit(1);
  }
}
