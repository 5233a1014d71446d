// GET /v1/models: the one model this server serves, in OpenAI's list shape.

import { Hono } from "hono";
import type { ServerContext } from "../server/context.ts";

export function modelsRoute(ctx: ServerContext): Hono {
  const app = new Hono();
  app.get("/v1/models", (c) => {
    const engine = ctx.engine();
    return c.json({
      object: "list",
      data: [{
        id: ctx.modelId,
        object: "model",
        created: Math.floor(ctx.startedAt / 1000),
        owned_by: "zigzag",
        root: ctx.config.model,
        max_model_len: engine.limits.context,
      }],
    });
  });
  return app;
}
