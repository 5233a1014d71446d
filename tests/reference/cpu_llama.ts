// A plain TypeScript reference forward pass of a Llama-family decoder (Llama, Mistral, Qwen2,
// llama2.c), written to be obviously correct rather than fast, after llama2.c's `run.c`. It shares
// nothing with the GPU code: one token at a time, a KV cache that keeps every key (rotated at its
// original position) and value, and an attention mask chosen per KV head from a plan.
//
// Precision: the weights are the f32 values of `ModelWeights`; every activation, the KV cache,
// every dot product and every softmax are computed and stored in f64 (JS numbers). Only the
// returned logits and hidden state are rounded to f32.

import type { KvDtype } from "../../cache/layout.ts";
import type { ModelConfig, ModelWeights } from "../../model/types.ts";
import { headWindow, type ResolvedPlan, type Window } from "../../plans/types.ts";
import { storedKv } from "../kv_quant_reference.ts";

/** Index of the largest value; the first one wins on ties (as llama2.c's `sample_argmax`). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  let bestValue = x[0];
  for (let i = 1; i < x.length; i++) {
    if (x[i] > bestValue) {
      best = i;
      bestValue = x[i];
    }
  }
  return best;
}

/**
 * RoPE inverse frequencies of one head, `headDim / 2` of them: inv_freq[i] = theta^(-2i/headDim),
 * adjusted by Llama-3 `rope_scaling` when the config has it (as Hugging Face's
 * `_compute_llama3_parameters`). Both RoPE styles use the same frequencies; they differ only in
 * which two dimensions of a head form pair i.
 */
export function ropeInvFreq(config: ModelConfig): Float64Array {
  const half = config.headDim / 2;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    invFreq[i] = Math.pow(config.ropeTheta, -(2 * i) / config.headDim);
    // llama.cpp's freq_factors: the angle theta / factor.
    if (config.ropeFreqFactors) invFreq[i] /= config.ropeFreqFactors[i];
  }
  const s = config.ropeScaling;
  if (s) {
    const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const freq = invFreq[i];
      const wavelen = (2 * Math.PI) / freq;
      if (wavelen < highFreqWavelen) {
        invFreq[i] = freq; // high frequency: unchanged
      } else if (wavelen > lowFreqWavelen) {
        invFreq[i] = freq / s.factor; // low frequency: scaled down
      } else {
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) /
          (s.highFreqFactor - s.lowFreqFactor);
        invFreq[i] = (1 - smooth) * (freq / s.factor) + smooth * freq;
      }
    }
  }
  return invFreq;
}

/** out[i] = sum_j w[i, j] * x[j], w row-major [rows, cols]; f64 accumulation. */
function matvec(out: Float64Array, w: Float32Array, x: Float64Array, rows: number, cols: number) {
  for (let i = 0; i < rows; i++) {
    let sum = 0;
    const base = i * cols;
    for (let j = 0; j < cols; j++) sum += w[base + j] * x[j];
    out[i] = sum;
  }
}

/** out = x * 1/sqrt(mean(x^2) + eps) * weight */
function rmsnorm(out: Float64Array, x: Float64Array, weight: Float32Array, eps: number) {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * inv * weight[i];
}

/** The recent positions a query at position i sees: MoA's elastic span min(alpha + beta N, N)
 * with N = i + 1, alpha = recent, beta = growth, capped at maxRecent (the ring's size); the plain
 * window without growth. (The cap at N is the causal mask itself.) */
export function elasticRecent(w: Window, i: number): number {
  if (!w.growth) return w.recent;
  return Math.min(w.maxRecent!, w.recent + Math.floor(w.growth * (i + 1)));
}

/** Per layer and KV head: does that head use the streaming (sink + recent) mask? */
function streamingMask(config: ModelConfig, plan: ResolvedPlan | undefined): boolean[][] {
  const mask: boolean[][] = [];
  if (plan && plan.layers.length !== config.nLayers) {
    throw new Error(`plan has ${plan.layers.length} layers, model has ${config.nLayers}`);
  }
  if (plan && !(plan.sink >= 0 && plan.recent >= 1)) {
    throw new Error(`plan needs sink >= 0 and recent >= 1 (got ${plan.sink}, ${plan.recent})`);
  }
  for (let l = 0; l < config.nLayers; l++) {
    const row = new Array<boolean>(config.nKvHeads).fill(false);
    for (const h of plan?.layers[l].streamingKvHeads ?? []) {
      if (!(h >= 0 && h < config.nKvHeads)) throw new Error(`layer ${l}: bad KV head ${h}`);
      row[h] = true;
    }
    mask.push(row);
  }
  return mask;
}

export class CpuLlama {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  readonly plan: ResolvedPlan | undefined;

  private readonly invFreq: Float64Array;
  private readonly streaming: boolean[][];
  /** Per layer and KV head: does that streaming head keep the compensation token? */
  private readonly compensated: boolean[][];
  /** keyCache[layer][pos]: [nKvHeads * headDim] after RoPE; valueCache likewise. */
  private keyCache: Float64Array[][] = [];
  private valueCache: Float64Array[][] = [];
  /** The same as a cache of `kvDtype` gives them back (quantized per head), when one is set. */
  private keyStored: Float64Array[][] = [];
  private valueStored: Float64Array[][] = [];
  /** How the cache stores keys and values: keys of earlier forwards are read back through
   * `storedKv` (tests/kv_quant_reference.ts), as the GPU's cache returns them. */
  kvDtype: KvDtype = "f32";
  private lastHidden: Float64Array | null = null;

  constructor(config: ModelConfig, weights: ModelWeights, plan?: ResolvedPlan) {
    if (config.headDim % 2 !== 0) throw new Error("headDim must be even");
    if (config.nHeads % config.nKvHeads !== 0) throw new Error("nHeads % nKvHeads != 0");
    if (weights.layers.length !== config.nLayers) throw new Error("layer count mismatch");
    this.config = config;
    this.weights = weights;
    this.plan = plan;
    this.invFreq = ropeInvFreq(config);
    this.streaming = streamingMask(config, plan);
    this.compensated = Array.from(
      { length: config.nLayers },
      (_, l) =>
        Array.from(
          { length: config.nKvHeads },
          (_, h) => plan?.layers[l].kvHeadKinds[h] === "compensated",
        ),
    );
    this.reset();
  }

  /** Forgets every cached position. */
  reset(): void {
    this.keyCache = Array.from({ length: this.config.nLayers }, () => []);
    this.valueCache = Array.from({ length: this.config.nLayers }, () => []);
    this.keyStored = Array.from({ length: this.config.nLayers }, () => []);
    this.valueStored = Array.from({ length: this.config.nLayers }, () => []);
    this.lastHidden = null;
  }

  /** Number of positions in the KV cache. */
  get length(): number {
    return this.keyCache[0]?.length ?? 0;
  }

  /** The final-norm output (the input of the LM head) of the last `forward`, as f32. */
  hiddenAfterFinalNorm(): Float32Array {
    if (!this.lastHidden) throw new Error("no forward pass yet");
    return Float32Array.from(this.lastHidden);
  }

  /** Key j is visible from query i for this layer's KV head. */
  private visible(layer: number, kvHead: number, i: number, j: number): boolean {
    if (j > i) return false;
    if (!this.streaming[layer][kvHead]) return true;
    const w = headWindow(this.plan!, layer, kvHead);
    return j < w.sink || i - j < elasticRecent(w, i);
  }

  /** Rotates each head of `vec` (nHeadsOf heads of headDim) for position `pos`, in place. */
  private rope(vec: Float64Array, nHeadsOf: number, pos: number) {
    const hd = this.config.headDim;
    const half = hd / 2;
    for (let h = 0; h < nHeadsOf; h++) {
      const o = h * hd;
      for (let i = 0; i < half; i++) {
        const angle = pos * this.invFreq[i];
        const c = Math.cos(angle);
        const s = Math.sin(angle);
        // interleaved (llama2.c): pair (2i, 2i+1); half (HF rotate_half): pair (i, i + half)
        const a = this.config.ropeStyle === "interleaved" ? o + 2 * i : o + i;
        const b = this.config.ropeStyle === "interleaved" ? o + 2 * i + 1 : o + i + half;
        const x0 = vec[a];
        const x1 = vec[b];
        vec[a] = x0 * c - x1 * s;
        vec[b] = x0 * s + x1 * c;
      }
    }
  }

  /**
   * Runs token `token` at position `pos` and returns the logits [vocabSize] (f32). `pos` must be
   * at most the number of cached positions; a smaller `pos` drops the cache from `pos` on first.
   * Keys and values at positions >= `freshFrom` are read as computed (the GPU's own forward:
   * a prefill chunk's rows read each other fresh), earlier ones as the cache stores them.
   */
  forward(token: number, pos: number, freshFrom = pos): Float32Array {
    const cfg = this.config;
    const w = this.weights;
    const { dim, hiddenDim, nHeads, nKvHeads, headDim, vocabSize } = cfg;
    const qDim = nHeads * headDim;
    const kvDim = nKvHeads * headDim;
    const group = nHeads / nKvHeads;
    if (!Number.isInteger(token) || token < 0 || token >= vocabSize) {
      throw new Error(`token ${token} out of range`);
    }
    if (!Number.isInteger(pos) || pos < 0 || pos > this.length) {
      throw new Error(`pos ${pos} must be in [0, ${this.length}]`);
    }
    for (let l = 0; l < cfg.nLayers; l++) {
      this.keyCache[l].length = pos;
      this.valueCache[l].length = pos;
      this.keyStored[l].length = pos;
      this.valueStored[l].length = pos;
    }

    // residual stream
    const x = new Float64Array(dim);
    const emb = w.tokenEmbedding.data;
    for (let i = 0; i < dim; i++) x[i] = emb[token * dim + i];

    const xb = new Float64Array(dim);
    const q = new Float64Array(qDim);
    const att = new Float64Array(qDim);
    const proj = new Float64Array(dim);
    const gate = new Float64Array(hiddenDim);
    const up = new Float64Array(hiddenDim);
    const scale = 1 / Math.sqrt(headDim);

    for (let l = 0; l < cfg.nLayers; l++) {
      const lw = w.layers[l];

      // attention
      rmsnorm(xb, x, lw.attnNorm.data, cfg.normEps);
      const k = new Float64Array(kvDim);
      const v = new Float64Array(kvDim);
      matvec(q, lw.wq.data, xb, qDim, dim);
      matvec(k, lw.wk.data, xb, kvDim, dim);
      matvec(v, lw.wv.data, xb, kvDim, dim);
      if (cfg.qkvBias) {
        if (!lw.bq || !lw.bk || !lw.bv) throw new Error(`layer ${l}: qkvBias without biases`);
        for (let i = 0; i < qDim; i++) q[i] += lw.bq.data[i];
        for (let i = 0; i < kvDim; i++) k[i] += lw.bk.data[i];
        for (let i = 0; i < kvDim; i++) v[i] += lw.bv.data[i];
      }
      this.rope(q, nHeads, pos);
      this.rope(k, nKvHeads, pos);
      this.keyCache[l].push(k);
      this.valueCache[l].push(v);
      // The GPU stores its f32 keys and values (an f32 cache: read as computed here).
      const store = (x: Float64Array) =>
        this.kvDtype === "f32"
          ? x
          : Float64Array.from(storedKv(this.kvDtype, Float32Array.from(x), headDim));
      this.keyStored[l].push(store(k));
      this.valueStored[l].push(store(v));

      const keyOf = (j: number) => j >= freshFrom ? this.keyCache[l][j] : this.keyStored[l][j];
      const valueOf = (j: number) =>
        j >= freshFrom ? this.valueCache[l][j] : this.valueStored[l][j];
      // RazorAttention's compensation token of each compensated KV head: the mean key and value
      // of the positions its window has dropped, [sink, pos + 1 - recent), and their count.
      const compensation = this.compensated[l].map((on, kvh) => {
        const w = this.plan ? headWindow(this.plan, l, kvh) : { sink: 0, recent: 1 };
        const sink = w.sink;
        const dropped = Math.max(0, pos + 1 - elasticRecent(w, pos) - sink);
        if (!on || dropped === 0) return null;
        const kMean = new Float64Array(headDim);
        const vMean = new Float64Array(headDim);
        for (let j = sink; j < sink + dropped; j++) {
          const kj = keyOf(j);
          const vj = valueOf(j);
          for (let d = 0; d < headDim; d++) {
            kMean[d] += kj[kvh * headDim + d] / dropped;
            vMean[d] += vj[kvh * headDim + d] / dropped;
          }
        }
        return { kMean, vMean, count: dropped };
      });

      for (let h = 0; h < nHeads; h++) {
        const kvh = Math.floor(h / group);
        const qo = h * headDim;
        const ko = kvh * headDim;
        // scores over the visible keys only
        const visible: number[] = [];
        const scores: number[] = [];
        for (let j = 0; j <= pos; j++) {
          if (!this.visible(l, kvh, pos, j)) continue;
          let dot = 0;
          const kj = keyOf(j);
          for (let d = 0; d < headDim; d++) dot += q[qo + d] * kj[ko + d];
          visible.push(j);
          scores.push(dot * scale);
        }
        // The compensation token counts as `count` keys equal to the mean key: one more score,
        // raised by ln(count), carrying the mean value.
        const comp = compensation[kvh];
        if (comp) {
          let dot = 0;
          for (let d = 0; d < headDim; d++) dot += q[qo + d] * comp.kMean[d];
          scores.push(dot * scale + Math.log(comp.count));
        }
        // softmax
        let max = -Infinity;
        for (const s of scores) if (s > max) max = s;
        let sum = 0;
        for (let t = 0; t < scores.length; t++) {
          scores[t] = Math.exp(scores[t] - max);
          sum += scores[t];
        }
        // weighted sum of values
        for (let d = 0; d < headDim; d++) att[qo + d] = 0;
        for (let t = 0; t < visible.length; t++) {
          const p = scores[t] / sum;
          const vj = valueOf(visible[t]);
          for (let d = 0; d < headDim; d++) att[qo + d] += p * vj[ko + d];
        }
        if (comp) {
          const p = scores[visible.length] / sum;
          for (let d = 0; d < headDim; d++) att[qo + d] += p * comp.vMean[d];
        }
      }
      matvec(proj, lw.wo.data, att, dim, qDim);
      for (let i = 0; i < dim; i++) x[i] += proj[i];

      // SwiGLU feed-forward: down(silu(gate(x)) * up(x))
      rmsnorm(xb, x, lw.ffnNorm.data, cfg.normEps);
      matvec(gate, lw.wGate.data, xb, hiddenDim, dim);
      matvec(up, lw.wUp.data, xb, hiddenDim, dim);
      for (let i = 0; i < hiddenDim; i++) {
        const g = gate[i];
        gate[i] = (g / (1 + Math.exp(-g))) * up[i];
      }
      matvec(proj, lw.wDown.data, gate, dim, hiddenDim);
      for (let i = 0; i < dim; i++) x[i] += proj[i];
    }

    const hidden = new Float64Array(dim);
    rmsnorm(hidden, x, w.finalNorm.data, cfg.normEps);
    this.lastHidden = hidden;
    const logits = new Float64Array(vocabSize);
    matvec(logits, w.lmHead.data, hidden, vocabSize, dim);
    return Float32Array.from(logits);
  }
}

/**
 * Greedy generation from `prompt`: its last row's logits (`first`), `steps` argmax tokens (the
 * first from `first`) and the logits that chose each (`logits`). With `chunk`, prompt rows read
 * the keys of their own chunk of that many positions as computed and earlier ones as the cache
 * stores them, as the GPU's prefill chunks do (a quantized `kvDtype`); generated tokens are one
 * forward each.
 */
export function cpuGreedy(
  cpu: CpuLlama,
  prompt: number[],
  steps: number,
  chunk?: number,
): { first: Float32Array; tokens: number[]; logits: Float32Array[] } {
  let logits: Float32Array = new Float32Array();
  prompt.forEach((tok, i) => {
    logits = cpu.forward(tok, i, chunk ? Math.floor(i / chunk) * chunk : i);
  });
  const first = logits;
  const tokens = [argmax(logits)];
  /** steps[k]: the logits that chose tokens[k]. */
  const steps_ = [logits];
  while (tokens.length < steps) {
    logits = cpu.forward(tokens[tokens.length - 1], prompt.length + tokens.length - 1);
    tokens.push(argmax(logits));
    steps_.push(logits);
  }
  return { first, tokens, logits: steps_ };
}
