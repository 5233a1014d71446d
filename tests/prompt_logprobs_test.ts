// Prompt log-probabilities (issue 18): Engine.promptLogprobs against the CPU reference forward's
// teacher-forced log-softmax on passkey-llama (f32), full attention and the shipped zigzag plan,
// in-process and on the GPU thread; the host reduction's ties; and over HTTP on stories260K:
// /v1/completions `echo` (with logprobs, max_tokens 0, streaming, the openai client) and
// /v1/generate `prompt_logprobs`.
//
// Tolerance: the GPU runs f32 (weights, activations, logits; accumulation order differs from the
// reference), the reference every activation in f64 with f32 weights and logits rounded to f32;
// both log-softmaxes sum in f64. Measured differences are ~1e-5; 2e-3 absolute leaves room for a
// different adapter's summation order while still catching any off-by-one position or wrong row
// (neighbouring positions differ by whole nats).

import assert from "node:assert/strict";
import { logSumExp } from "./reference/log_softmax.ts";
import { CacheExhaustedError, Engine } from "../engine/engine.ts";
import { GREEDY } from "../gpu/runner.ts";
import { reduceRow } from "../gpu/logprobs.ts";
import { loadModel } from "../model/load.ts";
import type { LoadedModel } from "../model/types.ts";
import { loadPlanArg } from "../plans/resolve.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import { CpuLlama } from "./reference/cpu_llama.ts";
import OpenAI from "openai";
import { post, serverTest, sseData, startTestServer, STORIES } from "./server_helpers.ts";

const PASSKEY = "../shared/models/passkey-llama";
const ZIGZAG = "plans/shipped/passkey-llama.zigzag50.json";
const TOL = 2e-3;
const gpuTest = { sanitizeResources: false, sanitizeOps: false };

/** The reference's teacher-forced log-probs and top-k (f64 log-softmax, ties by lower id). */
function cpuPromptLogprobs(
  cpu: CpuLlama,
  ids: number[],
  k: number,
): { logprobs: number[]; top: { ids: number[]; logprobs: number[] }[] } {
  const logprobs = [NaN];
  const top = [{ ids: [] as number[], logprobs: [] as number[] }];
  let logits = cpu.forward(ids[0], 0);
  for (let i = 1; i < ids.length; i++) {
    const lse = logSumExp(logits);
    logprobs.push(logits[ids[i]] - lse);
    const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
    top.push({
      ids: order.slice(0, k),
      logprobs: order.slice(0, k).map((v) => logits[v] - lse),
    });
    if (i < ids.length - 1) logits = cpu.forward(ids[i], i);
  }
  return { logprobs, top };
}

/** The GPU's top-k against the reference's: the same values, and the same ids wherever the
 * reference's neighbouring values are further apart than the tolerance (near-ties may swap). */
function assertTopClose(
  got: { ids: number[]; logprobs: number[] },
  want: { ids: number[]; logprobs: number[] },
  where: string,
) {
  assert.equal(got.ids.length, want.ids.length, where);
  for (let j = 0; j < want.ids.length; j++) {
    assert.ok(Math.abs(got.logprobs[j] - want.logprobs[j]) < TOL, `${where} top ${j}`);
    const gapBefore = j > 0 ? want.logprobs[j - 1] - want.logprobs[j] : Infinity;
    const gapAfter = j + 1 < want.ids.length ? want.logprobs[j] - want.logprobs[j + 1] : Infinity;
    if (Math.min(gapBefore, gapAfter) > TOL) assert.equal(got.ids[j], want.ids[j], where);
    if (j > 0) assert.ok(got.logprobs[j] <= got.logprobs[j - 1], `${where} sorted`);
  }
}

Deno.test("reduceRow: f64 log-softmax, top k by logprob then lower id", () => {
  const l = new Float32Array([1, 3, 3, -2, 3, 0.5]);
  const lse = Math.log([...l].reduce((s, x) => s + Math.exp(x), 0));
  const r = reduceRow(l, 0, l.length, 5, 4);
  assert.ok(Math.abs(r.logprob - (0.5 - lse)) < 1e-12);
  assert.deepEqual(r.ids, [1, 2, 4, 0]);
  assert.deepEqual(
    r.logprobs.map((x) => +x.toFixed(9)),
    [3, 3, 3, 1].map((x) => +(x - lse).toFixed(9)),
  );
  // An offset row, k = 0, k larger than the vocabulary.
  const two = new Float32Array([9, 9, 0, 2, 1]);
  assert.deepEqual(reduceRow(two, 2, 3, 0, 0).ids, []);
  assert.deepEqual(reduceRow(two, 2, 3, 0, 5).ids, [1, 2, 0]);
});

Deno.test({
  name: "promptLogprobs on passkey-llama equals the CPU reference (full and zigzag plans)",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(PASSKEY) as LoadedModel;
    const c = model.config;
    const text = "The pass key is 48213. Remember it. " +
      "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
        .repeat(3) +
      "\nWhat is the pass key? The pass key is 48213.";
    const ids = model.tokenizer!.encode(text);
    assert.ok(ids.length > 300, `${ids.length} tokens`);
    const K = 5;
    const window = { sink: 4, recent: 32 };
    const plans: [string, ResolvedPlan][] = [
      ["full", await loadPlanArg("full", c, window)],
      ["zigzag", await loadPlanArg(ZIGZAG, c, window)],
    ];
    for (const [name, plan] of plans) {
      const want = cpuPromptLogprobs(new CpuLlama(c, model.weights, plan), ids, K);
      const engine = await Engine.create({
        model,
        precision: "f32",
        plan,
        maxBatch: 3,
        prefillChunk: 64,
        decodeSteps: 1,
        maxModelLen: 512,
        kvCacheBytes: 16 << 20,
        prefixCache: false,
        quiet: true,
      });
      try {
        const got = await engine.promptLogprobs(ids, { topK: K });
        assert.equal(got.logprobs.length, ids.length);
        assert.ok(Number.isNaN(got.logprobs[0]));
        assert.deepEqual(got.top![0], { ids: [], logprobs: [] });
        let worst = 0;
        for (let i = 1; i < ids.length; i++) {
          worst = Math.max(worst, Math.abs(got.logprobs[i] - want.logprobs[i]));
          assertTopClose(got.top![i], want.top[i], `${name} position ${i}`);
        }
        console.log(
          `${name}: ${ids.length} tokens, max |logprob - reference| ${worst.toExponential(2)}`,
        );
        assert.ok(worst < TOL, `${name}: ${worst}`);
        // Under the zigzag plan the streaming layers change the numbers: the plan is applied.
        if (name === "zigzag") {
          const full = cpuPromptLogprobs(new CpuLlama(c, model.weights), ids, 0);
          const d = Math.max(
            ...full.logprobs.slice(1).map((x, i) => Math.abs(x - want.logprobs[i + 1])),
          );
          assert.ok(d > 10 * TOL, `zigzag differs from full by ${d}`);
        }
        // Without topK: no top lists, the same logprobs; a one-token prompt has only the NaN.
        const plain = await engine.promptLogprobs(ids);
        assert.equal(plain.top, null);
        assert.deepEqual([...plain.logprobs.slice(1)], [...got.logprobs.slice(1)]);
        const one = await engine.promptLogprobs([ids[0]], { topK: 2 });
        assert.equal(one.logprobs.length, 1);
        assert.ok(Number.isNaN(one.logprobs[0]));
        // Errors: too long for the model length, a bad topK, an id outside the vocabulary.
        await assert.rejects(
          engine.promptLogprobs(new Array(513).fill(1)),
          /513 tokens but the model length is 512/,
        );
        await assert.rejects(engine.promptLogprobs(ids, { topK: 21 }), /topK/);
        await assert.rejects(engine.promptLogprobs([1, c.vocabSize]), /vocabulary/);
      } finally {
        await engine.close();
      }
    }
  },
});

Deno.test({
  name: "promptLogprobs through the GPU thread; no room beside a running request is an error",
  ...gpuTest,
  fn: async () => {
    const model = await loadModel(PASSKEY) as LoadedModel;
    const ids = model.tokenizer!.encode("Hello there, this is a short prompt for the worker.");
    const want = cpuPromptLogprobs(new CpuLlama(model.config, model.weights), ids, 3);
    const engine = await Engine.create({
      model: PASSKEY,
      gpuThread: true,
      precision: "f32",
      maxBatch: 2,
      prefillChunk: 16,
      maxModelLen: 256,
      kvCacheBytes: 1536 << 10,
      prefixCache: false,
      quiet: true,
    });
    try {
      const got = await engine.promptLogprobs(ids, { topK: 3 });
      for (let i = 1; i < ids.length; i++) {
        assert.ok(Math.abs(got.logprobs[i] - want.logprobs[i]) < TOL, `position ${i}`);
        assertTopClose(got.top![i], want.top[i], `position ${i}`);
      }
      // A running request's worst case leaves no room for a long prompt: a clear error, and the
      // same prompt scores once the request is done.
      const long = Array.from({ length: 250 }, (_, i) => 32 + (i * 7) % 90);
      const pages = engine.layout.pagesFor(250);
      assert.ok(engine.layout.numPages < 2 * pages, `${engine.layout.numPages} pages`);
      const job = engine.submit({
        promptIds: long.slice(0, 200),
        maxTokens: 56,
        sampling: GREEDY,
        ignoreEos: true,
      });
      await job.chunks()[Symbol.asyncIterator]().next();
      await assert.rejects(
        engine.promptLogprobs(long),
        (e: Error) => e instanceof CacheExhaustedError && /no room for 250 tokens/.test(e.message),
      );
      await job.result;
      assert.equal((await engine.promptLogprobs(long)).logprobs.length, 250);
    } finally {
      await engine.close();
    }
  },
});

// ---- over HTTP (stories260K, f32, the server's GPU thread) ------------------------------------

const STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside " +
  "in the park with her dog. One day, she saw a big red ball under a tree. She ran to get it, " +
  "but the ball rolled away down the hill.";

type Lp = {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[] | null;
  text_offset: number[];
};

Deno.test({
  name: "HTTP: completions echo and /v1/generate prompt_logprobs equal the CPU reference",
  ...serverTest,
  fn: async (t) => {
    const model = await loadModel(STORIES) as LoadedModel;
    const tok = model.tokenizer!;
    const ids = tok.encode(STORY);
    const K = 3;
    const want = cpuPromptLogprobs(new CpuLlama(model.config, model.weights), ids, K);
    const server = await startTestServer({ prefillChunk: 32 });
    const url = `${server.url}/v1/completions`;
    const json = async (body: unknown, path = url) => {
      const r = await post(path, body);
      const j = await r.json();
      assert.equal(r.status, 200, JSON.stringify(j));
      return j;
    };
    const checkPrompt = (lp: Lp, k: number) => {
      assert.equal(lp.tokens.length, ids.length);
      assert.deepEqual(lp.tokens.slice(0, 3), ids.slice(0, 3).map((id) => tok.decode([id])));
      assert.equal(lp.token_logprobs[0], null);
      let worst = 0;
      for (let i = 1; i < ids.length; i++) {
        worst = Math.max(worst, Math.abs(lp.token_logprobs[i]! - want.logprobs[i]));
      }
      assert.ok(worst < TOL, `max |logprob - reference| ${worst}`);
      if (k === 0) assert.equal(lp.top_logprobs, null);
      else {
        assert.equal(lp.top_logprobs![0], null);
        for (let i = 1; i < ids.length; i++) {
          const got = Object.values(lp.top_logprobs![i]!);
          assert.ok(got.length <= k && got.length >= 1, `position ${i}`);
          assert.ok(Math.abs(got[0] - want.top[i].logprobs[0]) < TOL, `position ${i}`);
        }
      }
      assert.equal(lp.text_offset[0], 0);
      for (let i = 1; i < ids.length; i++) assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
    };
    try {
      await t.step("echo + logprobs + max_tokens 0: the prompt's tokens alone", async () => {
        const r = await json({ prompt: STORY, echo: true, logprobs: K, max_tokens: 0 });
        const ch = r.choices[0];
        assert.equal(ch.text, STORY);
        assert.equal(ch.finish_reason, "length");
        checkPrompt(ch.logprobs, K);
        // The prompt's tokens' texts at their offsets spell the prompt.
        const lp = ch.logprobs as Lp;
        assert.equal(lp.text_offset[ids.length - 1], STORY.length - lp.tokens.at(-1)!.length);
        assert.deepEqual(r.usage, {
          prompt_tokens: ids.length,
          completion_tokens: 0,
          total_tokens: ids.length,
          prompt_tokens_details: { cached_tokens: 0 },
        });
        // Token ids as the prompt, logprobs 0: no top lists.
        const z = await json({ prompt: ids, echo: true, logprobs: 0, max_tokens: 0 });
        assert.equal(z.choices[0].text, STORY);
        checkPrompt(z.choices[0].logprobs, 0);
        // n choices: each is the prompt.
        const two = await json({ prompt: STORY, echo: true, max_tokens: 0, n: 2 });
        assert.deepEqual(two.choices.map((c: { text: string }) => c.text), [STORY, STORY]);
        // Without logprobs: the text alone.
        const plain = await json({ prompt: STORY, echo: true, max_tokens: 0 });
        assert.equal(plain.choices[0].logprobs, null);
        assert.equal(plain.choices[0].text, STORY);
      });

      await t.step("echo with max_tokens > 0: the prompt, then the same completion", async () => {
        const body = { prompt: STORY, max_tokens: 8, temperature: 0, logprobs: 2 };
        const plain = await json(body);
        const echoed = await json({ ...body, echo: true });
        const a = plain.choices[0];
        const b = echoed.choices[0];
        assert.equal(b.text, STORY + a.text);
        assert.equal(b.finish_reason, a.finish_reason);
        const la = a.logprobs as Lp;
        const lb = b.logprobs as Lp;
        checkPrompt({ ...lb, tokens: lb.tokens.slice(0, ids.length) } as Lp, 2);
        assert.deepEqual(lb.tokens.slice(ids.length), la.tokens);
        // The second request resumes from the prefix cache: the same tokens, log-probs within f32
        // rounding of a different prefill split.
        const close = (x: number[], y: number[]) =>
          x.length === y.length && x.every((v, i) => Math.abs(v - y[i]) < 1e-4);
        assert.ok(
          close(lb.token_logprobs.slice(ids.length) as number[], la.token_logprobs as number[]),
        );
        lb.top_logprobs!.slice(ids.length).forEach((m, i) => {
          assert.deepEqual(Object.keys(m!), Object.keys(la.top_logprobs![i]!));
          assert.ok(close(Object.values(m!), Object.values(la.top_logprobs![i]!)));
        });
        assert.deepEqual(
          lb.text_offset.slice(ids.length),
          la.text_offset.map((o) => o + STORY.length),
        );
        // usage is the request's (the prompt counted once; the prefix cache served it this time).
        const { prompt_tokens_details: _, ...usage } = echoed.usage;
        const { prompt_tokens_details: __, ...plainUsage } = plain.usage;
        assert.deepEqual(usage, plainUsage);
      });

      await t.step("streamed echo: the first event carries the prompt", async () => {
        for (const max_tokens of [0, 4]) {
          const r = await post(url, {
            prompt: STORY,
            echo: true,
            logprobs: 1,
            max_tokens,
            temperature: 0,
            stream: true,
            stream_options: { include_usage: true },
          });
          assert.equal(r.status, 200);
          const events = sseData(await r.text());
          assert.equal(events.at(-1), "[DONE]");
          const parsed = events.slice(0, -1).map((e) => JSON.parse(e));
          const first = parsed[0].choices[0];
          assert.equal(first.text, STORY);
          checkPrompt(first.logprobs, 1);
          const text = parsed.flatMap((p) => p.choices.map((c: { text: string }) => c.text)).join(
            "",
          );
          const whole = await json({ prompt: STORY, echo: true, max_tokens, temperature: 0 });
          assert.equal(text, whole.choices[0].text);
          const fin = parsed.flatMap((p) => p.choices).filter((c) => c.finish_reason);
          assert.deepEqual(fin.map((c) => c.finish_reason), [whole.choices[0].finish_reason]);
          assert.equal(parsed.at(-1).usage.prompt_tokens, ids.length);
          assert.equal(parsed.at(-1).usage.completion_tokens, max_tokens);
        }
      });

      await t.step("max_tokens 0 without echo is a 400 naming max_tokens", async () => {
        const r = await post(url, { prompt: STORY, max_tokens: 0 });
        assert.equal(r.status, 400);
        assert.equal((await r.json()).error.param, "max_tokens");
      });

      await t.step("/v1/generate prompt_logprobs", async () => {
        const r = await json(
          { prompt: STORY, max_tokens: 2, prompt_logprobs: 2 },
          `${server.url}/v1/generate`,
        );
        const pl = r.prompt_logprobs as (
          | Record<
            string,
            { logprob: number; rank: number; decoded_token: string }
          >
          | null
        )[];
        assert.equal(pl.length, ids.length);
        assert.equal(pl[0], null);
        for (let i = 1; i < ids.length; i++) {
          const own = pl[i]![`${ids[i]}`];
          assert.ok(Math.abs(own.logprob - want.logprobs[i]) < TOL, `position ${i}`);
          assert.equal(own.decoded_token, tok.decode([ids[i]]));
          const byRank = Object.values(pl[i]!).filter((e) => e.rank <= 2).sort((a, b) =>
            a.rank - b.rank
          );
          assert.ok(Math.abs(byRank[0].logprob - want.top[i].logprobs[0]) < TOL);
          // The prompt token's rank: 1 + the reference's tokens clearly above it.
          const above = want.top[i].logprobs.filter((x) => x > want.logprobs[i] + TOL).length;
          if (above < 2) assert.ok(own.rank >= above + 1, `position ${i} rank ${own.rank}`);
        }
        const plain = await json({ prompt: STORY, max_tokens: 2 }, `${server.url}/v1/generate`);
        assert.equal(plain.prompt_logprobs, undefined);
        assert.deepEqual(plain.token_ids, r.token_ids);
        const bad = await post(`${server.url}/v1/generate`, { prompt: STORY, prompt_logprobs: 21 });
        assert.equal(bad.status, 400);
        assert.equal((await bad.json()).error.param, "prompt_logprobs");
      });

      await t.step("the openai client: echo", async () => {
        const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
        const r = await client.completions.create({
          model: "stories260K",
          prompt: STORY,
          echo: true,
          logprobs: 2,
          max_tokens: 0,
        });
        assert.equal(r.choices[0].text, STORY);
        checkPrompt(r.choices[0].logprobs as Lp, 2);
        const g = await client.completions.create({
          model: "stories260K",
          prompt: STORY,
          echo: true,
          max_tokens: 6,
          temperature: 0,
        });
        assert.ok(g.choices[0].text.startsWith(STORY));
        assert.ok(g.choices[0].text.length > STORY.length);
      });
    } finally {
      await server.close();
    }
  },
});
