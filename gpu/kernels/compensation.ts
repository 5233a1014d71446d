// wgsl/compensation.wgsl: the compensation token of a "compensated" ring part (cache/kinds.ts
// CompensatedRing). `fold` runs before the part's attention: per sequence and cache head it adds
// the keys and values the window drops to the slot's sums and writes the mean key and value each
// row's query sees (what comp_mean.wgsl gives attention). One workgroup per row and cache head
// (only a sequence's first row works), one dispatch per shard of the part.

import { CACHE_LAYOUTS, type CachePartKernel } from "./cache_layout.ts";
import { type Groups, kernel } from "./kernel.ts";

export const COMPENSATION_FILE = "compensation.wgsl";

export interface CompensationConstants {
  HEAD_DIM: number;
  /** Query heads of the model (offset of the keys in a fused row). */
  N_HEADS: number;
  N_KV_HEADS: number;
  /** First KV head held by this part. */
  KV_HEAD_BASE: number;
  /** KV heads held by this part. */
  CACHE_HEADS: number;
}

/** f32 words of the rows' means per (row, cache head): the mean key, then the mean value. */
export function compRowWords(headDim: number): number {
  return 2 * headDim;
}

export function compensationFold(c: CompensationConstants, part: CachePartKernel) {
  if (!part.compensated || part.layout !== "ring") {
    throw new Error("compensation fold: the part keeps no compensation token");
  }
  const layout = CACHE_LAYOUTS[part.layout];
  return kernel(
    COMPENSATION_FILE,
    "fold",
    { ...c, ...part.constants },
    { fwd: 0, rows: 1, qkv: 2, kCache: 3, vCache: 4, shard: 9, compRows: 10, compState: 11 },
    [layout.include],
    true,
  );
}

/** One workgroup per token row and cache head. */
export function compensationGroups(rows: number, cacheHeads: number): Groups {
  return [rows, cacheHeads, 1];
}
