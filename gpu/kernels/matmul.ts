// wgsl/matmul.wgsl: linear layers y (+)= in · Wᵀ (+ bias), with the input optionally
// rmsnorm(x) * norm (NORM_INPUT) or silu(gate) * up (SWIGLU_INPUT) computed inside the matmul.
// Two entry points: `gemv` for at most GEMV_MAX_ROWS rows (decode), `gemm` for more (prefill).

import { grid, type Groups, kernel } from "./kernel.ts";

export const MATMUL_FILE = "matmul.wgsl";

/** Workgroup geometry shared with matmul.wgsl (its `const`s; kernels_test.ts checks them). */
export const MATMUL_GEOMETRY = {
  /** Outputs one GEMV workgroup computes (GEMV_COLS). */
  GEMV_COLS: 8,
  /** Rows a GEMV workgroup handles; more rows use GEMM (GEMV_MAX_ROWS). */
  GEMV_MAX_ROWS: 8,
  /** Output tile of one GEMM workgroup, rows and columns (TILE). */
  TILE: 64,
} as const;

export interface MatmulConstants {
  /** Output features of this row part of the weight (all of them when it is not split). */
  N: number;
  /** First output column (and bias) of this part. */
  N_OFFSET: number;
  /** Output features of the whole matrix: the row stride of y. */
  Y_STRIDE: number;
  /** Input features. */
  K: number;
  /** Padded input features (row stride of w), a multiple of 4. */
  KP: number;
  /** y += result (residual connection) instead of y = result. */
  ACCUMULATE: boolean;
  HAS_BIAS: boolean;
  /** The row count is fwd.n_logit_rows instead of fwd.n_rows. */
  LOGIT_ROWS: boolean;
  /** in = rmsnorm(x) * norm_w. */
  NORM_INPUT: boolean;
  /** RMSNorm epsilon (NORM_INPUT). */
  EPS: number;
  /** in = silu(x[:, :K]) * x[:, K:]. */
  SWIGLU_INPUT: boolean;
}

/** Every binding is declared by both entry points (bias and normW are read only with HAS_BIAS
 * and NORM_INPUT, but any buffer must be bound). */
export const MATMUL_BINDINGS = { fwd: 0, x: 1, w: 2, bias: 3, y: 4, normW: 5 } as const;

export type MatmulEntry = "gemv" | "gemm";

export function matmul(entry: MatmulEntry, c: MatmulConstants) {
  return kernel(MATMUL_FILE, entry, c, MATMUL_BINDINGS);
}

/** The entry point for `rows` rows. */
export function matmulEntry(rows: number): MatmulEntry {
  return rows <= MATMUL_GEOMETRY.GEMV_MAX_ROWS ? "gemv" : "gemm";
}

/** GEMV: GEMV_COLS outputs per workgroup, in a 2-D grid past 65535 workgroups. */
export function gemvGroups(n: number): Groups {
  return grid(Math.ceil(n / MATMUL_GEOMETRY.GEMV_COLS));
}

/** GEMM: one TILE x TILE output tile per workgroup. */
export function gemmGroups(n: number, rows: number): Groups {
  const t = MATMUL_GEOMETRY.TILE;
  return [Math.ceil(n / t), Math.ceil(rows / t), 1];
}

export function matmulGroups(entry: MatmulEntry, n: number, rows: number): Groups {
  return entry === "gemv" ? gemvGroups(n) : gemmGroups(n, rows);
}
