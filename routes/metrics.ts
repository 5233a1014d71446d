// GET /metrics: Prometheus text format. Requests running and waiting, KV-cache usage (ratio and
// bytes by layer kind), the full-attention equivalent, time to first token, time per output token
// and end-to-end latency histograms, prompt and generated token counts, prefix-cache queries and
// hits (in tokens), what the prefix cache holds, and the cache configuration as an info gauge.

import { Hono } from "hono";
import type { ServerContext } from "../server/context.ts";
import { Exposition } from "../server/prometheus.ts";

export function metricsRoute(ctx: ServerContext): Hono {
  const app = new Hono();
  app.get("/metrics", (c) => {
    const e = new Exposition();
    e.gauge(
      "zigzag_ready",
      "1 once the model is loaded and the server accepts requests",
      ctx.state === "ready" ? 1 : 0,
    );
    const engine = ctx.loadedEngine;
    if (engine) {
      const m = engine.metrics;
      const st = engine.cacheReport();
      const kinds = engine.cacheKinds;
      e.gauge(
        "zigzag_requests_running",
        "Requests admitted to the batch (prefilling or decoding)",
        st.requests.running,
      )
        .gauge(
          "zigzag_requests_waiting",
          "Requests queued for a batch slot or KV memory",
          st.requests.waiting,
        )
        .gauge(
          "zigzag_kv_cache_usage_ratio",
          "KV-cache bytes in use over bytes reserved (0..1)",
          st.total.bytes_reserved > 0 ? st.total.bytes_used / st.total.bytes_reserved : 0,
        )
        .gauge(
          "zigzag_kv_cache_used_bytes",
          "KV-cache bytes in use, by layer kind",
          kinds.map((k) => [{ kind: k }, st[k].bytes_used]),
        )
        .gauge(
          "zigzag_kv_cache_reserved_bytes",
          "KV-cache bytes allocated, by layer kind",
          kinds.map((k) => [{ kind: k }, st[k].bytes_reserved]),
        )
        .gauge(
          "zigzag_kv_ring_used_bytes",
          "KV-cache bytes the streaming rings use, by kind and window (per-layer windows give " +
            "several)",
          st.rings.map((r) => [ringLabels(r), r.bytes_used]),
        )
        .gauge(
          "zigzag_kv_ring_kv_heads",
          "KV heads (summed over layers) keeping a ring, by kind and window",
          st.rings.map((r) => [ringLabels(r), r.kv_heads]),
        )
        .gauge(
          "zigzag_kv_cache_pages_used",
          "Pages of the paged (retrieval) cache in use",
          st.total.pages_used,
        )
        .gauge(
          "zigzag_kv_cache_pages_free",
          "Pages of the paged (retrieval) cache free",
          st.total.pages_free,
        )
        .gauge("zigzag_kv_cache_sequences", "Sequences holding KV cache", st.sequences)
        .gauge(
          "zigzag_kv_cache_full_attention_bytes",
          "Bytes a full-attention cache would hold for the cached sequences",
          st.full_attention_bytes,
        )
        .gauge(
          "zigzag_kv_cache_ratio_to_full",
          "KV-cache bytes in use over the full-attention equivalent",
          st.ratio_to_full,
        )
        .histogram(
          "zigzag_time_to_first_token_seconds",
          "From arrival to the first generated token",
          m.timeToFirstToken,
        )
        .histogram(
          "zigzag_time_per_output_token_seconds",
          "Decode time per generated token after the first",
          m.timePerOutputToken,
        )
        .histogram(
          "zigzag_e2e_request_latency_seconds",
          "From arrival to the last token",
          m.e2eLatency,
        )
        .histogram("zigzag_queue_time_seconds", "From arrival to admission", m.queueTime)
        .counter("zigzag_prompt_tokens_total", "Prompt tokens prefilled", m.promptTokens)
        .counter("zigzag_generation_tokens_total", "Tokens generated", m.generationTokens)
        .counter(
          "zigzag_requests_finished_total",
          "Finished requests by finish reason",
          ["stop", "length", "cancelled", "abort", "error"].map((
            k,
          ) => [{ finish_reason: k }, m.finished.get(k) ?? 0]),
        )
        .counter(
          "zigzag_requests_rejected_total",
          "Requests refused with 429 because the queue was full",
          [[{ reason: "queue_full" }, m.rejected.get("queue_full") ?? 0]],
        )
        .counter(
          "zigzag_decode_readbacks_total",
          "Batched decode calls (one readback each)",
          m.decodeCalls,
        )
        .counter("zigzag_decode_rows_total", "Sequences carried by decode calls", m.decodeRows)
        .counter(
          "zigzag_decode_overlapped_total",
          "Decode calls queued behind one in flight, before its readback",
          m.decodeOverlapped,
        )
        .counter(
          "zigzag_prefix_cache_queries_total",
          "Prompt tokens looked up in the prefix cache (vLLM's prefix_cache_queries)",
          m.prefixCacheQueries,
        )
        .counter(
          "zigzag_prefix_cache_hits_total",
          "Prompt tokens restored from the prefix cache instead of computed",
          m.prefixCacheHits,
        )
        .gauge(
          "zigzag_kv_cache_cached_bytes",
          "KV-cache bytes the prefix cache holds (its pages and snapshot rings), by layer kind",
          kinds.map((k) => [{ kind: k }, st[k].bytes_cached]),
        )
        .gauge(
          "zigzag_kv_cache_pages_cached",
          "Pages registered in the prefix cache (shared or idle; idle ones count as free)",
          st.total.pages_cached,
        )
        // vLLM's cache_config_info: the configuration as labels, value 1 (the Inference
        // Extension's "cache info" metric; a picker reads the block size from it).
        .gauge(
          "zigzag_cache_config_info",
          "KV-cache configuration (labels): page size, pages, ring length, KV dtype, plan mode",
          [[{
            block_size: String(st.geometry.page_size),
            num_gpu_blocks: String(st.pages_total),
            ring_length: String(st.geometry.ring_length),
            kv_cache_dtype: st.geometry.kv_dtype,
            plan_mode: st.plan.mode,
            prefix_caching: String(st.prefix_cache !== null),
          }, 1]],
        );
    }
    return c.body(e.toString(), 200, {
      "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
    });
  });
  return app;
}

/** A ring's labels: its kind and window (an elastic window's growth and largest recent too). */
function ringLabels(
  r: { kind: string; sink: number; recent: number; growth?: number; max_recent?: number },
): Record<string, string> {
  return {
    kind: r.kind,
    sink: String(r.sink),
    recent: String(r.recent),
    ...(r.growth ? { growth: String(r.growth), max_recent: String(r.max_recent) } : {}),
  };
}
