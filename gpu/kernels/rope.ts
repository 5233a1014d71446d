// wgsl/rope.wgsl: rotary position embedding in place on the fused q|k|v rows, one workgroup per
// token row. The frequencies come from model/rope.ts.

import { type Groups, kernel } from "./kernel.ts";

export const ROPE_FILE = "rope.wgsl";

export interface RopeConstants {
  HEAD_DIM: number;
  /** Query heads, stored first in each row. */
  N_HEADS: number;
  /** Key heads, stored right after the query heads. */
  N_KV_HEADS: number;
  /** Floats per fused row: (N_HEADS + 2 * N_KV_HEADS) * HEAD_DIM. */
  ROW_STRIDE: number;
  /** Pairs (2i, 2i+1) (llama2.c) instead of (i, i + HEAD_DIM/2) (HF rotate-half). */
  INTERLEAVED: boolean;
}

export const ROPE_BINDINGS = { fwd: 0, rows: 1, invFreq: 2, qkv: 3 } as const;

export function rope(c: RopeConstants) {
  return kernel(ROPE_FILE, "main", c, ROPE_BINDINGS);
}

/** One workgroup per token row. */
export function ropeGroups(rows: number): Groups {
  return [rows, 1, 1];
}
