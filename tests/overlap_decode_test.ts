// Overlapped decode: the engine queues the next decode steps (tokens chained on the GPU) before
// it waits on a readback. The tokens must be those of the plain loop for every request, batched
// or alone, whatever ends it (max_tokens, a stop id, a cancel), and a finished request's pages
// come back once the steps still in flight for it are read.

import assert from "node:assert/strict";
import { Engine } from "../engine/engine.ts";
import type { GenerationRequest, GenerationResult } from "../engine/request.ts";
import { loadModel } from "../model/load.ts";
import { gpu, gpuTest, GREEDY, makeRunner, plan } from "./gpu_helpers.ts";

const STORIES = new URL("../../shared/models/stories260K", import.meta.url).pathname;
const model = await loadModel(STORIES);

/** Prompts of stories260K ids (BOS 1, then ordinary tokens). */
const prompt = (
  n: number,
  seed: number,
) => [1, ...Array.from({ length: n }, (_, i) => 3 + ((seed * 131 + i * 37) % 400))];

function requests(): GenerationRequest[] {
  return [
    { promptIds: prompt(9, 1), maxTokens: 40, sampling: GREEDY, ignoreEos: true },
    // Ends mid-readback: 13 is not a multiple of the 4 steps per readback.
    { promptIds: prompt(20, 2), maxTokens: 13, sampling: GREEDY, ignoreEos: true },
    {
      promptIds: prompt(5, 3),
      maxTokens: 30,
      sampling: {
        temperature: 0.9,
        topP: 0.9,
        seed: 7,
        presencePenalty: 0.5,
        frequencyPenalty: 0.3,
        repetitionPenalty: 1.2,
        topLogprobs: 3,
      },
      ignoreEos: true,
    },
    // A stop id ends it at an unknown step: steps queued behind it are discarded.
    { promptIds: prompt(12, 4), maxTokens: 35, sampling: { temperature: 1, seed: 3 } },
  ];
}

/** Every request alone, then all four together with staggered arrivals, then a second turn. */
async function run(overlapDecode: boolean, p: ReturnType<typeof plan>) {
  const e = await Engine.create({
    model,
    gpu,
    precision: "f32",
    plan: p,
    quiet: true,
    decodeSteps: 4,
    prefillChunk: 8,
    overlapDecode,
  });
  try {
    const reqs = requests();
    // The stop id: the 6th token request 3 generates alone (so it stops early).
    const probe = await e.generate(reqs[3]);
    reqs[3].stopIds = [probe.ids[5]];
    const alone: GenerationResult[] = [];
    for (const r of reqs) alone.push(await e.generate(r));
    const together: Promise<GenerationResult>[] = [];
    for (const r of reqs) {
      together.push(e.generate(r));
      await new Promise((t) => setTimeout(t, 30));
    }
    const batched = await Promise.all(together);
    // A second turn resumes from the first's cached pages (released after its last readback).
    const turn2 = await e.generate({
      promptIds: [...reqs[0].promptIds, ...alone[0].ids, 42],
      maxTokens: 10,
      sampling: GREEDY,
      ignoreEos: true,
    });
    assert.equal(e.cacheReport().total.pages_used, 0, "every page back in the pool");
    return { alone, batched, turn2, overlapped: e.metrics.decodeOverlapped };
  } finally {
    await e.close();
  }
}

Deno.test("overlapped decode: the same tokens as the plain loop", gpuTest, async (t) => {
  const c = model.config;
  const plans = {
    full: plan(c, "full", 0, 1),
    zigzag: plan(c, "zigzag", 4, 16, ["streaming", "retrieval", "streaming", "retrieval"]),
  };
  for (const [name, p] of Object.entries(plans)) {
    await t.step(name, async () => {
      const off = await run(false, p);
      const on = await run(true, p);
      assert.equal(off.overlapped, 0);
      assert.ok(on.overlapped > 10, `${on.overlapped} overlapped decodes`);
      for (const [a, b] of [[off.alone, on.alone], [off.batched, on.batched]]) {
        a.forEach((r, i) => {
          assert.deepEqual(b[i].ids, r.ids, `request ${i}`);
          assert.equal(b[i].finishReason, r.finishReason);
          assert.deepEqual(b[i].topLogprobs, r.topLogprobs);
          // The same kernels on the same inputs: bit-identical log-probs.
          assert.deepEqual(b[i].logprobs, r.logprobs);
        });
      }
      // Batched equals alone (the RNG is keyed by position, counts by slot).
      on.batched.forEach((r, i) => assert.deepEqual(r.ids, on.alone[i].ids, `batched ${i}`));
      assert.equal(on.alone[3].finishReason, "stop");
      assert.equal(on.alone[1].ids.length, 13);
      assert.ok(on.turn2.cachedTokens > 0, "the second turn resumed from cached pages");
      assert.deepEqual(on.turn2.ids, off.turn2.ids);
    });
  }
});

Deno.test("runner: a chained decode continues the previous one on the GPU", gpuTest, async () => {
  const p = plan(model.config, "full", 0, 1);
  const r = await makeRunner(model, "f32", p, { maxBatch: 2, steps: 4 });
  try {
    const open = () => r.cache.open()!;
    const prefill = async (seed: number) => {
      const seq = open();
      const first = await r.prefill(seq, prompt(6, seed), GREEDY);
      return { seq, first: first.token };
    };
    // Reference: 8 steps in two plain decodes, each fed the last token read back.
    const a = [await prefill(1), await prefill(2)];
    const rows = (s: typeof a, tok: number[]) =>
      s.map((x, i) => ({ seq: x.seq, token: tok[i], sampling: GREEDY }));
    const d1 = await r.decode(rows(a, a.map((x) => x.first)), 4);
    const d2 = await r.decode(rows(a, d1.tokens.map((t) => t[3])), 4);
    const want = d1.tokens.map((t, i) => [...t, ...d2.tokens[i]]);
    for (const x of a) r.cache.close(x.seq);
    // Chained: the second decode is queued before the first is read back.
    const b = [await prefill(1), await prefill(2)];
    const at = (x: (typeof b)[number]) => ({ ...x.seq, pages: [...x.seq.pages] });
    const reserve = (n: number) => b.forEach((x) => r.cache.reserve(x.seq, x.seq.tokens + n));
    const commit = (n: number) => b.forEach((x) => r.cache.commit(x.seq, x.seq.tokens + n));
    reserve(4);
    await r.runner.submitDecode(
      b.map((x) => ({ seq: at(x), token: x.first, sampling: GREEDY })),
      4,
    );
    commit(4);
    reserve(4);
    await r.runner.submitDecode(
      b.map((x) => ({ seq: at(x), token: 0, sampling: GREEDY })),
      4,
      { chained: true },
    );
    commit(4);
    assert.equal(r.runner.decodesInFlight, 2);
    const c1 = await r.runner.collectDecode();
    const c2 = await r.runner.collectDecode();
    assert.deepEqual(c1.tokens.map((t, i) => [...t, ...c2.tokens[i]]), want);
    // Another forward in between breaks the chain: refused, not silently wrong.
    await prefill(3);
    await assert.rejects(
      r.runner.submitDecode(b.map((x) => ({ seq: at(x), token: 0, sampling: GREEDY })), 1, {
        chained: true,
      }),
      /chained decode must follow a decode of the same rows/,
    );
    await assert.rejects(r.runner.collectDecode(), /no decode in flight/);
  } finally {
    r.destroy();
  }
});

Deno.test("--decode-steps auto: timed at warm-up, the same tokens", gpuTest, async () => {
  const p = plan(model.config, "full", 0, 1);
  const e = await Engine.create({
    model,
    gpu,
    precision: "f32",
    plan: p,
    quiet: true,
    decodeSteps: "auto",
  });
  try {
    assert.equal(e.stepsPerReadback, 8, "the cap until warm-up has timed the decode");
    await e.warmUp();
    const t = e.stepTiming!;
    assert.ok(t.stepMs > 0 && t.readbackWaitMs >= 0, JSON.stringify(t));
    // Overlapped: the fewest steps whose GPU time covers twice the readback's wait, in 1..8.
    assert.equal(t.steps, Math.max(1, Math.min(8, Math.ceil(2 * t.readbackWaitMs / t.stepMs))));
    assert.equal(e.stepsPerReadback, t.steps);
    assert.equal(e.cacheReport().total.pages_used, 0, "the timing's scratch slot is closed");
    const req = requests()[0];
    const got = await e.generate(req);
    const ref = await Engine.create({
      model,
      gpu,
      precision: "f32",
      plan: p,
      quiet: true,
      decodeSteps: 3,
    });
    try {
      assert.deepEqual(got.ids, (await ref.generate(req)).ids);
    } finally {
      await ref.close();
    }
  } finally {
    await e.close();
  }
});
