// GET /health: 200 {"status": "ok"} once the model is loaded; 503 {"status", "reason"} while it
// loads, after a failed start and while shutting down.

import { Hono } from "hono";
import type { ServerContext } from "../server/context.ts";

export function healthRoute(ctx: ServerContext): Hono {
  const app = new Hono();
  app.get("/health", (c) => {
    if (ctx.state === "ready") return c.json({ status: "ok", model: ctx.modelId });
    c.header("Retry-After", "5");
    return c.json({ status: ctx.state, reason: ctx.reason }, 503);
  });
  return app;
}
