// wgsl/decode_step.wgsl: chains decode steps inside one submission (each row's next input is the
// token just sampled for it, one position further on). One workgroup of 64 threads, one per row.

import { type Groups, kernel } from "./kernel.ts";

export const DECODE_STEP_FILE = "decode_step.wgsl";

/** Rows one dispatch advances: its single workgroup's size (@workgroup_size(64)). */
export const DECODE_STEP_MAX_ROWS = 64;

export interface DecodeStepConstants {
  /** Row stride of the sampled-token ring (the decode batch capacity). */
  MAX_ROWS: number;
}

export const DECODE_STEP_BINDINGS = { fwd: 0, rows: 1, tokens: 2, sampled: 3, step: 4 } as const;

export function decodeStep(c: DecodeStepConstants) {
  if (c.MAX_ROWS > DECODE_STEP_MAX_ROWS) {
    throw new RangeError(`decode_step.wgsl advances at most ${DECODE_STEP_MAX_ROWS} rows`);
  }
  return kernel(DECODE_STEP_FILE, "main", c, DECODE_STEP_BINDINGS);
}

export function decodeStepGroups(): Groups {
  return [1, 1, 1];
}
