// What every JSON POST route does first: take the engine (503 while loading or shutting down),
// parse the body with the route's schema (415 unless JSON, 400 naming the field) and check its
// `model` (404).

import { type Context, Hono } from "hono";
import type { z } from "zod";
import type { Engine } from "../engine/engine.ts";
import type { Tokenizer } from "../model/types.ts";
import { parseBody } from "./body.ts";
import type { ServerContext } from "./context.ts";
import { ApiError, badField } from "./errors.ts";

/** A route's body: whatever its schema holds, with the optional `model` every route takes. */
type RouteBody = z.ZodType<{ model?: string | null }, z.ZodTypeDef, unknown>;

/** A route as the API document (GET /openapi.json) describes it. */
export interface ApiRoute {
  method: "GET" | "POST";
  path: string;
  /** The schema the route parses its JSON body with (POST routes made by postRoute). */
  body?: z.ZodTypeAny;
}

/** Each postRoute app's body schemas, by path: what apiRoutes reads. */
const bodySchemas = new WeakMap<Hono, Map<string, z.ZodTypeAny>>();

/** `POST path`, handled with the engine and the parsed, checked body. */
export function postRoute<S extends RouteBody>(
  ctx: ServerContext,
  path: string,
  schema: S,
  handle: (c: Context, engine: Engine, body: z.infer<S>) => Response | Promise<Response>,
): Hono {
  const app = new Hono();
  app.post(path, async (c) => {
    const engine = ctx.engine();
    const body = await parseBody(c, schema);
    checkModel(ctx, body.model);
    return await handle(c, engine, body);
  });
  bodySchemas.set(app, new Map([[path, schema]]));
  return app;
}

/**
 * The GET and POST routes a route module's app serves, as Hono registered them, each POST with
 * the schema postRoute parses its body with: what the app assembles the API document from.
 */
export function apiRoutes(app: Hono): ApiRoute[] {
  const bodies = bodySchemas.get(app);
  const seen = new Set<string>();
  const out: ApiRoute[] = [];
  for (const r of app.routes) {
    const method = r.method.toUpperCase();
    if ((method !== "GET" && method !== "POST") || seen.has(`${method} ${r.path}`)) continue;
    seen.add(`${method} ${r.path}`);
    const body = method === "POST" ? bodies?.get(r.path) : undefined;
    out.push(body ? { method, path: r.path, body } : { method, path: r.path });
  }
  return out;
}

/** Checks a request's `model` field: absent, or a name this server answers to. */
export function checkModel(ctx: ServerContext, model: string | null | undefined): void {
  if (model === undefined || model === null) return;
  if (!ctx.acceptsModel(model)) {
    throw new ApiError(
      404,
      `model: the model \`${model}\` does not exist; this server serves \`${ctx.modelId}\``,
      "invalid_request_error",
      "model",
      "model_not_found",
    );
  }
}

/** The tokenizer, or a 400 on `field` saying text needs one. */
export function needTokenizer(engine: Engine, field: string): Tokenizer {
  const tok = engine.tokenizer;
  if (!tok) {
    throw badField(field, "this model has no tokenizer: send token ids", "no_tokenizer");
  }
  return tok;
}

/** Token ids checked against the vocabulary; a 400 names `field[i]` of the first outside it. */
export function checkTokenIds(engine: Engine, ids: readonly number[], field: string): void {
  const vocab = engine.config.vocabSize;
  const bad = ids.findIndex((id) => id >= vocab);
  if (bad >= 0) {
    throw badField(`${field}[${bad}]`, `token id ${ids[bad]} is outside the vocabulary (${vocab})`);
  }
}
