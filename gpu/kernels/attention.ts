// wgsl/attention.wgsl: causal GQA attention over one KV-cache part, compiled with the part's
// layout include (cache_layout.ts). Entry points: `prefill` (flash attention over tiles of a
// sequence's rows x a KV head's query heads), `decode`
// (split-K over keys, up to 8 query heads of a KV head per workgroup, one block of SPLIT_KEYS
// keys per split), `decode_long` (the same over several blocks per split, once the split cap is
// reached) and `merge` (combines the split-K partials; not run with a single split). A part split into shards runs `prefill` or
// `decode` once per shard, in shard order, each binding its shard's buffers and index.

import { CACHE_LAYOUTS, type CachePartKernel, compensationInclude } from "./cache_layout.ts";
import { type BindingIndices, type Groups, kernel } from "./kernel.ts";

export const ATTENTION_FILE = "attention.wgsl";

/** Workgroup geometry shared with attention.wgsl (its `const`s; kernels_test.ts checks them). */
export const ATTENTION_GEOMETRY = {
  /** Query slots (rows x query heads of one KV head) of one prefill workgroup (QS). */
  QS: 32,
  /** Keys of one prefill tile (BK). */
  BK: 16,
  /** Keys of one split-K decode workgroup (SPLIT_KEYS). */
  SPLIT_KEYS: 256,
  /** Query heads one decode workgroup serves (MAX_G). */
  MAX_G: 8,
  /** Largest head_dim the workgroup arrays hold (kv_s: BK x 128 / 4 vec4s; prefill's queries
   * are 4 x 4 vec4 registers per thread). */
  MAX_HEAD_DIM: 128,
} as const;

export interface AttentionConstants {
  /** Dims per head (a multiple of 4, at most MAX_HEAD_DIM). */
  HEAD_DIM: number;
  /** Query heads per KV head. */
  GROUP: number;
  /** First query head of this dispatch. */
  Q_HEAD_BASE: number;
  N_HEADS: number;
  N_KV_HEADS: number;
  /** KV heads held by this cache part. */
  CACHE_HEADS: number;
  /** Softmax scale, 1/sqrt(HEAD_DIM). */
  SCALE: number;
}

const READ = { fwd: 0, rows: 1, qkv: 2, kCache: 3, vCache: 4, shard: 9 } as const;
const OUT = { out: 6 } as const;
const PARTIALS = { partials: 7 } as const;
/** Prefill's softmax max and sum per (row, query head) between shard dispatches. */
const CARRY = { carry: 8 } as const;

function attention<B extends BindingIndices>(
  entry: string,
  c: AttentionConstants,
  part: CachePartKernel,
  bindings: B,
) {
  const layout = CACHE_LAYOUTS[part.layout];
  return kernel(
    ATTENTION_FILE,
    entry,
    { ...c, ...part.constants },
    bindings,
    [layout.include, compensationInclude(part).include],
    true,
  );
}

/** The bindings the prefill and decode entries add for the part: its layout's, and the
 * compensation means of a compensated ring. */
function partBindings(part: CachePartKernel) {
  return { ...CACHE_LAYOUTS[part.layout].bindings, ...compensationInclude(part).bindings };
}

export function attentionPrefill(c: AttentionConstants, part: CachePartKernel) {
  return attention("prefill", c, part, { ...READ, ...partBindings(part), ...OUT, ...CARRY });
}

/** `decode` for splits of one block of SPLIT_KEYS keys, `decode_long` for more. */
export type DecodeEntry = "decode" | "decode_long";

/** The decode entry point a forward with `keysPerSplit` keys per split runs. */
export function decodeEntry(keysPerSplit: number): DecodeEntry {
  return keysPerSplit > ATTENTION_GEOMETRY.SPLIT_KEYS ? "decode_long" : "decode";
}

export function attentionDecode(
  c: AttentionConstants,
  part: CachePartKernel,
  entry: DecodeEntry = "decode",
) {
  return attention(entry, c, part, { ...READ, ...partBindings(part), ...OUT, ...PARTIALS });
}

export function attentionMerge(c: AttentionConstants, part: CachePartKernel) {
  return attention("merge", c, part, { fwd: READ.fwd, ...OUT, ...PARTIALS });
}

/** Most key splits of a decode forward: enough workgroups for any GPU at batch 1. */
export const MAX_SPLITS = 256;

/** Bytes the decode partials may take at the runner's batch: within every adapter's binding
 * (WebGPU's default is 128 MiB), whatever the context. */
export const PARTIALS_BUDGET_BYTES = 64 << 20;

/** f32 floats of the carry per (row, query head): prefill's running max and sum. */
export const CARRY_FLOATS = 2;

/** How a decode forward splits its keys (the `Forward` uniform's n_splits and keys_per_split). */
export interface SplitPlan {
  splits: number;
  /** Visible keys per split: a multiple of SPLIT_KEYS, one decode workgroup's blocks. */
  keysPerSplit: number;
}

/** Key splits of decode attention for queries up to position `positions` - 1: one per
 * SPLIT_KEYS keys, or fewer splits of more keys each when that would exceed `maxSplits`. */
export function splitsFor(positions: number, maxSplits: number): SplitPlan {
  const K = ATTENTION_GEOMETRY.SPLIT_KEYS;
  const blocks = Math.max(1, Math.ceil(positions / K));
  const keysPerSplit = K * Math.ceil(blocks / Math.max(1, maxSplits));
  return { splits: Math.ceil(Math.max(1, positions) / keysPerSplit), keysPerSplit };
}

/** The split cap of a runner: what its longest context needs, at most MAX_SPLITS, and few
 * enough that partials [batch, heads, splits, headDim + 2] f32 fit PARTIALS_BUDGET_BYTES. */
export function maxSplitsFor(
  context: number,
  batch: number,
  nHeads: number,
  headDim: number,
): number {
  const perSplit = batch * nHeads * (headDim + 2) * 4;
  const fit = Math.floor(PARTIALS_BUDGET_BYTES / perSplit);
  return Math.max(1, Math.min(MAX_SPLITS, fit, Math.ceil(context / ATTENTION_GEOMETRY.SPLIT_KEYS)));
}

/** How prefill tiles a KV head's query group (attention.wgsl prefill_heads): its heads in
 * `chunks` workgroups of `heads` each (one, unless the group exceeds QS), and `rows` rows of the
 * sequence per tile, so a tile's rows x heads fill at most QS query slots. */
export function prefillTiling(group: number): { chunks: number; heads: number; rows: number } {
  const chunks = Math.ceil(group / ATTENTION_GEOMETRY.QS);
  const heads = Math.ceil(group / chunks);
  return { chunks, heads, rows: Math.floor(ATTENTION_GEOMETRY.QS / heads) };
}

/** Prefill: one workgroup per tile of rows, KV head of the part and chunk of its query heads. */
export function prefillGroups(rows: number, cacheHeads: number, group: number): Groups {
  const t = prefillTiling(group);
  return [Math.ceil(rows / t.rows), cacheHeads * t.chunks, 1];
}

/** Decode: one workgroup per row, KV head and chunk of up to MAX_G of its query heads, split. */
export function decodeGroups(
  rows: number,
  cacheHeads: number,
  group: number,
  splits: number,
): Groups {
  return [rows, cacheHeads * Math.ceil(group / ATTENTION_GEOMETRY.MAX_G), splits];
}

/** Merge: one workgroup per row and query head; nothing when decode wrote the output itself. */
export function mergeGroups(rows: number, queryHeads: number, splits: number): Groups | null {
  return splits > 1 ? [rows, queryHeads, 1] : null;
}
