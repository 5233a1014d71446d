// KV-cache figures without a GPU: the cache manager's own accounting (cache/manager.ts, pure
// bookkeeping), the closed form of CacheGeometry, and the capacity figure (the longest context
// of Llama-3-8B-Gradient-4194k that fits 80 GiB with weights and activations counted).

import {
  CacheGeometry,
  CacheLayout,
  DEFAULT_BUFFER_LIMITS,
  type KvDtype,
} from "../cache/layout.ts";
import { type CacheStats, KvCacheManager } from "../cache/manager.ts";
import { runnerShape } from "../engine/runners.ts";
import { SAMPLING_BYTES } from "../gpu/kernels/sample.ts";
import type { PlannedBuffer } from "../gpu/limits.ts";
import { kvBufferPlan } from "../gpu/kv_buffers.ts";
import { runnerBuffers } from "../gpu/runner.ts";
import { partLimit, weightBuffers } from "../gpu/weights.ts";
import { PRESETS } from "../model/random.ts";
import type { ModelConfig } from "../model/types.ts";
import { builtinPlan, resolvePlan } from "../plans/resolve.ts";
import { loadPlanFile } from "../plans/schema.ts";
import type { ResolvedPlan } from "../plans/types.ts";

/** The manager's statistics for sequences of these lengths (each given its pages). */
export function managerStats(
  config: ModelConfig,
  plan: ResolvedPlan,
  kvDtype: KvDtype,
  lengths: number[],
  pageSize = 16,
): CacheStats {
  const g = new CacheGeometry(config, plan, kvDtype, pageSize);
  const used = g.usedBytes(lengths);
  // Exactly the rings, the pages these lengths take, and one spare page.
  const budget = lengths.length * g.ringBytes + used.retrieval + g.pageBytes;
  const m = new KvCacheManager(
    new CacheLayout(config, plan, {
      budgetBytes: budget,
      maxSeqs: Math.max(1, lengths.length),
      maxSeqLen: Math.max(1, ...lengths),
      kvDtype,
      pageSize,
    }),
  );
  for (const n of lengths) {
    const seq = m.open()!;
    m.reserve(seq, n);
    m.commit(seq, n);
  }
  return m.stats();
}

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

// ---- capacity: the longest context that fits one GPU's memory --------------------------------

/** The memory of the capacity figure: 80 GiB (an A100-80GB / H100-80GB's 80 x 2^30 bytes). */
export const CAPACITY_BUDGET_BYTES = 80 * 2 ** 30;
/** The target: Llama-3-8B-Instruct-Gradient-4194k's whole context. */
export const CAPACITY_TARGET_TOKENS = 4_194_304;
/** DuoAttention's published figure (Xiao et al., 2024, "DuoAttention: Efficient Long-Context LLM
 * Inference with Retrieval and Streaming Heads", abstract): Llama-3-8B decoding with 3.3 million
 * tokens of context on a single A100 GPU, with 8-bit weights (W8A8) and 4-bit KV cache. */
export const DUO_PUBLISHED = {
  max_context: 3_300_000,
  setting: "DuoAttention 50% + W8A8 weights + int4 KV, Llama-3-8B, one A100-80GB",
  source: "Xiao et al. 2024, DuoAttention (arXiv:2410.10819), abstract",
} as const;
/** The engine's defaults the activations are sized with (engine/runners.ts runnerShape). */
const CAPACITY_PREFILL_CHUNK = 128;
const CAPACITY_DECODE_STEPS = 8;
const SHIPPED = new URL("../plans/shipped/", import.meta.url).pathname;
const GRADIENT_4194K = "llama-3-8b-instruct-gradient-4194k";

/** Weights in the 4-bit accounting: GGUF Q4_0 (blocks of 32 weights: 16 bytes of nibbles
 * and an f16 scale, 18 bytes) for every linear layer's matrix (q, k, v, o, gate, up, down), the
 * token embedding and the LM head in f16, norms (and q/k/v biases) in f32. */
export interface Q4Weights {
  format: string;
  /** Parameters of the linear layers' matrices, and their Q4_0 bytes. */
  linear_params: number;
  linear_bytes: number;
  /** Token embedding and (untied) LM head, f16. */
  embedding_bytes: number;
  /** RMSNorm weights (and biases), f32. */
  norm_bytes: number;
  total_bytes: number;
}

export function q4Weights(c: ModelConfig): Q4Weights {
  const q = c.nHeads * c.headDim;
  const kv = c.nKvHeads * c.headDim;
  // [rows (outputs), cols (inputs)]: Q4_0 blocks run along a row's inputs.
  const mats: [number, number][] = [
    [q, c.dim],
    [kv, c.dim],
    [kv, c.dim],
    [c.dim, q],
    [c.hiddenDim, c.dim],
    [c.hiddenDim, c.dim],
    [c.dim, c.hiddenDim],
  ];
  const linearParams = c.nLayers * mats.reduce((s, [r, k]) => s + r * k, 0);
  const linearBytes = c.nLayers * mats.reduce((s, [r, k]) => s + r * Math.ceil(k / 32) * 18, 0);
  const embeddingBytes = c.vocabSize * c.dim * 2 * (c.tiedEmbeddings ? 1 : 2);
  const normBytes = ((2 * c.nLayers + 1) * c.dim + (c.qkvBias ? c.nLayers * (q + 2 * kv) : 0)) *
    4;
  return {
    format: "GGUF Q4_0 linear layers (18 bytes per 32 weights), f16 embedding and LM head, " +
      "f32 norms",
    linear_params: linearParams,
    linear_bytes: linearBytes,
    embedding_bytes: embeddingBytes,
    norm_bytes: normBytes,
    total_bytes: linearBytes + embeddingBytes + normBytes,
  };
}

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
  }, DEFAULT_BUFFER_LIMITS);
  // runnerBuffers lists the weights first (weightBuffers), then the activations.
  const limits = DEFAULT_BUFFER_LIMITS as GPUSupportedLimits;
  const weights = weightBuffers(c, "f16", partLimit(limits)).length;
  const listed = runnerBuffers(c, { precision: "f16", ...shape }, limits).slice(weights);
  const R = Math.max(shape.prefillChunk, shape.maxBatch);
  const B = shape.maxBatch;
  const S = shape.maxDecodeSteps;
  // fwd, tokens, rows, gather, sampling, step, sampled, logprobs, unused.
  const small = 16 + R * 4 + R * 16 + B * 4 + B * SAMPLING_BYTES + 4 + 2 * S * B * 4 + 16;
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

export interface CapacityRow {
  /** zigzag50 / duo50: the shipped plans of Gradient-4194k; full: every KV head retrieval. */
  plan: "zigzag50" | "duo50" | "full";
  plan_source: string;
  sink: number;
  recent: number;
  kv_dtype: KvDtype;
  /** Paged KV bytes per token (K and V of every retrieval KV head, scales included). */
  kv_bytes_per_token: number;
  /** The streaming heads' sink + recent rings of the one sequence. */
  ring_bytes: number;
  weight_bytes: number;
  /** runnerMemory's overhead at the row's context (activations, staging, page table). */
  activation_bytes: number;
  /** What is left for the K/V shards: budget - weights - activations (the activations sized
   * at a context >= the row's, so the row fits). */
  kv_budget_bytes: number;
  /** maxContextFit(CacheGeometry(config, plan, kv_dtype), kv_budget_bytes, 1). */
  max_context: number;
  /** The K/V shard buffers at max_context (kvBufferPlan: rings + pages), and weights +
   * activations + those (<= the budget). */
  kv_bytes: number;
  total_bytes: number;
  /** max_context / CAPACITY_TARGET_TOKENS and / DuoAttention's published 3.3M. */
  vs_target: number;
  vs_duo_published: number;
}

export interface CapacityReport {
  model: string;
  config: ModelConfig;
  budget_bytes: number;
  budget_gib: number;
  /** The same bytes in decimal GB (10^9). */
  budget_gb: number;
  target_tokens: number;
  weights: Q4Weights;
  activations: { prefill_chunk: number; batch: number; formula: string };
  rows: CapacityRow[];
  duo_published: typeof DUO_PUBLISHED;
}

/** One row: the longest context of one sequence whose K/V, with the weights and the runner's
 * other buffers, fits `budget`. The other buffers grow slowly with the context (the page
 * table, the split count up to its cap); they are sized at the context found, repeating until
 * they fit. */
export function capacityRow(
  c: ModelConfig,
  plan: ResolvedPlan,
  name: CapacityRow["plan"],
  source: string,
  kvDtype: KvDtype,
  weightBytes: number,
  budget = CAPACITY_BUDGET_BYTES,
): CapacityRow {
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
    plan: name,
    plan_source: source,
    sink: plan.sink,
    recent: plan.recent,
    kv_dtype: kvDtype,
    kv_bytes_per_token: g.tokenBytes(g.retrievalHeads),
    ring_bytes: g.ringBytes,
    weight_bytes: weightBytes,
    activation_bytes: overhead(at),
    kv_budget_bytes: fit.budget_bytes,
    max_context: n,
    kv_bytes: at.kv_shard_bytes,
    total_bytes: weightBytes + overhead(at) + at.kv_shard_bytes,
    vs_target: n / CAPACITY_TARGET_TOKENS,
    vs_duo_published: n / DUO_PUBLISHED.max_context,
  };
}

/**
 * The capacity figure of the issue, closed form (no GPU): Llama-3-8B-Instruct-Gradient-4194k's
 * shapes (PRESETS["llama-3-8b"]), one sequence, 80 GiB for everything, 4-bit weights (q4Weights),
 * the shipped zigzag 50% and DuoAttention 50% plans of that model (their sink 128 + recent 256)
 * and full attention, in int4 KV, and zigzag and full in f16 KV for reference.
 */
export async function llama3Capacity(budget = CAPACITY_BUDGET_BYTES): Promise<CapacityReport> {
  const c = { ...PRESETS["llama-3-8b"] };
  const w = q4Weights(c);
  const load = async (mode: "zigzag50" | "duo50") => {
    const file = `${SHIPPED}${GRADIENT_4194K}.${mode}.json`;
    const p = await loadPlanFile(file);
    return {
      plan: resolvePlan(p, c, file),
      source: `plans/shipped/${GRADIENT_4194K}.${mode}.json`,
    };
  };
  const zig = await load("zigzag50");
  const duo = await load("duo50");
  const full = { plan: resolvePlan(builtinPlan("full", c), c), source: "builtin full" };
  const rows: [CapacityRow["plan"], typeof zig, KvDtype][] = [
    ["zigzag50", zig, "int4"],
    ["duo50", duo, "int4"],
    ["full", full, "int4"],
    ["zigzag50", zig, "f16"],
    ["full", full, "f16"],
  ];
  return {
    model: "Llama-3-8B-Instruct-Gradient-4194k (llama-3-8b shapes)",
    config: c,
    budget_bytes: budget,
    budget_gib: budget / 2 ** 30,
    budget_gb: budget / 1e9,
    target_tokens: CAPACITY_TARGET_TOKENS,
    weights: w,
    activations: {
      prefill_chunk: CAPACITY_PREFILL_CHUNK,
      batch: 1,
      formula: "f32: chunk x (dim + qkv + 2 hidden + n_heads head_dim) + batch x (vocab + dim) " +
        "+ batch x n_heads x splits x (head_dim + 2) partials (splits <= 256, within " +
        "PARTIALS_BUDGET_BYTES) + chunk x n_heads x 2 carry, u32 staging, and the page table " +
        "(max_context / 16 x 4 bytes)",
    },
    rows: rows.map(([name, p, kv]) =>
      capacityRow(c, p.plan, name, p.source, kv, w.total_bytes, budget)
    ),
    duo_published: DUO_PUBLISHED,
  };
}
