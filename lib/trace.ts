/**
 * Traces: OpenTelemetry spans for a deploy (upload, each layer's unpack, the registry update) and for a connection
 * (first bytes, queued, the container's start or its take from the pool, handoff, the handler's run, close), with the
 * function, outcome and container id as attributes.
 *
 * faasd uses only `@opentelemetry/api`; Deno's built-in OpenTelemetry is the SDK and the exporter. It is off unless
 * the operator starts faasd with `OTEL_DENO=true`, and then exports over OTLP to `OTEL_EXPORTER_OTLP_ENDPOINT` (the
 * standard `OTEL_*` variables apply). Off, the API hands out non-recording spans: nothing is kept or sent.
 *
 * @module
 */

import { type Attributes, context, ROOT_CONTEXT, type Span, SpanStatusCode, trace } from "@opentelemetry/api";

export type { Span };

/** faasd's tracer. */
export const tracer = trace.getTracer("faasd");

/**
 * Runs `fn` in a span named `name` that is the active one inside it (spans started within nest under it); the span
 * ends when `fn` settles, with an error status when it throws.
 */
export function traced<T>(name: string, attributes: Attributes, fn: (span: Span) => Promise<T>): Promise<T> {
  return tracer.startActiveSpan(name, { attributes }, context.active(), (span) => settle(span, fn));
}

/** Like {@linkcode traced}, but the span starts a trace of its own (work that serves no caller's request or deploy). */
export function tracedRoot<T>(name: string, attributes: Attributes, fn: (span: Span) => Promise<T>): Promise<T> {
  return tracer.startActiveSpan(name, { attributes }, ROOT_CONTEXT, (span) => settle(span, fn));
}

/** Runs `fn` outside any trace: what it starts (and what those start) is not attributed to the current span. */
export function detached<T>(fn: () => T): T {
  return context.with(ROOT_CONTEXT, fn);
}

function settle<T>(span: Span, fn: (span: Span) => Promise<T>): Promise<T> {
  return (async () => {
    try {
      return await fn(span);
    } catch (e) {
      span.recordException(e instanceof Error ? e : String(e));
      span.setStatus({ code: SpanStatusCode.ERROR, message: e instanceof Error ? e.message : String(e) });
      throw e;
    } finally {
      span.end();
    }
  })();
}

/**
 * A span started now (or at `startTime`), under `parent` or else as the root of a trace of its own: for steps whose
 * start and end are in different places.
 */
export function startSpan(name: string, attributes: Attributes = {}, parent?: Span, startTime?: number): Span {
  const ctx = parent ? trace.setSpan(ROOT_CONTEXT, parent) : ROOT_CONTEXT;
  return tracer.startSpan(name, { attributes, startTime }, ctx);
}

/** Records a finished step as a child of `parent`, from `start` to `end` (epoch milliseconds). */
export function recordSpan(parent: Span, name: string, start: number, end: number, attributes: Attributes = {}): void {
  startSpan(name, attributes, parent, start).end(end);
}

/** Marks `span` failed with `message`. */
export function failed(span: Span, message: string): void {
  span.setStatus({ code: SpanStatusCode.ERROR, message });
}
