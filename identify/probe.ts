// A CPU forward pass that reports attention probabilities, for the identification methods that
// look at where heads attend (`retrieval-score`, `razor`). The GPU kernels never materialise
// attention weights (online softmax), so these methods run this plain TypeScript forward on short
// sequences instead; `ablate` runs on the GPU engine.
//
// It processes the whole sequence layer by layer (full causal attention, no KV cache), in f32
// storage with f64 accumulation, with the same RoPE frequencies as the GPU runner.

import { ropeInvFreq } from "../model/rope.ts";
import type { ModelConfig, ModelWeights } from "../model/types.ts";

export interface ProbeOptions {
  /** Query rows (positions) whose attention is reported. */
  rows: number[];
  /**
   * Called for every layer, query head and reported row with that head's attention
   * probabilities over positions [0, row] (a view, valid during the call only).
   */
  onAttention?: (layer: number, head: number, row: number, probs: Float32Array) => void;
}

export interface ProbeResult {
  /** Final-norm hidden state at each reported row. */
  hidden: Float32Array[];
  /** Logits at each reported row. */
  logits: Float32Array[];
}

/** Y[T, out] = X[T, in] · W[out, in]^T (+= when accumulate). */
function matmulT(
  x: Float32Array,
  w: Float32Array,
  rows: number,
  inp: number,
  out: number,
  y: Float32Array,
  accumulate = false,
): void {
  for (let t = 0; t < rows; t++) {
    const xo = t * inp;
    const yo = t * out;
    for (let o = 0; o < out; o++) {
      const wo = o * inp;
      let s = 0;
      for (let i = 0; i < inp; i++) s += x[xo + i] * w[wo + i];
      y[yo + o] = accumulate ? y[yo + o] + s : s;
    }
  }
}

function rmsnormRows(
  x: Float32Array,
  w: Float32Array,
  rows: number,
  dim: number,
  eps: number,
  y: Float32Array,
): void {
  for (let t = 0; t < rows; t++) {
    const o = t * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[o + i] * x[o + i];
    const inv = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) y[o + i] = x[o + i] * inv * w[i];
  }
}

function rope(
  v: Float32Array,
  rows: number,
  heads: number,
  c: ModelConfig,
  invFreq: Float32Array,
  cos: Float32Array,
  sin: Float32Array,
): void {
  const hd = c.headDim;
  const half = hd / 2;
  const stride = heads * hd;
  for (let t = 0; t < rows; t++) {
    for (let i = 0; i < half; i++) {
      const angle = t * invFreq[i];
      cos[i] = Math.cos(angle);
      sin[i] = Math.sin(angle);
    }
    for (let h = 0; h < heads; h++) {
      const o = t * stride + h * hd;
      for (let i = 0; i < half; i++) {
        const a = c.ropeStyle === "interleaved" ? o + 2 * i : o + i;
        const b = c.ropeStyle === "interleaved" ? o + 2 * i + 1 : o + i + half;
        const x0 = v[a];
        const x1 = v[b];
        v[a] = x0 * cos[i] - x1 * sin[i];
        v[b] = x0 * sin[i] + x1 * cos[i];
      }
    }
  }
}

/** Runs `tokens` (positions 0..n-1) through the model on the CPU; see ProbeOptions. */
export function probeForward(
  config: ModelConfig,
  weights: ModelWeights,
  tokens: number[],
  opts: ProbeOptions,
): ProbeResult {
  const c = config;
  const T = tokens.length;
  const { dim, hiddenDim, nHeads, nKvHeads, headDim, vocabSize } = c;
  const qDim = nHeads * headDim;
  const kvDim = nKvHeads * headDim;
  const group = nHeads / nKvHeads;
  const want = new Set(opts.rows);
  for (const r of opts.rows) {
    if (!(Number.isInteger(r) && r >= 0 && r < T)) throw new RangeError(`row ${r} out of range`);
  }
  const invFreq = ropeInvFreq(c);
  const cosBuf = new Float32Array(headDim / 2);
  const sinBuf = new Float32Array(headDim / 2);

  const x = new Float32Array(T * dim);
  const emb = weights.tokenEmbedding.data;
  tokens.forEach((tok, t) => {
    if (!(tok >= 0 && tok < vocabSize)) throw new RangeError(`token ${tok} out of range`);
    x.set(emb.subarray(tok * dim, (tok + 1) * dim), t * dim);
  });
  const xb = new Float32Array(T * dim);
  const q = new Float32Array(T * qDim);
  const k = new Float32Array(T * kvDim);
  const v = new Float32Array(T * kvDim);
  const att = new Float32Array(T * qDim);
  const gate = new Float32Array(T * hiddenDim);
  const up = new Float32Array(T * hiddenDim);
  const probs = new Float32Array(T);
  const scale = 1 / Math.sqrt(headDim);

  for (let l = 0; l < c.nLayers; l++) {
    const lw = weights.layers[l];
    rmsnormRows(x, lw.attnNorm.data, T, dim, c.normEps, xb);
    matmulT(xb, lw.wq.data, T, dim, qDim, q);
    matmulT(xb, lw.wk.data, T, dim, kvDim, k);
    matmulT(xb, lw.wv.data, T, dim, kvDim, v);
    if (lw.bq && lw.bk && lw.bv) {
      for (let t = 0; t < T; t++) {
        for (let i = 0; i < qDim; i++) q[t * qDim + i] += lw.bq.data[i];
        for (let i = 0; i < kvDim; i++) k[t * kvDim + i] += lw.bk.data[i];
        for (let i = 0; i < kvDim; i++) v[t * kvDim + i] += lw.bv.data[i];
      }
    }
    rope(q, T, nHeads, c, invFreq, cosBuf, sinBuf);
    rope(k, T, nKvHeads, c, invFreq, cosBuf, sinBuf);
    for (let h = 0; h < nHeads; h++) {
      const ko = Math.floor(h / group) * headDim;
      for (let t = 0; t < T; t++) {
        const qo = t * qDim + h * headDim;
        let max = -Infinity;
        for (let j = 0; j <= t; j++) {
          const kb = j * kvDim + ko;
          let s = 0;
          for (let d = 0; d < headDim; d++) s += q[qo + d] * k[kb + d];
          s *= scale;
          probs[j] = s;
          if (s > max) max = s;
        }
        let sum = 0;
        for (let j = 0; j <= t; j++) {
          const e = Math.exp(probs[j] - max);
          probs[j] = e;
          sum += e;
        }
        const inv = 1 / sum;
        for (let d = 0; d < headDim; d++) att[qo + d] = 0;
        for (let j = 0; j <= t; j++) {
          const p = probs[j] * inv;
          probs[j] = p;
          const vb = j * kvDim + ko;
          for (let d = 0; d < headDim; d++) att[qo + d] += p * v[vb + d];
        }
        if (want.has(t) && opts.onAttention) opts.onAttention(l, h, t, probs.subarray(0, t + 1));
      }
    }
    matmulT(att, lw.wo.data, T, qDim, dim, x, true);
    rmsnormRows(x, lw.ffnNorm.data, T, dim, c.normEps, xb);
    matmulT(xb, lw.wGate.data, T, dim, hiddenDim, gate);
    matmulT(xb, lw.wUp.data, T, dim, hiddenDim, up);
    for (let i = 0; i < T * hiddenDim; i++) {
      const g = gate[i];
      gate[i] = (g / (1 + Math.exp(-g))) * up[i];
    }
    matmulT(gate, lw.wDown.data, T, hiddenDim, dim, x, true);
  }

  const hidden: Float32Array[] = [];
  const logits: Float32Array[] = [];
  for (const r of opts.rows) {
    const h = new Float32Array(dim);
    rmsnormRows(x.subarray(r * dim, (r + 1) * dim), weights.finalNorm.data, 1, dim, c.normEps, h);
    const lg = new Float32Array(vocabSize);
    matmulT(h, weights.lmHead.data, 1, dim, vocabSize, lg);
    hidden.push(h);
    logits.push(lg);
  }
  return { hidden, logits };
}
