// The official `openai` client against the server (stories260K, f32): completions and chat,
// streaming and not; greedy text equals the CLI's. stories260K has no chat template, so the server
// runs with --chat-template pointing at a template that joins the messages' contents
// (JOIN_TEMPLATE): a one-message chat then prompts exactly as a completion does.

import assert from "node:assert/strict";
import OpenAI from "openai";
import {
  joinTemplateFile,
  post,
  runCli,
  serverTest,
  sseData,
  startTestServer,
  STORIES,
} from "./server_helpers.ts";

const PROMPT = "Once upon a time";
const N = 24;

Deno.test(
  "OpenAI client: completions and chat equal the CLI's greedy output",
  serverTest,
  async (t) => {
    const template = await joinTemplateFile();
    const [server, cli, cliStop] = await Promise.all([
      startTestServer({ chatTemplate: template }),
      runCli(PROMPT, N),
      runCli("The cat", 400),
    ]);
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    try {
      assert.equal(cli.generated_ids.length, N);
      assert.equal(cliStop.finish_reason, "stop");

      await t.step("models.list", async () => {
        const models = [];
        for await (const m of client.models.list()) models.push(m);
        assert.deepEqual(models.map((m) => m.id), ["stories260K"]);
      });

      await t.step("completions", async () => {
        const r = await client.completions.create({
          model: "stories260K",
          prompt: PROMPT,
          max_tokens: N,
          temperature: 0,
        });
        assert.equal(r.object, "text_completion");
        assert.equal(r.choices[0].text, cli.text);
        assert.equal(r.choices[0].finish_reason, "length");
        assert.deepEqual(r.usage, {
          prompt_tokens: cli.prompt_ids.length,
          completion_tokens: N,
          total_tokens: cli.prompt_ids.length + N,
          prompt_tokens_details: { cached_tokens: 0 },
        });
      });

      await t.step("n and best_of; the prefix cache in usage and /metrics", async () => {
        // A prompt of several pages, so that later requests and choices resume from the cache.
        const long = `${PROMPT} there was a little girl named Lily. She loved to play outside ` +
          "in the sunshine with her dog, who was big and brown.";
        const base = { model: "stories260K", prompt: long, max_tokens: 8 };
        const greedy = await client.completions.create({ ...base, temperature: 0, n: 3 });
        assert.deepEqual(greedy.choices.map((c) => c.index), [0, 1, 2]);
        assert.equal(new Set(greedy.choices.map((c) => c.text)).size, 1, "greedy choices equal");
        assert.equal(greedy.usage?.completion_tokens, 24);
        const seeded = { ...base, temperature: 1, seed: 5, n: 4 };
        const a = await client.completions.create(seeded);
        const b = await client.completions.create(seeded);
        assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
        // A repeat of the prompt resumes at its last page boundary.
        const p = a.usage!.prompt_tokens;
        const cached = (b.usage as { prompt_tokens_details?: { cached_tokens: number } })
          .prompt_tokens_details?.cached_tokens;
        assert.equal(cached, Math.floor((p - 1) / 16) * 16);
        // best_of 3, n 2: the two most probable of three candidates, best first.
        const best = await client.completions.create({
          ...base,
          temperature: 1,
          seed: 9,
          n: 2,
          best_of: 3,
          logprobs: 1,
        });
        assert.equal(best.choices.length, 2);
        const score = (c: (typeof best.choices)[0]) =>
          c.logprobs!.token_logprobs!.reduce((x, y) => x + y, 0);
        assert.ok(score(best.choices[0]) >= score(best.choices[1]));
        // The candidates are the n = 3 choices of the same seed: best_of keeps the top two.
        const cands = await client.completions.create({
          ...base,
          temperature: 1,
          seed: 9,
          n: 3,
          logprobs: 1,
        });
        const top2 = [...cands.choices].sort((x, y) => score(y) - score(x)).slice(0, 2);
        assert.deepEqual(best.choices.map((c) => c.text), top2.map((c) => c.text));
        assert.equal(best.usage?.completion_tokens, 24, "every candidate counts");
        const bad = await post(`${server.url}/v1/completions`, { ...base, n: 3, best_of: 2 });
        assert.equal(bad.status, 400);
        assert.equal((await bad.json()).error.param, "best_of");
        // Chat, streamed, two choices: each opens with its role and ends with its finish_reason.
        const stream = await client.chat.completions.create({
          model: "stories260K",
          messages: [{ role: "user", content: long }],
          max_tokens: 8,
          temperature: 0,
          n: 2,
          stream: true,
        });
        const text = ["", ""];
        const roles = [0, 0];
        const finish: (string | null)[] = [null, null];
        for await (const ch of stream) {
          for (const c of ch.choices) {
            if (c.delta.role) roles[c.index]++;
            text[c.index] += c.delta.content ?? "";
            if (c.finish_reason) finish[c.index] = c.finish_reason;
          }
        }
        assert.deepEqual(roles, [1, 1]);
        assert.deepEqual(finish, ["length", "length"]);
        assert.equal(text[0], text[1]);
        assert.equal(text[0], greedy.choices[0].text, "chat joins one message as the prompt");
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        const counter = (name: string) =>
          Number(metrics.match(new RegExp(`^${name} (\\d+)`, "m"))![1]);
        assert.ok(counter("zigzag_prefix_cache_hits_total") >= cached!);
        assert.ok(
          counter("zigzag_prefix_cache_queries_total") > counter("zigzag_prefix_cache_hits_total"),
        );
        const st = await (await fetch(`${server.url}/v1/cache/stats`)).json();
        assert.ok(st.prefix_cache.pages > 0);
        assert.equal(st.total.pages_used, 0);
        // The info gauge's labels are the stats' geometry (vLLM's cache_config_info).
        const info = metrics.match(/^zigzag_cache_config_info\{(.*)\} 1$/m);
        assert.ok(info, "zigzag_cache_config_info present with value 1");
        const labels = Object.fromEntries(
          [...info[1].matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]),
        );
        assert.deepEqual(labels, {
          block_size: String(st.geometry.page_size),
          num_gpu_blocks: String(st.pages_total),
          ring_length: String(st.geometry.ring_length),
          kv_cache_dtype: st.geometry.kv_dtype,
          plan_mode: st.plan.mode,
          prefix_caching: "true",
        });
      });

      await t.step("completions ending at EOS: finish_reason stop", async () => {
        const r = await client.completions.create({
          model: "stories260K",
          prompt: "The cat",
          max_tokens: 400,
          temperature: 0,
        });
        assert.equal(r.choices[0].text, cliStop.text);
        assert.equal(r.choices[0].finish_reason, "stop");
        assert.equal(r.usage?.completion_tokens, cliStop.generated_ids.length);
      });

      await t.step("completions, streaming, with usage", async () => {
        const stream = await client.completions.create({
          model: "stories260K",
          prompt: PROMPT,
          max_tokens: N,
          temperature: 0,
          stream: true,
          stream_options: { include_usage: true },
        });
        let text = "";
        let finish: string | null = null;
        let usage = null;
        let chunks = 0;
        for await (const ch of stream) {
          chunks++;
          if (ch.choices.length) {
            text += ch.choices[0].text;
            finish = ch.choices[0].finish_reason ?? finish;
          }
          if (ch.usage) usage = ch.usage;
        }
        assert.equal(text, cli.text);
        assert.equal(finish, "length");
        assert.equal(usage?.completion_tokens, N);
        // One chunk per readback (8 tokens), not per token: 1 (first token) + 3 + finish + usage.
        assert.ok(chunks <= 1 + Math.ceil((N - 1) / 8) + 2, `${chunks} chunks`);
      });

      await t.step("completions with logprobs", async () => {
        const r = await client.completions.create({
          model: "stories260K",
          prompt: PROMPT,
          max_tokens: N,
          temperature: 0,
          logprobs: 1,
        });
        const lp = r.choices[0].logprobs!;
        assert.equal(lp.tokens!.length, N);
        assert.equal(lp.tokens!.join(""), cli.text);
        assert.ok(lp.token_logprobs!.every((v) => v <= 0 && v > -20));
        assert.equal(lp.text_offset![0], 0);
        assert.deepEqual(Object.keys(lp.top_logprobs![0]!), [lp.tokens![0]]);
      });

      await t.step("chat", async () => {
        const r = await client.chat.completions.create({
          model: "stories260K",
          messages: [{ role: "user", content: PROMPT }],
          max_tokens: N,
          temperature: 0,
        });
        assert.equal(r.object, "chat.completion");
        assert.equal(r.choices[0].message.role, "assistant");
        assert.equal(r.choices[0].message.content, cli.text);
        assert.equal(r.choices[0].finish_reason, "length");
        assert.equal(r.usage?.prompt_tokens, cli.prompt_ids.length);
      });

      await t.step("chat, streaming, with usage", async () => {
        const stream = await client.chat.completions.create({
          model: "stories260K",
          messages: [{ role: "user", content: PROMPT }],
          max_completion_tokens: N,
          temperature: 0,
          stream: true,
          stream_options: { include_usage: true },
        });
        let text = "";
        let role = "";
        let finish: string | null = null;
        let usage = null;
        for await (const ch of stream) {
          assert.equal(ch.object, "chat.completion.chunk");
          if (ch.choices.length) {
            role ||= ch.choices[0].delta.role ?? "";
            text += ch.choices[0].delta.content ?? "";
            finish = ch.choices[0].finish_reason ?? finish;
          }
          if (ch.usage) usage = ch.usage;
        }
        assert.equal(role, "assistant");
        assert.equal(text, cli.text);
        assert.equal(finish, "length");
        assert.equal(usage?.total_tokens, cli.prompt_ids.length + N);
      });

      await t.step("raw SSE ends with data: [DONE]", async () => {
        const res = await post(`${server.url}/v1/chat/completions`, {
          messages: [{ role: "user", content: PROMPT }],
          max_tokens: 4,
          stream: true,
        });
        assert.equal(res.headers.get("content-type"), "text/event-stream");
        const events = sseData(await res.text());
        assert.equal(events.at(-1), "[DONE]");
      });

      await t.step(
        "/v1/generate: the CLI's token ids and text, timings, cache footprint",
        async () => {
          const res = await post(`${server.url}/v1/generate`, { prompt: PROMPT, max_tokens: N });
          assert.equal(res.status, 200);
          const g = await res.json();
          assert.deepEqual(g.token_ids, cli.generated_ids);
          assert.equal(g.text, cli.text);
          assert.equal(g.finish_reason, "length");
          assert.ok(g.time_to_first_token_ms > 0 && g.decode_tokens_per_s > 0);
          // Positions fed: the prompt and every generated token but the last.
          const positions = cli.prompt_ids.length + N - 1;
          const geo = server.ctx.loadedEngine!.layout;
          const used = geo.usedBytes([positions]);
          assert.equal(g.cache.tokens, positions);
          assert.equal(g.cache.retrieval_bytes, used.retrieval);
          assert.equal(g.cache.streaming_bytes, used.streaming);
          assert.equal(g.cache.full_attention_bytes, geo.fullBytes(positions));
        },
      );

      await t.step("/v1/generate from token ids, streamed, with stop strings", async () => {
        const res = await post(`${server.url}/v1/generate`, {
          prompt: cli.prompt_ids,
          max_tokens: N,
          stream: true,
          stop: [" Lily"],
        });
        const events = sseData(await res.text());
        assert.equal(events.at(-1), "[DONE]");
        const parsed = events.slice(0, -1).map((e) => JSON.parse(e));
        const text = parsed.map((e) => e.text ?? "").join("");
        const end = parsed.at(-1);
        assert.equal(text, cli.text.slice(0, cli.text.indexOf(" Lily")));
        assert.equal(end.finish_reason, "stop");
        assert.equal(end.stop_reason, " Lily");
      });

      await t.step("/tokenize and /detokenize", async () => {
        const tk = await (await post(`${server.url}/tokenize`, { prompt: PROMPT })).json();
        assert.deepEqual(tk.tokens, cli.prompt_ids);
        assert.equal(tk.max_model_len, 512);
        const dt = await (await post(`${server.url}/detokenize`, { tokens: cli.generated_ids }))
          .json();
        assert.equal(dt.prompt, cli.text);
      });
    } finally {
      await server.close();
      await Deno.remove(template);
    }
  },
);

Deno.test("chat without a template: 400 naming messages", serverTest, async () => {
  const server = await startTestServer({ model: STORIES });
  try {
    const res = await post(`${server.url}/v1/chat/completions`, {
      messages: [{ role: "user", content: "hi" }],
    });
    assert.equal(res.status, 400);
    const e = (await res.json()).error;
    assert.equal(e.param, "messages");
    assert.equal(e.code, "no_chat_template");
    assert.match(e.message, /--chat-template/);
  } finally {
    await server.close();
  }
});
