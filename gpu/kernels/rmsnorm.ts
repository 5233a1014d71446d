// wgsl/rmsnorm.wgsl: the final RMSNorm of the rows that need logits (gathered), one workgroup
// per logits row. (The layers' norms run inside their matmuls: matmul.ts NORM_INPUT.)

import { type Groups, kernel } from "./kernel.ts";

export const RMSNORM_FILE = "rmsnorm.wgsl";

export interface RmsnormConstants {
  /** Row length. */
  DIM: number;
  /** Epsilon inside the square root. */
  EPS: number;
}

export const RMSNORM_BINDINGS = { fwd: 0, x: 1, weight: 2, gather: 3, y: 4 } as const;

export function rmsnorm(c: RmsnormConstants) {
  return kernel(RMSNORM_FILE, "main", c, RMSNORM_BINDINGS);
}

/** One workgroup per logits row. */
export function rmsnormGroups(logitRows: number): Groups {
  return [logitRows, 1, 1];
}
