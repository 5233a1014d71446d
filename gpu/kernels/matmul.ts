// wgsl/matmul.wgsl: linear layers y (+)= in · Wᵀ (+ bias), with the input optionally
// rmsnorm(x) * norm (NORM_INPUT) or silu(gate) * up (SWIGLU_INPUT) computed inside the matmul.
// Entry points: `gemv1` for one row (decode of one sequence), `gemv` for at most
// GEMV_MAX_ROWS rows (batched decode), `gemm` or `gemm_reg` for more (prefill; per adapter).
// The weights' storage is the matrix's `WeightFormat`, compiled in as the weight codec include
// (wgsl/w_<format>.wgsl): f16/f32 values, or GGUF's Q8_0 / Q4_0 blocks repacked row by row.

import { BLOCK_FORMATS, type GgmlType } from "../../model/gguf_blocks.ts";
import { grid, type Groups, kernel } from "./kernel.ts";

export const MATMUL_FILE = "matmul.wgsl";

/** Workgroup geometry shared with matmul.wgsl (its `const`s; kernels_test.ts checks them). */
export const MATMUL_GEOMETRY = {
  /** Outputs one GEMV workgroup computes (GEMV_COLS). */
  GEMV_COLS: 32,
  /** Outputs one single-row GEMV workgroup computes (GEMV1_COLS). */
  GEMV1_COLS: 32,
  /** Rows a GEMV workgroup handles; more rows use GEMM (GEMV_MAX_ROWS). */
  GEMV_MAX_ROWS: 8,
  /** Output tile of one GEMM workgroup, rows and columns (TILE). */
  TILE: 64,
  /** Output tile of one gemm_reg workgroup: rows (REG_ROWS) and columns (REG_COLS). */
  REG_ROWS: 32,
  REG_COLS: 64,
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

export type MatmulEntry = "gemv1" | "gemv" | "gemm" | "gemm_reg";

/** The prefill GEMM an adapter runs: `gemm` stages 64x64 tiles in workgroup memory (GPUs);
 * `gemm_reg` reads 4x8 register tiles straight from storage, for CPU adapters, where every
 * workgroup-memory load is a per-lane gather (kernel bench on llvmpipe: 2.3-3.2x `gemm` at 128
 * rows). Decode batches keep `gemv`: it sums each output in `gemv1`'s order, so a sequence's
 * logits do not depend on how many others share its step (gemm_reg sums k in another order). */
export type GemmEntry = "gemm" | "gemm_reg";

export const GEMM_ENTRIES: readonly GemmEntry[] = ["gemm", "gemm_reg"];

export function gemmFor(gpu: { isCpu: boolean }): GemmEntry {
  return gpu.isCpu ? "gemm_reg" : "gemm";
}

/** The entry points a matrix is built with: one per row-count range (matmulEntry). */
export function matmulEntries(gemm: GemmEntry = "gemm"): readonly MatmulEntry[] {
  return ["gemv1", "gemv", gemm];
}

/** How a weight matrix is stored: values in the storage precision W ("float"), or GGUF's
 * quantized blocks (q8_0 and q4_0 also quantized on load; the others come from GGUF files). */
export type WeightFormat = "float" | "q8_0" | "q4_0" | "q5_0" | "q4_k" | "q5_k" | "q6_k";

export type QuantFormat = Exclude<WeightFormat, "float">;

/** Weights per quantization block of the 32-blocks formats. */
export const QUANT_BLOCK = 32;

/** GGUF block geometry of each quantized format (model/gguf_blocks.ts BLOCK_FORMATS): weights
 * and bytes per block. */
export const QUANT_BLOCKS: Readonly<Record<QuantFormat, { elems: number; bytes: number }>> = Object
  .fromEntries(
    (["q8_0", "q4_0", "q5_0", "q4_k", "q5_k", "q6_k"] as const).map((f) => {
      const b = BLOCK_FORMATS[f.toUpperCase() as GgmlType];
      return [f, { elems: b.blockElems, bytes: b.blockBytes }];
    }),
  ) as Record<QuantFormat, { elems: number; bytes: number }>;

/** u32 words of one row of K weights in a quantized format (wgsl/w_<format>.wgsl's layout). */
export function quantRowWords(format: QuantFormat, k: number): number {
  switch (format) {
    case "q8_0":
      return k / 4 + Math.ceil(k / 64);
    case "q4_0":
      return k / 8 + Math.ceil(k / 64);
    case "q5_0":
      return k / 8 + k / 32 + Math.ceil(k / 64);
    case "q4_k":
      return (k / 256) * 36;
    case "q5_k":
      return (k / 256) * 44;
    case "q6_k":
      return (k / 256) * 53;
  }
}

export function matmul(entry: MatmulEntry, c: MatmulConstants, format: WeightFormat = "float") {
  // Q4_K and Q5_K share their scale packing (wgsl/w_kquant_scales.wgsl, after the codec's binding).
  const shared = format === "q4_k" || format === "q5_k" ? ["w_kquant_scales.wgsl"] : [];
  return kernel(MATMUL_FILE, entry, c, MATMUL_BINDINGS, [`w_${format}.wgsl`, ...shared]);
}

/** The entry point for `rows` rows, `gemm` being the adapter's prefill GEMM. */
export function matmulEntry(rows: number, gemm: GemmEntry = "gemm"): MatmulEntry {
  if (rows === 1) return "gemv1";
  return rows <= MATMUL_GEOMETRY.GEMV_MAX_ROWS ? "gemv" : gemm;
}

/** GEMV: GEMV_COLS outputs per workgroup (gemv1: GEMV1_COLS), in a 2-D grid past 65535
 * workgroups. */
export function gemvGroups(n: number, cols: number = MATMUL_GEOMETRY.GEMV_COLS): Groups {
  return grid(Math.ceil(n / cols));
}

/** GEMM: one TILE x TILE output tile per workgroup. */
export function gemmGroups(n: number, rows: number): Groups {
  const t = MATMUL_GEOMETRY.TILE;
  return [Math.ceil(n / t), Math.ceil(rows / t), 1];
}

/** gemm_reg: one REG_ROWS x REG_COLS output tile per workgroup. */
export function gemmRegGroups(n: number, rows: number): Groups {
  const g = MATMUL_GEOMETRY;
  return [Math.ceil(rows / g.REG_ROWS), Math.ceil(n / g.REG_COLS), 1];
}

export function matmulGroups(entry: MatmulEntry, n: number, rows: number): Groups {
  switch (entry) {
    case "gemv1":
      return gemvGroups(n, MATMUL_GEOMETRY.GEMV1_COLS);
    case "gemv":
      return gemvGroups(n);
    case "gemm":
      return gemmGroups(n, rows);
    case "gemm_reg":
      return gemmRegGroups(n, rows);
  }
}

/**
 * One row of K weights from GGUF blocks (`blocks`: the row's blocks as a GGUF file stores them)
 * into the kernel's row layout at `out[offset ..]` (wgsl/w_<format>.wgsl): Q8_0 / Q4_0 / Q5_0 as
 * planes (quants, Q5_0's high bits, then the f16 scales two to a word) so that every load is
 * aligned; Q4_K and Q5_K as they are (whole words already); Q6_K's 210-byte blocks padded to
 * 212. The bytes are moved, never requantized.
 */
export function packQuantRow(
  format: QuantFormat,
  blocks: Uint8Array,
  k: number,
  out: Uint32Array,
  offset: number,
): void {
  const { elems, bytes: bb } = QUANT_BLOCKS[format];
  const nb = k / elems;
  const dst = new Uint8Array(out.buffer, out.byteOffset + offset * 4, quantRowWords(format, k) * 4);
  if (format === "q4_k" || format === "q5_k") {
    dst.set(blocks.subarray(0, nb * bb));
    return;
  }
  if (format === "q6_k") {
    for (let b = 0; b < nb; b++) dst.set(blocks.subarray(b * bb, (b + 1) * bb), b * 212);
    return;
  }
  // 32-weight blocks: [d f16][q5_0: qh 4 bytes][quants]
  const qBytes = format === "q8_0" ? 32 : 16;
  const hBytes = format === "q5_0" ? 4 : 0;
  const scaleAt = nb * qBytes + nb * hBytes;
  for (let b = 0; b < nb; b++) {
    const o = b * bb;
    dst[scaleAt + 2 * b] = blocks[o];
    dst[scaleAt + 2 * b + 1] = blocks[o + 1];
    if (hBytes) dst.set(blocks.subarray(o + 2, o + 6), nb * qBytes + 4 * b);
    dst.set(blocks.subarray(o + 2 + hBytes, o + bb), b * qBytes);
  }
}
