// Shared set-up for tests that run whole models on the GPU.

import { type BufferLimits, CacheLayout, type KvDtype } from "../cache/layout.ts";
import type { WeightChoice } from "../gpu/weights.ts";
import { KvCacheManager, type SeqCache } from "../cache/manager.ts";
import { getGpu, type Precision } from "../gpu/device.ts";
import { type DecodeRow, ModelRunner, type SamplingParams } from "../gpu/runner.ts";
import type { AnyTensor, LoadedModel, ModelConfig, ModelWeights } from "../model/types.ts";
import { layerAttention, type PlanMode, type ResolvedPlan } from "../plans/types.ts";
import { mulberry32, randomModel, tinyConfig } from "../model/random.ts";

export const gpu = await getGpu();
export const precisions: Precision[] = gpu.hasF16 ? ["f32", "f16"] : ["f32"];

/** WebGPU keeps device handles and async polling alive across tests. */
export const gpuTest = { sanitizeResources: false, sanitizeOps: false };

export function asModel(config: ModelConfig, weights: ModelWeights): LoadedModel {
  return { source: "random", config, weights, tokenizer: null };
}

/**
 * A random 4-layer model (4 query heads, 2 KV heads, q/k/v biases) for the streaming kinds'
 * tests. Keys and values of a random model average to about zero, so a wrong set of keys in a
 * window or in a compensation token's mean would hardly move the output: large k/v biases give
 * every head a mean of its own. Those make the logits very sharp (one token at p ~ 1), so the
 * final norm is scaled down to keep the log-probabilities informative.
 */
export function biasedKvModel(seed: number, biasSeed: number) {
  const config = tinyConfig({
    nLayers: 4,
    nHeads: 4,
    nKvHeads: 2,
    maxSeqLen: 512,
    vocabSize: 96,
    qkvBias: true,
  });
  const weights = randomModel(config, seed);
  const r = mulberry32(biasSeed);
  for (const l of weights.layers) {
    for (const b of [l.bk!, l.bv!]) {
      for (let i = 0; i < b.data.length; i++) b.data[i] = (r() < 0.5 ? -1 : 1) * (0.5 + r());
    }
  }
  for (let i = 0; i < weights.finalNorm.data.length; i++) weights.finalNorm.data[i] *= 0.3;
  return { config, weights, model: asModel(config, weights) };
}

/** A cache manager that knows which sequences it opened. */
export class TestCache extends KvCacheManager {
  readonly #open = new WeakSet<SeqCache>();

  override open(): SeqCache | null {
    const seq = super.open();
    if (seq) this.#open.add(seq);
    return seq;
  }

  override close(seq: SeqCache): void {
    this.#open.delete(seq);
    super.close(seq);
  }

  owns(seq: SeqCache): boolean {
    return this.#open.has(seq);
  }
}

/**
 * A runner with its cache manager beside it (`cache`), paired as the engine pairs them:
 * `prefill`, `evaluate` and `decode` of sequences that `cache` opened reserve the positions they
 * write before the runner runs and commit them after, so a test reads as it would against one
 * object. Sequences of another manager pass straight to the runner: their caller reserves and
 * commits.
 */
export class TestRunner {
  constructor(readonly runner: ModelRunner, readonly cache: TestCache) {}

  get opts(): ModelRunner["opts"] {
    return this.runner.opts;
  }

  get layout(): CacheLayout {
    return this.runner.layout;
  }

  /** Runs `forward` with each sequence's next `n` positions reserved before and committed
   * after (sequences `cache` opened only). */
  async #around<T>(spans: [SeqCache, number][], forward: () => Promise<T>): Promise<T> {
    const mine = spans.filter(([seq]) => this.cache.owns(seq));
    for (const [seq, n] of mine) this.cache.reserve(seq, seq.tokens + n);
    const out = await forward();
    for (const [seq, n] of mine) this.cache.commit(seq, seq.tokens + n);
    return out;
  }

  prefill(
    seq: SeqCache,
    tokens: number[],
    sampling: SamplingParams,
    opts: Parameters<ModelRunner["prefill"]>[3] = {},
  ): ReturnType<ModelRunner["prefill"]> {
    return this.#around(
      [[seq, tokens.length]],
      () => this.runner.prefill(seq, tokens, sampling, opts),
    );
  }

  evaluate(
    seq: SeqCache,
    tokens: number[],
    rows: number[],
    opts: { chunk?: number } = {},
  ): ReturnType<ModelRunner["evaluate"]> {
    return this.#around(
      [[seq, tokens.length]],
      () => this.runner.evaluate(seq, tokens, rows, opts),
    );
  }

  decode(
    batch: DecodeRow[],
    steps: number,
    opts: { readLogits?: boolean } = {},
  ): ReturnType<ModelRunner["decode"]> {
    return this.#around(
      batch.map((b) => [b.seq, steps]),
      () => this.runner.decode(batch, steps, opts),
    );
  }

  attentionCallsPerLayer(): number[] {
    return this.runner.attentionCallsPerLayer();
  }

  destroy(): void {
    this.runner.destroy();
  }
}

/** A runner over a cache of `kvMb` MiB with maxBatch + 1 sequence slots (as the engine sizes
 * it), and the manager of that cache; the cache's buffers are sharded to fit `kvLimits`
 * (default the adapter's limits). */
export async function makeRunner(
  model: LoadedModel<AnyTensor>,
  precision: Precision,
  plan: ResolvedPlan,
  o: {
    chunk?: number;
    maxBatch?: number;
    steps?: number;
    maxSeqLen?: number;
    kvMb?: number;
    bindingLimit?: number;
    kvLimits?: BufferLimits;
    /** How the cache stores keys and values (default: `precision`). */
    kvDtype?: KvDtype;
    /** How matmul weights are stored (default float). */
    weights?: WeightChoice;
  } = {},
): Promise<TestRunner> {
  const maxBatch = o.maxBatch ?? 4;
  const layout = new CacheLayout(model.config, plan, {
    budgetBytes: (o.kvMb ?? 32) * (1 << 20),
    maxSeqs: maxBatch + 1,
    maxSeqLen: o.maxSeqLen ?? model.config.maxSeqLen,
    kvDtype: o.kvDtype ?? precision,
    limits: o.kvLimits ?? gpu.limits,
  });
  const runner = await ModelRunner.create(gpu, model, {
    precision,
    layout,
    prefillChunk: o.chunk ?? 64,
    maxBatch,
    maxDecodeSteps: o.steps ?? 8,
    bindingLimit: o.bindingLimit,
    weights: o.weights,
  });
  return new TestRunner(runner, new TestCache(layout));
}

/** A plan built directly in the resolved form: per layer either a kind or retrieval KV heads;
 * with `compensation` every streaming head is a compensated one. */
export function plan(
  config: ModelConfig,
  mode: PlanMode,
  sink: number,
  recent: number,
  layers: ("retrieval" | "streaming" | number[])[] = [],
  compensation = false,
): ResolvedPlan {
  const all = Array.from({ length: config.nKvHeads }, (_, i) => i);
  const streaming = compensation ? "compensated" : "streaming";
  return {
    mode,
    sink,
    recent,
    layers: Array.from({ length: config.nLayers }, (_, l) => {
      let spec: "retrieval" | "streaming" | number[] = layers[l] ??
        (mode === "streaming" ? "streaming" : "retrieval");
      if (mode === "full") spec = "retrieval";
      const ret: number[] = spec === "retrieval" ? all : spec === "streaming" ? [] : spec;
      return layerAttention(all.map((h) => ret.includes(h) ? "retrieval" : streaming));
    }),
  };
}

/**
 * Greedy GPU run of `prompt` (prefill in chunks of `chunk`, then `steps` decode steps, 8 per
 * readback) against a CPU reference run: first-step logits within f32 1e-3 / f16 5e-2 (f16
 * weights and keys; the streaming kinds' tests share this bound), and every token in f32 (the
 * first in f16, whose later greedy choices may flip on near ties).
 */
export async function expectReferenceRun(
  model: LoadedModel,
  precision: Precision,
  pl: ResolvedPlan,
  chunk: number,
  prompt: number[],
  steps: number,
  ref: { first: Float32Array; tokens: number[] },
): Promise<void> {
  const r = await makeRunner(model, precision, pl, { chunk });
  try {
    const out = await gpuGreedy(r, prompt, steps, { perReadback: 8 });
    const tol = precision === "f32" ? 1e-3 : 5e-2;
    const d = maxAbsDiff(out.logits, ref.first);
    if (!(d <= tol)) throw new Error(`prefill max |diff| ${d} > ${tol}`);
    if (precision === "f32") {
      if (out.tokens.join() !== ref.tokens.join()) {
        throw new Error(`tokens ${out.tokens} vs the reference's ${ref.tokens}`);
      }
    } else if (out.tokens[0] !== ref.tokens[0]) {
      throw new Error(`first token ${out.tokens[0]} vs the reference's ${ref.tokens[0]}`);
    }
  } finally {
    r.destroy();
  }
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export const GREEDY: SamplingParams = { temperature: 0 };

/**
 * Greedy run on the GPU: prefill `prompt` (in chunks of `chunk`), then decode `steps` tokens
 * `perReadback` at a time. Returns the first-step logits and every generated token.
 */
export async function gpuGreedy(
  runner: TestRunner,
  prompt: number[],
  steps: number,
  o: { chunk?: number; perReadback?: number } = {},
): Promise<{ logits: Float32Array; tokens: number[] }> {
  const seq = runner.cache.open()!;
  try {
    const p = await runner.prefill(seq, prompt, GREEDY, { chunk: o.chunk, readLogits: true });
    const tokens = [p.token];
    while (tokens.length < steps) {
      const n = Math.min(o.perReadback ?? runner.opts.maxDecodeSteps, steps - tokens.length);
      const d = await runner.decode(
        [{ seq, token: tokens[tokens.length - 1], sampling: GREEDY }],
        n,
      );
      tokens.push(...d.tokens[0]);
    }
    return { logits: p.logits!, tokens };
  } finally {
    runner.cache.close(seq);
  }
}
