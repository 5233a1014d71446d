// GET /openapi.json: the document lists every route the app mounts, and every field of every
// route's zod schema (walked from the live schemas, nested objects included) is in its request
// body, strict objects closed and required fields required. Built in-process from createApp (no
// model, no GPU), then fetched over HTTP from a server whose model never loads.

import assert from "node:assert/strict";
import { z } from "zod";
import denoJson from "../deno.json" with { type: "json" };
import { ChatRequest } from "../routes/chat.ts";
import { CompletionRequest } from "../routes/completions.ts";
import { DetokenizeRequest } from "../routes/detokenize.ts";
import { GenerateRequest } from "../routes/generate.ts";
import { OPENAPI_PATH, ROUTE_DOCS } from "../routes/openapi.ts";
import { TokenizeRequest } from "../routes/tokenize.ts";
import { createApp } from "../server/app.ts";
import { serverConfig } from "../server/config.ts";
import { ServerContext } from "../server/context.ts";
import { startServer } from "../server/serve.ts";
import { serverTest, STORIES } from "./server_helpers.ts";

/** Each POST route's request schema, as the route modules export them. */
const SCHEMAS: Record<string, z.ZodTypeAny> = {
  "/v1/generate": GenerateRequest,
  "/v1/completions": CompletionRequest,
  "/v1/chat/completions": ChatRequest,
  "/tokenize": TokenizeRequest,
  "/detokenize": DetokenizeRequest,
};

// deno-lint-ignore no-explicit-any
type Json = any;

function buildApp() {
  return createApp(new ServerContext(serverConfig({ model: STORIES })));
}

async function inProcessDocument(): Promise<Json> {
  const res = await buildApp().request(OPENAPI_PATH);
  assert.deepEqual(res.status, 200);
  return await res.json();
}

/**
 * What a zod schema promises, as strings: `a.b` for each object key (`[]` for array items),
 * `a.b!` for a required one, `a#strict` for a strict object. Unwraps refinements, optional,
 * nullable, defaults and union members.
 */
function zodFacts(schema: z.ZodTypeAny, at = "", out = new Set<string>()): Set<string> {
  const s = schema;
  if (s instanceof z.ZodEffects) return zodFacts(s.innerType(), at, out);
  if (s instanceof z.ZodOptional || s instanceof z.ZodNullable) {
    return zodFacts(s.unwrap(), at, out);
  }
  if (s instanceof z.ZodDefault) return zodFacts(s.removeDefault(), at, out);
  if (s instanceof z.ZodUnion) {
    for (const o of s.options as z.ZodTypeAny[]) zodFacts(o, at, out);
  } else if (s instanceof z.ZodArray) {
    zodFacts(s.element, `${at}[]`, out);
  } else if (s instanceof z.ZodRecord) {
    zodFacts(s.valueSchema, `${at}{}`, out);
  } else if (s instanceof z.ZodObject) {
    if (s._def.unknownKeys === "strict") out.add(`${at}#strict`);
    for (const [k, v] of Object.entries(s.shape as z.ZodRawShape)) {
      const p = at === "" ? k : `${at}.${k}`;
      out.add(p);
      if (!v.isOptional()) out.add(`${p}!`);
      zodFacts(v, p, out);
    }
  }
  return out;
}

/** The same facts read from a JSON Schema. */
function jsonFacts(schema: Json, at = "", out = new Set<string>()): Set<string> {
  if (typeof schema !== "object" || schema === null) return out;
  for (const o of schema.anyOf ?? []) jsonFacts(o, at, out);
  for (const o of schema.oneOf ?? []) jsonFacts(o, at, out);
  if (schema.items) jsonFacts(schema.items, `${at}[]`, out);
  if (schema.properties) {
    if (schema.additionalProperties === false) out.add(`${at}#strict`);
    for (const [k, v] of Object.entries(schema.properties)) {
      const p = at === "" ? k : `${at}.${k}`;
      out.add(p);
      if ((schema.required ?? []).includes(k)) out.add(`${p}!`);
      jsonFacts(v, p, out);
    }
  } else if (typeof schema.additionalProperties === "object") {
    jsonFacts(schema.additionalProperties, `${at}{}`, out);
  }
  return out;
}

function bodyOf(doc: Json, path: string): Json {
  return doc.paths[path]?.post?.requestBody?.content?.["application/json"]?.schema;
}

/** The variant of an `anyOf [X, {type: "null"}]` (a nullish field) that is not null. */
function nonNull(s: Json): Json {
  if (!s.anyOf) return s;
  const rest = s.anyOf.filter((o: Json) => o.type !== "null");
  assert.deepEqual(rest.length, 1, JSON.stringify(s));
  return rest[0];
}

Deno.test("the OpenAPI document is 3.1 with an info block and every mounted route", async () => {
  const doc = await inProcessDocument();
  assert.ok(String(doc.openapi).startsWith("3.1."), doc.openapi);
  assert.deepEqual(doc.info.title, "zigzag");
  assert.deepEqual(doc.info.version, denoJson.version);
  assert.ok(doc.components.schemas.Error);

  // Every GET and POST route Hono serves is documented, with a summary of its own.
  const mounted = new Set(
    buildApp().routes.filter((r) => r.method === "GET" || r.method === "POST")
      .map((r) => `${r.method} ${r.path}`),
  );
  for (
    const r of [
      "GET /health",
      "GET /metrics",
      "GET /v1/models",
      "GET /v1/cache/stats",
      "GET /openapi.json",
      "POST /tokenize",
      "POST /detokenize",
    ]
  ) {
    assert.ok(mounted.has(r), `${r} is not mounted`);
  }
  const documented = new Set<string>();
  for (const [path, ops] of Object.entries(doc.paths as Record<string, Json>)) {
    for (const [method, op] of Object.entries(ops as Record<string, Json>)) {
      documented.add(`${method.toUpperCase()} ${path}`);
      assert.ok(op.responses?.["200"]?.description, `${method} ${path}: no 200 response`);
      assert.ok(op.operationId);
    }
  }
  assert.deepEqual([...documented].sort(), [...mounted].sort());
  for (const r of mounted) assert.ok(ROUTE_DOCS[r], `${r} has no summary in ROUTE_DOCS`);

  // Each POST takes a JSON body; the ones this test knows the schema of are all of them.
  const posts = [...mounted].filter((r) => r.startsWith("POST ")).map((r) => r.slice(5));
  for (const p of posts) {
    assert.deepEqual(bodyOf(doc, p)?.type, "object", `POST ${p}: no JSON body`);
  }
  assert.deepEqual(posts.sort(), Object.keys(SCHEMAS).sort());

  // Streaming routes say so; /metrics is text.
  for (const p of ["/v1/generate", "/v1/completions", "/v1/chat/completions"]) {
    assert.ok(doc.paths[p].post.responses["200"].content["text/event-stream"], p);
  }
  assert.ok(doc.paths["/metrics"].get.responses["200"].content["text/plain"]);
});

Deno.test("every field of every route's zod schema is in the document", async () => {
  const doc = await inProcessDocument();
  for (const [path, schema] of Object.entries(SCHEMAS)) {
    const want = zodFacts(schema);
    assert.ok(want.size > 2, `${path}: the schema walk found nothing`);
    assert.ok(want.has("#strict"), `${path}: expected a strict object`);
    const got = jsonFacts(bodyOf(doc, path));
    const missing = [...want].filter((f) => !got.has(f));
    assert.deepEqual(missing, [], `POST ${path}: in the zod schema, not in the document`);
  }
});

Deno.test("the converted schemas keep types, bounds, enums and unions", async () => {
  const doc = await inProcessDocument();
  const completion = bodyOf(doc, "/v1/completions");
  assert.deepEqual(completion.additionalProperties, false);
  assert.deepEqual(completion.required, ["prompt"]);
  // 0 is allowed with echo (the handler refuses it otherwise); elsewhere max_tokens is >= 1.
  assert.deepEqual(nonNull(completion.properties.max_tokens), { type: "integer", minimum: 0 });
  assert.deepEqual(
    nonNull(bodyOf(doc, "/v1/generate").properties.max_tokens),
    { type: "integer", minimum: 1 },
  );
  assert.deepEqual(nonNull(bodyOf(doc, "/v1/generate").properties.prompt_logprobs), {
    type: "integer",
    minimum: 0,
    maximum: 20,
  });
  assert.deepEqual(completion.properties.stream.type, ["boolean", "null"]);
  assert.deepEqual(nonNull(completion.properties.top_p).exclusiveMinimum, 0);
  assert.deepEqual(completion.properties.prompt.anyOf.length, 4);
  assert.deepEqual(nonNull(completion.properties.logprobs), {
    type: "integer",
    minimum: 0,
    maximum: 20,
  });

  const chat = bodyOf(doc, "/v1/chat/completions");
  assert.deepEqual(chat.required, ["messages"]);
  const message = chat.properties.messages.items;
  assert.deepEqual(message.additionalProperties, false);
  assert.deepEqual(message.properties.role.enum, [
    "system",
    "user",
    "assistant",
    "tool",
    "developer",
  ]);
  assert.deepEqual(nonNull(chat.properties.response_format).properties.type.const, "text");
  assert.deepEqual(
    nonNull(chat.properties.stream_options).properties.include_usage.type,
    ["boolean", "null"],
  );

  assert.deepEqual(bodyOf(doc, "/detokenize").properties.tokens, {
    type: "array",
    items: { type: "integer", minimum: 0 },
  });
  // Inline schemas only: no per-schema $schema keyword inside the document.
  assert.ok(!JSON.stringify(doc).includes('"$schema"'));
});

Deno.test(
  "GET /openapi.json over HTTP is the document, with no model loaded",
  serverTest,
  async () => {
    const s = startServer(serverConfig({ model: "/nonexistent/zigzag/model", port: 0 }), {
      log: () => {},
    });
    try {
      await s.loaded.then(() => assert.ok(false, "the model loaded"), () => {});
      const res = await fetch(`${s.url}${OPENAPI_PATH}`);
      assert.deepEqual(res.status, 200);
      assert.ok(res.headers.get("content-type")?.startsWith("application/json"));
      assert.deepEqual(await res.json(), await inProcessDocument());
    } finally {
      await s.shutdown(0);
    }
  },
);
