// The quantized KV dtypes' definition on the CPU (cache/layout.ts KvDtype documents the formats;
// wgsl/kv_int8.wgsl and wgsl/kv_int4.wgsl implement them): one entry, one position's key or value
// for one KV head, to its storage units and back, with each f32 operation rounded as the GPU
// rounds it (Math.fround; Math.f16round for int4's f16 scale and zero). The kernel tests compare
// what the GPU stores with `quantizeEntry` and read attention against `dequantizeEntry`.

import { type KvDtype, kvEntryUnits } from "../cache/layout.ts";

const F16_MAX = 65504;
const f = Math.fround;

/** Round half to even (WGSL's `round`). */
export function roundEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** int8's amax, int4's (scale, zero): the scale unit of an entry, as numbers. */
export function entryParams(dtype: "int8" | "int4", x: ArrayLike<number>): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < x.length; i++) {
    lo = Math.min(lo, f(x[i]));
    hi = Math.max(hi, f(x[i]));
  }
  if (dtype === "int8") return [Math.max(-lo, hi), 0];
  const zero = Math.f16round(Math.min(F16_MAX, Math.max(-F16_MAX, lo)));
  const top = Math.min(F16_MAX, Math.max(-F16_MAX, hi));
  return [Math.f16round(f(f(Math.max(f(top - zero), 0)) / 15)), zero];
}

/** The quantized values of an entry (int8: -127..127, int4: 0..15), before packing. */
export function quantizeValues(dtype: "int8" | "int4", x: ArrayLike<number>): Int32Array {
  const [a, zero] = entryParams(dtype, x);
  const q = new Int32Array(x.length);
  if (dtype === "int8") {
    const inv = a > 0 ? f(1 / a) : 0;
    for (let i = 0; i < x.length; i++) {
      const e = Math.min(1, Math.max(-1, f(f(x[i]) * inv)));
      q[i] = roundEven(f(e * 127));
    }
  } else {
    const inv = a > 0 ? f(1 / a) : 0;
    for (let i = 0; i < x.length; i++) {
      q[i] = Math.min(15, Math.max(0, roundEven(f(f(f(x[i]) - zero) * inv))));
    }
  }
  return q;
}

/** One entry's storage units (u32 words): values then the scale unit. */
export function quantizeEntry(dtype: "int8" | "int4", x: ArrayLike<number>): Uint32Array {
  const hd = x.length;
  const out = new Uint32Array(kvEntryUnits(dtype, hd));
  const q = quantizeValues(dtype, x);
  const [a, zero] = entryParams(dtype, x);
  if (dtype === "int8") {
    for (let i = 0; i < hd; i++) out[i >> 2] |= (q[i] & 0xff) << (8 * (i & 3));
    out[hd / 4] = new Uint32Array(Float32Array.of(a).buffer)[0];
  } else {
    for (let i = 0; i < hd; i++) out[i >> 3] |= q[i] << (4 * (i & 7));
    const halves = new Uint16Array(Float16Array.of(a, zero).buffer);
    out[hd / 8] = halves[0] | (halves[1] << 16);
  }
  for (let i = 0; i < out.length; i++) out[i] >>>= 0;
  return out;
}

/** The values an entry's units read back as (what attention sees). */
export function dequantizeEntry(
  dtype: "int8" | "int4",
  units: ArrayLike<number>,
  headDim: number,
): Float32Array {
  const out = new Float32Array(headDim);
  if (dtype === "int8") {
    const amax = new Float32Array(Uint32Array.of(units[headDim / 4]).buffer)[0];
    for (let i = 0; i < headDim; i++) {
      const q = ((units[i >> 2] >>> (8 * (i & 3))) << 24) >> 24; // sign-extend the byte
      out[i] = f(Math.max(f(q / 127), -1) * amax);
    }
  } else {
    const [scale, zero] = new Float16Array(Uint32Array.of(units[headDim / 8]).buffer);
    for (let i = 0; i < headDim; i++) {
      const q = (units[i >> 3] >>> (4 * (i & 7))) & 15;
      out[i] = f(zero + f(q * scale));
    }
  }
  return out;
}

/** Per entry of [n][headDim] data: its storage units, concatenated. */
export function quantizeEntries(
  dtype: "int8" | "int4",
  data: Float32Array,
  headDim: number,
): Uint32Array {
  const n = data.length / headDim;
  const units = kvEntryUnits(dtype, headDim);
  const out = new Uint32Array(n * units);
  for (let e = 0; e < n; e++) {
    out.set(quantizeEntry(dtype, data.subarray(e * headDim, (e + 1) * headDim)), e * units);
  }
  return out;
}

/** [n][headDim] data as a cache of this dtype gives it back: quantized then dequantized, or
 * rounded to f16. */
export function storedKv(dtype: KvDtype, data: Float32Array, headDim: number): Float32Array {
  if (dtype === "f32") return Float32Array.from(data);
  if (dtype === "f16") return Float32Array.from(Float16Array.from(data));
  const out = new Float32Array(data.length);
  for (let e = 0; e * headDim < data.length; e++) {
    const x = data.subarray(e * headDim, (e + 1) * headDim);
    out.set(dequantizeEntry(dtype, quantizeEntry(dtype, x), headDim), e * headDim);
  }
  return out;
}

/** Largest |x - stored(x)| the format allows for one entry: half a step, plus int4's f16
 * roundings of its scale and zero, plus the f32 roundings of the arithmetic. */
export function quantBound(dtype: "int8" | "int4", x: ArrayLike<number>): number {
  const [a, zero] = entryParams(dtype, x);
  // f32 roundings on the way (x / amax, * 127, the dequantizing product): a few ULP of amax.
  if (dtype === "int8") return a / 254 + 8 * 2 ** -24 * a;
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < x.length; i++) {
    lo = Math.min(lo, x[i]);
    hi = Math.max(hi, x[i]);
  }
  // An f16 scale rounded down leaves the max up to 15 * scale * 2^-11 above the top step; a
  // zero rounded up leaves the min below it; values beyond f16's range are clipped to it.
  const clipped = Math.max(0, hi - F16_MAX, -F16_MAX - lo);
  const lowest = Math.max(-F16_MAX, lo);
  return a / 2 + 15 * a * 2 ** -11 + Math.max(0, zero - lowest) + clipped +
    8 * 2 ** -24 * (a * 15 + Math.abs(zero));
}
