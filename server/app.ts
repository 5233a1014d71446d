// The Hono app, assembled in one place: error shape, CORS, body limit, API key, then the routes.

import { Hono, type MiddlewareHandler } from "hono";
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
import { openapiRoute } from "../routes/openapi.ts";
import { tokenizeRoute } from "../routes/tokenize.ts";
import type { ServerContext } from "./context.ts";
import { ApiError, sendError } from "./errors.ts";
import { type ApiRoute, apiRoutes } from "./route.ts";

/** Routes that need the API key when one is set (/health and /metrics stay open for probes). */
function needsKey(path: string): boolean {
  return path.startsWith("/v1/") || path === "/tokenize" || path === "/detokenize";
}

async function sha256(s: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));
}

/**
 * Whether `given` is the key whose SHA-256 is `keyDigest`. Comparing fixed-length digests with no
 * early exit takes the same time whatever the given key's length or where it differs.
 */
export async function sameKey(given: string, keyDigest: Uint8Array): Promise<boolean> {
  const d = await sha256(given);
  let diff = 0;
  for (let i = 0; i < d.length; i++) diff |= d[i] ^ keyDigest[i];
  return diff === 0;
}

const CORS_METHODS = "GET, POST, OPTIONS";
const CORS_HEADERS = ["Authorization", "Content-Type", "X-Api-Key"];

/**
 * CORS for the listed origins only (--allowed-origins). A listed origin's preflight gets 204 with
 * the methods and the headers it asked for (the origin is trusted; the OpenAI SDK sends its own
 * x-stainless-* headers) plus Authorization, Content-Type and X-Api-Key; its requests get
 * `Access-Control-Allow-Origin` echoing it. Any other origin's preflight is a 403 with no CORS
 * headers, so the browser never sends the request; its other requests get no CORS headers, so
 * the page cannot read the answer. Preflights carry no key, so this runs before the key check.
 */
function cors(origins: readonly string[]): MiddlewareHandler {
  const allowed = new Set(origins);
  return async (c, next) => {
    const origin = c.req.header("origin");
    const requested = c.req.header("access-control-request-method");
    if (c.req.method === "OPTIONS" && origin !== undefined && requested !== undefined) {
      if (!allowed.has(origin)) {
        c.header("Vary", "Origin");
        return sendError(
          c,
          new ApiError(
            403,
            `Origin: \`${origin}\` is not allowed to call this API from a browser (--allowed-origins)`,
            "permission_error",
            "Origin",
            "origin_not_allowed",
          ),
        );
      }
      const asked = (c.req.header("access-control-request-headers") ?? "").split(",")
        .map((h) => h.trim()).filter((h) => h !== "");
      const known = new Set(CORS_HEADERS.map((h) => h.toLowerCase()));
      const headers = [...CORS_HEADERS, ...asked.filter((h) => !known.has(h.toLowerCase()))];
      return c.body(null, 204, {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Allow-Headers": headers.join(", "),
        "Access-Control-Max-Age": "600",
        "Vary": "Origin, Access-Control-Request-Headers",
      });
    }
    await next();
    if (allowed.size === 0) return;
    // Whether the answer carries the header depends on Origin: caches must not mix them up.
    c.res.headers.append("Vary", "Origin");
    if (origin !== undefined && allowed.has(origin)) {
      c.res.headers.set("Access-Control-Allow-Origin", origin);
      c.res.headers.set("Access-Control-Expose-Headers", "Retry-After");
    }
  };
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

  app.use("*", cors(ctx.config.allowedOrigins ?? []));

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
    const keyDigest = sha256(key);
    app.use("*", async (c, next) => {
      if (!needsKey(c.req.path)) return await next();
      const auth = c.req.header("authorization") ?? "";
      const m = /^Bearer\s+(.+)$/i.exec(auth.trim());
      const given = m?.[1] ?? c.req.header("x-api-key");
      if (given === undefined || !(await sameKey(given, await keyDigest))) {
        c.header("WWW-Authenticate", "Bearer");
        return sendError(
          c,
          new ApiError(
            401,
            given === undefined
              ? "Authorization: missing API key; send `Authorization: Bearer <key>` or `X-Api-Key: <key>`"
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

  // Every route module's routes, for the API document (GET /openapi.json).
  const api: ApiRoute[] = [];
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
    const sub = route(ctx);
    app.route("/", sub);
    api.push(...apiRoutes(sub));
  }
  app.route("/", openapiRoute(api));
  return app;
}
