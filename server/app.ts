// The Hono app, assembled in one place: error shape, body limit, API key, then the routes.

import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { cacheStatsRoute } from "../routes/cache_stats.ts";
import { chatRoute } from "../routes/chat.ts";
import { completionsRoute } from "../routes/completions.ts";
import { detokenizeRoute } from "../routes/detokenize.ts";
import { generateRoute } from "../routes/generate.ts";
import { healthRoute } from "../routes/health.ts";
import { metricsRoute } from "../routes/metrics.ts";
import { modelsRoute } from "../routes/models.ts";
import { tokenizeRoute } from "../routes/tokenize.ts";
import type { ServerContext } from "./context.ts";
import { ApiError, sendError } from "./errors.ts";

/** Routes that need the API key when one is set (/health and /metrics stay open for probes). */
function needsKey(path: string): boolean {
  return path.startsWith("/v1/") || path === "/tokenize" || path === "/detokenize";
}

/** Compares in time independent of where the strings differ. */
function sameKey(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

export function createApp(ctx: ServerContext): Hono {
  const app = new Hono();

  app.onError((err, c) => {
    if (err instanceof ApiError) return sendError(c, err);
    if (err instanceof HTTPException) {
      return sendError(c, new ApiError(err.status as 400, err.message || "bad request"));
    }
    console.error(`zigzag: ${c.req.method} ${c.req.path}: ${err.stack ?? err}`);
    return sendError(
      c,
      new ApiError(500, `internal error: ${err.message}`, "server_error", null, "internal_error"),
    );
  });
  app.notFound((c) =>
    sendError(
      c,
      new ApiError(
        404,
        `no route ${c.req.method} ${c.req.path}`,
        "not_found_error",
        null,
        "not_found",
      ),
    )
  );

  const maxBytes = Math.floor(ctx.config.maxBodyMb * (1 << 20));
  app.use(
    "*",
    bodyLimit({
      maxSize: maxBytes,
      onError: (c) =>
        sendError(
          c,
          new ApiError(
            413,
            `body: the request body exceeds the limit of ${maxBytes} bytes (--max-body-mb)`,
            "invalid_request_error",
            "body",
            "body_too_large",
          ),
        ),
    }),
  );

  const key = ctx.config.apiKey;
  if (key !== undefined) {
    app.use("*", async (c, next) => {
      if (!needsKey(c.req.path)) return await next();
      const auth = c.req.header("authorization") ?? "";
      const m = /^Bearer\s+(.+)$/i.exec(auth.trim());
      const given = m?.[1] ?? c.req.header("x-api-key");
      if (given === undefined || !sameKey(given, key)) {
        c.header("WWW-Authenticate", "Bearer");
        return sendError(
          c,
          new ApiError(
            401,
            given === undefined
              ? "Authorization: missing API key; send `Authorization: Bearer <key>`"
              : "Authorization: invalid API key",
            "authentication_error",
            "Authorization",
            "invalid_api_key",
          ),
        );
      }
      return await next();
    });
  }

  for (
    const route of [
      healthRoute,
      metricsRoute,
      modelsRoute,
      generateRoute,
      completionsRoute,
      chatRoute,
      tokenizeRoute,
      detokenizeRoute,
      cacheStatsRoute,
    ]
  ) {
    app.route("/", route(ctx));
  }
  return app;
}
