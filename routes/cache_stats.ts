// GET /v1/cache/stats: the KV-cache manager's figures (per layer kind and total: tokens, bytes
// reserved and used, pages used and free; sequences; the full-attention equivalent and the
// ratio), the pool's geometry and the plan being served.

import { Hono } from "hono";
import type { ServerContext } from "../server/context.ts";

export function cacheStatsRoute(ctx: ServerContext): Hono {
  const app = new Hono();
  app.get("/v1/cache/stats", (c) => {
    const { session, scheduler } = ctx.engine();
    const cache = session.runner.cache;
    const g = cache.geometry;
    const plan = session.plan;
    const count = (k: string) => plan.layers.filter((l) => l.kind === k).length;
    return c.json({
      ...cache.stats(),
      pages_total: cache.numPages,
      max_sequences: cache.maxSeqs,
      requests: { running: scheduler.running, waiting: scheduler.waiting },
      per_sequence: scheduler.sequences(),
      geometry: {
        kv_dtype: session.runner.precision,
        page_size: cache.pageSize,
        page_bytes: g.pageBytes,
        ring_length: g.ringLength,
        ring_bytes: g.ringBytes,
        retrieval_kv_heads: g.retrievalHeads,
        streaming_kv_heads: g.streamingHeads,
        full_token_bytes: g.tokenBytes(
          session.model.config.nLayers * session.model.config.nKvHeads,
        ),
      },
      plan: {
        mode: plan.mode,
        source: ctx.config.plan ?? "full",
        sink: plan.sink,
        recent: plan.recent,
        layers_by_kind: {
          retrieval: count("retrieval"),
          streaming: count("streaming"),
          mixed: count("mixed"),
        },
        layers: plan.layers.map((l) => ({
          kind: l.kind,
          retrieval_kv_heads: l.retrievalKvHeads,
          streaming_kv_heads: l.streamingKvHeads,
        })),
      },
    });
  });
  return app;
}
