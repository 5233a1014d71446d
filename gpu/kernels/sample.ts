// wgsl/sample.wgsl: token sampling on the GPU (greedy, temperature, top-k, top-p, min-p, seeded),
// one workgroup of 256 threads per logits row, so decode needs no logits readback.

import { type Groups, kernel } from "./kernel.ts";

export const SAMPLE_FILE = "sample.wgsl";

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  topK?: number;
  topP?: number;
  minP?: number;
  seed?: number;
}

export interface SampleConstants {
  /** Logits per row. */
  VOCAB: number;
  /** Row stride of the output ring (rows per decode step). */
  MAX_ROWS: number;
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
} as const;

export function sample(c: SampleConstants) {
  return kernel(SAMPLE_FILE, "main", c, SAMPLE_BINDINGS);
}

/** One workgroup per logits row. */
export function sampleGroups(logitRows: number): Groups {
  return [logitRows, 1, 1];
}

/** Bytes of one `struct Sampling` (8 words). */
export const SAMPLING_BYTES = 32;

/** The per-row `Sampling` structs: temperature, top_p, min_p, top_k, seed, 3 words of padding. */
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
  });
  return buf;
}
