// The longest context that fits a memory size, closed form (no GPU): the weights, the runner's
// other buffers as the engine sizes them, and the KV cache's shard buffers of one sequence. The
// capacity figure of the bench (bench/kv.ts) and `deno task doctor` (cli/doctor.ts) both use it;
// it lives here because nothing outside bench/ and tests/ may import bench/.

import { CacheGeometry, DEFAULT_BUFFER_LIMITS, type KvDtype } from "../cache/layout.ts";
import type { WeightChoice } from "../engine/engine.ts";
import { runnerShape } from "../engine/runners.ts";
import { MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS, SAMPLING_BYTES } from "../gpu/kernels/sample.ts";
import type { PlannedBuffer } from "../gpu/limits.ts";
import { kvBufferPlan } from "../gpu/kv_buffers.ts";
import { runnerBuffers } from "../gpu/runner.ts";
import { partLimit, weightBuffers } from "../gpu/weights.ts";
import type { ModelConfig } from "../model/types.ts";
import type { ResolvedPlan } from "../plans/types.ts";

export interface Fit {
  /** Sequences that share the budget (each reserves its ring up front, as the manager does). */
  seqs: number;
  budget_bytes: number;
  /** Longest context each of `seqs` sequences can hold; null when unbounded or none. */
  max_context: number | null;
  /** Streaming-only plans hold any length in their rings. */
  unbounded: boolean;
}

/**
 * Closed form of the longest context that fits: the layout reserves `seqs` rings, makes
 * floor((budget - rings) / pageBytes) pages, and a sequence of n tokens takes ceil(n / pageSize).
 */
export function maxContextFit(g: CacheGeometry, budgetBytes: number, seqs: number): Fit {
  const rings = seqs * g.ringBytes;
  const base = { seqs, budget_bytes: budgetBytes };
  if (rings > budgetBytes) return { ...base, max_context: 0, unbounded: false };
  if (!g.paged) return { ...base, max_context: null, unbounded: true };
  const pages = Math.floor((budgetBytes - rings) / g.pageBytes);
  return { ...base, max_context: Math.floor(pages / seqs) * g.pageSize, unbounded: false };
}

/** The engine's defaults the activations are sized with (engine/runners.ts runnerShape). */
export const CAPACITY_PREFILL_CHUNK = 128;
export const CAPACITY_DECODE_STEPS = 8;

/** What a runner for one sequence of up to `maxSeqLen` tokens allocates besides its weights. */
export interface RunnerMemory {
  /** Activations and the like: runnerBuffers' activations (x, qkv, attn, gate_up rows of a
   * prefill chunk, the final hidden rows and logits of the batch, the decode partials and
   * prefill carry), the small u32 staging buffers it does not list (the runner's
   * #allocateActivations), and the KV page table (kvBufferPlan). */
  overhead: PlannedBuffer[];
  /** Bytes of the K and V shard buffers (kvBufferPlan without the page table). */
  kv_shard_bytes: number;
}

/** The buffers of a runner serving one sequence of up to `maxSeqLen` tokens, sized as the engine
 * sizes it (engine/runners.ts runnerShape with --max-model-len maxSeqLen, a pool of exactly
 * that, batch 1, the default prefill chunk and decode steps). */
export function runnerMemory(
  c: ModelConfig,
  plan: ResolvedPlan,
  kvDtype: KvDtype,
  maxSeqLen: number,
): RunnerMemory {
  const g = new CacheGeometry(c, plan, kvDtype);
  const shape = runnerShape(c, plan, {
    kvCacheBytes: g.ringBytes + g.pagesFor(maxSeqLen) * g.pageBytes,
    maxBatch: 1,
    maxSeqs: 1,
    prefillChunk: CAPACITY_PREFILL_CHUNK,
    decodeSteps: CAPACITY_DECODE_STEPS,
    maxModelLen: maxSeqLen,
    precision: "f16",
    kvDtype,
    // One sequence as long as memory allows: nothing to share, so no snapshot rings or slack.
    prefixCache: false,
  }, DEFAULT_BUFFER_LIMITS);
  // runnerBuffers lists the weights first (weightBuffers), then the activations.
  const limits = DEFAULT_BUFFER_LIMITS as GPUSupportedLimits;
  const weights = weightBuffers(c, "f16", partLimit(limits)).length;
  const listed = runnerBuffers(c, { precision: "f16", ...shape }, limits).slice(weights);
  const R = Math.max(shape.prefillChunk, shape.maxBatch);
  const B = shape.maxBatch;
  const S = shape.maxDecodeSteps;
  // fwd, tokens, rows, gather, sampling, step, sampled, logprobs, unused, logit bias, top logprobs.
  const small = 16 + R * 4 + R * 16 + B * 4 + B * SAMPLING_BYTES + 4 + 2 * S * B * 4 + 16 +
    B * MAX_LOGIT_BIAS * 8 + S * B * MAX_TOP_LOGPROBS * 8;
  const kv = kvBufferPlan(shape.layout);
  const table = kv.filter((b) => b.name === "page table");
  return {
    overhead: [
      ...listed,
      { name: "u32 staging (tokens, rows, samplers, sampled ids)", bytes: small, bound: true },
      ...table,
    ],
    kv_shard_bytes: kv.filter((b) => b.name !== "page table").reduce((s, b) => s + b.bytes, 0),
  };
}

/** The longest context of one sequence that fits `budget` bytes with `weightBytes` of weights. */
export interface ContextFit {
  /** Tokens of context (0 when not even one page fits). */
  max_context: number;
  /** runnerMemory's overhead at that context (activations, staging, page table). */
  activation_bytes: number;
  /** What is left for the K/V shards: budget - weights - activations. */
  kv_budget_bytes: number;
  /** The K/V shard buffers at max_context (rings + pages). */
  kv_bytes: number;
  /** weights + activations + K/V (<= the budget). */
  total_bytes: number;
}

/** The runner's other buffers grow slowly with the context (the page table, the split count up
 * to its cap), so they are sized at the context found, repeating until they fit. */
export function longestContext(
  c: ModelConfig,
  plan: ResolvedPlan,
  kvDtype: KvDtype,
  weightBytes: number,
  budget: number,
): ContextFit {
  const g = new CacheGeometry(c, plan, kvDtype);
  const memory = (n: number) => runnerMemory(c, plan, kvDtype, Math.max(g.pageSize, n));
  const overhead = (m: RunnerMemory) => m.overhead.reduce((s, b) => s + b.bytes, 0);
  let act = overhead(memory(g.pageSize));
  let fit = maxContextFit(g, budget - weightBytes - act, 1);
  for (let i = 0; i < 16; i++) {
    const next = overhead(memory(fit.max_context ?? 0));
    if (next <= act) break;
    act = next;
    fit = maxContextFit(g, budget - weightBytes - act, 1);
  }
  const n = fit.max_context ?? 0;
  const at = memory(n);
  return {
    max_context: n,
    activation_bytes: overhead(at),
    kv_budget_bytes: fit.budget_bytes,
    kv_bytes: at.kv_shard_bytes,
    total_bytes: weightBytes + overhead(at) + at.kv_shard_bytes,
  };
}

/** Bytes of a model's weight buffers as the engine uploads them at f16 (gpu/weights.ts
 * weightBuffers): `float` stores every matrix in f16, `q8_0` / `q4_0` quantize the matmul
 * weights on load (the embedding stays f16). */
export function weightBytes(c: ModelConfig, weights: WeightChoice = "float"): number {
  return weightBuffers(c, "f16", Number.MAX_SAFE_INTEGER, c.tiedEmbeddings, weights)
    .reduce((s, b) => s + b.bytes, 0);
}
