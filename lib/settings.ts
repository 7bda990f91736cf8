/**
 * Per-function settings, set at deploy and changed later: what one request's container of a function may use, how
 * many ready containers the warm pool keeps for it (`min_ready`, `max_ready`), how its process runs (its `env` over the
 * image's, the `secrets` mounted at `/run/secrets/NAME`, and with `http_port` the adapter in front of a plain HTTP
 * server, which must listen within `ready_timeout`). A setting may only lower the daemon's
 * limit (its flag), never lift it, so the flags stay the operator's ceiling. What is stored is what was set; what a
 * container gets is computed from it and the daemon's current limits ({@linkcode effectiveLimits},
 * {@linkcode poolSizing}), so that a daemon restarted with lower flags lowers functions too.
 *
 * Input (query parameters of `POST /api/new`, the JSON body of `PATCH /api/functions/NAME`) uses the keys of
 * {@linkcode SETTING_KEYS}; `settings` in `GET /api/list` shows them back in the same form.
 *
 * @module
 */

import { type DaemonLimits, parseDuration, parseSize } from "./config.ts";

/** How a function's container sees its root filesystem: read-only (with a writable `/tmp`), or all writable. */
export type Rootfs = "readonly" | "writable";

/** Per-function settings; an absent field takes the daemon's default (its flag). */
export interface FunctionSettings {
  memoryBytes?: number;
  cpus?: number;
  pids?: number;
  timeoutMs?: number;
  rootfs?: Rootfs;
  /** Ready containers the pool keeps for the function even when it is idle. */
  minReady?: number;
  /** Ready containers the pool may keep for the function at most. */
  maxReady?: number;
  /** Adapter mode: the image is a plain HTTP server on this port, which faasd's adapter relays each connection to. */
  httpPort?: number;
  /** Adapter mode: how long the server may take to listen before its container counts as failed to start. */
  readyTimeoutMs?: number;
  /** Environment of the process, over the image's `ENV`. */
  env?: Record<string, string>;
  /** Secrets mounted read-only at `/run/secrets/NAME`. */
  secrets?: string[];
}

/** A change of settings: a field given as null goes back to the daemon's default, an absent one is kept. */
export type SettingsPatch = { [K in keyof FunctionSettings]?: Exclude<FunctionSettings[K], undefined> | null };

/** What one request's container of a function gets: its settings over the daemon's defaults (0: no limit). */
export interface EffectiveLimits {
  memoryBytes: number;
  cpus: number;
  pids: number;
  timeoutMs: number;
  rootfs: Rootfs;
}

/** How many ready containers the pool keeps for a function: at least `minReady` (once idle), at most `maxReady`. */
export interface PoolSizing {
  minReady: number;
  maxReady: number;
}

/** How long an adapter-mode server may take to listen, where a function has no `ready_timeout`. */
export const DEFAULT_READY_TIMEOUT_MS = 30_000;
/** The longest `ready_timeout`. */
const MAX_READY_TIMEOUT_MS = 10 * 60_000;

/** `min_ready` where a function has none set. */
export const DEFAULT_MIN_READY = 0;
/** `max_ready` where a function has none set (lowered to the daemon's `--pool-max` when that is lower). */
export const DEFAULT_MAX_READY = 8;

/**
 * A setting the user gave that cannot be taken: an unknown key, a malformed or out-of-bounds value, or settings that
 * contradict each other once merged (min_ready above max_ready). The message is fit to show the user; the API
 * answers 400.
 */
export class SettingsError extends TypeError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SettingsError";
  }
}

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
/** Below this runc cannot even start a container (as `--memory-limit`). */
const MIN_MEMORY = 4 * MiB;

/** `268435456` → `256MiB`: the largest binary unit that divides it, so that parseSize reads it back exactly. */
export function formatSize(bytes: number): string {
  for (const [unit, size] of [["GiB", GiB], ["MiB", MiB], ["KiB", KiB]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return `${bytes}B`;
}

/** `30000` → `30s`: the largest unit that divides it, so that parseDuration reads it back exactly. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** One input key: the field it sets, how its value is read and bounded, and how it is shown back. */
type Value = Exclude<FunctionSettings[keyof FunctionSettings], undefined>;

interface Field {
  prop: keyof FunctionSettings;
  /** @throws {TypeError} for a malformed or out-of-bounds value. */
  parse(value: unknown, daemon: DaemonLimits): Value;
  show(value: Value): unknown;
}

/** An environment variable name: what a shell and docker's `ENV` accept. */
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** `["K=V", …]` or `{"K": "V"}` → a map; names as a shell takes them, values without NUL. */
function parseEnv(value: unknown): Record<string, string> {
  const entries: [string, unknown][] = Array.isArray(value)
    ? value.map((item) => {
      if (typeof item !== "string" || !item.includes("=")) {
        throw new TypeError(`invalid env entry ${JSON.stringify(item)}: expected KEY=VALUE`);
      }
      const eq = item.indexOf("=");
      return [item.slice(0, eq), item.slice(eq + 1)];
    })
    : typeof value === "object" && value !== null
    ? Object.entries(value)
    : (() => {
      throw new TypeError(`invalid env ${JSON.stringify(value)}: a list of KEY=VALUE, or an object of strings`);
    })();
  const env: Record<string, string> = {};
  for (const [key, v] of entries) {
    if (!ENV_NAME.test(key)) {
      throw new TypeError(`invalid env name ${JSON.stringify(key)}: letters, digits and _, not starting with a digit`);
    }
    if (typeof v !== "string" || v.includes("\0")) {
      throw new TypeError(`invalid value of env ${key}: a string without NUL characters`);
    }
    env[key] = v;
  }
  return env;
}

/** A list of secret names, each valid and given once. */
function parseSecretNames(value: unknown): string[] {
  if (!Array.isArray(value)) throw new TypeError(`invalid secrets ${JSON.stringify(value)}: a list of secret names`);
  for (const name of value) {
    if (typeof name !== "string" || !isValidSecretName(name)) {
      throw new TypeError(
        `invalid secret name ${JSON.stringify(name)}: 1-64 letters, digits, '.', '_' or '-', starting with a letter ` +
          "or digit",
      );
    }
  }
  return [...new Set(value as string[])];
}

/** A secret's name: 1-64 letters, digits, `.`, `_` and `-`, starting with a letter or digit (a file name in `/run/secrets`). */
export function isValidSecretName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name);
}

/** A number within bounds: not 0 (a function may not lift the daemon's limit), at least `min`, at most the flag's. */
function bounded(
  key: string,
  n: number,
  shown: string,
  bounds: { min: number; minShown: string; flag: string; ceiling: number; ceilingShown: string },
): number {
  if (n === 0) {
    throw new TypeError(`${key} 0 (no limit) cannot be set for a function; set null for the daemon's ${bounds.flag}`);
  }
  if (n < bounds.min) throw new TypeError(`${key} ${shown} is below the minimum of ${bounds.minShown}`);
  if (bounds.ceiling !== 0 && n > bounds.ceiling) {
    throw new TypeError(`${key} ${shown} is above the daemon's ${bounds.flag} of ${bounds.ceilingShown}`);
  }
  return n;
}

/** A number given as a JSON number or as its text (query parameters are text); null when it is neither. */
function numeric(value: unknown, pattern: RegExp): number | null {
  if (typeof value === "number") return Number.isFinite(value) && value >= 0 ? value : null;
  if (typeof value === "string" && pattern.test(value.trim())) return Number(value);
  return null;
}

/** A number of ready containers: a whole number from 0 up to the daemon's `--pool-max` (0 means none, not no limit). */
function readyCount(key: string, value: unknown, daemon: DaemonLimits): number {
  const n = numeric(value, /^\d+$/);
  if (n === null || !Number.isSafeInteger(n)) {
    throw new TypeError(`invalid ${key} ${JSON.stringify(value)}: a whole number of containers, 0 or more`);
  }
  if (n > daemon.poolMax) throw new TypeError(`${key} ${n} is above the daemon's --pool-max of ${daemon.poolMax}`);
  return n;
}

/** The input keys, in the order they are shown. */
const FIELDS: Record<string, Field> = {
  memory: {
    prop: "memoryBytes",
    parse(value, daemon) {
      let bytes: number;
      if (typeof value === "string") bytes = parseSize(value, "memory");
      else if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) bytes = value;
      else throw new TypeError(`invalid memory ${JSON.stringify(value)}: a size like 256MiB, or a number of bytes`);
      const shown = typeof value === "string" ? value.trim() : formatSize(bytes);
      return bounded("memory", bytes, shown, {
        min: MIN_MEMORY,
        minShown: formatSize(MIN_MEMORY),
        flag: "--memory-limit",
        ceiling: daemon.memoryBytes,
        ceilingShown: formatSize(daemon.memoryBytes),
      });
    },
    show: (bytes) => formatSize(bytes as number),
  },
  cpu: {
    prop: "cpus",
    parse(value, daemon) {
      const cpus = numeric(value, /^\d+(\.\d+)?$/);
      if (cpus === null) throw new TypeError(`invalid cpu ${JSON.stringify(value)}: a number of CPUs, e.g. 0.5 or 2`);
      return bounded("cpu", cpus, String(cpus), {
        min: 0.01,
        minShown: "0.01",
        flag: "--cpu-limit",
        ceiling: daemon.cpus,
        ceilingShown: String(daemon.cpus),
      });
    },
    show: (cpus) => cpus,
  },
  pids: {
    prop: "pids",
    parse(value, daemon) {
      const pids = numeric(value, /^\d+$/);
      if (pids === null || !Number.isSafeInteger(pids)) {
        throw new TypeError(`invalid pids ${JSON.stringify(value)}: a whole number of processes, e.g. 64`);
      }
      return bounded("pids", pids, String(pids), {
        min: 1,
        minShown: "1",
        flag: "--pids-limit",
        ceiling: daemon.pids,
        ceilingShown: String(daemon.pids),
      });
    },
    show: (pids) => pids,
  },
  timeout: {
    prop: "timeoutMs",
    parse(value, daemon) {
      let ms: number;
      if (typeof value === "string") ms = parseDuration(value, "timeout");
      else if (typeof value === "number" && Number.isFinite(value) && value >= 0) ms = Math.round(value);
      else throw new TypeError(`invalid timeout ${JSON.stringify(value)}: a duration like 30s or 500ms, or ms`);
      const shown = typeof value === "string" ? value.trim() : formatDuration(ms);
      return bounded("timeout", ms, shown, {
        min: 1,
        minShown: "1ms",
        flag: "--request-timeout",
        ceiling: daemon.timeoutMs,
        ceilingShown: formatDuration(daemon.timeoutMs),
      });
    },
    show: (ms) => formatDuration(ms as number),
  },
  rootfs: {
    prop: "rootfs",
    parse(value) {
      if (value === "readonly" || value === "writable") return value;
      throw new TypeError(`invalid rootfs ${JSON.stringify(value)}: readonly or writable`);
    },
    show: (rootfs) => rootfs,
  },
  min_ready: {
    prop: "minReady",
    parse: (value, daemon) => readyCount("min_ready", value, daemon),
    show: (n) => n,
  },
  max_ready: {
    prop: "maxReady",
    parse: (value, daemon) => readyCount("max_ready", value, daemon),
    show: (n) => n,
  },
  http_port: {
    prop: "httpPort",
    parse(value) {
      const port = numeric(value, /^\d+$/);
      if (port === null || !Number.isInteger(port) || port < 1 || port > 65535) {
        throw new TypeError(`invalid http_port ${JSON.stringify(value)}: a TCP port from 1 to 65535`);
      }
      return port;
    },
    show: (port) => port,
  },
  ready_timeout: {
    prop: "readyTimeoutMs",
    parse(value) {
      let ms: number;
      if (typeof value === "string") ms = parseDuration(value, "ready_timeout");
      else if (typeof value === "number" && Number.isFinite(value) && value >= 0) ms = Math.round(value);
      else throw new TypeError(`invalid ready_timeout ${JSON.stringify(value)}: a duration like 30s, or ms`);
      if (ms < 1 || ms > MAX_READY_TIMEOUT_MS) {
        throw new TypeError(
          `ready_timeout ${formatDuration(ms)} is outside 1ms to ${formatDuration(MAX_READY_TIMEOUT_MS)}`,
        );
      }
      return ms;
    },
    show: (ms) => formatDuration(ms as number),
  },
  env: {
    prop: "env",
    parse: (value) => parseEnv(value),
    show: (env) => ({ ...(env as Record<string, string>) }),
  },
  secrets: {
    prop: "secrets",
    parse: (value) => parseSecretNames(value),
    show: (names) => [...(names as string[])],
  },
};

/**
 * The input keys of settings: `memory`, `cpu`, `pids`, `timeout`, `rootfs`, `min_ready`, `max_ready`, `http_port`,
 * `ready_timeout`, `env`, `secrets`.
 */
export const SETTING_KEYS: readonly string[] = Object.freeze(Object.keys(FIELDS));

/**
 * Reads settings from user input: `memory` (a size like `256MiB`, or bytes), `cpu` (CPUs, e.g. 0.5), `pids` (a
 * whole number), `timeout` (a duration like `30s`, or ms), `rootfs` (`readonly` or `writable`), `min_ready` and
 * `max_ready` (whole numbers of ready containers, 0 or more), `http_port` (1-65535), `ready_timeout` (a duration),
 * `env` (`["KEY=VALUE", …]` or an object) and `secrets` (a list of names); numbers may come as text. A value of null asks for the
 * daemon's default again. Each value must lie within the daemon's limit. Whether min_ready is at most max_ready
 * depends on what the function has set already, so {@linkcode mergeSettings} checks it.
 *
 * @returns the change to apply (see {@linkcode mergeSettings}).
 * @throws {SettingsError} for an unknown key, a malformed value, 0 (no limit), or a value past its bound; the
 *   message names the key (and the daemon flag bounding it) and is fit to show the user.
 */
export function parseSettings(fields: Record<string, unknown>, daemon: DaemonLimits): SettingsPatch {
  const patch: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) {
    // hasOwn: a key such as "constructor" must not find Object.prototype's.
    if (!Object.hasOwn(FIELDS, key)) {
      throw new SettingsError(`unknown setting ${JSON.stringify(key)}: known are ${SETTING_KEYS.join(", ")}`);
    }
    const field = FIELDS[key]!;
    try {
      patch[field.prop] = value === null ? null : field.parse(value, daemon);
    } catch (e) {
      // parseSize and parseDuration throw plain TypeErrors; one class lets the API map them all to 400.
      if (e instanceof TypeError && !(e instanceof SettingsError)) throw new SettingsError(e.message, { cause: e });
      throw e;
    }
  }
  return patch as SettingsPatch;
}

/**
 * `settings` with `patch` applied: a field given as null is dropped, an absent one kept. Neither is changed.
 *
 * @throws {SettingsError} when the result would have min_ready above max_ready (each taking its default where
 *   unset; the message says which of the two came from `patch`, from `settings`, or from the default), or a
 *   ready_timeout without http_port (leaving adapter mode drops the ready timeout).
 */
export function mergeSettings(settings: FunctionSettings, patch: SettingsPatch): FunctionSettings {
  const merged: Record<string, unknown> = { ...settings };
  for (const [prop, value] of Object.entries(patch)) {
    if (value === null) delete merged[prop];
    else if (value !== undefined) merged[prop] = value;
  }
  // Leaving adapter mode takes its ready timeout along, unless the same change sets one (refused below).
  if (patch.httpPort === null && patch.readyTimeoutMs === undefined) delete merged.readyTimeoutMs;
  if (merged.readyTimeoutMs !== undefined && merged.httpPort === undefined) {
    throw new SettingsError("ready_timeout applies only in adapter mode: set http_port with it");
  }
  assertReadyInOrder(merged as FunctionSettings, patch);
  return merged as FunctionSettings;
}

/** @throws {SettingsError} when `merged` has min_ready above max_ready. */
function assertReadyInOrder(merged: FunctionSettings, patch: SettingsPatch): void {
  const min = merged.minReady ?? DEFAULT_MIN_READY;
  const max = merged.maxReady ?? DEFAULT_MAX_READY;
  if (min <= max) return;
  const origin = (prop: "minReady" | "maxReady") =>
    patch[prop] != null ? "" : merged[prop] === undefined ? " (the default)" : " (set before)";
  throw new SettingsError(
    `min_ready ${min}${origin("minReady")} is above max_ready ${max}${origin("maxReady")}: ` +
      "min_ready must be at most max_ready",
  );
}

/** A function's limit under the daemon's: the daemon's where unset, the lower where the daemon has one. */
function lower(setting: number | undefined, daemon: number): number {
  if (setting === undefined) return daemon;
  return daemon === 0 ? setting : Math.min(setting, daemon);
}

/**
 * What one request's container of a function gets: its settings, clamped to the daemon's current limits (which may
 * have been lowered since they were set), and the daemon's limits where it has none. Rootfs defaults to readonly.
 */
export function effectiveLimits(settings: FunctionSettings, daemon: DaemonLimits): EffectiveLimits {
  return {
    memoryBytes: lower(settings.memoryBytes, daemon.memoryBytes),
    cpus: lower(settings.cpus, daemon.cpus),
    pids: lower(settings.pids, daemon.pids),
    timeoutMs: lower(settings.timeoutMs, daemon.timeoutMs),
    rootfs: settings.rootfs ?? "readonly",
  };
}

/**
 * How many ready containers the pool keeps for a function: its `min_ready` and `max_ready`, the defaults
 * ({@linkcode DEFAULT_MIN_READY}, {@linkcode DEFAULT_MAX_READY}) where unset, lowered to the daemon's `--pool-max`
 * (which may have been lowered since they were set); minReady never exceeds maxReady.
 */
export function poolSizing(settings: FunctionSettings, daemon: Pick<DaemonLimits, "poolMax">): PoolSizing {
  const maxReady = Math.min(settings.maxReady ?? DEFAULT_MAX_READY, daemon.poolMax);
  const minReady = Math.min(settings.minReady ?? DEFAULT_MIN_READY, maxReady);
  return { minReady, maxReady };
}

/** What was set for a function, in input form (`{"memory": "256MiB", "cpu": 0.5}`), which parseSettings reads back. */
export function settingsJson(settings: FunctionSettings): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(FIELDS)) {
    const value = settings[field.prop];
    if (value !== undefined) out[key] = field.show(value);
  }
  return out;
}
