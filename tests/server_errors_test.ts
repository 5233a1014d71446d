// Bad input: each malformed request gets the right status and an OpenAI-shaped error naming the
// field, while a long request keeps running undisturbed; a request afterwards still succeeds.
// Also: /health and 503s while the model loads.

import assert from "node:assert/strict";
import { createApp } from "../server/app.ts";
import { serverConfig } from "../server/config.ts";
import { ServerContext } from "../server/context.ts";
import { post, serverTest, sseData, startTestServer, STORIES } from "./server_helpers.ts";

const KEY = "test-key-123";
const AUTH = { authorization: `Bearer ${KEY}` };

interface Case {
  name: string;
  path?: string;
  body?: unknown;
  headers?: Record<string, string>;
  method?: string;
  status: number;
  /** The field the error must name (in `param` and at the start of `message`). */
  param: string | null;
  /** Also expected in the message. */
  says?: RegExp;
}

const C = "/v1/completions";
const CHAT = "/v1/chat/completions";
const GEN = "/v1/generate";
const msg = [{ role: "user", content: "hi" }];
const LONG = "The cat sat on the mat and looked at the big red ball. ".repeat(40);

const CASES: Case[] = [
  { name: "not JSON", body: "not json", status: 400, param: "body", says: /malformed JSON/ },
  { name: "empty body", body: "", status: 400, param: "body" },
  { name: "trailing comma", body: '{"prompt": "x",}', status: 400, param: "body" },
  { name: "JSON array", body: "[1, 2]", status: 400, param: "body", says: /object/ },
  { name: "no prompt", body: {}, status: 400, param: "prompt", says: /required/ },
  { name: "prompt a number", body: { prompt: 5 }, status: 400, param: "prompt" },
  {
    name: "max_tokens string",
    body: { prompt: "x", max_tokens: "10" },
    status: 400,
    param: "max_tokens",
  },
  { name: "max_tokens 0", body: { prompt: "x", max_tokens: 0 }, status: 400, param: "max_tokens" },
  {
    name: "max_tokens 1.5",
    body: { prompt: "x", max_tokens: 1.5 },
    status: 400,
    param: "max_tokens",
  },
  {
    name: "temperature < 0",
    body: { prompt: "x", temperature: -1 },
    status: 400,
    param: "temperature",
  },
  {
    name: "temperature > 2",
    body: { prompt: "x", temperature: 3 },
    status: 400,
    param: "temperature",
  },
  { name: "top_p 0", body: { prompt: "x", top_p: 0 }, status: 400, param: "top_p" },
  { name: "top_p > 1", body: { prompt: "x", top_p: 1.5 }, status: 400, param: "top_p" },
  { name: "top_k < -1", body: { prompt: "x", top_k: -2 }, status: 400, param: "top_k" },
  { name: "min_p > 1", body: { prompt: "x", min_p: 2 }, status: 400, param: "min_p" },
  { name: "seed a string", body: { prompt: "x", seed: "abc" }, status: 400, param: "seed" },
  { name: "stop a number", body: { prompt: "x", stop: 5 }, status: 400, param: "stop" },
  { name: "stream a string", body: { prompt: "x", stream: "yes" }, status: 400, param: "stream" },
  { name: "n = 65", body: { prompt: "x", n: 65 }, status: 400, param: "n" },
  { name: "best_of < n", body: { prompt: "x", n: 3, best_of: 2 }, status: 400, param: "best_of" },
  { name: "logprobs 21", body: { prompt: "x", logprobs: 21 }, status: 400, param: "logprobs" },
  { name: "echo a string", body: { prompt: "x", echo: "yes" }, status: 400, param: "echo" },
  {
    name: "presence_penalty 2.5",
    body: { prompt: "x", presence_penalty: 2.5 },
    status: 400,
    param: "presence_penalty",
  },
  {
    name: "repetition_penalty 0",
    body: { prompt: "x", repetition_penalty: 0 },
    status: 400,
    param: "repetition_penalty",
  },
  {
    name: "logit_bias id outside the vocabulary",
    body: { prompt: "x", logit_bias: { "512": 5 } },
    status: 400,
    param: "logit_bias",
    says: /outside the vocabulary/,
  },
  {
    name: "logit_bias key not a token id",
    body: { prompt: "x", logit_bias: { "cat": 5 } },
    status: 400,
    param: "logit_bias",
  },
  {
    name: "unknown model",
    body: { prompt: "x", model: "gpt-4" },
    status: 404,
    param: "model",
    says: /gpt-4/,
  },
  {
    name: "token id outside the vocabulary",
    body: { prompt: [1, 99999] },
    status: 400,
    param: "prompt[1]",
    says: /vocabulary/,
  },
  { name: "negative token id", body: { prompt: [-1] }, status: 400, param: "prompt[0]" },
  { name: "two prompts", body: { prompt: ["a", "b"] }, status: 400, param: "prompt" },
  {
    name: "prompt + max_tokens over the context",
    body: { prompt: "x", max_tokens: 600 },
    status: 400,
    param: "max_tokens",
    says: /context of 512/,
  },
  {
    name: "prompt longer than the context",
    body: { prompt: LONG },
    status: 400,
    param: "prompt",
    says: /context/,
  },
  {
    name: "stop id outside the vocabulary",
    body: { prompt: "x", stop_token_ids: [100000] },
    status: 400,
    param: "stop_token_ids[0]",
  },
  {
    name: "stream_options.include_usage a string",
    body: { prompt: "x", stream_options: { include_usage: "y" } },
    status: 400,
    param: "stream_options.include_usage",
  },
  { name: "chat: no messages", path: CHAT, body: {}, status: 400, param: "messages" },
  {
    name: "chat: empty messages",
    path: CHAT,
    body: { messages: [] },
    status: 400,
    param: "messages",
  },
  {
    name: "chat: messages a string",
    path: CHAT,
    body: { messages: "hello" },
    status: 400,
    param: "messages",
  },
  {
    name: "chat: no role",
    path: CHAT,
    body: { messages: [{ content: "hi" }] },
    status: 400,
    param: "messages[0].role",
  },
  {
    name: "chat: bad role",
    path: CHAT,
    body: { messages: [{ role: "robot", content: "hi" }] },
    status: 400,
    param: "messages[0].role",
  },
  {
    name: "chat: image content part",
    path: CHAT,
    body: { messages: [{ role: "user", content: [{ type: "image_url", image_url: {} }] }] },
    status: 400,
    param: "messages[0].content[0].type",
  },
  {
    name: "chat: top_logprobs 21",
    path: CHAT,
    body: { messages: msg, logprobs: true, top_logprobs: 21 },
    status: 400,
    param: "top_logprobs",
  },
  {
    name: "chat: negative max_completion_tokens",
    path: CHAT,
    body: { messages: msg, max_completion_tokens: -5 },
    status: 400,
    param: "max_completion_tokens",
  },
  {
    name: "chat: unknown model",
    path: CHAT,
    body: { messages: msg, model: "llama" },
    status: 404,
    param: "model",
  },
  {
    name: "generate: empty token ids",
    path: GEN,
    body: { prompt: [] },
    status: 400,
    param: "prompt",
  },
  {
    name: "generate: stop an object",
    path: GEN,
    body: { prompt: "x", stop: [{}] },
    status: 400,
    param: "stop[0]",
  },
  {
    name: "generate: logprobs a number",
    path: GEN,
    body: { prompt: "x", logprobs: 1 },
    status: 400,
    param: "logprobs",
  },
  {
    name: "generate: min_p a string",
    path: GEN,
    body: { prompt: "x", min_p: "0.1" },
    status: 400,
    param: "min_p",
  },
  { name: "tokenize: nothing", path: "/tokenize", body: {}, status: 400, param: "prompt" },
  {
    name: "tokenize: prompt a number",
    path: "/tokenize",
    body: { prompt: 1 },
    status: 400,
    param: "prompt",
  },
  {
    name: "detokenize: tokens a string",
    path: "/detokenize",
    body: { tokens: "abc" },
    status: 400,
    param: "tokens",
  },
  {
    name: "detokenize: token outside the vocabulary",
    path: "/detokenize",
    body: { tokens: [1e9] },
    status: 400,
    param: "tokens[0]",
  },
  {
    name: "oversize body",
    body: { prompt: "x".repeat(80_000) },
    status: 413,
    param: "body",
    says: /exceeds/,
  },
  {
    name: "missing API key",
    body: { prompt: "x" },
    headers: { authorization: "" },
    status: 401,
    param: "Authorization",
  },
  {
    name: "wrong API key",
    body: { prompt: "x" },
    headers: { authorization: "Bearer nope" },
    status: 401,
    param: "Authorization",
    says: /invalid API key/,
  },
  { name: "no such route", path: "/v1/nope", method: "GET", status: 404, param: null },
];

Deno.test(
  "malformed requests: right status, field named, running request undisturbed",
  serverTest,
  async (t) => {
    const server = await startTestServer({ apiKey: KEY, maxBodyMb: 0.05 });
    try {
      assert.ok(CASES.length >= 30);
      // A long request that runs through the whole table.
      const longBody = {
        prompt: "Once upon a time",
        max_tokens: 160,
        ignore_eos: true,
        stream: true,
      };
      const running = post(`${server.url}${GEN}`, longBody, AUTH).then((r) => r.text());
      await new Promise((r) => setTimeout(r, 50));

      for (const c of CASES) {
        await t.step(c.name, async () => {
          const headers: Record<string, string> = { ...AUTH, ...c.headers };
          if (headers.authorization === "") delete headers.authorization;
          const res = c.method === "GET"
            ? await fetch(`${server.url}${c.path ?? C}`, { headers })
            : await post(`${server.url}${c.path ?? C}`, c.body ?? {}, headers);
          const body = await res.json();
          assert.equal(res.status, c.status, JSON.stringify(body));
          const e = body.error;
          assert.equal(typeof e.message, "string");
          assert.equal(typeof e.type, "string");
          assert.ok("param" in e && "code" in e, "OpenAI error shape");
          assert.equal(e.param, c.param, e.message);
          if (c.param) assert.ok(e.message.startsWith(`${c.param}:`), e.message);
          if (c.says) assert.match(e.message, c.says);
          if (c.status === 400) assert.equal(e.type, "invalid_request_error");
        });
      }

      await t.step("the running request was not disturbed", async () => {
        const events = sseData(await running);
        assert.equal(events.at(-1), "[DONE]");
        const parsed = events.slice(0, -1).map((e) => JSON.parse(e));
        const ids = parsed.flatMap((e) => e.token_ids ?? []);
        assert.equal(ids.length, 160);
        const alone =
          await (await post(`${server.url}${GEN}`, { ...longBody, stream: false }, AUTH))
            .json();
        assert.deepEqual(ids, alone.token_ids);
      });

      await t.step("a request afterwards succeeds; /health and /metrics need no key", async () => {
        const res = await post(`${server.url}${C}`, { prompt: "The cat", max_tokens: 4 }, AUTH);
        assert.equal(res.status, 200);
        assert.equal((await res.json()).usage.completion_tokens, 4);
        assert.equal((await fetch(`${server.url}/health`)).status, 200);
        const m = await fetch(`${server.url}/metrics`);
        assert.equal(m.status, 200);
        await m.body?.cancel();
      });
    } finally {
      await server.close();
    }
  },
);

Deno.test(
  "while the model loads: /health 503 with a reason, generation 503",
  serverTest,
  async () => {
    // A context that never loads: the app answers as it does before the model is ready.
    const ctx = new ServerContext(serverConfig({ model: STORIES }));
    const app = createApp(ctx);
    const h = await app.request("/health");
    assert.equal(h.status, 503);
    const hb = await h.json();
    assert.equal(hb.status, "loading");
    assert.match(hb.reason, /loading/);
    const g = await app.request("/v1/completions", {
      method: "POST",
      body: JSON.stringify({ prompt: "x" }),
    });
    assert.equal(g.status, 503);
    assert.equal(g.headers.get("retry-after"), "5");
    assert.equal((await g.json()).error.code, "model_not_ready");
    const m = await app.request("/metrics");
    assert.match(await m.text(), /^zigzag_ready 0$/m);
  },
);
