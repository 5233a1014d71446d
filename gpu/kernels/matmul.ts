// wgsl/matmul.wgsl: linear layers y (+)= in · Wᵀ (+ bias), with the input optionally
// rmsnorm(x) * norm (NORM_INPUT) or silu(gate) * up (SWIGLU_INPUT) computed inside the matmul.
// Two entry points: `gemv` for at most GEMV_MAX_ROWS rows (decode), `gemm` for more (prefill).
// The weights' storage is the matrix's `WeightFormat`, compiled in as the weight codec include
// (wgsl/w_<format>.wgsl): f16/f32 values, or GGUF's Q8_0 / Q4_0 blocks repacked row by row.

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

/** How a weight matrix is stored: values in the storage precision W ("float"), or blocks of 32
 * quantized weights with an f16 scale each (GGUF's Q8_0, Q4_0). */
export type WeightFormat = "float" | "q8_0" | "q4_0";

export const WEIGHT_FORMATS: readonly WeightFormat[] = ["float", "q8_0", "q4_0"];

/** Weights per quantization block of the quantized formats. */
export const QUANT_BLOCK = 32;

/** u32 words of one row of K weights in a quantized format (values, then f16 scales). */
export function quantRowWords(format: Exclude<WeightFormat, "float">, k: number): number {
  return (format === "q8_0" ? k / 4 : k / 8) + Math.ceil(k / 64);
}

export function matmul(entry: MatmulEntry, c: MatmulConstants, format: WeightFormat = "float") {
  return kernel(MATMUL_FILE, entry, c, MATMUL_BINDINGS, [`w_${format}.wgsl`]);
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

/**
 * One row of K weights from GGUF blocks (`blocks`: K / 32 blocks of Q8_0's 34 bytes or Q4_0's 18:
 * an f16 d, then the quants) into the kernel's row layout at `out[offset ..]`: the quants of
 * every block in order, then the f16 scales two to a word (wgsl/w_q8_0.wgsl, w_q4_0.wgsl). The
 * bytes are moved, not requantized: a GGUF tensor and a quantized checkpoint read the same.
 */
export function packQuantRow(
  format: Exclude<WeightFormat, "float">,
  blocks: Uint8Array,
  k: number,
  out: Uint32Array,
  offset: number,
): void {
  const nb = k / QUANT_BLOCK;
  const qBytes = format === "q8_0" ? 32 : 16;
  const blockBytes = qBytes + 2;
  const bytes = new Uint8Array(
    out.buffer,
    out.byteOffset + offset * 4,
    quantRowWords(format, k) * 4,
  );
  const scales = new Uint16Array(out.buffer, out.byteOffset + (offset + nb * qBytes / 4) * 4, nb);
  for (let b = 0; b < nb; b++) {
    const o = b * blockBytes;
    scales[b] = blocks[o] | (blocks[o + 1] << 8);
    bytes.set(blocks.subarray(o + 2, o + blockBytes), b * qBytes);
  }
}
