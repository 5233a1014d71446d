// Rotary position embedding frequencies: pure math shared by the GPU runner (uploaded once per
// model) and the CPU attention probe.

import type { ModelConfig } from "./types.ts";

/** RoPE inverse frequencies per pair, with Llama-3 scaling applied (computed in f32 as
 * llama2.c and PyTorch do), or divided by a GGUF's frequency factors. */
export function ropeInvFreq(c: ModelConfig): Float32Array<ArrayBuffer> {
  const half = c.headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    out[i] = Math.fround(1 / Math.fround(Math.pow(c.ropeTheta, Math.fround((2 * i) / c.headDim))));
  }
  const f = c.ropeFreqFactors;
  if (f) {
    if (f.length !== half) throw new RangeError(`${f.length} RoPE factors for ${half} pairs`);
    for (let i = 0; i < half; i++) out[i] = Math.fround(out[i] / f[i]);
  }
  const s = c.ropeScaling;
  if (s) {
    const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / out[i];
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        out[i] = out[i] / s.factor;
      } else {
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) /
          (s.highFreqFactor - s.lowFreqFactor);
        out[i] = (1 - smooth) * out[i] / s.factor + smooth * out[i];
      }
    }
  }
  return out;
}
