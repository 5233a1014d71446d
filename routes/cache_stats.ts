// GET /v1/cache/stats: the KV-cache manager's figures (per layer kind and total: tokens, bytes
// reserved and used, pages used and free; sequences; the full-attention equivalent and the
// ratio), the pool's geometry and the plan being served.

import { Hono } from "hono";
import type { ServerContext } from "../server/context.ts";

export function cacheStatsRoute(ctx: ServerContext): Hono {
  const app = new Hono();
  app.get("/v1/cache/stats", (c) => c.json(ctx.engine().cacheReport()));
  return app;
}
