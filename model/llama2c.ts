// llama2.c checkpoints (`.bin`, the "legacy" version-0 export that run.c reads):
// 7 int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len) where a
// negative vocab_size means an unshared classifier, then f32 weights in the order of run.c's
// `memory_map_weights`. Linear weights are [out, in] row-major (run.c's matmul), as in HF.
//
// Conventions (matching run.c): interleaved-pair RoPE with theta 10000, RMSNorm eps 1e-5,
// head_size = dim / n_heads, BOS = 1. run.c stops generating when the model produces BOS (1) and
// never stops at EOS (2), so eosIds = [1]: a loop that stops at eosIds reproduces run.c (and the
// goldens, whose next_ids end with that 1).

import type { HostTensor, LayerWeights, ModelConfig, ModelWeights } from "./types.ts";
import { ModelFormatError } from "./types.ts";

const HEADER_BYTES = 28;
/** First int32 of llama2.c's newer export formats ("ak42"), which run.c does not read. */
const MAGIC_AK42 = 0x616b3432;

export interface Llama2cHeader {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  /** Absolute value. */
  vocabSize: number;
  seqLen: number;
  sharedClassifier: boolean;
}

/** Parses and validates the 28-byte header. */
export function parseLlama2cHeader(bytes: Uint8Array, path: string): Llama2cHeader {
  if (bytes.byteLength < HEADER_BYTES) {
    throw new ModelFormatError(
      `${path}: truncated llama2.c checkpoint: ${bytes.byteLength} bytes, the header needs 28`,
    );
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  const h = Array.from({ length: 7 }, (_, i) => dv.getInt32(i * 4, true));
  if (h[0] === MAGIC_AK42) {
    throw new ModelFormatError(
      `${path}: llama2.c "ak42" (version 1/2) export format is not supported; export with ` +
        `--version 0 (the legacy format run.c reads)`,
    );
  }
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocab, seqLen] = h;
  const names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
  for (let i = 0; i < 7; i++) {
    const v = i === 5 ? Math.abs(h[i]) : h[i];
    if (!(v > 0)) {
      throw new ModelFormatError(
        `${path}: bad llama2.c header: ${names[i]} = ${h[i]} (not a llama2.c checkpoint?)`,
      );
    }
  }
  if (dim % nHeads !== 0 || nHeads % nKvHeads !== 0) {
    throw new ModelFormatError(
      `${path}: bad llama2.c header: dim ${dim}, n_heads ${nHeads}, n_kv_heads ${nKvHeads}`,
    );
  }
  return {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(vocab),
    seqLen,
    sharedClassifier: vocab > 0,
  };
}

/** The ModelConfig of a llama2.c header. */
export function llama2cConfig(h: Llama2cHeader): ModelConfig {
  return {
    architecture: "llama2.c",
    dim: h.dim,
    hiddenDim: h.hiddenDim,
    nLayers: h.nLayers,
    nHeads: h.nHeads,
    nKvHeads: h.nKvHeads,
    headDim: h.dim / h.nHeads,
    vocabSize: h.vocabSize,
    maxSeqLen: h.seqLen,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeStyle: "interleaved",
    ropeScaling: null,
    qkvBias: false,
    tiedEmbeddings: h.sharedClassifier,
    bosId: 1,
    eosIds: [1],
  };
}

/** One region of the file in memory_map_weights order: name, element count. */
function layout(h: Llama2cHeader): [string, number][] {
  const hs = h.dim / h.nHeads;
  const L = h.nLayers;
  const out: [string, number][] = [
    ["token_embedding_table", h.vocabSize * h.dim],
    ["rms_att_weight", L * h.dim],
    ["wq", L * h.dim * h.nHeads * hs],
    ["wk", L * h.dim * h.nKvHeads * hs],
    ["wv", L * h.dim * h.nKvHeads * hs],
    ["wo", L * h.nHeads * hs * h.dim],
    ["rms_ffn_weight", L * h.dim],
    ["w1", L * h.dim * h.hiddenDim],
    ["w2", L * h.hiddenDim * h.dim],
    ["w3", L * h.dim * h.hiddenDim],
    ["rms_final_weight", h.dim],
    ["freq_cis_real", (h.seqLen * hs) / 2],
    ["freq_cis_imag", (h.seqLen * hs) / 2],
  ];
  if (!h.sharedClassifier) out.push(["wcls", h.vocabSize * h.dim]);
  return out;
}

/** Byte offset (from the file start) of each region, for tools and tests. */
export function llama2cOffsets(h: Llama2cHeader): Map<string, { offset: number; count: number }> {
  const m = new Map<string, { offset: number; count: number }>();
  let off = HEADER_BYTES;
  for (const [name, count] of layout(h)) {
    m.set(name, { offset: off, count });
    off += count * 4;
  }
  return m;
}

/** Parses a whole checkpoint held in memory. Tensors are copies (the input may be dropped). */
export function parseLlama2c(
  bytes: Uint8Array,
  path: string,
): { config: ModelConfig; weights: ModelWeights } {
  const h = parseLlama2cHeader(bytes, path);
  const config = llama2cConfig(h);
  const regions = new Map<string, Float32Array>();
  let off = HEADER_BYTES;
  for (const [name, count] of layout(h)) {
    const end = off + count * 4;
    if (end > bytes.byteLength) {
      throw new ModelFormatError(
        `${path}: truncated llama2.c checkpoint: tensor "${name}" needs bytes [${off}, ${end}) ` +
          `but the file has ${bytes.byteLength} bytes`,
      );
    }
    if (!name.startsWith("freq_cis")) {
      // slice() copies into a fresh, aligned buffer (little-endian host assumed, as in run.c).
      regions.set(name, new Float32Array(bytes.slice(off, end).buffer));
    }
    off = end;
  }
  const hs = h.dim / h.nHeads;
  const q = h.nHeads * hs;
  const kv = h.nKvHeads * hs;
  const tensor = (name: string, shape: number[], data: Float32Array): HostTensor => ({
    name,
    shape,
    sourceDtype: "f32",
    data,
  });
  const per = (region: string, l: number, shape: number[]): HostTensor => {
    const n = shape.reduce((a, b) => a * b, 1);
    return tensor(`${region}[${l}]`, shape, regions.get(region)!.subarray(l * n, (l + 1) * n));
  };
  const layers: LayerWeights[] = [];
  for (let l = 0; l < h.nLayers; l++) {
    layers.push({
      attnNorm: per("rms_att_weight", l, [h.dim]),
      wq: per("wq", l, [q, h.dim]),
      wk: per("wk", l, [kv, h.dim]),
      wv: per("wv", l, [kv, h.dim]),
      wo: per("wo", l, [h.dim, q]),
      ffnNorm: per("rms_ffn_weight", l, [h.dim]),
      wGate: per("w1", l, [h.hiddenDim, h.dim]),
      wDown: per("w2", l, [h.dim, h.hiddenDim]),
      wUp: per("w3", l, [h.hiddenDim, h.dim]),
    });
  }
  const tokenEmbedding = tensor(
    "token_embedding_table",
    [h.vocabSize, h.dim],
    regions.get("token_embedding_table")!,
  );
  const weights: ModelWeights = {
    tokenEmbedding,
    layers,
    finalNorm: tensor("rms_final_weight", [h.dim], regions.get("rms_final_weight")!),
    lmHead: h.sharedClassifier
      ? tokenEmbedding
      : tensor("wcls", [h.vocabSize, h.dim], regions.get("wcls")!),
  };
  return { config, weights };
}

/** Reads a llama2.c checkpoint file. */
export async function loadLlama2c(
  path: string,
  onProgress?: (done: number, total: number) => void,
): Promise<{ config: ModelConfig; weights: ModelWeights }> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ModelFormatError(`${path}: llama2.c checkpoint not found`);
    }
    throw new ModelFormatError(`${path}: cannot read: ${(e as Error).message}`);
  }
  onProgress?.(0, bytes.byteLength);
  const r = parseLlama2c(bytes, path);
  onProgress?.(bytes.byteLength, bytes.byteLength);
  return r;
}
