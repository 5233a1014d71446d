// wgsl/attention.wgsl: causal GQA attention over one KV-cache part, compiled with the part's
// layout include (cache_layout.ts). Entry points: `prefill` (16-row query tiles), `decode`
// (split-K over keys, up to 8 query heads of a KV head per workgroup) and `merge` (combines the
// split-K partials; not run with a single split).

import { CACHE_LAYOUTS, type CachePartKernel } from "./cache_layout.ts";
import { type BindingIndices, type Groups, kernel } from "./kernel.ts";

export const ATTENTION_FILE = "attention.wgsl";

/** Workgroup geometry shared with attention.wgsl (its `const`s; kernels_test.ts checks them). */
export const ATTENTION_GEOMETRY = {
  /** Query rows of one prefill workgroup (BQ). */
  BQ: 16,
  /** Keys of one split-K decode workgroup (SPLIT_KEYS). */
  SPLIT_KEYS: 256,
  /** Query heads one decode workgroup serves (MAX_G). */
  MAX_G: 8,
  /** Largest head_dim the workgroup arrays hold (q_s: BQ x 128). */
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

const READ = { fwd: 0, rows: 1, qkv: 2, kCache: 3, vCache: 4 } as const;
const OUT = { out: 6 } as const;
const PARTIALS = { partials: 7 } as const;

function attention<B extends BindingIndices>(
  entry: string,
  c: AttentionConstants,
  part: CachePartKernel,
  bindings: B,
) {
  const layout = CACHE_LAYOUTS[part.layout];
  return kernel(ATTENTION_FILE, entry, { ...c, ...part.constants }, bindings, [layout.include]);
}

export function attentionPrefill(c: AttentionConstants, part: CachePartKernel) {
  const layout = CACHE_LAYOUTS[part.layout].bindings;
  return attention("prefill", c, part, { ...READ, ...layout, ...OUT });
}

export function attentionDecode(c: AttentionConstants, part: CachePartKernel) {
  const layout = CACHE_LAYOUTS[part.layout].bindings;
  return attention("decode", c, part, { ...READ, ...layout, ...OUT, ...PARTIALS });
}

export function attentionMerge(c: AttentionConstants, part: CachePartKernel) {
  return attention("merge", c, part, { fwd: READ.fwd, ...OUT, ...PARTIALS });
}

/** Key splits of decode attention for queries up to position `positions` - 1. */
export function splitsFor(positions: number): number {
  return Math.ceil(positions / ATTENTION_GEOMETRY.SPLIT_KEYS);
}

/** Prefill: one workgroup per BQ query rows and query head. */
export function prefillGroups(rows: number, queryHeads: number): Groups {
  return [Math.ceil(rows / ATTENTION_GEOMETRY.BQ), queryHeads, 1];
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
