// Penalties, logit_bias and top log-probabilities end to end (stories260K, f32): through
// /v1/generate (token ids), /v1/completions and /v1/chat/completions, raw and with the official
// `openai` client. Multi-step decode (8 steps per submission, tokens chained on the GPU, counts
// updated by the sampler) gives the tokens one step per submission gives; seeded penalised
// sampling is the same alone or batched with other requests.

import assert from "node:assert/strict";
import OpenAI from "openai";
import {
  joinTemplateFile,
  post,
  serverTest,
  startTestServer,
  type TestServer,
} from "./server_helpers.ts";

const PROMPT = "Once upon a time";

async function generate(s: TestServer, body: Record<string, unknown>): Promise<number[]> {
  const r = await post(`${s.url}/v1/generate`, { prompt: PROMPT, ignore_eos: true, ...body });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  return JSON.parse(text).token_ids;
}

Deno.test("sampling end to end: logit_bias, penalties, top logprobs", serverTest, async (t) => {
  const template = await joinTemplateFile();
  const [server, oneStep] = await Promise.all([
    startTestServer({ chatTemplate: template, decodeSteps: 8 }),
    startTestServer({ decodeSteps: 1 }),
  ]);
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
  try {
    const greedy = await generate(server, { max_tokens: 100 });

    await t.step("a large logit_bias forces a token; -100 bans the greedy one", async () => {
      assert.deepEqual(
        await generate(server, { max_tokens: 12, logit_bias: { "300": 100 } }),
        Array(12).fill(300),
      );
      const banned = await generate(server, { max_tokens: 12, logit_bias: { [greedy[0]]: -100 } });
      assert.ok(!banned.includes(greedy[0]), `${banned} has ${greedy[0]}`);
      // A zero bias changes nothing.
      assert.deepEqual(
        await generate(server, { max_tokens: 100, logit_bias: { "7": 0 } }),
        greedy,
      );
    });

    await t.step("greedy with strong penalties never repeats a token", async () => {
      // The plain greedy output repeats tokens (the test means something).
      assert.ok(new Set(greedy).size < greedy.length, `greedy ${greedy} never repeats`);
      const ids = await generate(server, {
        max_tokens: 100,
        frequency_penalty: 2,
        presence_penalty: 2,
        // Also divide the positive logits of every token seen (prompt or generated) by 50.
        repetition_penalty: 50,
      });
      assert.equal(ids.length, 100);
      assert.equal(new Set(ids).size, ids.length, `repeats: ${ids}`);
      // OpenAI's range alone (frequency 2) is too weak to forbid every repeat on this model's
      // peaked logits, but repeats less than greedy.
      const freq = await generate(server, { max_tokens: 100, frequency_penalty: 2 });
      assert.ok(new Set(freq).size > new Set(greedy).size, `${freq}`);
    });

    await t.step("penalties: 8 decode steps per submission = 1 step", async () => {
      const bodies = [
        { max_tokens: 100, frequency_penalty: 0.8, presence_penalty: 0.4 },
        { max_tokens: 40, repetition_penalty: 1.3, logit_bias: { "30": 3 } },
        { max_tokens: 40, temperature: 0.9, seed: 7, frequency_penalty: 1, top_k: 40 },
      ];
      for (const b of bodies) {
        const [a, c] = await Promise.all([generate(server, b), generate(oneStep, b)]);
        assert.deepEqual(a, c, JSON.stringify(b));
      }
      // And penalties do change a greedy output.
      assert.notDeepEqual(await generate(server, bodies[0]), greedy);
    });

    await t.step("seeded penalised sampling: alone = batched with others", async () => {
      const body = {
        max_tokens: 32,
        temperature: 1,
        seed: 1234,
        frequency_penalty: 0.5,
        repetition_penalty: 1.2,
      };
      const alone = await generate(server, body);
      const [batched] = await Promise.all([
        generate(server, body),
        generate(server, { max_tokens: 40, temperature: 0.7, seed: 5, presence_penalty: 1.5 }),
        generate(server, { max_tokens: 20, logit_bias: { "100": 5 } }),
        generate(server, { max_tokens: 30, temperature: 1.2 }),
      ]);
      assert.deepEqual(batched, alone);
    });

    await t.step("completions: logprobs 5", async () => {
      const r = await post(`${server.url}/v1/completions`, {
        prompt: PROMPT,
        max_tokens: 10,
        temperature: 0,
        logprobs: 5,
      });
      const j = await r.json();
      assert.equal(r.status, 200, JSON.stringify(j));
      const lp = j.choices[0].logprobs;
      assert.equal(lp.tokens.length, 10);
      lp.top_logprobs.forEach((top: Record<string, number>, i: number) => {
        const entries = Object.entries(top);
        assert.equal(entries.length, 5, JSON.stringify(top));
        assert.equal(entries[0][0], lp.tokens[i]);
        assert.equal(entries[0][1], lp.token_logprobs[i]);
        for (let k = 1; k < 5; k++) assert.ok(entries[k][1] <= entries[k - 1][1]);
        assert.ok(entries.every(([, v]) => v <= 0));
      });
    });

    await t.step("chat: logprobs with top_logprobs 5, streamed too", async () => {
      const body = {
        messages: [{ role: "user", content: PROMPT }],
        max_tokens: 10,
        temperature: 0,
        logprobs: true,
        top_logprobs: 5,
      };
      const r = await post(`${server.url}/v1/chat/completions`, body);
      const j = await r.json();
      assert.equal(r.status, 200, JSON.stringify(j));
      const content = j.choices[0].logprobs.content;
      assert.equal(content.length, 10);
      for (const c of content) {
        assert.equal(c.top_logprobs.length, 5);
        assert.equal(c.top_logprobs[0].token, c.token);
        assert.equal(c.top_logprobs[0].logprob, c.logprob);
        for (let k = 1; k < 5; k++) {
          assert.ok(c.top_logprobs[k].logprob <= c.top_logprobs[k - 1].logprob);
        }
        assert.deepEqual(c.top_logprobs[0].bytes, c.bytes);
      }
      const stream = await client.chat.completions.create({ ...body, stream: true } as never);
      const streamed = [];
      for await (const ch of stream as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>) {
        streamed.push(...(ch.choices[0]?.logprobs?.content ?? []));
      }
      assert.deepEqual(streamed, content);
    });

    await t.step("the openai client: the new parameters and their shapes", async () => {
      const c = await client.completions.create({
        model: "stories260K",
        prompt: PROMPT,
        max_tokens: 8,
        temperature: 0,
        logprobs: 20,
        frequency_penalty: 1,
        presence_penalty: 0.5,
        logit_bias: { "300": 100 },
      });
      const lp = c.choices[0].logprobs!;
      assert.equal(lp.top_logprobs!.length, 8);
      assert.ok(lp.top_logprobs!.every((top) => Object.keys(top!).length <= 20));
      // The forced token's logprob is reported from the raw model logits (before the bias).
      assert.ok(lp.token_logprobs!.every((v) => v < 0));
      const ch = await client.chat.completions.create({
        model: "stories260K",
        messages: [{ role: "user", content: PROMPT }],
        max_tokens: 6,
        temperature: 0,
        logprobs: true,
        top_logprobs: 3,
        frequency_penalty: 2,
        presence_penalty: -1,
        logit_bias: { "300": -100 },
      });
      const content = ch.choices[0].logprobs!.content!;
      assert.equal(content.length, 6);
      for (const e of content) {
        assert.equal(e.top_logprobs.length, 3);
        assert.equal(typeof e.top_logprobs[0].token, "string");
        assert.ok(Array.isArray(e.top_logprobs[0].bytes));
      }
    });

    await t.step("400s: logit_bias outside the vocabulary, top_logprobs over 20", async () => {
      const bad = [
        ["/v1/completions", { prompt: PROMPT, logit_bias: { "512": 1 } }, "logit_bias"],
        ["/v1/completions", { prompt: PROMPT, logprobs: 21 }, "logprobs"],
        [
          "/v1/chat/completions",
          { messages: [{ role: "user", content: "x" }], logprobs: true, top_logprobs: 21 },
          "top_logprobs",
        ],
      ] as const;
      for (const [path, body, param] of bad) {
        const r = await post(`${server.url}${path}`, body);
        const j = await r.json();
        assert.equal(r.status, 400, JSON.stringify(j));
        assert.equal(j.error.param, param);
      }
    });
  } finally {
    await Promise.all([server.close(), oneStep.close()]);
  }
});
