// A memory-light CPU reference forward of a Llama-family decoder, for models too large to hold as
// host f32 (the scale bench's 8B layouts: the embedding and the LM head alone are 2 GB each in
// f32). The math is tests/reference/cpu_llama.ts's (RMSNorm, RoPE per `ropeStyle` with the config's
// Llama-3 scaling, GQA attention with each KV head's streaming mask, SwiGLU), with f64 activations
// and dot products; only the way weights are read differs:
//
//  - every matrix is read through `WeightTensor.readRaw` (`readF32`) in chunks of whole rows and
//    applied to every token at once, so host memory holds one chunk (`chunkFloats`) of weights;
//  - the embedding reads only the rows of the tokens asked for; the LM head is row chunks too.
//
// bench/ may not import tests/ (tests/architecture_test.ts), hence the few lines of math again.
//
// `prefill` is a causal forward over a prompt from position 0. `decode` is one token at any
// position over a cache given sparsely (`SparseCache`): the stored keys and values it holds, and
// a count of positions whose K and V are zero (positions never written: WebGPU zero-fills
// buffers), which a decode at position ~1M over a few written positions needs.

import { readF32 } from "../model/tensors.ts";
import type { LayerWeights, ModelConfig, ModelWeights, WeightTensor } from "../model/types.ts";
import type { ResolvedPlan } from "../plans/types.ts";

export interface ReferenceOptions {
  /** Weight elements read at a time (default 2^23: 32 MB as f32). */
  chunkFloats?: number;
  /** Hears progress in weight elements applied. */
  onProgress?: (done: number, total: number, note: string) => void;
}

/** Stored key (after RoPE) and value of one KV head at one cached position. */
export interface StoredKey {
  pos: number;
  k: ArrayLike<number>;
  v: ArrayLike<number>;
}

/** What a decode row sees of the cache besides its own fresh key and value. */
export interface SparseCache {
  /**
   * The non-zero keys of `kvHead` in `layer` visible from the query; `q` is the query row (every
   * head, after RoPE), so that a caller may make keys to fit it (the scale bench's planted keys).
   */
  keys(layer: number, kvHead: number, q: Float64Array): StoredKey[];
  /** Visible positions of `kvHead` in `layer` holding zero K and V. */
  zeros(layer: number, kvHead: number): number;
}

/** RoPE inverse frequencies in f64 (Hugging Face's `_compute_llama3_parameters` for scaling). */
export function ropeInvFreq64(config: ModelConfig): Float64Array {
  const half = config.headDim / 2;
  const out = new Float64Array(half);
  for (let i = 0; i < half; i++) out[i] = Math.pow(config.ropeTheta, -(2 * i) / config.headDim);
  const s = config.ropeScaling;
  if (s) {
    const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const f = out[i];
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        out[i] = f / s.factor;
      } else {
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) /
          (s.highFreqFactor - s.lowFreqFactor);
        out[i] = (1 - smooth) * (f / s.factor) + smooth * f;
      }
    }
  }
  return out;
}

/** Index of the largest value (the first on ties). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

function rmsnorm(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * inv * w[i];
  return out;
}

/** Softmax-weighted sum of values over scored keys plus `zeros` keys of score 0 and value 0. */
function attend(
  scores: number[],
  values: ArrayLike<number>[],
  zeros: number,
  out: Float64Array,
  off: number,
  hd: number,
  vOff: number[],
): void {
  let max = zeros > 0 ? 0 : -Infinity;
  for (const s of scores) if (s > max) max = s;
  let sum = zeros * Math.exp(-max);
  for (let d = 0; d < hd; d++) out[off + d] = 0;
  for (let t = 0; t < scores.length; t++) {
    const p = Math.exp(scores[t] - max);
    sum += p;
    const v = values[t];
    for (let d = 0; d < hd; d++) out[off + d] += p * v[vOff[t] + d];
  }
  for (let d = 0; d < hd; d++) out[off + d] /= sum;
}

export class StreamingReference {
  readonly chunkFloats: number;
  readonly invFreq: Float64Array;
  #vectors = new Map<WeightTensor, Float32Array>();
  #done = 0;
  #total = 0;

  constructor(
    readonly config: ModelConfig,
    readonly weights: ModelWeights<WeightTensor>,
    readonly opts: ReferenceOptions = {},
  ) {
    const c = config;
    if (c.headDim % 2 !== 0) throw new Error("headDim must be even");
    if (c.nHeads % c.nKvHeads !== 0) throw new Error("nHeads % nKvHeads != 0");
    if (weights.layers.length !== c.nLayers) throw new Error("layer count mismatch");
    this.chunkFloats = opts.chunkFloats ?? 1 << 23;
    this.invFreq = ropeInvFreq64(config);
  }

  /** A whole small tensor (norm weights, biases), read once. */
  async #vector(t: WeightTensor): Promise<Float32Array> {
    let v = this.#vectors.get(t);
    if (!v) {
      v = await readF32(t, 0, t.shape.reduce((a, b) => a * b, 1));
      this.#vectors.set(t, v);
    }
    return v;
  }

  /** Weight elements one forward over `layers` applies (for progress). */
  #forwardFloats(): number {
    const c = this.config;
    const q = c.nHeads * c.headDim;
    const kv = c.nKvHeads * c.headDim;
    const layer = (q + 2 * kv) * c.dim + c.dim * q + 3 * c.hiddenDim * c.dim;
    return c.nLayers * layer + c.vocabSize * c.dim;
  }

  /** y[t] = W x[t] for every token, W [rows, cols] row-major, read in chunks of whole rows. */
  async matmul(
    w: WeightTensor,
    xs: Float64Array[],
    rows: number,
    cols: number,
    note = w.name,
  ): Promise<Float64Array[]> {
    if (w.shape[0] !== rows || w.shape.slice(1).reduce((a, b) => a * b, 1) !== cols) {
      throw new Error(`${w.name}: shape ${w.shape} is not [${rows}, ${cols}]`);
    }
    const out = xs.map(() => new Float64Array(rows));
    const per = Math.max(1, Math.floor(this.chunkFloats / cols));
    const c4 = cols - (cols % 4);
    for (let r0 = 0; r0 < rows; r0 += per) {
      const n = Math.min(per, rows - r0);
      const data = await readF32(w, r0 * cols, n * cols);
      for (let r = 0; r < n; r++) {
        const base = r * cols;
        for (let t = 0; t < xs.length; t++) {
          const x = xs[t];
          let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          for (let j = 0; j < c4; j += 4) {
            s0 += data[base + j] * x[j];
            s1 += data[base + j + 1] * x[j + 1];
            s2 += data[base + j + 2] * x[j + 2];
            s3 += data[base + j + 3] * x[j + 3];
          }
          for (let j = c4; j < cols; j++) s0 += data[base + j] * x[j];
          out[t][r0 + r] = (s0 + s1) + (s2 + s3);
        }
      }
      this.#done += n * cols;
      this.opts.onProgress?.(this.#done, this.#total, note);
    }
    return out;
  }

  /** The embedding rows of `tokens` (only those rows are read). */
  async embed(tokens: number[]): Promise<Float64Array[]> {
    const { dim, vocabSize } = this.config;
    const out: Float64Array[] = [];
    for (const tok of tokens) {
      if (!Number.isInteger(tok) || tok < 0 || tok >= vocabSize) {
        throw new Error(`token ${tok} out of range`);
      }
      out.push(Float64Array.from(await readF32(this.weights.tokenEmbedding, tok * dim, dim)));
    }
    return out;
  }

  /** Rotates each of `heads` heads of `vec` for position `pos`, in place. */
  rope(vec: Float64Array, heads: number, pos: number): void {
    const hd = this.config.headDim;
    const half = hd / 2;
    const inter = this.config.ropeStyle === "interleaved";
    for (let h = 0; h < heads; h++) {
      const o = h * hd;
      for (let i = 0; i < half; i++) {
        const angle = pos * this.invFreq[i];
        const c = Math.cos(angle);
        const s = Math.sin(angle);
        const a = inter ? o + 2 * i : o + i;
        const b = inter ? o + 2 * i + 1 : o + i + half;
        const x0 = vec[a];
        const x1 = vec[b];
        vec[a] = x0 * c - x1 * s;
        vec[b] = x0 * s + x1 * c;
      }
    }
  }

  /** q, k, v of every token (biases added, q and k rotated at `positions`). */
  async #qkv(lw: LayerWeights<WeightTensor>, xs: Float64Array[], positions: number[]) {
    const c = this.config;
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    const norm = await this.#vector(lw.attnNorm);
    const xb = xs.map((x) => rmsnorm(x, norm, c.normEps));
    const q = await this.matmul(lw.wq, xb, qDim, c.dim);
    const k = await this.matmul(lw.wk, xb, kvDim, c.dim);
    const v = await this.matmul(lw.wv, xb, kvDim, c.dim);
    if (c.qkvBias) {
      if (!lw.bq || !lw.bk || !lw.bv) throw new Error("qkvBias without biases");
      const [bq, bk, bv] = [
        await this.#vector(lw.bq),
        await this.#vector(lw.bk),
        await this.#vector(lw.bv),
      ];
      for (let t = 0; t < xs.length; t++) {
        for (let i = 0; i < qDim; i++) q[t][i] += bq[i];
        for (let i = 0; i < kvDim; i++) k[t][i] += bk[i];
        for (let i = 0; i < kvDim; i++) v[t][i] += bv[i];
      }
    }
    positions.forEach((p, t) => {
      this.rope(q[t], c.nHeads, p);
      this.rope(k[t], c.nKvHeads, p);
    });
    return { q, k, v };
  }

  /** The rest of a layer after attention: o projection, residual, SwiGLU FFN, residual. */
  async #finishLayer(
    lw: LayerWeights<WeightTensor>,
    xs: Float64Array[],
    att: Float64Array[],
  ): Promise<void> {
    const c = this.config;
    const qDim = c.nHeads * c.headDim;
    const proj = await this.matmul(lw.wo, att, c.dim, qDim);
    xs.forEach((x, t) => {
      for (let i = 0; i < c.dim; i++) x[i] += proj[t][i];
    });
    const norm = await this.#vector(lw.ffnNorm);
    const xb = xs.map((x) => rmsnorm(x, norm, c.normEps));
    const gate = await this.matmul(lw.wGate, xb, c.hiddenDim, c.dim);
    const up = await this.matmul(lw.wUp, xb, c.hiddenDim, c.dim);
    for (let t = 0; t < xs.length; t++) {
      const g = gate[t];
      for (let i = 0; i < c.hiddenDim; i++) g[i] = (g[i] / (1 + Math.exp(-g[i]))) * up[t][i];
    }
    const down = await this.matmul(lw.wDown, gate, c.dim, c.hiddenDim);
    xs.forEach((x, t) => {
      for (let i = 0; i < c.dim; i++) x[i] += down[t][i];
    });
  }

  /** Final norm and LM head: logits (f32) of every token. */
  async #head(xs: Float64Array[]): Promise<Float32Array[]> {
    const c = this.config;
    const norm = await this.#vector(this.weights.finalNorm);
    const hidden = xs.map((x) => rmsnorm(x, norm, c.normEps));
    const logits = await this.matmul(this.weights.lmHead, hidden, c.vocabSize, c.dim, "lm_head");
    return logits.map((l) => Float32Array.from(l));
  }

  #start(): void {
    this.#done = 0;
    this.#total = this.#forwardFloats();
  }

  /**
   * Causal forward of `tokens` at positions 0..n-1; the logits of every position. A plan's
   * streaming KV heads see only the sink and the recent window, as the cache keeps them.
   */
  async prefill(tokens: number[], plan?: ResolvedPlan): Promise<Float32Array[]> {
    const c = this.config;
    const hd = c.headDim;
    const group = c.nHeads / c.nKvHeads;
    const scale = 1 / Math.sqrt(hd);
    this.#start();
    const xs = await this.embed(tokens);
    const positions = tokens.map((_, i) => i);
    for (let l = 0; l < c.nLayers; l++) {
      const lw = this.weights.layers[l];
      const { q, k, v } = await this.#qkv(lw, xs, positions);
      const streaming = new Set(plan?.layers[l].streamingKvHeads ?? []);
      const att = xs.map(() => new Float64Array(c.nHeads * hd));
      for (let i = 0; i < tokens.length; i++) {
        for (let h = 0; h < c.nHeads; h++) {
          const kvh = Math.floor(h / group);
          const scores: number[] = [];
          const values: Float64Array[] = [];
          for (let j = 0; j <= i; j++) {
            if (streaming.has(kvh) && !(j < plan!.sink || i - j < plan!.recent)) continue;
            let dot = 0;
            for (let d = 0; d < hd; d++) dot += q[i][h * hd + d] * k[j][kvh * hd + d];
            scores.push(dot * scale);
            values.push(v[j]);
          }
          attend(scores, values, 0, att[i], h * hd, hd, values.map(() => kvh * hd));
        }
      }
      await this.#finishLayer(lw, xs, att);
    }
    return await this.#head(xs);
  }

  /**
   * One token at position `pos` over a cache given by `cache` (its stored keys and the count of
   * zero ones), plus the token's own fresh key and value; its logits.
   */
  async decode(token: number, pos: number, cache: SparseCache): Promise<Float32Array> {
    const c = this.config;
    const hd = c.headDim;
    const group = c.nHeads / c.nKvHeads;
    const scale = 1 / Math.sqrt(hd);
    this.#start();
    const xs = await this.embed([token]);
    for (let l = 0; l < c.nLayers; l++) {
      const lw = this.weights.layers[l];
      const { q, k, v } = await this.#qkv(lw, xs, [pos]);
      const att = new Float64Array(c.nHeads * hd);
      for (let kvh = 0; kvh < c.nKvHeads; kvh++) {
        const stored = cache.keys(l, kvh, q[0]);
        const zeros = cache.zeros(l, kvh);
        for (let h = kvh * group; h < (kvh + 1) * group; h++) {
          const qo = h * hd;
          const scores: number[] = [];
          const values: ArrayLike<number>[] = [];
          const vOff: number[] = [];
          for (const s of stored) {
            let dot = 0;
            for (let d = 0; d < hd; d++) dot += q[0][qo + d] * s.k[d];
            scores.push(dot * scale);
            values.push(s.v);
            vOff.push(0);
          }
          let dot = 0;
          for (let d = 0; d < hd; d++) dot += q[0][qo + d] * k[0][kvh * hd + d];
          scores.push(dot * scale);
          values.push(v[0]);
          vOff.push(kvh * hd);
          attend(scores, values, zeros, att, qo, hd, vOff);
        }
      }
      await this.#finishLayer(lw, xs, [att]);
    }
    return (await this.#head(xs))[0];
  }
}

/** How far `got` is from `want`: max |diff| relative to max |want|, and argmax agreement. */
export interface LogitsComparison {
  max_abs_diff: number;
  max_abs_logit: number;
  rel_diff: number;
  argmax_gpu: number;
  argmax_cpu: number;
  argmax_agree: boolean;
  /** Reference top-1 minus top-2 logit, relative to max |logit| (a near-tie may flip argmax). */
  top2_gap_rel: number;
}

export function compareLogits(got: ArrayLike<number>, want: ArrayLike<number>): LogitsComparison {
  if (got.length !== want.length) throw new Error(`logits: ${got.length} != ${want.length}`);
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= maxDiff)) maxDiff = d; // NaN sticks
    maxRef = Math.max(maxRef, Math.abs(want[i]));
  }
  const a = argmax(got);
  const b = argmax(want);
  let second = -Infinity;
  for (let i = 0; i < want.length; i++) if (i !== b) second = Math.max(second, want[i]);
  return {
    max_abs_diff: maxDiff,
    max_abs_logit: maxRef,
    rel_diff: maxRef > 0 ? maxDiff / maxRef : maxDiff,
    argmax_gpu: a,
    argmax_cpu: b,
    argmax_agree: a === b,
    top2_gap_rel: maxRef > 0 ? (want[b] - second) / maxRef : 0,
  };
}
