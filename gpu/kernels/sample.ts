// wgsl/sample.wgsl: token sampling on the GPU (greedy, temperature, top-k, top-p, min-p, seeded,
// logit_bias, presence / frequency / repetition penalties over per-slot token counts kept on the
// GPU, and the top log-probabilities), one workgroup of 256 threads per logits row, so decode
// needs no logits readback.

import { type Groups, kernel } from "./kernel.ts";

export const SAMPLE_FILE = "sample.wgsl";

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  topK?: number;
  topP?: number;
  minP?: number;
  seed?: number;
  /** OpenAI's: logit -= presence * (generated count > 0). 0 = off. */
  presencePenalty?: number;
  /** OpenAI's: logit -= frequency * generated count. 0 = off. */
  frequencyPenalty?: number;
  /** HF / vLLM's, over tokens of the prompt or generated: logit > 0 ? logit / p : logit * p.
   * 1 = off. */
  repetitionPenalty?: number;
  /** [token id, bias] pairs, ids distinct and < vocab, added to the logits before penalties. */
  logitBias?: [number, number][];
  /** Top log-probabilities to return per sampled token (0..MAX_TOP_LOGPROBS). */
  topLogprobs?: number;
}

/** Most logit_bias entries per request (OpenAI's limit). */
export const MAX_LOGIT_BIAS = 300;
/** Most top log-probabilities per token (vLLM's default limit). */
export const MAX_TOP_LOGPROBS = 20;

/** Whether the sampler reads (and counts into) the sequence slot's token counts. */
export function penalised(p: SamplingParams): boolean {
  return (p.presencePenalty ?? 0) !== 0 || (p.frequencyPenalty ?? 0) !== 0 ||
    (p.repetitionPenalty ?? 1) !== 1;
}

export interface SampleConstants {
  /** Logits per row. */
  VOCAB: number;
  /** Row stride of the output ring (rows per decode step). */
  MAX_ROWS: number;
  /** logit_bias entries per row (stride of `bias`). */
  MAX_BIAS: number;
  /** Top-logprob entries per row and step (stride of `top`). */
  MAX_TOP: number;
}

export const SAMPLE_BINDINGS = {
  fwd: 0,
  rows: 1,
  gather: 2,
  params: 3,
  logits: 4,
  sampled: 5,
  logprobs: 6,
  step: 7,
  work: 8,
  counts: 9,
  bias: 10,
  top: 11,
} as const;

export function sample(c: SampleConstants) {
  return kernel(SAMPLE_FILE, "main", c, SAMPLE_BINDINGS);
}

/** One workgroup per logits row. */
export function sampleGroups(logitRows: number): Groups {
  return [logitRows, 1, 1];
}

/** Bytes of one `struct Sampling` (12 words). */
export const SAMPLING_BYTES = 48;

/** Bit of a counts word: the token is in the prompt (bits 0..30: times generated). */
export const PROMPT_SEEN = 0x80000000;

/**
 * The per-row `Sampling` structs: temperature, top_p, min_p, top_k, seed, presence, frequency,
 * repetition, n_bias, n_top, counted, 1 word of padding.
 */
export function encodeSampling(params: readonly SamplingParams[]): ArrayBuffer {
  const buf = new ArrayBuffer(params.length * SAMPLING_BYTES);
  const f = new Float32Array(buf);
  const u = new Uint32Array(buf);
  params.forEach((p, i) => {
    const o = i * (SAMPLING_BYTES / 4);
    f[o] = p.temperature;
    f[o + 1] = p.topP ?? 1;
    f[o + 2] = p.minP ?? 0;
    u[o + 3] = p.topK ?? 0;
    u[o + 4] = (p.seed ?? 0) >>> 0;
    f[o + 5] = p.presencePenalty ?? 0;
    f[o + 6] = p.frequencyPenalty ?? 0;
    f[o + 7] = p.repetitionPenalty ?? 1;
    u[o + 8] = Math.min(p.logitBias?.length ?? 0, MAX_LOGIT_BIAS);
    u[o + 9] = Math.min(p.topLogprobs ?? 0, MAX_TOP_LOGPROBS);
    u[o + 10] = penalised(p) ? 1 : 0;
  });
  return buf;
}

/** The rows' logit_bias entries, [row, MAX_LOGIT_BIAS] pairs of (id, f32 bits). */
export function encodeBias(params: readonly SamplingParams[]): ArrayBuffer {
  const buf = new ArrayBuffer(Math.max(1, params.length) * MAX_LOGIT_BIAS * 8);
  const f = new Float32Array(buf);
  const u = new Uint32Array(buf);
  params.forEach((p, r) => {
    (p.logitBias ?? []).slice(0, MAX_LOGIT_BIAS).forEach(([id, b], e) => {
      const o = (r * MAX_LOGIT_BIAS + e) * 2;
      u[o] = id;
      f[o + 1] = b;
    });
  });
  return buf;
}

/** A counts row for a sequence whose prompt is `prompt`: PROMPT_SEEN on its tokens. */
export function promptCounts(vocab: number, prompt: readonly number[]): Uint32Array<ArrayBuffer> {
  const row = new Uint32Array(vocab);
  for (const t of prompt) if (t >= 0 && t < vocab) row[t] = PROMPT_SEEN;
  return row;
}

/** The [id, logprob] pairs of `top` ([step][maxRows][MAX_TOP] of (id, f32 bits)) for `row` at
 * `step`, the first `k`, ids past the vocab (fewer candidates) dropped. */
export function topOf(
  top: Uint32Array,
  maxRows: number,
  step: number,
  row: number,
  k: number,
): [number, number][] {
  const f = new Float32Array(top.buffer, top.byteOffset, top.length);
  const out: [number, number][] = [];
  for (let j = 0; j < k; j++) {
    const o = ((step * maxRows + row) * MAX_TOP_LOGPROBS + j) * 2;
    if (top[o] === 0xffffffff) break;
    out.push([top[o], f[o + 1]]);
  }
  return out;
}
