// GET /openapi.json: an OpenAPI 3.1 document of the API. Its paths are the routes the app mounts
// (server/app.ts collects them from each route module's Hono app), and each POST's request body is
// the zod schema the route validates with, converted by zod-to-json-schema: a field added to or
// dropped from a schema shows here with no second copy to keep in step. Strict objects render as
// `additionalProperties: false`; optional fields are left out of `required` and nullable ones
// accept `null` (`anyOf [..., {type: "null"}]`). Refinements (a value that must be 0, `suffix` that
// must be empty) are checks beyond JSON Schema: the 400 names them.

import { Hono } from "hono";
import { z } from "zod";
import { zodToJsonSchema } from "zod-to-json-schema";
import denoJson from "../deno.json" with { type: "json" };
import { type ApiRoute, apiRoutes } from "../server/route.ts";

export const OPENAPI_PATH = "/openapi.json";

/** What a route is for and what it answers; keyed `METHOD path`. */
interface RouteDoc {
  summary: string;
  /** The 200 answer. */
  response: string;
  /** The 200 answer's content types (application/json unless said; a body schema with `stream`
   * adds text/event-stream). */
  content?: string[];
  /** Answers besides 200 and errors in the error shape (e.g. /health's 503). */
  others?: Record<string, string>;
}

/** Every route's summary; tests/openapi_test.ts checks that each mounted route has one. */
export const ROUTE_DOCS: Record<string, RouteDoc> = {
  "GET /health": {
    summary: "Readiness",
    response: '{"status": "ok", "model"} once the model is loaded',
    others: {
      "503":
        '{"status", "reason"} while the model loads, after a failed start and while shutting ' +
        "down (with Retry-After)",
    },
  },
  "GET /metrics": {
    summary: "Prometheus metrics",
    response: "Requests, KV-cache usage, latency histograms and token counts in Prometheus text " +
      "format 0.0.4",
    content: ["text/plain"],
  },
  "GET /v1/models": {
    summary: "List models",
    response: "The one model this server serves, in OpenAI's list shape",
  },
  "POST /v1/generate": {
    summary: "Generate",
    response: "The generated text and token ids (server-sent events with `stream`)",
  },
  "POST /v1/completions": {
    summary: "Create completion (OpenAI legacy completions)",
    response: "A text_completion (text_completion chunks as server-sent events with `stream`)",
  },
  "POST /v1/chat/completions": {
    summary: "Create chat completion (OpenAI chat completions)",
    response: "A chat.completion (chat.completion.chunk events with `stream`)",
  },
  "POST /tokenize": {
    summary: "Tokenize",
    response: "{tokens, count, max_model_len}: the prompt's (or rendered messages') token ids",
  },
  "POST /detokenize": {
    summary: "Detokenize",
    response: "{prompt}: the text of the token ids",
  },
  "GET /v1/cache/stats": {
    summary: "KV-cache statistics",
    response: "The KV-cache manager's figures per layer kind and in total, the pool's geometry " +
      "and the plan being served",
  },
  "GET /openapi.json": {
    summary: "This document",
    response: "The OpenAPI 3.1 document of this API",
  },
};

/** The error shape every failure answers with (server/errors.ts). */
const ErrorBody = z.object({
  error: z.object({
    message: z.string(),
    type: z.string(),
    param: z.string().nullable(),
    code: z.string().nullable(),
  }),
});

/** A zod schema as JSON Schema (draft 7 keywords, which OpenAPI 3.1's dialect includes), inline. */
export function jsonSchema(schema: z.ZodTypeAny): Record<string, unknown> {
  const out: Record<string, unknown> = zodToJsonSchema(schema, {
    target: "jsonSchema7",
    $refStrategy: "none",
    // Strict objects (an unknown field is a 400) get `additionalProperties: false`; others not.
    removeAdditionalStrategy: "strict",
  });
  delete out.$schema;
  return out;
}

/** The top-level object of a body schema, through refinements, transforms and defaults. */
function objectOf(schema: z.ZodTypeAny): z.ZodObject<z.ZodRawShape> | null {
  let s: z.ZodTypeAny = schema;
  for (;;) {
    if (s instanceof z.ZodObject) return s;
    if (s instanceof z.ZodEffects) s = s.innerType();
    else if (s instanceof z.ZodDefault) s = s.removeDefault();
    else if (s instanceof z.ZodBranded || s instanceof z.ZodReadonly) s = s.unwrap();
    else if (s instanceof z.ZodPipeline) s = s._def.in;
    else return null;
  }
}

function operationId(method: string, path: string): string {
  const words = path.split(/[^A-Za-z0-9]+/).filter((w) => w !== "");
  return method.toLowerCase() + words.map((w) => w[0].toUpperCase() + w.slice(1)).join("");
}

/** The OpenAPI 3.1 document of `routes` (this route's own included by openapiRoute). */
export function openApiDocument(routes: readonly ApiRoute[]): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const errorContent = {
    "application/json": { schema: { $ref: "#/components/schemas/Error" } },
  };
  for (const r of routes) {
    const doc = ROUTE_DOCS[`${r.method} ${r.path}`];
    const streams = r.body !== undefined && "stream" in (objectOf(r.body)?.shape ?? {});
    const types = doc?.content ?? ["application/json"];
    const content: Record<string, object> = {};
    for (const t of streams ? [...types, "text/event-stream"] : types) content[t] = {};
    const responses: Record<string, unknown> = {
      "200": { description: doc?.response ?? "OK", content },
    };
    for (const [status, description] of Object.entries(doc?.others ?? {})) {
      responses[status] = { description, content: { "application/json": {} } };
    }
    responses.default = {
      description: 'An error: {"error": {"message", "type", "param", "code"}}',
      content: errorContent,
    };
    const op: Record<string, unknown> = {
      operationId: operationId(r.method, r.path),
      summary: doc?.summary ?? `${r.method} ${r.path}`,
    };
    if (r.body !== undefined) {
      op.requestBody = {
        required: true,
        content: { "application/json": { schema: jsonSchema(r.body) } },
      };
    }
    op.responses = responses;
    (paths[r.path] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "zigzag",
      version: denoJson.version,
      description: "An LLM inference server with an OpenAI-compatible API. With --api-key set, " +
        "/v1/*, /tokenize and /detokenize need `Authorization: Bearer <key>` or `X-Api-Key`.",
    },
    paths,
    components: {
      schemas: { Error: jsonSchema(ErrorBody) },
      securitySchemes: {
        bearer: { type: "http", scheme: "bearer" },
        apiKey: { type: "apiKey", in: "header", name: "X-Api-Key" },
      },
    },
  };
}

/** GET /openapi.json for `routes` and itself; the document is built once, on the first request. */
export function openapiRoute(routes: readonly ApiRoute[]): Hono {
  const app = new Hono();
  let doc: Record<string, unknown> | null = null;
  app.get(OPENAPI_PATH, (c) => {
    doc ??= openApiDocument([...routes, ...apiRoutes(app)]);
    return c.json(doc);
  });
  return app;
}
