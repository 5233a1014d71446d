// KV-cache figures without a GPU: the cache manager's own accounting (cache/manager.ts, pure
// bookkeeping), the closed form of CacheGeometry, and the capacity figure (the longest context
// of Llama-3-8B-Gradient-4194k that fits 80 GiB with weights and activations counted).

import { CacheGeometry, CacheLayout, type KvDtype } from "../cache/layout.ts";
import { type CacheStats, KvCacheManager } from "../cache/manager.ts";
import { CAPACITY_PREFILL_CHUNK, longestContext } from "../cli/capacity.ts";
import { PRESETS } from "../model/random.ts";
import type { ModelConfig } from "../model/types.ts";
import { builtinPlan, resolvePlan } from "../plans/resolve.ts";
import { loadPlanFile } from "../plans/schema.ts";
import type { ResolvedPlan } from "../plans/types.ts";

// The closed form of the longest context lives in cli/capacity.ts (doctor uses it too).
export { type Fit, maxContextFit, type RunnerMemory, runnerMemory } from "../cli/capacity.ts";

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
 * other buffers, fits `budget` (cli/capacity.ts longestContext). */
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
  const fit = longestContext(c, plan, kvDtype, weightBytes, budget);
  const n = fit.max_context;
  return {
    plan: name,
    plan_source: source,
    sink: plan.sink,
    recent: plan.recent,
    kv_dtype: kvDtype,
    kv_bytes_per_token: g.tokenBytes(g.retrievalHeads),
    ring_bytes: g.ringBytes,
    weight_bytes: weightBytes,
    activation_bytes: fit.activation_bytes,
    kv_budget_bytes: fit.kv_budget_bytes,
    max_context: n,
    kv_bytes: fit.kv_bytes,
    total_bytes: fit.total_bytes,
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
