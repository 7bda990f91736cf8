import { assertEquals } from "../tests/assert.ts";
import { configureLog, log, Logger } from "./log.ts";

/** Captures what `log` writes while `fn` runs. */
function capture(format: "json" | "text", level: "debug" | "info" | "warn" | "error", fn: (l: Logger) => void) {
  const lines: string[] = [];
  const restore = configureLog({ format, level, write: (l) => lines.push(l), now: () => new Date(0) });
  try {
    fn(log);
  } finally {
    restore();
  }
  return lines;
}

Deno.test("log writes one JSON object per event with time, level, message and fields", () => {
  const lines = capture("json", "info", (l) => l.info("request", { function: "hello", ms: 12.5, gone: undefined }));
  assertEquals(lines.map((l) => JSON.parse(l)), [
    { time: "1970-01-01T00:00:00.000Z", level: "info", msg: "request", function: "hello", ms: 12.5 },
  ]);
});

Deno.test("log leaves out events below its level", () => {
  const lines = capture("json", "warn", (l) => {
    l.debug("d");
    l.info("i");
    l.warn("w");
    l.error("e");
  });
  assertEquals(lines.map((l) => JSON.parse(l).msg), ["w", "e"]);
  assertEquals(capture("json", "error", (l) => void l.warn("w")), []);
});

Deno.test("log as text quotes values with spaces and keeps a field from overriding time, level or msg", () => {
  const text = capture("text", "info", (l) => l.error("start failed", { function: "f", error: "no such file" }));
  assertEquals(text, ['1970-01-01T00:00:00.000Z ERROR start failed function=f error="no such file"']);
  const json = capture("json", "info", (l) => l.info("real", { msg: "forged", level: "debug" }));
  assertEquals([JSON.parse(json[0]!).msg, JSON.parse(json[0]!).level], ["real", "info"]);
});

Deno.test("Logger.with() binds fields to every event", () => {
  const lines = capture("json", "info", (l) => l.with({ function: "f" }).info("x", { container: "c1" }));
  assertEquals(JSON.parse(lines[0]!), {
    time: "1970-01-01T00:00:00.000Z",
    level: "info",
    msg: "x",
    function: "f",
    container: "c1",
  });
});
