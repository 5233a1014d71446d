// The GGUF / ggml block decoders and reference quantizers (model/gguf_blocks.ts) against blocks
// built by hand from the formats' definitions (ggml's ggml-common.h structs, ggml-quants.c's
// dequantize_row_* and quantize_row_*_ref). Expected values are hand-computed literals or the
// definition's formula written out here; the decoder is never used to make its own expectations.
// Scales are chosen so every expected value is exact in f32 unless a test says otherwise.

import assert from "node:assert/strict";
import {
  BLOCK_FORMATS,
  dequantizeRow,
  type GgmlType,
  ggmlTypeOf,
  quantizeQ4_0,
  quantizeQ8_0,
  rowBytes,
} from "../model/gguf_blocks.ts";

/** Little-endian bytes of a 16-bit pattern. */
const le16 = (bits: number) => [bits & 0xff, (bits >> 8) & 0xff];
const fill = (n: number, v: number) => new Array<number>(n).fill(v);
const seq = (n: number, f: (i: number) => number) => Array.from({ length: n }, (_, i) => f(i));

/** fp16 bit patterns used as scales. */
const H = {
  zero: 0x0000,
  one: 0x3c00, // 1
  half: 0x3800, // 0.5
  quarter: 0x3400, // 0.25
  minusQuarter: 0xb400, // -0.25
  minusHalf: 0xb800, // -0.5
  minusOne: 0xbc00, // -1
  minusTwo: 0xc000, // -2
  tiny: 0x0001, // 2^-24, the smallest subnormal
  tiny2: 0x0002, // 2^-23, subnormal
};

/** Asserts equal values: `===` (so +0 equals -0), NaN equal to NaN; reports the first mismatch. */
function assertValues(actual: Float32Array, expected: number[], what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i], e = expected[i];
    if (a === e || (Number.isNaN(a) && Number.isNaN(e))) continue;
    assert.fail(`${what}: element ${i} is ${a}, expected ${e}`);
  }
}

function decode(type: GgmlType, bytes: number[], n: number): Float32Array {
  return dequantizeRow(type, new Uint8Array(bytes), n);
}

/** The same bytes starting at an odd byte offset inside a larger buffer. */
function unaligned(bytes: number[]): Uint8Array {
  const buf = new Uint8Array(bytes.length + 3);
  buf.set(bytes, 1);
  return buf.subarray(1, 1 + bytes.length);
}

Deno.test("block formats: ids from ggml.h's enum ggml_type, sizes of ggml-common.h's structs", () => {
  const expected: Record<GgmlType, [number, number, number]> = {
    F32: [0, 1, 4],
    F16: [1, 1, 2],
    Q4_0: [2, 32, 18],
    Q5_0: [6, 32, 22],
    Q8_0: [8, 32, 34],
    Q4_K: [12, 256, 144],
    Q5_K: [13, 256, 176],
    Q6_K: [14, 256, 210],
    BF16: [30, 1, 2],
  };
  assert.deepEqual(Object.keys(BLOCK_FORMATS).sort(), Object.keys(expected).sort());
  for (const [t, [id, elems, bytes]] of Object.entries(expected)) {
    assert.deepEqual(BLOCK_FORMATS[t as GgmlType], { id, blockElems: elems, blockBytes: bytes }, t);
    assert.equal(ggmlTypeOf(id), t);
  }
});

Deno.test("ggmlTypeOf and rowBytes errors name what is wrong", async (t) => {
  await t.step(
    "an unsupported known id names the id, its ggml name and the supported types",
    () => {
      assert.throws(() => ggmlTypeOf(3), (e: Error) => {
        assert.match(e.message, /type id 3 \(Q4_1\)/);
        assert.match(e.message, /supported: F32=0, F16=1, .*Q6_K=14.*BF16=30/);
        return true;
      });
      assert.throws(() => ggmlTypeOf(10), /type id 10 \(Q2_K\)/);
      assert.throws(() => ggmlTypeOf(15), /type id 15 \(Q8_K\)/);
    },
  );
  await t.step("an unknown id says so", () => {
    assert.throws(() => ggmlTypeOf(99), /type id 99 \(unknown\); supported: F32=0/);
    assert.throws(() => ggmlTypeOf(-1), /type id -1 \(unknown\)/);
  });
  await t.step("rowBytes of whole blocks", () => {
    assert.equal(rowBytes("F32", 3), 12);
    assert.equal(rowBytes("F16", 3), 6);
    assert.equal(rowBytes("BF16", 5), 10);
    assert.equal(rowBytes("Q8_0", 64), 68);
    assert.equal(rowBytes("Q4_0", 4096), 128 * 18);
    assert.equal(rowBytes("Q5_0", 32), 22);
    assert.equal(rowBytes("Q4_K", 4096), 16 * 144);
    assert.equal(rowBytes("Q5_K", 512), 352);
    assert.equal(rowBytes("Q6_K", 256), 210);
    assert.equal(rowBytes("Q6_K", 0), 0);
  });
  await t.step("rowBytes of a partial block names the type, the length and the block", () => {
    assert.throws(() => rowBytes("Q4_K", 100), /Q4_K: a row of 100 elements .* 256-element/);
    assert.throws(() => rowBytes("Q8_0", 48), /Q8_0: a row of 48 elements .* 32-element/);
    assert.throws(() => rowBytes("Q4_0", -32), /Q4_0: a row of -32 elements/);
    assert.throws(() => rowBytes("F32", 1.5), /F32: a row of 1.5 elements/);
    assert.throws(() => rowBytes("Q9_9" as GgmlType, 32), /unknown ggml type "Q9_9"/);
  });
  await t.step("dequantizeRow: short input, small output, partial block", () => {
    assert.throws(
      () => dequantizeRow("Q6_K", new Uint8Array(209), 256),
      /Q6_K: 256 elements need 210 bytes, got 209/,
    );
    assert.throws(
      () => dequantizeRow("Q8_0", new Uint8Array(34), 32, new Float32Array(31)),
      /Q8_0: output holds 31 values, 32 needed/,
    );
    assert.throws(() => dequantizeRow("Q5_K", new Uint8Array(176), 255), /Q5_K: a row of 255/);
  });
});

Deno.test("F32, F16 and BF16", async (t) => {
  await t.step("F32: little-endian, from an unaligned offset too", () => {
    const vals = [1.5, -0, 3.4028234663852886e38, 2 ** -149, -Infinity, NaN];
    const dv = new DataView(new ArrayBuffer(4 * vals.length));
    vals.forEach((v, i) => dv.setFloat32(4 * i, v, true));
    const bytes = [...new Uint8Array(dv.buffer)];
    assertValues(decode("F32", bytes, vals.length), vals, "aligned");
    assertValues(dequantizeRow("F32", unaligned(bytes), vals.length), vals, "unaligned");
    assert.ok(Object.is(decode("F32", bytes, 2)[1], -0), "-0 kept");
  });
  await t.step("F16: normals, subnormals, extremes, Inf and NaN", () => {
    const cases: [number, number][] = [
      [0x0000, 0],
      [0x3c00, 1],
      [0xc000, -2],
      [0x3555, 0.333251953125], // 2^-2 * (1 + 341/1024)
      [0x0001, 2 ** -24], // smallest subnormal
      [0x03ff, 1023 * 2 ** -24], // largest subnormal
      [0x8001, -(2 ** -24)],
      [0x0400, 2 ** -14], // smallest normal
      [0x7bff, 65504], // largest normal
      [0x7c00, Infinity],
      [0xfc00, -Infinity],
      [0x7e00, NaN],
    ];
    const bytes = cases.flatMap(([b]) => le16(b));
    const want = cases.map(([, v]) => v);
    assertValues(decode("F16", bytes, cases.length), want, "aligned");
    assertValues(dequantizeRow("F16", unaligned(bytes), cases.length), want, "unaligned");
    assert.ok(Object.is(decode("F16", le16(0x8000), 1)[0], -0), "0x8000 is -0");
  });
  await t.step("BF16: the upper 16 bits of an f32", () => {
    const cases: [number, number][] = [
      [0x3f80, 1],
      [0xc049, -3.140625], // -(1 + 73/128) * 2
      [0x0001, 2 ** -133], // f32 bits 0x00010000: 2^16 * 2^-149
      [0x7f80, Infinity],
      [0xff7f, -(2 - 2 ** -7) * 2 ** 127], // most negative finite bf16
      [0x7fc0, NaN],
    ];
    const bytes = cases.flatMap(([b]) => le16(b));
    const want = cases.map(([, v]) => v);
    assertValues(decode("BF16", bytes, cases.length), want, "aligned");
    assertValues(dequantizeRow("BF16", unaligned(bytes), cases.length), want, "unaligned");
  });
});

Deno.test("Q8_0: x = d * qs[j]", async (t) => {
  await t.step("all-zero block", () => {
    assertValues(decode("Q8_0", fill(34, 0), 32), fill(32, 0), "zeros");
  });
  await t.step("three blocks: positive, negative and subnormal d; int8 extremes", () => {
    const qs = [0, 1, -1, 127, -128, 2, -3, 64, ...seq(24, (i) => i - 12)];
    const u8 = (q: number) => q & 0xff;
    const bytes = [
      ...le16(H.half),
      ...qs.map(u8),
      ...le16(H.minusQuarter),
      ...fill(32, 0x80), // -128 everywhere
      ...le16(H.tiny),
      ...[127, -128, ...fill(30, 1)].map(u8),
    ];
    const want = [
      0,
      0.5,
      -0.5,
      63.5,
      -64,
      1,
      -1.5,
      32,
      ...seq(24, (i) => (i - 12) / 2),
      ...fill(32, 32), // -0.25 * -128
      127 * 2 ** -24,
      -(2 ** -17), // 2^-24 * -128
      ...fill(30, 2 ** -24),
    ];
    assertValues(decode("Q8_0", bytes, 96), want, "aligned");
    assertValues(dequantizeRow("Q8_0", unaligned(bytes), 96), want, "unaligned");
  });
});

Deno.test("Q4_0: x = (nibble - 8) * d, low nibbles first", async (t) => {
  await t.step("all-zero block", () => {
    assertValues(decode("Q4_0", fill(18, 0), 32), fill(32, 0), "zeros");
  });
  await t.step("nibble order: element j is the low nibble of qs[j], j+16 the high one", () => {
    // qs[j] = j | (15 - j) << 4: element j = j - 8, element 16 + j = 7 - j.
    const bytes = [...le16(H.one), ...seq(16, (j) => j | ((15 - j) << 4))];
    const want = [
      ...[-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7],
      ...[7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7, -8],
    ];
    assertValues(decode("Q4_0", bytes, 32), want, "ordered");
    assertValues(dequantizeRow("Q4_0", unaligned(bytes), 32), want, "unaligned");
  });
  await t.step("negative d, subnormal d, block stride", () => {
    const bytes = [
      ...le16(H.minusTwo),
      ...fill(16, 0x0f), // low 15 -> 7 * -2 = -14, high 0 -> -8 * -2 = 16
      ...le16(H.tiny),
      ...fill(16, 0xf0), // low 0 -> -8 * 2^-24, high 15 -> 7 * 2^-24
    ];
    const want = [
      ...fill(16, -14),
      ...fill(16, 16),
      ...fill(16, -(2 ** -21)),
      ...fill(16, 7 * 2 ** -24),
    ];
    assertValues(decode("Q4_0", bytes, 64), want, "two blocks");
  });
});

Deno.test("Q5_0: x = (q - 16) * d, 5th bits in qh as a little-endian u32", async (t) => {
  await t.step("all-zero block", () => {
    assertValues(decode("Q5_0", fill(22, 0), 32), fill(32, 0), "zeros");
  });
  await t.step("bit j of qh tops element j, bit j+16 element j+16", () => {
    // qh bits set: 0, 1 (byte 0 = 0x03), 15 (byte 1 = 0x80), 16, 18 (byte 2 = 0x05), 31 (byte 3).
    const qs = fill(16, 0x00);
    qs[0] = 0xff; // el 0: 15|bit0 = 31 -> 15;   el 16: 15|bit16 = 31 -> 15
    qs[1] = 0xf0; // el 1: 0|bit1 = 16 -> 0;     el 17: 15, bit17 clear -> -1
    qs[2] = 0x0f; // el 2: 15, bit2 clear -> -1; el 18: 0|bit18 = 16 -> 0
    qs[15] = 0xff; // el 15: 15|bit15 -> 15;     el 31: 15|bit31 -> 15
    const bytes = [...le16(H.one), 0x03, 0x80, 0x05, 0x80, ...qs];
    const want = fill(32, -16); // nibble 0, high bit clear
    want[0] = 15, want[1] = 0, want[2] = -1, want[15] = 15;
    want[16] = 15, want[17] = -1, want[18] = 0, want[31] = 15;
    assertValues(decode("Q5_0", bytes, 32), want, "bits");
    assertValues(dequantizeRow("Q5_0", unaligned(bytes), 32), want, "unaligned");
  });
  await t.step("q = 31 and q = 0 with negative d; subnormal d", () => {
    const bytes = [
      ...le16(H.minusHalf),
      ...fill(4, 0xff),
      ...fill(16, 0xff), // q = 31 -> 15 * -0.5
      ...le16(H.minusHalf),
      ...fill(4, 0),
      ...fill(16, 0), // q = 0 -> -16 * -0.5
      ...le16(H.tiny2),
      ...fill(4, 0),
      ...fill(16, 0), // -16 * 2^-23
    ];
    const want = [...fill(32, -7.5), ...fill(32, 8), ...fill(32, -(2 ** -19))];
    assertValues(decode("Q5_0", bytes, 96), want, "three blocks");
  });
});

// K-quant sub-block scales and mins, 6 bits each, and their packing into 12 bytes, worked out by
// hand from quantize_row_q4_K_ref's packing (j < 4: scales[j] = sc, scales[j+4] = m; j >= 4: low
// nibbles of sc and m in scales[j+4], their top 2 bits in bits 6-7 of scales[j-4] and scales[j]).
const SC = [1, 63, 0, 17, 33, 63, 5, 48];
const MN = [0, 63, 2, 9, 40, 1, 63, 16];
const PACKED = [
  0x81, // sc0 = 1,  top bits of sc4 = 33 (0b10) in bits 6-7
  0xff, // sc1 = 63, top bits of sc5 = 63 (0b11)
  0x00, // sc2 = 0,  top bits of sc6 = 5 (0b00)
  0xd1, // sc3 = 17, top bits of sc7 = 48 (0b11)
  0x80, // m0 = 0,   top bits of m4 = 40 (0b10)
  0x3f, // m1 = 63,  top bits of m5 = 1 (0b00)
  0xc2, // m2 = 2,   top bits of m6 = 63 (0b11)
  0x49, // m3 = 9,   top bits of m7 = 16 (0b01)
  0x81, // sc4 low 1,  m4 low 8
  0x1f, // sc5 low 15, m5 low 1
  0xf5, // sc6 low 5,  m6 low 15
  0x00, // sc7 low 0,  m7 low 0
];
/** Low-nibble-group quant of byte l of a chunk's 32 qs bytes in these tests; the high group's
 * quant is 15 - that, so both 0 and 15 occur in every sub-block. */
const lowQ = (l: number) => l & 15;
const QS_K = seq(128, (i) => lowQ(i % 32) | ((15 - lowQ(i % 32)) << 4));

Deno.test("Q4_K: x = d*sc*q - dmin*m per 32-element sub-block", async (t) => {
  await t.step("all-zero super-block", () => {
    assertValues(decode("Q4_K", fill(144, 0), 256), fill(256, 0), "zeros");
  });
  const block = [...le16(H.one), ...le16(H.half), ...PACKED, ...QS_K];
  await t.step("hand-computed elements, low (j<4) and high (j>=4) scale encodings", () => {
    const y = decode("Q4_K", block, 256);
    assert.equal(y[0], 0); // sub-block 0, q 0: 1*0 - 0.5*0
    assert.equal(y[15], 15); // sub-block 0, q 15: 1*15 - 0
    assert.equal(y[32], 913.5); // sub-block 1, q 15: 63*15 - 0.5*63
    assert.equal(y[47], -31.5); // sub-block 1, q 0: 0 - 0.5*63
    assert.equal(y[64 + 7], -1); // sub-block 2 (sc 0), q 7: 0 - 0.5*2
    assert.equal(y[96 + 1], 17 * 14 - 4.5); // sub-block 3, q 14
    assert.equal(y[128 + 5], 145); // sub-block 4, q 5: 33*5 - 0.5*40
    assert.equal(y[160 + 15], -0.5); // sub-block 5, q 0: 0 - 0.5*1
    assert.equal(y[192 + 31], 43.5); // sub-block 6, q 15: 5*15 - 0.5*63
    assert.equal(y[224 + 3], 568); // sub-block 7, q 12: 48*12 - 0.5*16
  });
  await t.step("every element against the definition", () => {
    const want = seq(256, (e) => {
      const c = e >> 6, hi = (e >> 5) & 1, l = e & 31;
      const s = 2 * c + hi, q = hi ? 15 - lowQ(l) : lowQ(l);
      return 1 * SC[s] * q - 0.5 * MN[s];
    });
    assertValues(decode("Q4_K", block, 256), want, "block");
    assertValues(dequantizeRow("Q4_K", unaligned(block), 256), want, "unaligned");
  });
  await t.step("negative d, subnormal dmin (the f32 result rounds), second super-block", () => {
    const second = [...le16(H.minusTwo), ...le16(H.tiny), ...PACKED, ...QS_K];
    const y = decode("Q4_K", [...block, ...second], 512);
    // -2*63*15 - 2^-24*63: the exact value is not an f32; the nearest f32 is -1890 (ulp 2^-13).
    assert.equal(y[256 + 32], -1890);
    assert.equal(y[256 + 47], -63 * 2 ** -24); // q 0: only the min
    assert.equal(y[256 + 128 + 5], Math.fround(-2 * 33 * 5 - 40 * 2 ** -24));
    assert.equal(y[32], 913.5, "first block unchanged");
  });
  await t.step("subnormal d", () => {
    const sub = [...le16(H.tiny), ...le16(H.zero), ...PACKED, ...QS_K];
    const y = decode("Q4_K", sub, 256);
    assert.equal(y[32], 945 * 2 ** -24); // 63 * 15 * 2^-24
    assert.equal(y[224 + 3], 576 * 2 ** -24); // 48 * 12 * 2^-24
  });
});

Deno.test("Q5_K: Q4_K's layout plus a 5th bit per element in qh", async (t) => {
  await t.step("all-zero super-block", () => {
    assertValues(decode("Q5_K", fill(176, 0), 256), fill(256, 0), "zeros");
  });
  // qh[l]: bit 2c tops element l of chunk c's low-nibble sub-block, bit 2c+1 its high-nibble one.
  const QH = seq(32, (l) => (l * 0x9d + 0x35) & 0xff);
  QH[0] = 0x01; // only chunk 0's low group
  QH[15] = 0xff; // every group
  const block = [...le16(H.one), ...le16(H.quarter), ...PACKED, ...QH, ...QS_K];
  await t.step("hand-computed elements: q 0, 15, 16 and 31", () => {
    const y = decode("Q5_K", block, 256);
    assert.equal(y[0], 16); // sub-block 0, lo 0 + bit0: 1*16 - 0
    assert.equal(y[32], 929.25); // sub-block 1, lo 15, bit1 clear: 63*15 - 0.25*63
    assert.equal(y[15], 31); // sub-block 0, lo 15 + 16: 1*31 - 0
    assert.equal(y[47], 992.25); // sub-block 1, lo 0 + 16: 63*16 - 0.25*63
    assert.equal(y[192 + 15], 139.25); // sub-block 6, lo 15 + bit6: 5*31 - 0.25*63
    assert.equal(y[224 + 15], 764); // sub-block 7, lo 0 + bit7: 48*16 - 0.25*16
    assert.equal(y[64], -0.5); // sub-block 2 (sc 0), QH[0] bit 2 clear: 0 - 0.25*2
    assert.equal(y[128], 33 * 0 - 10); // sub-block 4, lo 0, QH[0] bit 4 clear
  });
  await t.step("every element against the definition", () => {
    const want = seq(256, (e) => {
      const c = e >> 6, hi = (e >> 5) & 1, l = e & 31;
      const s = 2 * c + hi;
      const q = (hi ? 15 - lowQ(l) : lowQ(l)) + 16 * ((QH[l] >> s) & 1);
      return 1 * SC[s] * q - 0.25 * MN[s];
    });
    assertValues(decode("Q5_K", block, 256), want, "block");
    assertValues(dequantizeRow("Q5_K", unaligned(block), 256), want, "unaligned");
  });
  await t.step("negative d, subnormal d and dmin, second super-block", () => {
    const neg = [...le16(H.minusHalf), ...le16(H.tiny), ...PACKED, ...fill(32, 0xff), ...QS_K];
    const y = decode("Q5_K", [...block, ...neg], 512);
    // -0.5*63*31 - 63*2^-24 = -976.5 - 3.8e-6 rounds to -976.5 (f32 ulp 2^-14 there).
    assert.equal(y[256 + 32], -976.5);
    assert.equal(y[256 + 32], Math.fround(-0.5 * 63 * 31 - 63 * 2 ** -24));
    assert.equal(y[256 + 47], -504); // -0.5*63*16 - 63*2^-24, rounded (ulp 2^-15)
    assert.equal(y[0], 16, "first block unchanged");
    const sub = [...le16(H.tiny), ...le16(H.tiny), ...PACKED, ...fill(32, 0), ...QS_K];
    assert.equal(decode("Q5_K", sub, 256)[32], (63 * 15 - 63) * 2 ** -24);
  });
});

/** Packs 256 6-bit quants into Q6_K's ql/qh as quantize_row_q6_K_ref does: per 128-element half,
 * for l in 0..31 elements l, l+32, l+64, l+96 share ql[l] (low nibbles of l and l+64), ql[l+32]
 * (of l+32 and l+96) and qh[l] (top 2 bits of each, in that order from bit 0). */
function packQ6(q: number[]): { ql: number[]; qh: number[] } {
  const ql = fill(128, 0), qh = fill(64, 0);
  for (let n = 0; n < 2; n++) {
    for (let l = 0; l < 32; l++) {
      const [a, b, c, d] = [0, 32, 64, 96].map((k) => q[128 * n + l + k]);
      ql[64 * n + l] = (a & 15) | ((c & 15) << 4);
      ql[64 * n + l + 32] = (b & 15) | ((d & 15) << 4);
      qh[32 * n + l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6);
    }
  }
  return { ql, qh };
}

Deno.test("Q6_K: x = d * scale * (q - 32), 16 int8 scales", async (t) => {
  const u8 = (v: number) => v & 0xff;
  await t.step("all-zero super-block", () => {
    assertValues(decode("Q6_K", fill(210, 0), 256), fill(256, 0), "zeros");
  });
  await t.step("q 0 and 63 with the int8 scale extremes -128 and 127", () => {
    const scales = [-128, 127, ...fill(14, -1)].map(u8);
    const low = [...fill(128, 0), ...fill(64, 0), ...scales, ...le16(H.half)]; // q = 0
    const high = [...fill(128, 0xff), ...fill(64, 0xff), ...scales, ...le16(H.half)]; // q = 63
    const y = decode("Q6_K", [...low, ...high], 512);
    assert.equal(y[0], 2048); // 0.5 * -128 * -32
    assert.equal(y[16], -2032); // 0.5 * 127 * -32
    assert.equal(y[255], 16); // 0.5 * -1 * -32
    assert.equal(y[256], -1984); // 0.5 * -128 * 31
    assert.equal(y[256 + 31], 1968.5); // 0.5 * 127 * 31
    assert.equal(y[511], -15.5); // 0.5 * -1 * 31
  });
  await t.step("single bytes land where the layout says", () => {
    const ql = fill(128, 0), qh = fill(64, 0), scales = fill(16, 1);
    ql[33] = 0x5a; // half 0, l = 1: low 0xA -> element 33, high 0x5 -> element 97
    qh[1] = 0xe4; // 0b11_10_01_00: el 1 gets 0, el 33 gets 1, el 65 gets 2, el 97 gets 3
    ql[64 + 40] = 0x3c; // half 1, l = 8, ql[l+32]: low 0xC -> element 168, high 0x3 -> 232
    qh[32 + 8] = 0x8c; // 0b10_00_11_00: el 136 gets 0, el 168 gets 3, el 200 gets 0, el 232 gets 2
    scales[2] = u8(-3), scales[4] = 7, scales[6] = 2, scales[10] = u8(-5), scales[14] = 4;
    const y = decode("Q6_K", [...ql, ...qh, ...scales, ...le16(H.one)], 256);
    const want = seq(256, (e) => [1, 1, -3, 1, 7, 1, 2, 1, 1, 1, -5, 1, 1, 1, 4, 1][e >> 4] * -32);
    want[1] = -32; // q = 0 | 0 << 4, scale 1
    want[33] = -3 * (0x1a - 32); // q = 0xA | 1 << 4 = 26 -> 18
    want[65] = 7 * (0x20 - 32); // q = 0 | 2 << 4 = 32 -> 0
    want[97] = 2 * (0x35 - 32); // q = 5 | 3 << 4 = 53 -> 42
    want[168] = -5 * (0x3c - 32); // q = 0xC | 3 << 4 = 60 -> -140
    want[232] = 4 * (0x23 - 32); // q = 3 | 2 << 4 = 35 -> 12
    assertValues(y, want, "placed bytes");
  });
  await t.step("every element against the definition; negative and subnormal d", () => {
    const q = seq(256, (e) => (e * 29 + 7) % 64);
    q[0] = 0, q[1] = 63;
    const { ql, qh } = packQ6(q);
    const scales = [-128, 127, -1, 1, 0, 64, -64, 3, 5, -7, 100, -100, 2, -2, 17, -33];
    const bytes = [
      ...[...ql, ...qh, ...scales.map(u8), ...le16(H.minusHalf)],
      ...[...ql, ...qh, ...scales.map(u8), ...le16(H.tiny)],
    ];
    const want = [
      ...seq(256, (e) => -0.5 * scales[e >> 4] * (q[e] - 32)),
      ...seq(256, (e) => 2 ** -24 * scales[e >> 4] * (q[e] - 32)),
    ];
    assertValues(decode("Q6_K", bytes, 512), want, "two blocks");
    assertValues(dequantizeRow("Q6_K", unaligned(bytes), 512), want, "unaligned");
  });
});

Deno.test("dequantizeRow: out parameter and extra input", () => {
  const bytes = [...le16(H.one), ...seq(32, (i) => i), 0xee, 0xee]; // two trailing bytes ignored
  const out = new Float32Array(40).fill(-7);
  const r = dequantizeRow("Q8_0", new Uint8Array(bytes), 32, out);
  assert.equal(r, out);
  assertValues(out.subarray(0, 32), seq(32, (i) => i), "written");
  assertValues(out.subarray(32), fill(8, -7), "rest untouched");
  assert.equal(dequantizeRow("Q4_K", new Uint8Array(0), 0).length, 0);
});

/** Deterministic uniform [0, 1) (mulberry32). */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** 64 blocks of 32 random values; each block's magnitude from 1e-6 (fp16-subnormal scales) to
 * 1e3, some with one outlier, some one-signed. */
function randomBlocks(seed: number): Float32Array {
  const r = rng(seed);
  const x = new Float32Array(64 * 32);
  for (let b = 0; b < 64; b++) {
    const mag = 10 ** (-6 + 9 * r());
    const kind = b % 4;
    for (let j = 0; j < 32; j++) {
      let v = (2 * r() - 1) * mag;
      if (kind === 1) v = Math.abs(v);
      if (kind === 2) v = -Math.abs(v);
      x[32 * b + j] = v;
    }
    if (kind === 3) x[32 * b + Math.floor(r() * 32)] = 20 * mag * (r() < 0.5 ? -1 : 1);
  }
  return x;
}

/** fp16 value of the little-endian scale at `o`. */
function scaleAt(bytes: Uint8Array, o: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getFloat16(o, true);
}

Deno.test("Q8_0 quantizer (quantize_row_q8_0_ref)", async (t) => {
  await t.step("d = amax/127; roundf rounds halves away from zero", () => {
    const x = new Float32Array(32);
    x.set([127, -127, 2.5, -2.5, 0.5, -0.5, 1.49, 126.5, -0.49]); // amax 127: d = 1, id = 1
    const b = quantizeQ8_0(x);
    assert.equal(b.length, 34);
    assert.deepEqual([...b.subarray(0, 2)], le16(H.one));
    const qs = [...new Int8Array(b.buffer, 2, 32)];
    assert.deepEqual(qs.slice(0, 10), [127, -127, 3, -3, 1, -1, 1, 127, 0, 0]);
  });
  await t.step("d is stored as fp16 (nearest even), the quants use the f32 d", () => {
    const x = new Float32Array(32);
    // amax 1: d = f32(1/127) = 0.0078740157..., whose nearest fp16 is 0x2008 = 1032/131072.
    // 0.7913/d = 100.495 rounds to 100; divided by the fp16 d it would be 100.501 -> 101.
    x.set([1, 0.7913, -1]);
    const b = quantizeQ8_0(x);
    assert.deepEqual([...b.subarray(0, 2)], le16(0x2008));
    assert.deepEqual([...new Int8Array(b.buffer, 2, 3)], [127, 100, -127]);
    assertValues(dequantizeRow("Q8_0", b, 32).subarray(0, 2), [
      127 * 1032 / 131072,
      100 * 1032 / 131072,
    ], "values");
  });
  await t.step("all-zero and vanishing blocks", () => {
    assert.deepEqual([...quantizeQ8_0(new Float32Array(32))], fill(34, 0));
    // amax 2^-130: d = amax/127 is an f32 subnormal, 1/d overflows to Inf and ggml's C is
    // undefined; fp16(d) = 0, so the block decodes to zeros whatever the quants.
    const x = new Float32Array(32).fill(2 ** -130);
    x[1] = 0;
    const b = quantizeQ8_0(x);
    assert.deepEqual([...b.subarray(0, 2)], [0, 0]);
    assertValues(dequantizeRow("Q8_0", b, 32), fill(32, 0), "zeros");
  });
  await t.step("round trip of random data within d/2 plus the fp16 rounding of d", () => {
    const x = randomBlocks(1);
    const b = quantizeQ8_0(x);
    assert.equal(b.length, rowBytes("Q8_0", x.length));
    const y = dequantizeRow("Q8_0", b, x.length);
    for (let i = 0; i < x.length / 32; i++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[32 * i + j]));
      const d = Math.fround(amax / 127), dh = scaleAt(b, 34 * i);
      // fp16 rounding of d: half an fp16 ulp, relative 2^-11 for normals, 2^-25 absolute below.
      assert.ok(
        Math.abs(d - dh) <= Math.max(d * 2 ** -11, 2 ** -25),
        `block ${i}: d ${d} -> ${dh}`,
      );
      for (let j = 0; j < 32; j++) {
        const e = 32 * i + j;
        // q = round(x*id) and x*id is x/d within a few f32 ulps (< 2^-15 quant steps at |q| <=
        // 127), so |x - q*d| <= d*(1/2 + 2^-15); decoding with dh instead of d adds
        // |q|*|d - dh| <= 127*|d - dh|; the final f32 product rounding is covered by the 2^-15.
        const tol = d * (0.5 + 2 ** -15) + 127 * Math.abs(d - dh);
        assert.ok(Math.abs(x[e] - y[e]) <= tol, `element ${e}: ${x[e]} -> ${y[e]} (tol ${tol})`);
      }
    }
  });
  await t.step("rejects partial blocks and non-finite values", () => {
    assert.throws(() => quantizeQ8_0(new Float32Array(31)), /quantizeQ8_0: 31 values/);
    const x = new Float32Array(32);
    x[3] = NaN;
    assert.throws(() => quantizeQ8_0(x), /quantizeQ8_0: value 3 is NaN/);
    x[3] = Infinity;
    assert.throws(() => quantizeQ8_0(x), /value 3 is Infinity/);
  });
});

Deno.test("Q4_0 quantizer (quantize_row_q4_0_ref)", async (t) => {
  await t.step("d = max/-8 with max signed; q = min(15, trunc(x/d + 8.5)); nibble packing", () => {
    const x = new Float32Array(32);
    // max = -8 (the first of the largest magnitudes, 8 comes later): d = 1, id = 1.
    x.set([-8, 7.6, 0.5, -0.5, 7.49, -7.5, 8]);
    x[16] = 3.2, x[17] = -3.5;
    const b = quantizeQ4_0(x);
    assert.equal(b.length, 18);
    assert.deepEqual([...b.subarray(0, 2)], le16(H.one));
    // q: -8 -> 0, 7.6 -> 16 -> 15, 0.5 -> 9, -0.5 -> 8, 7.49 -> 15, -7.5 -> 1, 8 -> 16.5 -> 15,
    // 0 -> 8; x[16] = 3.2 -> 11, x[17] = -3.5 -> 5. Byte j = q[j] | q[j+16] << 4.
    assert.deepEqual([...b.subarray(2)], [
      0xb0,
      0x5f,
      0x89,
      0x88,
      0x8f,
      0x81,
      0x8f,
      ...fill(9, 0x88),
    ]);
  });
  await t.step("the sign of the scale follows the first largest-magnitude value", () => {
    const x = new Float32Array(32);
    x.set([8, -8]); // max = 8: d = -1, q(8) = trunc(-8 + 8.5) = 0, q(-8) = 16 -> 15
    const b = quantizeQ4_0(x);
    assert.deepEqual([...b.subarray(0, 4)], [...le16(H.minusOne), 0x80, 0x8f]);
    assertValues(dequantizeRow("Q4_0", b, 32).subarray(0, 3), [8, -7, 0], "decoded");
  });
  await t.step("d is stored as fp16 (nearest even), the quants use the f32 d", () => {
    const x = new Float32Array(32);
    // max = -0.1: d = f32(0.1)/8 = 0.0125000002, fp16 0x2266 (1638/131072 = 0.0124969...).
    // 0.04374375*id = 3.4995 -> trunc(11.9995) = 11; with the fp16 d it would be 12.
    x.set([-0.1, 0.04374375]);
    const b = quantizeQ4_0(x);
    assert.deepEqual([...b.subarray(0, 2)], [0x66, 0x22]);
    assert.equal(b[2], 0 | (8 << 4)); // q(-0.1) = 0, x[16] = 0 -> 8
    assert.equal(b[3] & 0xf, 11);
  });
  await t.step("x*id is rounded to f32 before adding 8.5 (no FMA contraction)", () => {
    const x = new Float32Array(32);
    // max -1.5: d = 0.1875, id = f32(16/3) = 5.3333335; -0.84375*id = -4.50000013 rounds to
    // -4.5 in f32, + 8.5 = 4 -> q 4 (x/d is exactly -4.5, so 4 is also the exact answer). A fused
    // multiply-add would give trunc(3.99999987) = 3.
    x.set([-1.5, -0.84375]);
    const b = quantizeQ4_0(x);
    assert.equal(b[3] & 0xf, 4);
  });
  await t.step("all-zero block: d = 0/-8 = -0 (fp16 0x8000), every q 8", () => {
    assert.deepEqual([...quantizeQ4_0(new Float32Array(32))], [0x00, 0x80, ...fill(16, 0x88)]);
    const x = new Float32Array(32).fill(-(2 ** -130)); // 1/d overflows, as for Q8_0
    assertValues(dequantizeRow("Q4_0", quantizeQ4_0(x), 32), fill(32, 0), "vanishing");
  });
  await t.step(
    "round trip of random data within |d|/2 (|d| at the clamp) plus fp16 rounding",
    () => {
      const x = randomBlocks(2);
      const b = quantizeQ4_0(x);
      assert.equal(b.length, rowBytes("Q4_0", x.length));
      const y = dequantizeRow("Q4_0", b, x.length);
      for (let i = 0; i < x.length / 32; i++) {
        let amax = 0, max = 0;
        for (let j = 0; j < 32; j++) {
          const v = x[32 * i + j];
          if (amax < Math.abs(v)) amax = Math.abs(v), max = v;
        }
        const d = Math.fround(max / -8), dh = scaleAt(b, 18 * i);
        assert.ok(Math.abs(d - dh) <= Math.max(Math.abs(d) * 2 ** -11, 2 ** -25), `block ${i}`);
        for (let j = 0; j < 32; j++) {
          const e = 32 * i + j;
          // x/d lies in [-8, 8]. Below 7.5, q - 8 is x/d rounded to nearest (half up), so
          // |x - (q-8)*d| <= |d|/2; from 7.5 up (values of the opposite sign to max with magnitude
          // >= 15/16 amax) q is clamped to 15 and the error grows to at most |d|. The f32 steps in
          // x*id + 8.5 move the rounding point by a few ulps of 16 (< 2^-14 steps). Decoding with dh
          // instead of d adds |q-8|*|d - dh| <= 8*|d - dh|.
          const clamped = x[e] / d >= 7.5 - 2 ** -14;
          const tol = Math.abs(d) * ((clamped ? 1 : 0.5) + 2 ** -14) + 8 * Math.abs(d - dh);
          assert.ok(Math.abs(x[e] - y[e]) <= tol, `element ${e}: ${x[e]} -> ${y[e]} (tol ${tol})`);
        }
      }
    },
  );
  await t.step("rejects partial blocks and non-finite values", () => {
    assert.throws(() => quantizeQ4_0(new Float32Array(33)), /quantizeQ4_0: 33 values/);
    const x = new Float32Array(64);
    x[40] = -Infinity;
    assert.throws(() => quantizeQ4_0(x), /quantizeQ4_0: value 40 is -Infinity/);
  });
});
