// How an engine's runner is sized and built: the cache layout for a plan and the engine's sizes,
// checked against the adapter's buffer limits, then the runner over it. Shared by the engine
// (which builds the runner here or on a worker thread, runner_thread.ts) and the tests and bench
// that drive a runner directly.

import {
  type BufferLimits,
  CacheExhaustedError,
  CacheGeometry,
  CacheLayout,
  type KvDtype,
} from "../cache/layout.ts";
import type { Gpu, Precision } from "../gpu/device.ts";
import type { WeightChoice } from "../gpu/weights.ts";
import { ModelRunner } from "../gpu/runner.ts";
import type { AnyTensor, LoadedModel, ModelConfig } from "../model/types.ts";
import type { ResolvedPlan } from "../plans/types.ts";

/** The sizes of an engine's options that shape the runner and its cache. */
export interface RunnerSizes {
  /** KV-cache budget in bytes (default 256 MiB). */
  kvCacheBytes?: number;
  /** Sequences decoded together (default 8). */
  maxBatch?: number;
  /** Sequences that hold cache at once (default maxBatch + 1). */
  maxSeqs?: number;
  /** Prompt tokens per prefill forward (default 128). */
  prefillChunk?: number;
  /** Tokens per readback (default 8). */
  decodeSteps?: number;
  /** Longest sequence served (default: the model's context). */
  maxModelLen?: number;
  precision: Precision;
  /** How the KV cache stores keys and values (default: `precision`). */
  kvDtype?: KvDtype;
  /** How matmul weights are stored (default "float": the precision; "native": a GGUF's own
   * formats). */
  weights?: WeightChoice;
  /** Automatic prefix caching (default on; `--no-prefix-cache`). */
  prefixCache?: boolean;
  /** Snapshot rings of the prefix cache (default: 2 per sequence slot, within a quarter of the
   * budget). */
  prefixSnapshots?: number;
}

/** Tokens per page of the paged cache. */
export const PAGE_SIZE = 16;

/**
 * Positions a ring keeps beyond sink + recent when prefix caching is on: a snapshot taken at the
 * end of a prompt or request then restores any page boundary up to two pages before it, past
 * a decode readback's overshoot (a finished request's last tokens may run `decodeSteps - 1`
 * beyond its stop).
 */
export function ringSlackFor(decodeSteps: number): number {
  return 2 * PAGE_SIZE + decodeSteps;
}

/** What the engine's loop needs to know of its runner's geometry. */
export interface RunnerShape {
  layout: CacheLayout;
  maxSeqLen: number;
  maxBatch: number;
  maxDecodeSteps: number;
  prefillChunk: number;
  /** How matmul weights are stored (undefined: "float"). */
  weights?: WeightChoice;
  /** Automatic prefix caching is on. */
  prefixCache: boolean;
}

/**
 * The cache layout (and the loop's geometry) for these sizes. An explicit context the pool cannot
 * hold for even one sequence is refused, with the longest one that fits (the model's own default
 * context is served up to the pool).
 */
export function runnerShape(
  config: ModelConfig,
  plan: ResolvedPlan,
  o: RunnerSizes,
  limits: BufferLimits,
): RunnerShape {
  const maxBatch = o.maxBatch ?? 8;
  const maxSeqs = o.maxSeqs ?? maxBatch + 1;
  const decodeSteps = o.decodeSteps ?? 8;
  const budgetBytes = o.kvCacheBytes ?? 256 * (1 << 20);
  const kvDtype = o.kvDtype ?? o.precision;
  const prefixCache = o.prefixCache ?? true;
  const ringSlack = prefixCache ? ringSlackFor(decodeSteps) : 0;
  let snapshotSlots = 0;
  if (prefixCache) {
    const ring = new CacheGeometry(config, plan, kvDtype, PAGE_SIZE, ringSlack).ringBytes;
    snapshotSlots = o.prefixSnapshots ??
      (ring > 0 ? Math.min(2 * maxSeqs, Math.floor(budgetBytes / 4 / ring)) : 0);
  }
  const layout = new CacheLayout(config, plan, {
    budgetBytes,
    maxSeqs,
    maxSeqLen: o.maxModelLen ?? config.maxSeqLen,
    kvDtype,
    pageSize: PAGE_SIZE,
    limits,
    ringSlack,
    snapshotSlots,
  });
  const fits = layout.numPages * layout.pageSize;
  if (o.maxModelLen !== undefined && layout.paged && fits < o.maxModelLen) {
    throw new CacheExhaustedError(
      `--max-model-len ${o.maxModelLen}: the KV cache (--kv-cache-mb ${
        (layout.budgetBytes / (1 << 20)).toFixed(0)
      }) holds at most ${fits} tokens of one sequence; use --max-model-len ${fits} or raise ` +
        "--kv-cache-mb",
    );
  }
  return {
    layout,
    maxSeqLen: layout.maxSeqLen,
    maxBatch,
    maxDecodeSteps: decodeSteps,
    prefillChunk: o.prefillChunk ?? 128,
    weights: o.weights,
    prefixCache,
  };
}

/** The runner an engine with these sizes runs, over a cache laid out for `plan`. */
export function createRunner(
  gpu: Gpu,
  model: LoadedModel<AnyTensor>,
  plan: ResolvedPlan,
  o: RunnerSizes & { onUploadBytes?: (bytes: number) => void },
): Promise<ModelRunner> {
  if (o.kvDtype === "f16" && !gpu.hasF16) {
    throw new Error(`--kv-dtype f16: ${gpu.adapterName} has no shader-f16 (use f32, int8 or int4)`);
  }
  const shape = runnerShape(model.config, plan, o, gpu.limits);
  return ModelRunner.create(gpu, model, {
    precision: o.precision,
    layout: shape.layout,
    prefillChunk: shape.prefillChunk,
    maxBatch: shape.maxBatch,
    maxDecodeSteps: shape.maxDecodeSteps,
    weights: o.weights,
    onUploadBytes: o.onUploadBytes,
  });
}
