/**
 * faasd's own log: one line per event on stderr, with a time, a level, a message and fields (function, request id,
 * outcome, durations, container id, errno…), as JSON (`--log-format json`, the default when stderr is not a terminal)
 * or as text for people (`time LEVEL message key=value …`). Events below `--log-level` are not written.
 *
 * Modules log through the process-wide {@linkcode log}; main.ts configures it once from the flags. No secret, token or
 * request byte is ever passed to it: callers log names, ids, counts and their own messages.
 *
 * @module
 */

/** How much is written: each level includes those above it. */
export type LogLevel = "debug" | "info" | "warn" | "error";
/** How lines are written. */
export type LogFormat = "json" | "text";
/** Values a field may take. */
export type LogValue = string | number | boolean | null | undefined;
/** An event's fields; undefined ones are left out. */
export type LogFields = Record<string, LogValue>;

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** The levels, lowest first. */
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

/** Where and how lines go. */
export interface LogOptions {
  format: LogFormat;
  level: LogLevel;
  /** Writes one line (without its newline); default: stderr. */
  write?: (line: string) => void;
  /** The clock; tests fix it. */
  now?: () => Date;
}

const encoder = new TextEncoder();

/** A logger with fields bound to every event it writes. */
export class Logger {
  readonly #options: () => Required<LogOptions>;
  readonly #bound: LogFields;

  /** @internal use {@linkcode log} or {@linkcode Logger.with}. */
  constructor(options: () => Required<LogOptions>, bound: LogFields = {}) {
    this.#options = options;
    this.#bound = bound;
  }

  /** A logger whose events also carry `fields`. */
  with(fields: LogFields): Logger {
    return new Logger(this.#options, { ...this.#bound, ...fields });
  }

  debug(message: string, fields?: LogFields): void {
    this.#write("debug", message, fields);
  }
  info(message: string, fields?: LogFields): void {
    this.#write("info", message, fields);
  }
  warn(message: string, fields?: LogFields): void {
    this.#write("warn", message, fields);
  }
  error(message: string, fields?: LogFields): void {
    this.#write("error", message, fields);
  }

  /** Whether events of `level` are written (to skip building costly fields). */
  enabled(level: LogLevel): boolean {
    return RANK[level] >= RANK[this.#options().level];
  }

  #write(level: LogLevel, message: string, fields: LogFields = {}): void {
    const o = this.#options();
    if (RANK[level] < RANK[o.level]) return;
    const all: LogFields = { ...this.#bound, ...fields };
    const time = o.now().toISOString();
    o.write(o.format === "json" ? jsonLine(time, level, message, all) : textLine(time, level, message, all));
  }
}

/** The keys every line has; a field cannot take their place. */
const RESERVED = new Set(["time", "level", "msg"]);

function jsonLine(time: string, level: LogLevel, msg: string, fields: LogFields): string {
  const out: Record<string, LogValue> = { time, level, msg };
  for (const [k, v] of Object.entries(fields)) if (v !== undefined && !RESERVED.has(k)) out[k] = v;
  return JSON.stringify(out);
}

function textLine(time: string, level: LogLevel, msg: string, fields: LogFields): string {
  const parts = [time, level.toUpperCase().padEnd(5), msg];
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined || RESERVED.has(k)) continue;
    const text = String(v);
    parts.push(`${k}=${/^[^\s"=]+$/.test(text) ? text : JSON.stringify(text)}`);
  }
  return parts.join(" ");
}

/** An error's message, for a field. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

let current: Required<LogOptions> = {
  format: "text",
  level: "info",
  write: (line) => {
    const bytes = encoder.encode(`${line}\n`);
    for (let off = 0; off < bytes.length;) off += Deno.stderr.writeSync(bytes.subarray(off));
  },
  now: () => new Date(),
};

/** The process-wide logger (text at info on stderr until {@linkcode configureLog}). */
export const log: Logger = new Logger(() => current);

/**
 * Sets the format, level and destination of {@linkcode log} (and of every logger made from it).
 *
 * @returns a function that puts the previous settings back (for tests).
 */
export function configureLog(options: LogOptions): () => void {
  const previous = current;
  current = { ...current, ...options };
  return () => current = previous;
}

/** The default format: JSON for machines (stderr redirected, journald), text on a terminal. */
export function defaultLogFormat(): LogFormat {
  try {
    return Deno.stderr.isTerminal() ? "text" : "json";
  } catch {
    return "json";
  }
}
