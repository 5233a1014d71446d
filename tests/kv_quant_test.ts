// The quantized KV dtypes (--kv-dtype int8 | int4): the CPU definition on hand-built entries,
// the KV store kernel quantizing as it writes (against the CPU quantizer), and attention reading
// quantized caches, dequantized in its inner loops (against the reference attention over the
// same entries decoded on the CPU), paged, ring and sharded.

import assert from "node:assert/strict";
import { RetrievalPages } from "../cache/kinds.ts";
import { kvEntryBytes, kvEntryUnits } from "../cache/layout.ts";
import { kvStore, kvStoreGroups } from "../gpu/kernels/kv_store.ts";
import { ATTENTION_CASES, type AttnConfig, checkAttention } from "./attention_reference.ts";
import { KernelHarness, Rng, type RowSpec } from "./kernel_harness.ts";
import {
  dequantizeEntry,
  entryParams,
  quantBound,
  quantizeEntry,
  quantizeValues,
  roundEven,
} from "./kv_quant_reference.ts";

const harness = await KernelHarness.create();
const h = harness as KernelHarness;
const gpuTest = { ignore: harness === null, sanitizeResources: false, sanitizeOps: false };

const QUANTIZED = ["int8", "int4"] as const;

Deno.test("KV quantizer (CPU): the formats on hand-built entries", async (t) => {
  await t.step("entry sizes, scales included", () => {
    assert.equal(kvEntryBytes("f16", 128), 256);
    assert.equal(kvEntryBytes("int8", 128), 128 + 4);
    assert.equal(kvEntryBytes("int4", 128), 64 + 4);
    assert.equal(kvEntryUnits("int4", 64), 9);
  });

  await t.step("roundEven rounds halves to even, as WGSL's round", () => {
    assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, 63.5, 2.4].map(roundEven), [
      0,
      2,
      2,
      -0,
      -2,
      64,
      2,
    ]);
  });

  await t.step("int8: bytes of round(127 x / amax), low byte first, then amax", () => {
    const x = new Float32Array(8);
    x.set([1, -1, 0.5, 0.25, -0.25, 0, 1 / 127, -0.999]);
    const u = quantizeEntry("int8", x);
    // 127, -127 (0x81), 63.5 -> 64 (half to even), 31.75 -> 32
    assert.equal(u[0], 0x2040817f);
    // -31.75 -> -32 (0xe0), 0, 1, -126.873 -> -127 (0x81)
    assert.equal(u[1], 0x810100e0);
    assert.equal(new Float32Array(u.buffer)[2], 1);
    assert.deepEqual(
      Array.from(dequantizeEntry("int8", u, 8)),
      [1, -1, 64 / 127, 32 / 127, -32 / 127, 0, 1 / 127, -1].map(Math.fround),
    );
  });

  await t.step("int8: an all-zero head stores zeros and amax 0", () => {
    const u = quantizeEntry("int8", new Float32Array(16));
    assert.deepEqual(Array.from(u), new Array(5).fill(0));
    assert.deepEqual(Array.from(dequantizeEntry("int8", u, 16)), new Array(16).fill(0));
  });

  await t.step("int4: nibbles of round((x - zero) / scale), then f16 (scale, zero)", () => {
    const x = new Float32Array(8);
    x.set([-1, 0, 0.5, 2, 2, -1, 1, 0.1]);
    const [scale, zero] = entryParams("int4", x);
    assert.equal(zero, -1);
    assert.equal(scale, Math.f16round(3 / 15)); // 0.199951171875
    const q = Array.from(quantizeValues("int4", x));
    // (x + 1) / 0.19995: 0, 5.0012, 7.5018, 15.0037, 15.0037, 0, 10.0024, 5.5013
    assert.deepEqual(q, [0, 5, 8, 15, 15, 0, 10, 6]);
    const u = quantizeEntry("int4", x);
    assert.equal(u[0], q.reduce((w, v, i) => w + v * 16 ** i, 0));
    const halves = new Uint16Array(Uint32Array.of(u[1]).buffer);
    assert.deepEqual(Array.from(new Float16Array(halves.buffer)), [scale, zero]);
    const back = dequantizeEntry("int4", u, 8);
    for (let i = 0; i < 8; i++) {
      assert.equal(back[i], Math.fround(zero + Math.fround(q[i] * scale)));
    }
  });

  await t.step("int4: a constant head reads back as its f16 value; huge ranges are clamped", () => {
    const c = new Float32Array(8).fill(0.3);
    const u = quantizeEntry("int4", c);
    assert.equal(u[0], 0);
    assert.deepEqual(
      Array.from(dequantizeEntry("int4", u, 8)),
      new Array(8).fill(Math.f16round(0.3)),
    );
    const big = Float32Array.of(-1e6, 1e6, 0, 0, 0, 0, 0, 0);
    const [scale, zero] = entryParams("int4", big);
    assert.equal(zero, -65504);
    assert.equal(scale, Math.f16round(2 * 65504 / 15));
  });

  await t.step("int4: tiny heads get subnormal f16 scales and stay within the bound", () => {
    const x = Float32Array.from({ length: 8 }, (_, i) => i * 1e-6);
    const [scale] = entryParams("int4", x);
    assert.ok(scale > 0 && scale < 2 ** -14, `scale ${scale} is subnormal in f16`);
    const back = dequantizeEntry("int4", quantizeEntry("int4", x), 8);
    for (let i = 0; i < 8; i++) assert.ok(Math.abs(back[i] - x[i]) <= quantBound("int4", x));
  });

  await t.step("random heads: every value within the format's bound", () => {
    const rng = new Rng(42);
    for (const dt of QUANTIZED) {
      for (let n = 0; n < 200; n++) {
        const x = rng.array(64, -3, n % 2 ? 3 : 0.5);
        const back = dequantizeEntry(dt, quantizeEntry(dt, x), 64);
        const bound = quantBound(dt, x);
        for (let i = 0; i < 64; i++) {
          assert.ok(Math.abs(back[i] - x[i]) <= bound, `${dt} ${x[i]} -> ${back[i]}`);
        }
      }
    }
  });
});

/** Heads the store test writes besides random ones: the codecs' edge cases. */
function edgeHead(kind: number, hd: number, rng: Rng): Float32Array {
  switch (kind) {
    case 0:
      return new Float32Array(hd); // all zero
    case 1:
      return new Float32Array(hd).fill(-0.75); // constant
    case 2:
      return Float32Array.from({ length: hd }, (_, i) => (i - hd / 2) * 1e-7); // f16-subnormal scale
    case 3:
      return Float32Array.from({ length: hd }, (_, i) => (i % 3 - 1) * 2e5); // beyond f16's range
    default:
      return rng.array(hd, -4, 4);
  }
}

Deno.test("kv_store.wgsl quantizes as it writes (int8, int4; paged)", gpuTest, async (t) => {
  await h.perVariant(t, QUANTIZED, async (dt) => {
    const rng = new Rng(dt === "int8" ? 810 : 820);
    const HD = 64, NH = 4, NKV = 2, BASE = 0, CH = 2, PS = 4, MAXP = 4, SLOTS = 2;
    const units = kvEntryUnits(dt, HD);
    const stride = (NH + 2 * NKV) * HD;
    const nPages = SLOTS * MAXP;
    const pageTable = Uint32Array.from(rng.permutation(nPages));
    const size = nPages * PS * CH * units;
    const k = h.filled(size, 0xdeadbeef, "u32");
    const v = h.filled(size, 0xdeadbeef, "u32");
    // A chunk of 12 rows of slot 1 from position 2: heads 0..3 of K are the edge cases.
    const rows: RowSpec[] = Array.from(
      { length: 12 },
      (_, r) => ({ slot: 1, pos: 2 + r, firstRow: 0, nSeqRows: 12 }),
    );
    const qkv = rng.array(rows.length * stride);
    for (let r = 0; r < 4; r++) {
      qkv.set(edgeHead(r, HD, rng), r * stride + (NH + BASE) * HD);
      qkv.set(edgeHead(3 - r, HD, rng), r * stride + (NH + NKV + BASE) * HD);
    }
    const pages = new RetrievalPages(PS);
    await h.dispatch(
      { W: "f32", KV: dt },
      kvStore(
        { HEAD_DIM: HD, N_HEADS: NH, N_KV_HEADS: NKV, KV_HEAD_BASE: BASE, CACHE_HEADS: CH },
        {
          layout: pages.layout,
          constants: pages.constants({
            maxPagesPerSeq: MAXP,
            unitsPerShard: nPages,
            shards: 1,
          }),
        },
      ),
      {
        fwd: h.forward({ nRows: rows.length }),
        rows: h.rows(rows),
        qkv: h.upload(qkv),
        kCache: k,
        vCache: v,
        pageTable: h.upload(pageTable, "u32"),
        shard: h.shard(0),
      },
      kvStoreGroups(rows.length, CH),
    );
    const got = { k: await h.readU32(k), v: await h.readU32(v) };
    const written = new Set<number>();
    let values = 0, exact = 0;
    for (const [r, row] of rows.entries()) {
      const page = pageTable[row.slot * MAXP + Math.floor(row.pos / PS)];
      for (let ch = 0; ch < CH; ch++) {
        const dst = ((page * PS + (row.pos % PS)) * CH + ch) * units;
        for (const [which, off] of [["k", NH], ["v", NH + NKV]] as const) {
          const x = qkv.subarray(
            r * stride + (off + BASE + ch) * HD,
            r * stride + (off + BASE + ch + 1) * HD,
          );
          const g = got[which].subarray(dst, dst + units);
          const want = quantizeEntry(dt, x);
          const what = `${dt} ${which} row ${r} head ${ch}`;
          // The scale unit: int8's amax is exact (a max of f32 values); int4's f16 scale
          // comes from a division the GPU may round differently: within one f16 step.
          if (dt === "int8") assert.equal(g[units - 1], want[units - 1], `${what} amax`);
          else {
            const [gs, gz] = new Float16Array(Uint32Array.of(g[units - 1]).buffer);
            const [ws, wz] = new Float16Array(Uint32Array.of(want[units - 1]).buffer);
            assert.equal(gz, wz, `${what} zero`);
            assert.ok(
              Math.abs(gs - ws) <= Math.max(ws * 2 ** -10, 2 ** -24),
              `${what} scale ${gs} vs ${ws}`,
            );
          }
          // Values: within the format's bound of x, and (but for near-ties the GPU's
          // 1 / scale rounds the other way) the very units the CPU makes.
          const back = dequantizeEntry(dt, g, HD);
          const bound = quantBound(dt, x);
          for (let i = 0; i < HD; i++) {
            assert.ok(
              Math.abs(back[i] - x[i]) <= bound,
              `${what} dim ${i}: ${x[i]} -> ${back[i]}`,
            );
          }
          for (let u = 0; u < units - 1; u++) {
            values++;
            if (g[u] === want[u]) exact++;
          }
          for (let u = 0; u < units; u++) written.add(dst + u);
        }
      }
    }
    assert.ok(
      exact >= 0.98 * values,
      `${exact} of ${values} value words as the CPU packs them`,
    );
    // Nothing else was touched.
    for (let i = 0; i < size; i++) {
      if (!written.has(i)) assert.equal(got.k[i], 0xdeadbeef, `k unit ${i} untouched`);
    }
  });
});

Deno.test(
  "attention.wgsl over quantized caches (int8, int4): paged, ring, sharded",
  gpuTest,
  async (t) => {
    await h.perVariant(t, QUANTIZED, async (kv) => {
      for (const c of ATTENTION_CASES) {
        const rng = new Rng(900 + c.headDim + c.nHeads + (c.streaming?.recent ?? 0));
        await checkAttention(h, "f32", c, rng, { kv });
      }
      // A long paged sequence over 3 shards, out of order: entry offsets within each shard.
      const long: AttnConfig = {
        name: "paged, 3 shards",
        headDim: 64,
        nHeads: 4,
        nKvHeads: 2,
        kvHeadBase: 0,
        cacheHeads: 2,
        pageSize: 16,
        prefill: [{ slot: 0, pos0: 300, n: 20 }],
        decode: [{ slot: 0, pos: 420 }, { slot: 1, pos: 37 }],
      };
      await checkAttention(h, "f32", long, new Rng(950), { kv, shards: 3 });
    });
  },
);
