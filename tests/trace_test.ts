/**
 * Traces end to end: a real faasd with Deno's OpenTelemetry on (`OTEL_DENO=true`, OTLP over HTTP with JSON), a small
 * OTLP receiver in the test, one deploy and one request; the span trees are checked.
 */

import { assert, assertEquals } from "./assert.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildHandlerImage } from "./harness/images.ts";
import { freePort, startDaemon } from "./harness/platform.ts";
import { waitUntil } from "./harness/wait.ts";
import { curl } from "./curl.ts";

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  attributes?: { key: string; value: Record<string, unknown> }[];
}

/** An OTLP/HTTP receiver for traces in JSON: keeps every span it is sent. */
function otlpReceiver() {
  const spans: OtlpSpan[] = [];
  const port = freePort();
  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, async (req) => {
    const body = await req.json().catch(() => ({}));
    if (new URL(req.url).pathname === "/v1/traces") {
      for (const rs of body.resourceSpans ?? []) {
        for (const ss of rs.scopeSpans ?? []) spans.push(...(ss.spans ?? []));
      }
    }
    return Response.json({});
  });
  return { url: `http://127.0.0.1:${port}`, spans, close: () => server.shutdown() };
}

const attr = (s: OtlpSpan, key: string) => {
  const v = s.attributes?.find((a) => a.key === key)?.value;
  return v ? Object.values(v)[0] : undefined;
};

/**
 * The names of `root`'s children, sorted; without Deno's own spans of containerd calls (`POST`, from node:http2),
 * which nest under faasd's.
 */
const childrenOf = (spans: OtlpSpan[], root: OtlpSpan) =>
  spans.filter((s) => s.traceId === root.traceId && s.parentSpanId === root.spanId && s.name !== "POST")
    .map((s) => s.name).sort();

Deno.test("with OTEL_DENO=true faasd exports the span trees of a deploy and of a request over OTLP", async () => {
  await using ctd = await startContainerd();
  const otlp = otlpReceiver();
  try {
    const d = await startDaemon(ctd, {
      env: {
        OTEL_DENO: "true",
        OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
        OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
        OTEL_SERVICE_NAME: "faasd-test",
      },
    });
    const res = await fetch(`${d.url}/api/new`, {
      method: "POST",
      headers: { "x-image-name": "hello" },
      body: (await Deno.open(await buildHandlerImage("hello"))).readable,
    });
    const { ip } = await res.json();
    assertEquals(res.status, 201);
    const r = await curl(`http://${ip}:${d.port}/`);
    assertEquals(r.status, 200);
    assertEquals(await d.stop("SIGTERM"), 0); // exporting flushes at exit at the latest
    assert(await waitUntil(() => otlp.spans.some((s) => s.name === "connection"), 10_000), "spans arrived");

    const deploy = otlp.spans.find((s) => s.name === "deploy")!;
    assertEquals(attr(deploy, "function"), "hello");
    assertEquals(childrenOf(otlp.spans, deploy), ["image.import", "registry.update"]);
    const imported = otlp.spans.find((s) => s.name === "image.import" && s.parentSpanId === deploy.spanId)!;
    const steps = childrenOf(otlp.spans, imported);
    assert(steps.includes("image.upload") && steps.includes("image.resolve"), steps.join());
    const layers = otlp.spans.filter((s) => s.name === "layer.unpack" && s.traceId === deploy.traceId);
    assert(layers.length >= 1 && typeof attr(layers[0]!, "layer.digest") === "string", JSON.stringify(layers));

    const connection = otlp.spans.find((s) => s.name === "connection")!;
    assertEquals([attr(connection, "function"), attr(connection, "outcome")], ["hello", "ok"]);
    assert(String(attr(connection, "container")).startsWith("faasd-"), JSON.stringify(connection));
    // The start, a trace of its own, holds containerd's calls.
    const start = otlp.spans.find((s) => s.name === "container.start" && !s.parentSpanId)!;
    assertEquals(attr(start, "function"), "hello");
    assert(otlp.spans.some((s) => s.parentSpanId === start.spanId && s.name === "POST"), "containerd calls nest");
    // The function was idle: this connection waited for its container's start.
    assertEquals(childrenOf(otlp.spans, connection), [
      "close",
      "container.start",
      "first_bytes",
      "handler",
      "handoff",
      "queued",
    ]);
  } finally {
    await otlp.close();
  }
});
