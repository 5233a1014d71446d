// sample.wgsl's logit_bias, presence / frequency / repetition penalties (over per-slot token
// counts kept on the GPU) and top log-probabilities, against a plain-TypeScript implementation of
// the same rules (f64), on seeded random logits with negative values, ties and repeated tokens.
//
// Tolerances. Token choices are compared exactly, except where the reference's decision is within
// rounding of a boundary: the kernel adjusts logits in f32 (a division by the repetition penalty is
// within 2.5 ULP in WGSL, the penalty sum may be fused), so a reference whose top two adjusted
// logits are within 1e-4 (relative to max(1, |logit|)), or whose inverse-CDF draw lies within
// 1e-5 of the mass of a boundary, is "ambiguous" and skipped (counted; the tests require nearly
// all cases unambiguous). Log-probabilities: logit - logsumexp in f32 over V terms, each exp within
// a few ULP: within 1e-5 + 4u(|logit| + |lse|) absolute (as tests/kernels_test.ts argues).
// Top-k ids are exact: the selection compares stored f32 logits, no arithmetic.

import assert from "node:assert/strict";
import { logSumExp } from "./reference/log_softmax.ts";
import {
  encodeBias,
  encodeSampling,
  MAX_LOGIT_BIAS,
  MAX_TOP_LOGPROBS,
  PROMPT_SEEN,
  promptCounts,
  sample,
  type SamplingParams,
  topOf,
} from "../gpu/kernels/sample.ts";
import type { ScalarType } from "../gpu/pipelines.ts";
import { countsSlots, type RunnerOptions } from "../gpu/runner.ts";
import type { ModelConfig } from "../model/types.ts";
import { KernelHarness, Rng, U32 } from "./kernel_harness.ts";

const harness = await KernelHarness.create();
const h = harness as KernelHarness;
const gpuTest = { ignore: harness === null, sanitizeResources: false, sanitizeOps: false };

// ---- the reference ----------------------------------------------------------------------------

/** The logits the sampler draws from: bias, then repetition (prompt or generated), then
 * frequency and presence (generated), in vLLM's order. `counts`: the slot's counts row. */
function adjustRef(raw: ArrayLike<number>, s: SamplingParams, counts: Uint32Array): Float64Array {
  const l = Float64Array.from(raw);
  for (const [id, b] of s.logitBias ?? []) l[id] += b;
  const rep = s.repetitionPenalty ?? 1;
  const pres = s.presencePenalty ?? 0;
  const freq = s.frequencyPenalty ?? 0;
  if (rep === 1 && pres === 0 && freq === 0) return l;
  for (let i = 0; i < l.length; i++) {
    const c = counts[i];
    const n = c & 0x7fffffff;
    if (c !== 0) l[i] = l[i] > 0 ? l[i] / rep : l[i] * rep;
    l[i] -= freq * n + (n > 0 ? pres : 0);
  }
  return l;
}

/** Argmax (lowest index among equal maxima) and whether the runner-up is within rounding. */
function greedyRef(l: Float64Array): { token: number; ambiguous: boolean } {
  let best = 0;
  for (let i = 1; i < l.length; i++) if (l[i] > l[best]) best = i;
  const tol = 1e-4 * Math.max(1, Math.abs(l[best]));
  let ambiguous = false;
  for (let i = 0; i < l.length; i++) {
    if (i !== best && l[best] - l[i] < tol && !(l[i] === l[best] && i > best)) ambiguous = true;
  }
  return { token: best, ambiguous };
}

/** sample.wgsl's RNG (tests/kernels_test.ts documents it): a uniform in [0, 1). */
function pcg(v: number): number {
  const s = (Math.imul(v, 747796405) + 2891336453) >>> 0;
  const w = Math.imul(((s >>> ((s >>> 28) + 4)) ^ s) >>> 0, 277803737) >>> 0;
  return ((w >>> 22) ^ w) >>> 0;
}
function uniformDraw(seed: number, pos: number): number {
  return (pcg((pcg((seed ^ 0x9e3779b9) >>> 0) + pos) >>> 0) >>> 8) / 16777216;
}

/** Temperature sampling of `l` (no top-k / top-p / min-p): the inverse-CDF draw in index order. */
function drawRef(l: Float64Array, t: number, seed: number, pos: number) {
  let mx = -Infinity;
  for (const x of l) mx = Math.max(mx, x);
  const w = Array.from(l, (x) => (x - mx) / t < -104 ? 0 : Math.exp((x - mx) / t));
  const total = w.reduce((a, b) => a + b, 0);
  const u = uniformDraw(seed, pos) * total;
  let run = 0, token = -1, ambiguous = false;
  for (let i = 0; i < l.length; i++) {
    run += w[i];
    if (Math.abs(run - u) < 1e-5 * total) ambiguous = true;
    if (token < 0 && u < run) token = i;
  }
  return { token, ambiguous };
}

const lpTol = (l: number, lz: number) => 1e-5 + 4 * U32 * (Math.abs(l) + Math.abs(lz));

/** The k largest of `l` by (value descending, id ascending). */
function topRef(l: ArrayLike<number>, k: number): number[] {
  return [...Array(l.length).keys()].sort((a, b) => l[b] - l[a] || a - b).slice(0, k);
}

// ---- the kernel -------------------------------------------------------------------------------

interface Run {
  tokens: number[];
  logprobs: number[];
  /** Per row, its [id, logprob] top list. */
  top: [number, number][][];
  /** The counts buffer after the steps. */
  counts: Uint32Array;
}

/**
 * Runs sample.wgsl `steps` times (decode step s writes output ring row s) over the same logits
 * rows [n, vocab]: row r is token row r, in sequence slot slots[r], at position pos[r] + s.
 * `counts`: [nSlots, vocab] initial counts.
 */
async function runSampling(
  p: ScalarType,
  vocab: number,
  logits: Float32Array,
  params: SamplingParams[],
  slots: number[],
  counts: Uint32Array,
  o: { steps?: number; pos?: number[] } = {},
): Promise<Run[]> {
  const n = params.length;
  const steps = o.steps ?? 1;
  const pos = o.pos ?? slots.map((_, r) => 10 + r);
  const sampled = h.filled(steps * n, 0xdeadbeef, "u32");
  const logprobs = h.filled(steps * n, 0);
  const top = h.filled(steps * n * MAX_TOP_LOGPROBS * 2, 0, "u32");
  const countsBuf = h.upload(counts, "u32");
  const buffers = {
    gather: h.upload(slots.map((_, r) => r), "u32"),
    params: h.upload(new Uint32Array(encodeSampling(params)), "u32"),
    logits: h.upload(logits),
    sampled,
    logprobs,
    work: h.filled(n * vocab, 0),
    counts: countsBuf,
    bias: h.upload(new Uint32Array(encodeBias(params)), "u32"),
    top,
  };
  const fwd = h.forward({ nRows: n, nLogitRows: n });
  for (let s = 0; s < steps; s++) {
    await h.dispatch(
      p,
      sample({ VOCAB: vocab, MAX_ROWS: n, MAX_BIAS: MAX_LOGIT_BIAS, MAX_TOP: MAX_TOP_LOGPROBS }),
      {
        ...buffers,
        fwd,
        rows: h.rows(slots.map((slot, r) => ({ slot, pos: pos[r] + s, firstRow: r, nSeqRows: 1 }))),
        step: h.upload([s], "u32"),
      },
      [n, 1, 1],
    );
  }
  const tok = await h.readU32(sampled);
  const lp = await h.readF32(logprobs);
  const tp = await h.readU32(top);
  const after = await h.readU32(countsBuf);
  return Array.from({ length: steps }, (_, s) => ({
    tokens: params.map((_, r) => tok[s * n + r]),
    logprobs: params.map((_, r) => lp[s * n + r]),
    top: params.map((q, r) => topOf(tp, n, s, r, q.topLogprobs ?? 0)),
    counts: after,
  }));
}

/** Random counts rows for `slots` slots: some tokens in the prompt, some generated (repeated). */
function randomCounts(rng: Rng, slots: number, vocab: number): Uint32Array {
  const c = new Uint32Array(slots * vocab);
  for (let s = 0; s < slots; s++) {
    for (let k = 0; k < vocab / 8; k++) c[s * vocab + rng.int(vocab)] |= PROMPT_SEEN;
    for (let k = 0; k < vocab / 4; k++) c[s * vocab + rng.int(vocab)] += 1 + rng.int(3);
  }
  return c;
}

function randomParams(rng: Rng, vocab: number, temperature: number): SamplingParams {
  const s: SamplingParams = { temperature, seed: rng.int(2 ** 32) };
  const kind = rng.int(5);
  if (kind === 0 || kind === 4) s.presencePenalty = rng.uniform(-2, 2);
  if (kind === 1 || kind === 4) s.frequencyPenalty = rng.uniform(-2, 2);
  if (kind === 2 || kind === 4) s.repetitionPenalty = rng.uniform(0.5, 2);
  if (kind === 3 || rng.int(2) === 0) {
    const ids = rng.permutation(vocab).slice(0, 1 + rng.int(40));
    s.logitBias = ids.map((id) => [id, rng.uniform(-10, 10)]);
  }
  return s;
}

// ---- tests ------------------------------------------------------------------------------------

Deno.test(
  "sample.wgsl: greedy after logit_bias and penalties equals the reference",
  gpuTest,
  async (t) => {
    const V = 1000, N = 24, SLOTS = 5;
    await h.perPrecision(t, async (p) => {
      const rng = new Rng(1800);
      const logits = rng.array(N * V, -8, 8);
      const counts = randomCounts(rng, SLOTS, V);
      const params = Array.from({ length: N }, () => randomParams(rng, V, 0));
      // Rows 0-3 have one slot each; the rest share slots without penalties (counts untouched).
      const slots = params.map((_, r) => (r < 4 ? r : 4));
      for (let r = 4; r < N; r++) {
        delete params[r].presencePenalty;
        delete params[r].frequencyPenalty;
        delete params[r].repetitionPenalty;
      }
      const [got] = await runSampling(p, V, logits, params, slots, counts);
      let ambiguous = 0;
      const want = new Uint32Array(counts);
      for (let r = 0; r < N; r++) {
        const slotRow = counts.subarray(slots[r] * V, (slots[r] + 1) * V);
        const adj = adjustRef(logits.subarray(r * V, (r + 1) * V), params[r], slotRow);
        const ref = greedyRef(adj);
        if (ref.ambiguous) {
          ambiguous++;
          continue;
        }
        assert.equal(got.tokens[r], ref.token, `row ${r} ${JSON.stringify(params[r])}`);
        // The sampled token's logprob: the raw logits' log-softmax, whatever the adjustments.
        const raw = logits.subarray(r * V, (r + 1) * V);
        const lz = logSumExp(raw);
        const lp = raw[ref.token] - lz;
        assert.ok(Math.abs(got.logprobs[r] - lp) <= lpTol(raw[ref.token], lz), `logprob row ${r}`);
        if (r < 4) want[slots[r] * V + got.tokens[r]] += 1;
      }
      assert.ok(ambiguous <= 2, `${ambiguous} ambiguous rows`);
      // The penalised rows counted their token in their slot; nothing else changed.
      if (ambiguous === 0) assert.deepEqual([...got.counts], [...want]);
    });
  },
);

Deno.test("sample.wgsl: a large logit_bias forces a token, -100 bans one", gpuTest, async (t) => {
  const V = 300;
  await h.perPrecision(t, async (p) => {
    const rng = new Rng(1801);
    const logits = rng.array(3 * V, -8, 8);
    const top = topRef(logits.subarray(0, V), 1)[0];
    const params: SamplingParams[] = [
      { temperature: 0, logitBias: [[123, 100]] },
      { temperature: 1, seed: 5, logitBias: [[7, 100], [8, -100]] },
      { temperature: 0, logitBias: [[top, -100]] },
    ];
    logits[2 * V + top] = 50; // row 2's max, banned
    const [got] = await runSampling(p, V, logits, params, [0, 1, 2], new Uint32Array(3 * V));
    assert.equal(got.tokens[0], 123);
    assert.equal(got.tokens[1], 7);
    assert.notEqual(got.tokens[2], top);
  });
});

Deno.test("sample.wgsl: temperature draws from the penalised logits", gpuTest, async (t) => {
  const V = 1000, N = 32;
  await h.perPrecision(t, async (p) => {
    const rng = new Rng(1802);
    const logits = rng.array(N * V, -6, 6);
    const counts = randomCounts(rng, N, V);
    const params = Array.from({ length: N }, () => randomParams(rng, V, rng.uniform(0.5, 1.5)));
    const slots = params.map((_, r) => r);
    const pos = slots.map(() => rng.int(1000));
    const [got] = await runSampling(p, V, logits, params, slots, counts, { pos });
    let ambiguous = 0;
    for (let r = 0; r < N; r++) {
      const adj = adjustRef(
        logits.subarray(r * V, (r + 1) * V),
        params[r],
        counts.subarray(r * V, (r + 1) * V),
      );
      const ref = drawRef(adj, params[r].temperature, params[r].seed!, pos[r]);
      if (ref.ambiguous) {
        ambiguous++;
        continue;
      }
      assert.equal(got.tokens[r], ref.token, `row ${r}`);
    }
    assert.ok(ambiguous <= 2, `${ambiguous} ambiguous rows`);
  });
});

Deno.test("sample.wgsl: top logprobs, ties by lower id, of the raw logits", gpuTest, async (t) => {
  await h.perPrecision(t, async (p) => {
    const rng = new Rng(1803);
    for (const V of [1000, 12]) {
      const N = 4;
      // Values on a grid of 0.25 in [-4, 4): many exact ties.
      const logits = Float32Array.from(rng.array(N * V, -4, 4), (x) => Math.floor(x * 4) / 4);
      logits[5] = logits[900 % V] = logits[600 % V] = 7; // a three-way tie at the top of row 0
      const params: SamplingParams[] = [
        { temperature: 0, topLogprobs: MAX_TOP_LOGPROBS },
        { temperature: 0, topLogprobs: 5, frequencyPenalty: 2, logitBias: [[3, 50]] },
        { temperature: 1, seed: 9, topLogprobs: 1 },
        { temperature: 0 },
      ];
      const [got] = await runSampling(p, V, logits, params, [0, 1, 2, 3], randomCounts(rng, 4, V));
      for (let r = 0; r < N; r++) {
        const raw = logits.subarray(r * V, (r + 1) * V);
        const lz = logSumExp(raw);
        const k = Math.min(params[r].topLogprobs ?? 0, V);
        const want = topRef(raw, k);
        assert.deepEqual(got.top[r].map(([id]) => id), want, `V ${V} row ${r} ids`);
        got.top[r].forEach(([id, lp], j) => {
          assert.ok(Math.abs(lp - (raw[id] - lz)) <= lpTol(raw[id], lz), `row ${r} entry ${j}`);
        });
        // Sorted descending.
        for (let j = 1; j < got.top[r].length; j++) {
          assert.ok(got.top[r][j][1] <= got.top[r][j - 1][1]);
        }
      }
      // Greedy without adjustments: the first entry is the sampled token.
      assert.equal(got.top[0][0][0], got.tokens[0]);
      // Biased row: the sampled token is 3 (+50), the list stays the raw logits'.
      assert.equal(got.tokens[1], 3);
    }
  });
});

Deno.test("sample.wgsl: counts chain over decode steps (no readback)", gpuTest, async (t) => {
  const V = 64, STEPS = 6;
  await h.perPrecision(t, async (p) => {
    const rng = new Rng(1804);
    const logits = rng.array(2 * V, -1, 1);
    // Row 0: a frequency penalty larger than the logit range never repeats a token (greedy).
    // Row 1: repetition penalty with the prompt's tokens seen: the reference, step by step.
    const prompt = [3, 9, 27];
    const counts = new Uint32Array(2 * V);
    counts.set(promptCounts(V, prompt), V);
    const params: SamplingParams[] = [
      { temperature: 0, frequencyPenalty: 2 },
      { temperature: 0, repetitionPenalty: 1.5, presencePenalty: 0.3 },
    ];
    const steps = await runSampling(p, V, logits, params, [0, 1], counts, { steps: STEPS });
    const row0 = steps.map((s) => s.tokens[0]);
    assert.equal(new Set(row0).size, STEPS, `row 0 repeats: ${row0}`);
    const ref = counts.slice(V);
    const raw = logits.subarray(V, 2 * V);
    steps.forEach((s, i) => {
      const g = greedyRef(adjustRef(raw, params[1], ref));
      if (!g.ambiguous) assert.equal(s.tokens[1], g.token, `row 1 step ${i}`);
      ref[s.tokens[1]] += 1;
    });
    assert.deepEqual([...steps[STEPS - 1].counts.subarray(V)], [...ref]);
    // Row 0's counts: one per distinct token it sampled.
    const c0 = steps[STEPS - 1].counts.subarray(0, V);
    assert.deepEqual([...c0], [...c0].map((_, i) => (row0.includes(i) ? 1 : 0)));
  });
});

Deno.test("the sampler token counts fit one binding: every slot, or as many as fit", () => {
  const c = { vocabSize: 128256 } as ModelConfig;
  const limits = {
    maxStorageBufferBindingSize: 128 * 2 ** 20,
    maxBufferSize: 256 * 2 ** 20,
  } as GPUSupportedLimits;
  const opts = (maxSeqs: number) => ({ layout: { maxSeqs } }) as unknown as RunnerOptions;
  assert.equal(countsSlots(c, opts(64), limits), 64);
  // 128 MiB / (128256 * 4 bytes) = 261 rows: a penalised request in a later slot is refused by
  // name (ModelRunner: "penalties need a row of the sampler token counts buffer ...").
  assert.equal(countsSlots(c, opts(1000), limits), 261);
});
