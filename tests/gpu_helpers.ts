// Shared set-up for tests that run whole models on the GPU.

import { getGpu, type Precision } from "../gpu/device.ts";
import { ModelRunner, type SamplingParams } from "../gpu/runner.ts";
import type { LoadedModel, ModelConfig, ModelWeights } from "../model/types.ts";
import { layerAttention, type PlanMode, type ResolvedPlan } from "../plans/types.ts";

export const gpu = await getGpu();
export const precisions: Precision[] = gpu.hasF16 ? ["f32", "f16"] : ["f32"];

/** WebGPU keeps device handles and async polling alive across tests. */
export const gpuTest = { sanitizeResources: false, sanitizeOps: false };

export function asModel(config: ModelConfig, weights: ModelWeights): LoadedModel {
  return { source: "random", config, weights, tokenizer: null };
}

export function makeRunner(
  model: LoadedModel,
  precision: Precision,
  plan: ResolvedPlan,
  o: { chunk?: number; maxBatch?: number; steps?: number; maxSeqLen?: number; kvMb?: number } = {},
): Promise<ModelRunner> {
  return ModelRunner.create(gpu, model, {
    precision,
    plan,
    prefillChunk: o.chunk ?? 64,
    maxBatch: o.maxBatch ?? 4,
    maxDecodeSteps: o.steps ?? 8,
    kvCacheBytes: (o.kvMb ?? 32) * (1 << 20),
    maxSeqLen: o.maxSeqLen ?? model.config.maxSeqLen,
  });
}

/** A plan built directly in the resolved form: per layer either a kind or retrieval KV heads. */
export function plan(
  config: ModelConfig,
  mode: PlanMode,
  sink: number,
  recent: number,
  layers: ("retrieval" | "streaming" | number[])[] = [],
): ResolvedPlan {
  const all = Array.from({ length: config.nKvHeads }, (_, i) => i);
  return {
    mode,
    sink,
    recent,
    layers: Array.from({ length: config.nLayers }, (_, l) => {
      let spec: "retrieval" | "streaming" | number[] = layers[l] ??
        (mode === "streaming" ? "streaming" : "retrieval");
      if (mode === "full") spec = "retrieval";
      const ret: number[] = spec === "retrieval" ? all : spec === "streaming" ? [] : spec;
      return layerAttention(all.map((h) => ret.includes(h) ? "retrieval" : "streaming"));
    }),
  };
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
  runner: ModelRunner,
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
