// RazorAttention's compensation token (cache kind "compensated"): compensated zigzag and duo
// plans on the GPU against the CPU reference, which computes each query's token straight from
// its definition (the mean key and value of the positions the window dropped, entering the
// softmax with logit q.k_mean / sqrt(d) + ln(count)); equal to plain streaming while nothing has
// been dropped; the byte formula and the plan format.

import assert from "node:assert/strict";
import { CacheGeometry } from "../cache/layout.ts";
import { Engine } from "../engine/engine.ts";
import { mulberry32 } from "../model/random.ts";
import { parsePlan } from "../plans/schema.ts";
import { builtinPlan, resolvePlan } from "../plans/resolve.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import { cpuGreedy, CpuLlama } from "./reference/cpu_llama.ts";
import {
  biasedKvModel,
  expectReferenceRun,
  gpu,
  gpuGreedy,
  gpuTest,
  GREEDY,
  makeRunner,
  maxAbsDiff,
  plan,
  precisions,
} from "./gpu_helpers.ts";

const { config, weights, model } = biasedKvModel(3, 11);

/** zigzag (layers 0 and 2 streaming) and duo (mixed layers 0-1, layer 2 streaming), with or
 * without the compensation token on their streaming heads. */
function plans(sink: number, recent: number, compensation: boolean): Record<string, ResolvedPlan> {
  return {
    zigzag: plan(config, "zigzag", sink, recent, [
      "streaming",
      "retrieval",
      "streaming",
      "retrieval",
    ], compensation),
    duo: plan(config, "duo", sink, recent, [[1], [0], "streaming", [0, 1]], compensation),
  };
}

const prompt = (n: number, seed: number) => {
  const r = mulberry32(seed);
  return Array.from({ length: n }, () => Math.floor(r() * config.vocabSize));
};

function cpuRun(pl: ResolvedPlan | undefined, p: number[], steps: number) {
  return cpuGreedy(new CpuLlama(config, weights, pl), p, steps);
}

Deno.test(
  "compensated plans: GPU equals the CPU reference while the ring wraps many times",
  gpuTest,
  async (t) => {
    // Ring of 4 + 12 = 16 slots; 70 prompt tokens then 64 decode steps: the ring wraps 8 times
    // and the token stands for up to 118 dropped keys.
    const sink = 4;
    const recent = 12;
    const p = prompt(70, 2);
    const plain = plans(sink, recent, false);
    for (const [name, pl] of Object.entries(plans(sink, recent, true))) {
      const ref = cpuRun(pl, p, 64);
      // The token really changes the output: plain streaming gives other logits.
      const without = cpuRun(plain[name], p, 1);
      assert.ok(maxAbsDiff(without.first, ref.first) > 1e-3, `${name}: the token has no effect`);
      for (const precision of precisions) {
        // One chunk; chunks shorter than the window (each adds 9 dropped keys to the sums).
        for (const chunk of [128, 9]) {
          // f32 sums of <= 118 keys add ~1e-6 relative: the plain kinds' bounds hold.
          await t.step(
            `${name} ${precision} chunk ${chunk}`,
            () => expectReferenceRun(model, precision, pl, chunk, p, 64, ref),
          );
        }
      }
    }
  },
);

Deno.test("compensated decode batches sequences at different positions", gpuTest, async (t) => {
  // Three sequences of 70, 20 and 3 tokens (dropped 54, 4 and none) decoded in one batch, 8
  // steps per submission, then one step at a time with the logits read: each row's token comes
  // from its own slot's sums, kept right across chained steps. Also with the rings in shards
  // of 2 slots (3 shards for 5 slots): the fold runs once per shard, for that shard's slots.
  const pl = plans(4, 12, true).zigzag;
  const prompts = [prompt(70, 5), prompt(20, 6), prompt(3, 7)];
  const refs = prompts.map((q) => cpuRun(pl, q, 21));
  // One slot's ring: 16 positions x 2 KV heads x head_dim f32 values.
  const ring = 16 * 2 * config.headDim * 4;
  const sharded = { maxStorageBufferBindingSize: 2 * ring, maxBufferSize: 2 * ring };
  for (const kvLimits of [undefined, sharded]) {
    await t.step(kvLimits ? "rings in 3 shards" : "one shard", async () => {
      await batchedRun(pl, prompts, refs, kvLimits);
    });
  }
});

async function batchedRun(
  pl: ResolvedPlan,
  prompts: number[][],
  refs: ReturnType<typeof cpuRun>[],
  kvLimits?: { maxStorageBufferBindingSize: number; maxBufferSize: number },
) {
  const r = await makeRunner(model, "f32", pl, { chunk: 16, kvLimits });
  if (kvLimits) assert.equal(r.cache.layout.shards(r.cache.layout.kind("compensated")).count, 3);
  const seqs = prompts.map(() => r.cache.open()!);
  const tokens: number[][] = [];
  for (const [i, q] of prompts.entries()) {
    tokens.push([(await r.prefill(seqs[i], q, GREEDY)).token]);
  }
  for (let step = 0; step < 2; step++) {
    const d = await r.decode(
      seqs.map((seq, i) => ({ seq, token: tokens[i].at(-1)!, sampling: GREEDY })),
      8,
    );
    d.tokens.forEach((ts, i) => tokens[i].push(...ts));
  }
  for (let step = 17; step < 21; step++) {
    const d = await r.decode(
      seqs.map((seq, i) => ({ seq, token: tokens[i].at(-1)!, sampling: GREEDY })),
      1,
      { readLogits: true },
    );
    d.tokens.forEach((ts, i) => tokens[i].push(...ts));
    d.logits!.forEach((l, i) => {
      // f32 throughout: the kernel-test tolerance.
      const diff = maxAbsDiff(l, refs[i].logits[step]);
      assert.ok(diff <= 1e-3, `sequence ${i} step ${step}: max |diff| ${diff}`);
    });
  }
  assert.deepEqual(tokens, refs.map((x) => x.tokens));
  for (const seq of seqs) r.cache.close(seq);
  r.destroy();
}

Deno.test("with nothing dropped yet, compensated equals plain streaming", gpuTest, async (t) => {
  // sink + recent = 108 >= 40 + 64 positions: the token stands for no key at any step.
  const p = prompt(40, 1);
  for (const precision of precisions) {
    for (const name of ["zigzag", "duo"]) {
      await t.step(`${name} ${precision}`, async () => {
        const a = await makeRunner(model, precision, plans(8, 100, false)[name]);
        const b = await makeRunner(model, precision, plans(8, 100, true)[name]);
        const x = await gpuGreedy(a, p, 64);
        const y = await gpuGreedy(b, p, 64);
        // The same arithmetic in the same order: equal to the bit.
        assert.equal(maxAbsDiff(x.logits, y.logits), 0);
        assert.deepEqual(x.tokens, y.tokens);
        a.destroy();
        b.destroy();
      });
    }
  }
});

Deno.test("compensated kind: the byte formula counts the sums, plans opt in", () => {
  const pl = plans(4, 12, true).zigzag;
  const plain = plans(4, 12, false).zigzag;
  const g = new CacheGeometry(config, pl, "f16");
  const h = new CacheGeometry(config, plain, "f16");
  // Two streaming layers of 2 KV heads: 4 heads, each 4 x head_dim words of sums and 4 more.
  const sums = 4 * (4 * config.headDim + 4) * 4;
  assert.equal(g.headsOf("compensated"), 4);
  assert.equal(g.headsOf("streaming"), 0);
  assert.equal(g.ringBytes, h.ringBytes + sums);
  for (const n of [0, 1, 15, 16, 500]) {
    const a = g.bytes(g.stateFor(n));
    const b = h.bytes(h.stateFor(n));
    assert.equal(a.retrieval, b.retrieval);
    assert.equal(a.compensated, b.streaming + (n > 0 ? sums : 0), `${n} tokens`);
    assert.equal(a.total, b.total + (n > 0 ? sums : 0));
  }
  // `"compensation": true` makes every streaming head compensated; retrieval heads stay.
  const file = parsePlan({
    version: 1,
    model: {
      architecture: config.architecture,
      num_layers: 4,
      num_kv_heads: 2,
      head_dim: config.headDim,
    },
    mode: "zigzag",
    layers: ["streaming", "retrieval", "streaming", "retrieval"],
    sink: 4,
    recent: 12,
    compensation: true,
    provenance: { method: "test", budget: 0.5, source: "test" },
  }, "test plan");
  const resolved = resolvePlan(file, config);
  assert.deepEqual(resolved.layers.map((l) => l.kvHeadKinds), pl.layers.map((l) => l.kvHeadKinds));
  const streaming = resolvePlan(builtinPlan("streaming", config, { compensation: true }), config);
  assert.ok(streaming.layers.every((l) => l.kvHeadKinds.every((k) => k === "compensated")));
  assert.throws(
    () => parsePlan({ ...file, compensation: "yes" }, "bad.json"),
    /bad\.json: invalid plan: compensation: Expected boolean/,
  );
});

Deno.test(
  "engine: a compensated plan serves batched requests and resumes from the prefix cache",
  gpuTest,
  async () => {
    const pl = plans(4, 12, true).duo;
    // Two questions of one 60-token document, then a prompt of its own. The first request's
    // ring snapshot before its last prefill piece (position 64: pieces of 64) serves the second
    // at 48: the sums it holds stop where the ring's slack starts (64 - 12 - 36 = 16), and the
    // keys from there to 48's window start (37) are still in the ring.
    const doc = prompt(60, 8);
    const prompts = [[...doc, 1, 2, 3, 4, 5], [...doc, 9, 8, 7], prompt(70, 10)];
    const refs = prompts.map((q) => cpuRun(pl, q, 24));
    const run = async (prefixCache: boolean) => {
      const e = await Engine.create({
        model,
        gpu,
        precision: "f32",
        plan: pl,
        quiet: true,
        decodeSteps: 4,
        prefillChunk: 64,
        prefixCache,
      });
      try {
        assert.equal(e.shape.prefixCache, prefixCache);
        if (prefixCache) assert.equal(e.layout.ringSlack, 36);
        // Greedy, against the CPU; then sampled at temperature 1, whose log-probabilities are
        // the model's own and show any error in the restored sums.
        const gen = (promptIds: number[], i: number, greedy: boolean) =>
          e.generate({
            promptIds,
            maxTokens: 24,
            sampling: greedy ? GREEDY : { temperature: 1, seed: 5 + i },
            ignoreEos: true,
          });
        const greedy = [await gen(prompts[0], 0, true)];
        greedy.push(...await Promise.all(prompts.slice(1).map((q, i) => gen(q, i + 1, true))));
        const sampled = [];
        for (const [i, q] of prompts.entries()) sampled.push(await gen(q, i, false));
        const report = e.cacheReport();
        assert.equal(report.plan.compensation, true);
        // Layers 0 and 1 one streaming head each, layer 2 both.
        assert.equal(report.geometry.compensated_kv_heads, 4);
        assert.equal(report.total.pages_used, 0);
        if (prefixCache) {
          // Each snapshot ring holds its positions and its sums.
          const g = e.layout;
          const k = g.kind("compensated");
          const heads = g.headsOf("compensated");
          const snapshots = report.prefix_cache!.snapshots;
          assert.ok(snapshots > 0);
          assert.equal(
            report.compensated.bytes_cached,
            snapshots * (k.slotsPerSeq * g.tokenBytes(heads) + g.stateBytes(k, heads)),
          );
        }
        return { greedy, sampled };
      } finally {
        await e.close();
      }
    };
    const off = await run(false);
    const on = await run(true);
    assert.deepEqual(off.greedy.map((o) => o.cachedTokens), [0, 0, 0]);
    assert.deepEqual(on.greedy.map((o) => o.cachedTokens), [0, 48, 0]);
    assert.ok(on.sampled[1].cachedTokens > 0);
    for (const r of [off, on]) {
      assert.deepEqual(
        r.greedy.map((o) => o.ids),
        refs.map((x) => x.tokens),
      );
    }
    on.sampled.forEach((o, i) => {
      assert.deepEqual(o.ids, off.sampled[i].ids);
      // The same kernels over the same keys, the sums added in the same order: f32 rounding.
      const d = maxAbsDiff(o.logprobs, off.sampled[i].logprobs);
      assert.ok(d <= 1e-4, `request ${i}: log-probs differ by ${d}`);
    });
  },
);
