// CPU block decoders (dequantizers) for the GGUF / ggml tensor types we read, plus the two
// reference quantizers (Q8_0, Q4_0) for the formats we write ourselves. This is the ground truth
// that GPU dequantizing kernels are tested against, so it follows ggml exactly:
//   - block layouts: the `block_q*` structs of ggml's `ggml-common.h` (all fields little-endian,
//     `ggml_half` = IEEE binary16, no padding);
//   - type ids: `enum ggml_type` in ggml's `ggml.h` (the ids GGUF stores per tensor);
//   - decoding: `dequantize_row_q8_0/q4_0/q5_0/q4_K/q5_K/q6_K` and `get_scale_min_k4` in
//     ggml's `ggml-quants.c` (BF16: `ggml_bf16_to_fp32`, the bits shifted left by 16);
//   - encoding: `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref` in `ggml-quants.c`.
//
// Exactness: every decoded value here is the exactly-rounded f32 of the real-number formula, and
// equal to what ggml computes whatever the evaluation order or FMA contraction. The fp16 scale has
// 11 significant bits, the sub-block scales/mins at most 8 and the quants at most 6, so every
// product (d*sc, d*sc*q, dmin*m) needs at most 24 bits and is exact in f32 (no f32 subnormals or
// overflow arise from fp16 inputs); the only rounding is the one of the final subtraction in the
// K-quants, which C, an FMA and this code all round once.

/** The ggml tensor types this module can decode. */
export type GgmlType = "F32" | "F16" | "BF16" | "Q8_0" | "Q4_0" | "Q5_0" | "Q4_K" | "Q5_K" | "Q6_K";

/** Storage of one type: its `enum ggml_type` id, elements per block and bytes per block. */
export interface BlockFormat {
  id: number;
  blockElems: number;
  blockBytes: number;
}

/** Elements per K-quant super-block (ggml's QK_K). */
const QK_K = 256;

/** Block formats of the supported types (ids from ggml.h; sizes are sizeof(block_*)). */
export const BLOCK_FORMATS: Readonly<Record<GgmlType, Readonly<BlockFormat>>> = Object.freeze({
  F32: { id: 0, blockElems: 1, blockBytes: 4 },
  F16: { id: 1, blockElems: 1, blockBytes: 2 },
  Q4_0: { id: 2, blockElems: 32, blockBytes: 2 + 16 },
  Q5_0: { id: 6, blockElems: 32, blockBytes: 2 + 4 + 16 },
  Q8_0: { id: 8, blockElems: 32, blockBytes: 2 + 32 },
  Q4_K: { id: 12, blockElems: QK_K, blockBytes: 2 + 2 + 12 + QK_K / 2 },
  Q5_K: { id: 13, blockElems: QK_K, blockBytes: 2 + 2 + 12 + QK_K / 8 + QK_K / 2 },
  Q6_K: { id: 14, blockElems: QK_K, blockBytes: QK_K / 2 + QK_K / 4 + QK_K / 16 + 2 },
  BF16: { id: 30, blockElems: 1, blockBytes: 2 },
});

/** Names of all ids in ggml.h's `enum ggml_type`, so errors can say what an unsupported id is. */
const GGML_TYPE_NAMES: Record<number, string> = {
  0: "F32",
  1: "F16",
  2: "Q4_0",
  3: "Q4_1",
  4: "Q4_2 (removed)",
  5: "Q4_3 (removed)",
  6: "Q5_0",
  7: "Q5_1",
  8: "Q8_0",
  9: "Q8_1",
  10: "Q2_K",
  11: "Q3_K",
  12: "Q4_K",
  13: "Q5_K",
  14: "Q6_K",
  15: "Q8_K",
  16: "IQ2_XXS",
  17: "IQ2_XS",
  18: "IQ3_XXS",
  19: "IQ1_S",
  20: "IQ4_NL",
  21: "IQ3_S",
  22: "IQ2_S",
  23: "IQ4_XS",
  24: "I8",
  25: "I16",
  26: "I32",
  27: "I64",
  28: "F64",
  29: "IQ1_M",
  30: "BF16",
  31: "Q4_0_4_4 (removed)",
  32: "Q4_0_4_8 (removed)",
  33: "Q4_0_8_8 (removed)",
  34: "TQ1_0",
  35: "TQ2_0",
  36: "IQ4_NL_4_4 (removed)",
  37: "IQ4_NL_4_8 (removed)",
  38: "IQ4_NL_8_8 (removed)",
};

const TYPES = Object.keys(BLOCK_FORMATS) as GgmlType[];
const BY_ID = new Map<number, GgmlType>(TYPES.map((t) => [BLOCK_FORMATS[t].id, t]));
const SUPPORTED = TYPES.map((t) => `${t}=${BLOCK_FORMATS[t].id}`).join(", ");

/** The supported type with ggml type id `id`; throws naming the id and the supported types. */
export function ggmlTypeOf(id: number): GgmlType {
  const t = BY_ID.get(id);
  if (t) return t;
  const known = GGML_TYPE_NAMES[id];
  throw new Error(
    `unsupported ggml tensor type id ${id}${known ? ` (${known})` : " (unknown)"}; ` +
      `supported: ${SUPPORTED}`,
  );
}

/** Bytes taken by `nElements` consecutive elements of `type`; throws unless whole blocks. */
export function rowBytes(type: GgmlType, nElements: number): number {
  const f = BLOCK_FORMATS[type];
  if (!f) throw new Error(`unknown ggml type ${JSON.stringify(type)}; supported: ${SUPPORTED}`);
  if (!Number.isSafeInteger(nElements) || nElements < 0 || nElements % f.blockElems !== 0) {
    throw new Error(
      `${type}: a row of ${nElements} elements is not a whole number of ` +
        `${f.blockElems}-element blocks`,
    );
  }
  return (nElements / f.blockElems) * f.blockBytes;
}

let halfTableCache: Float32Array | undefined;

/** f32 value of every fp16 bit pattern, decoded from the bits (sign, 5-bit exponent, 10-bit
 * fraction; exponent 0 = subnormal, 31 = Inf/NaN). */
function halfTable(): Float32Array {
  if (halfTableCache) return halfTableCache;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    let v: number;
    if (exp === 0) v = frac * 2 ** -24;
    else if (exp === 31) v = frac === 0 ? Infinity : NaN;
    else v = (1024 + frac) * 2 ** (exp - 25);
    t[h] = h & 0x8000 ? -v : v;
  }
  return (halfTableCache = t);
}

/** Decodes `nElements` elements of `type` from `bytes` (which may start at any byte offset and
 * may be longer than needed) into `out` (a new array if not given; it may be longer), and
 * returns `out`. Throws if `nElements` is not whole blocks, `bytes` is too short or `out` too
 * small. */
export function dequantizeRow(
  type: GgmlType,
  bytes: Uint8Array,
  nElements: number,
  out?: Float32Array,
): Float32Array {
  const need = rowBytes(type, nElements);
  if (bytes.byteLength < need) {
    throw new Error(
      `${type}: ${nElements} elements need ${need} bytes, got ${bytes.byteLength}`,
    );
  }
  if (!out) out = new Float32Array(nElements);
  else if (out.length < nElements) {
    throw new Error(`${type}: output holds ${out.length} values, ${nElements} needed`);
  }
  const nb = nElements / BLOCK_FORMATS[type].blockElems;
  switch (type) {
    case "F32":
      decodeF32(bytes, nElements, out);
      break;
    case "F16": {
      const h = halfTable();
      for (let i = 0; i < nElements; i++) out[i] = h[bytes[2 * i] | (bytes[2 * i + 1] << 8)];
      break;
    }
    case "BF16": {
      // Writing the bits through a u32 view keeps NaN payloads, as ggml_bf16_to_fp32 does.
      const u = new Uint32Array(out.buffer, out.byteOffset, nElements);
      for (let i = 0; i < nElements; i++) {
        u[i] = ((bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16) >>> 0;
      }
      break;
    }
    case "Q8_0":
      decodeQ8_0(bytes, nb, out);
      break;
    case "Q4_0":
      decodeQ4_0(bytes, nb, out);
      break;
    case "Q5_0":
      decodeQ5_0(bytes, nb, out);
      break;
    case "Q4_K":
      decodeQ4_K(bytes, nb, out);
      break;
    case "Q5_K":
      decodeQ5_K(bytes, nb, out);
      break;
    case "Q6_K":
      decodeQ6_K(bytes, nb, out);
      break;
  }
  return out;
}

function decodeF32(b: Uint8Array, n: number, out: Float32Array): void {
  if (b.byteOffset % 4 === 0) {
    out.set(new Float32Array(b.buffer, b.byteOffset, n));
    return;
  }
  const v = new DataView(b.buffer, b.byteOffset, 4 * n);
  for (let i = 0; i < n; i++) out[i] = v.getFloat32(4 * i, true);
}

/** block_q8_0 { half d; int8 qs[32] }: x[j] = qs[j] * d. */
function decodeQ8_0(b: Uint8Array, nb: number, out: Float32Array): void {
  const h = halfTable();
  for (let i = 0; i < nb; i++) {
    const o = 34 * i;
    const d = h[b[o] | (b[o + 1] << 8)];
    const y = 32 * i;
    for (let j = 0; j < 32; j++) out[y + j] = ((b[o + 2 + j] << 24) >> 24) * d;
  }
}

/** block_q4_0 { half d; uint8 qs[16] }: x[j] = (lo(qs[j]) - 8) * d, x[j+16] = (hi(qs[j]) - 8) * d. */
function decodeQ4_0(b: Uint8Array, nb: number, out: Float32Array): void {
  const h = halfTable();
  for (let i = 0; i < nb; i++) {
    const o = 18 * i;
    const d = h[b[o] | (b[o + 1] << 8)];
    const y = 32 * i;
    for (let j = 0; j < 16; j++) {
      const q = b[o + 2 + j];
      out[y + j] = ((q & 0xf) - 8) * d;
      out[y + j + 16] = ((q >> 4) - 8) * d;
    }
  }
}

/** block_q5_0 { half d; uint8 qh[4]; uint8 qs[16] }: the low nibbles as Q4_0, the 5th bit of x[k]
 * is bit k of qh read as a little-endian u32; x[k] = (q - 16) * d. */
function decodeQ5_0(b: Uint8Array, nb: number, out: Float32Array): void {
  const h = halfTable();
  for (let i = 0; i < nb; i++) {
    const o = 22 * i;
    const d = h[b[o] | (b[o + 1] << 8)];
    const qh = (b[o + 2] | (b[o + 3] << 8) | (b[o + 4] << 16) | (b[o + 5] << 24)) >>> 0;
    const y = 32 * i;
    for (let j = 0; j < 16; j++) {
      const q = b[o + 6 + j];
      const lo = (q & 0xf) | (((qh >>> j) & 1) << 4);
      const hi = (q >> 4) | (((qh >>> (j + 16)) & 1) << 4);
      out[y + j] = (lo - 16) * d;
      out[y + j + 16] = (hi - 16) * d;
    }
  }
}

/** get_scale_min_k4: the 6-bit scale (into sm[0]) and 6-bit min (into sm[1]) of sub-block `j`
 * (0..7) from the 12 packed bytes at `s`. Sub-blocks 0..3 keep theirs in the low 6 bits of bytes
 * j (scale) and j+4 (min); sub-blocks 4..7 have their low 4 bits in the nibbles of byte j+4 (scale
 * low, min high) and their top 2 bits in the top bits of bytes j-4 (scale) and j (min). */
function scaleMinK4(b: Uint8Array, s: number, j: number, sm: Int32Array): void {
  if (j < 4) {
    sm[0] = b[s + j] & 63;
    sm[1] = b[s + j + 4] & 63;
  } else {
    sm[0] = (b[s + j + 4] & 0xf) | ((b[s + j - 4] >> 6) << 4);
    sm[1] = (b[s + j + 4] >> 4) | ((b[s + j] >> 6) << 4);
  }
}

/** block_q4_K { half d; half dmin; uint8 scales[12]; uint8 qs[128] }: for each 64-element chunk
 * c, its 32 bytes qs[32c..32c+31] hold sub-block 2c in the low nibbles and sub-block 2c+1 in the
 * high nibbles; x = d*sc*q - dmin*m. */
function decodeQ4_K(b: Uint8Array, nb: number, out: Float32Array): void {
  const h = halfTable();
  const sm = new Int32Array(2);
  for (let i = 0; i < nb; i++) {
    const o = 144 * i;
    const d = h[b[o] | (b[o + 1] << 8)];
    const dmin = h[b[o + 2] | (b[o + 3] << 8)];
    const s = o + 4;
    const qs = o + 16;
    for (let c = 0; c < 4; c++) {
      scaleMinK4(b, s, 2 * c, sm);
      const d1 = d * sm[0], m1 = dmin * sm[1];
      scaleMinK4(b, s, 2 * c + 1, sm);
      const d2 = d * sm[0], m2 = dmin * sm[1];
      const q = qs + 32 * c;
      const y = QK_K * i + 64 * c;
      for (let l = 0; l < 32; l++) {
        out[y + l] = d1 * (b[q + l] & 0xf) - m1;
        out[y + l + 32] = d2 * (b[q + l] >> 4) - m2;
      }
    }
  }
}

/** block_q5_K { half d; half dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128] }: the low 4
 * bits as Q4_K; the 5th bit of element l (0..31) of chunk c's low-nibble sub-block is bit 2c of
 * qh[l], of its high-nibble sub-block bit 2c+1; x = d*sc*q - dmin*m. */
function decodeQ5_K(b: Uint8Array, nb: number, out: Float32Array): void {
  const h = halfTable();
  const sm = new Int32Array(2);
  for (let i = 0; i < nb; i++) {
    const o = 176 * i;
    const d = h[b[o] | (b[o + 1] << 8)];
    const dmin = h[b[o + 2] | (b[o + 3] << 8)];
    const s = o + 4;
    const qh = o + 16;
    const qs = o + 48;
    for (let c = 0; c < 4; c++) {
      scaleMinK4(b, s, 2 * c, sm);
      const d1 = d * sm[0], m1 = dmin * sm[1];
      scaleMinK4(b, s, 2 * c + 1, sm);
      const d2 = d * sm[0], m2 = dmin * sm[1];
      const q = qs + 32 * c;
      const y = QK_K * i + 64 * c;
      for (let l = 0; l < 32; l++) {
        const hb = b[qh + l] >> (2 * c);
        out[y + l] = d1 * ((b[q + l] & 0xf) | ((hb & 1) << 4)) - m1;
        out[y + l + 32] = d2 * ((b[q + l] >> 4) | ((hb & 2) << 3)) - m2;
      }
    }
  }
}

/** block_q6_K { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d }: per 128-element half n,
 * with ql' = ql+64n, qh' = qh+32n, sc' = scales+8n and l in 0..31: element l is lo(ql'[l]) with
 * qh'[l] bits 0-1 on top, l+32 is lo(ql'[l+32]) with bits 2-3, l+64 is hi(ql'[l]) with bits 4-5,
 * l+96 is hi(ql'[l+32]) with bits 6-7; element e of the half uses scale sc'[e/16];
 * x = d * sc * (q - 32). */
function decodeQ6_K(b: Uint8Array, nb: number, out: Float32Array): void {
  const h = halfTable();
  for (let i = 0; i < nb; i++) {
    const o = 210 * i;
    const d = h[b[o + 208] | (b[o + 209] << 8)];
    for (let n = 0; n < 2; n++) {
      const ql = o + 64 * n;
      const qh = o + 128 + 32 * n;
      const sc = o + 192 + 8 * n;
      const y = QK_K * i + 128 * n;
      for (let l = 0; l < 32; l++) {
        const a = b[ql + l], c = b[ql + l + 32], hb = b[qh + l];
        const is = sc + (l >> 4);
        out[y + l] = d * ((b[is] << 24) >> 24) * (((a & 0xf) | ((hb & 3) << 4)) - 32);
        out[y + l + 32] = d * ((b[is + 2] << 24) >> 24) *
          (((c & 0xf) | (((hb >> 2) & 3) << 4)) - 32);
        out[y + l + 64] = d * ((b[is + 4] << 24) >> 24) *
          (((a >> 4) | (((hb >> 4) & 3) << 4)) - 32);
        out[y + l + 96] = d * ((b[is + 6] << 24) >> 24) *
          (((c >> 4) | (((hb >> 6) & 3) << 4)) - 32);
      }
    }
  }
}

// ---- Quantizers (ggml's reference quantizers, f32 arithmetic throughout) ----

const f32 = Math.fround;

const F16_SCRATCH = new Float16Array(1);
const U16_SCRATCH = new Uint16Array(F16_SCRATCH.buffer);

/** fp16 bits of a number, round to nearest even (as GGML_FP32_TO_FP16). */
function fp16Bits(x: number): number {
  F16_SCRATCH[0] = x;
  return U16_SCRATCH[0];
}

function checkQuantInput(name: string, x: Float32Array): void {
  if (x.length % 32 !== 0) {
    throw new Error(`${name}: ${x.length} values are not a whole number of 32-element blocks`);
  }
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i])) throw new Error(`${name}: value ${i} is ${x[i]}, not finite`);
  }
}

/** Float → int8 as x86 converts it: out-of-range and NaN give the "integer indefinite"
 * 0x80000000, whose low byte is 0. Only reached when 1/d overflowed f32 (|d| < 2^-128), where
 * ggml's C is undefined; d is then 0 in fp16 anyway, so these quants never affect a value. */
function toInt8(v: number): number {
  return Number.isFinite(v) ? v : 0;
}

/** Q8_0 as `quantize_row_q8_0_ref`: per block of 32, amax = max |x|, d = amax/127 (f32),
 * id = 1/d (0 if d is 0), q = roundf(x*id) (ties away from zero); the block stores fp16(d)
 * (nearest even) but the quants are computed with the f32 d. Throws unless `x.length` is a
 * multiple of 32 and every value is finite. */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  checkQuantInput("quantizeQ8_0", x);
  const nb = x.length / 32;
  const out = new Uint8Array(34 * nb);
  for (let i = 0; i < nb; i++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[32 * i + j]));
    const d = f32(amax / 127);
    const id = d ? f32(1 / d) : 0;
    const o = 34 * i;
    const bits = fp16Bits(d);
    out[o] = bits & 0xff;
    out[o + 1] = bits >> 8;
    for (let j = 0; j < 32; j++) {
      const v = f32(x[32 * i + j] * id);
      const r = Math.round(Math.abs(v));
      out[o + 2 + j] = toInt8(v < 0 ? -r : r) & 0xff;
    }
  }
  return out;
}

/** Q4_0 as `quantize_row_q4_0_ref`: per block of 32, max = the value of largest magnitude (the
 * first one on ties, sign kept), d = max / -8 (f32), id = 1/d (0 if d is 0),
 * q = min(15, trunc(x*id + 8.5)) in f32; the block stores fp16(d) (nearest even) but the quants
 * are computed with the f32 d. Element j of a block goes to the low nibble of byte j, element
 * j+16 to its high nibble. Throws unless `x.length` is a multiple of 32 and every value is
 * finite. x*id is rounded to f32 before 8.5 is added, as C evaluates it without contraction
 * (clang's default, gcc -ffp-contract=off); a gcc -march=native build of ggml fuses the two into
 * an FMA and can then give q one lower where x*id lands within an f32 rounding of a half-integer
 * (x/d exactly k + 1/2 with an inexact id). */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  checkQuantInput("quantizeQ4_0", x);
  const nb = x.length / 32;
  const out = new Uint8Array(18 * nb);
  const q = new Uint8Array(32);
  for (let i = 0; i < nb; i++) {
    let amax = 0, max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[32 * i + j];
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = f32(max / -8);
    const id = d ? f32(1 / d) : 0;
    const o = 18 * i;
    const bits = fp16Bits(d);
    out[o] = bits & 0xff;
    out[o + 1] = bits >> 8;
    for (let j = 0; j < 32; j++) {
      // x*id is within [-8, 8] up to rounding, so x*id + 8.5 is positive and trunc = floor.
      const t = toInt8(Math.trunc(f32(f32(x[32 * i + j] * id) + 8.5)));
      q[j] = Math.min(15, t);
    }
    for (let j = 0; j < 16; j++) out[o + 2 + j] = q[j] | (q[j + 16] << 4);
  }
  return out;
}
