// A KV cache larger than one storage binding: each part's pool (pages) or rings (slots) split
// over several buffers, one attention / KV-store dispatch per shard carrying the online-softmax
// state from one to the next; and the capped split-K decode (more keys per split past
// MAX_SPLITS). Kernels against the reference of tests/attention_reference.ts at small shapes
// forced into several shards (tiny shard sizes), then one generation through the runner with
// shards against the same run without.
//
// Tolerances: as tests/kernels_test.ts states them. Attention is compared with `attentionRef`'s
// bound (f32 arithmetic on the stored, KV-rounded values), whose count of online-softmax rescales
// is raised for the shards (a 16-key tile may be visited by two shards, and each shard's state
// is rescaled once more when the next continues it). KV stores are exact in f32 and within one
// f16 ULP in f16. End to end, sharding changes only the grouping of the softmax sums, so logits
// agree within the kernel-test tolerance the plan tests use (1e-3 f32, 5e-2 f16) and greedy
// tokens are equal.

import assert from "node:assert/strict";
import { RetrievalPages, StreamingRing } from "../cache/kinds.ts";
import { DEFAULT_BUFFER_LIMITS } from "../cache/layout.ts";
import {
  ATTENTION_GEOMETRY,
  decodeEntry,
  MAX_SPLITS,
  maxSplitsFor,
  PARTIALS_BUDGET_BYTES,
  splitsFor,
} from "../gpu/kernels/attention.ts";
import { kvStore } from "../gpu/kernels/kv_store.ts";
import type { ScalarType } from "../gpu/pipelines.ts";
import { randomModel, tinyConfig } from "../model/random.ts";
import { type AttnConfig, checkAttention } from "./attention_reference.ts";
import { asModel, GREEDY, makeRunner, maxAbsDiff, plan, type TestRunner } from "./gpu_helpers.ts";
import {
  assertClose,
  call,
  KernelHarness,
  Rng,
  type RowSpec,
  SENTINEL,
  U16,
} from "./kernel_harness.ts";

const harness = await KernelHarness.create();
const h = harness as KernelHarness;
const gpuTest = { ignore: harness === null, sanitizeResources: false, sanitizeOps: false };
const precisions: ScalarType[] = harness?.precisions ?? ["f32"];

// ---- split cap (no GPU) ----------------------------------------------------------------------

Deno.test("split plan: one split per 256 keys up to the cap, then more keys per split", () => {
  const K = ATTENTION_GEOMETRY.SPLIT_KEYS;
  assert.deepEqual(splitsFor(1, MAX_SPLITS), { splits: 1, keysPerSplit: K });
  assert.deepEqual(splitsFor(701, MAX_SPLITS), { splits: 3, keysPerSplit: K });
  assert.deepEqual(splitsFor(256 * MAX_SPLITS, MAX_SPLITS), {
    splits: MAX_SPLITS,
    keysPerSplit: K,
  });
  // 1M keys: 4096 blocks over 256 splits of 16 blocks.
  assert.deepEqual(splitsFor(1 << 20, 256), { splits: 256, keysPerSplit: 16 * K });
  // 2000 keys, at most 3 splits: 8 blocks -> 3 blocks (768 keys) per split.
  assert.deepEqual(splitsFor(2000, 3), { splits: 3, keysPerSplit: 3 * K });
  assert.deepEqual(splitsFor(2000, 1), { splits: 1, keysPerSplit: 8 * K });
  // One block per split: the straight-line `decode`; more: `decode_long`.
  assert.equal(decodeEntry(K), "decode");
  assert.equal(decodeEntry(3 * K), "decode_long");
  for (const [n, cap] of [[5000, 7], [4 << 20, 256], [257, 1], [99999, 13]]) {
    const s = splitsFor(n, cap);
    assert.ok(s.splits <= cap && s.splits * s.keysPerSplit >= n && s.keysPerSplit % K === 0);
  }
  // The runner's cap: at batch 16 with 32 heads of 128 dims, 1M tokens would want 4096 splits
  // (~1 GiB of partials); the cap keeps them within the 64 MiB budget.
  const perSplit = 16 * 32 * 130 * 4;
  const cap = maxSplitsFor(1 << 20, 16, 32, 128);
  assert.equal(cap, Math.floor(PARTIALS_BUDGET_BYTES / perSplit));
  assert.ok(cap * perSplit <= PARTIALS_BUDGET_BYTES && cap <= MAX_SPLITS);
  assert.equal(maxSplitsFor(1 << 20, 1, 32, 128), MAX_SPLITS);
  assert.equal(maxSplitsFor(700, 4, 4, 64), 3, "short contexts: what they need");
  assert.equal(maxSplitsFor(1 << 22, 64, 128, 128), 15, "huge batch: still fits");
  assert.ok(PARTIALS_BUDGET_BYTES <= DEFAULT_BUFFER_LIMITS.maxStorageBufferBindingSize);
});

// ---- attention over a sharded cache ----------------------------------------------------------

interface ShardCase {
  c: AttnConfig;
  /** Shards at least (of pages, or of ring slots), as many units in each but the last. */
  shards: number;
  /** Ring slots (default: one more than the largest slot used). */
  slots?: number;
  /** Cap of the decode's splits (default MAX_SPLITS). */
  maxSplits?: number;
}

const SHARD_CASES: ShardCase[] = [
  {
    // Decode: 4 slots x 48 pages + 1 = 193 pages in 4 shards of 48 and one of 1.
    c: {
      name: "paged head_dim 64, group 2, 4 shards",
      headDim: 64,
      nHeads: 4,
      nKvHeads: 2,
      kvHeadBase: 0,
      cacheHeads: 2,
      pageSize: 16,
      prefill: [{ slot: 1, pos0: 45, n: 37 }, { slot: 0, pos0: 0, n: 20 }],
      decode: [{ slot: 2, pos: 700 }, { slot: 0, pos: 5 }, { slot: 3, pos: 255 }, {
        slot: 1,
        pos: 256,
      }],
    },
    shards: 4,
  },
  {
    // Pages of 8: every 16-key prefill tile spans two pages, often of two shards. Group 10 (two
    // decode head chunks), KV head 1 of 2; at least 14 shards (decode: 16 of 6 pages or fewer).
    c: {
      name: "paged head_dim 32, group 10, pages of 8, 14 shards",
      headDim: 32,
      nHeads: 20,
      nKvHeads: 2,
      kvHeadBase: 1,
      cacheHeads: 1,
      pageSize: 8,
      prefill: [{ slot: 0, pos0: 30, n: 18 }],
      decode: [{ slot: 1, pos: 300 }, { slot: 0, pos: 47 }],
    },
    shards: 14,
  },
  {
    // The split cap: 2000 keys would take 8 splits; capped at 3, each split visits 3 blocks.
    c: {
      name: "paged head_dim 16, group 2, 3 shards, splits capped at 3",
      headDim: 16,
      nHeads: 4,
      nKvHeads: 2,
      kvHeadBase: 0,
      cacheHeads: 2,
      pageSize: 16,
      prefill: [{ slot: 1, pos0: 300, n: 20 }],
      decode: [{ slot: 0, pos: 1999 }, { slot: 1, pos: 900 }, { slot: 2, pos: 5 }],
    },
    shards: 3,
    maxSplits: 3,
  },
  {
    // The cap at one split: decode writes the output itself after visiting 8 blocks.
    c: {
      name: "paged head_dim 16, group 2, unsharded, one split of 2048 keys",
      headDim: 16,
      nHeads: 4,
      nKvHeads: 2,
      kvHeadBase: 0,
      cacheHeads: 2,
      pageSize: 16,
      prefill: [],
      decode: [{ slot: 0, pos: 1999 }, { slot: 1, pos: 700 }],
    },
    shards: 1,
    maxSplits: 1,
  },
  {
    // Rings sharded by slot, one slot per shard: a wrapped ring, a chunk longer than RECENT, a
    // chunk starting inside the sink.
    c: {
      name: "ring head_dim 8, group 4, sink 4 recent 24, 4 shards of one slot",
      headDim: 8,
      nHeads: 8,
      nKvHeads: 2,
      kvHeadBase: 1,
      cacheHeads: 1,
      streaming: { sink: 4, recent: 24 },
      prefill: [{ slot: 1, pos0: 100, n: 37 }, { slot: 3, pos0: 3, n: 30 }],
      decode: [{ slot: 0, pos: 1000 }, { slot: 2, pos: 10 }, { slot: 1, pos: 27 }, {
        slot: 3,
        pos: 28,
      }],
    },
    shards: 4,
    slots: 4,
  },
  {
    // 5 slots in shards of 2 (the last holds one), 2 splits per ring.
    c: {
      name: "ring head_dim 64, group 2, sink 8 recent 300, 3 shards of 2 slots",
      headDim: 64,
      nHeads: 4,
      nKvHeads: 2,
      kvHeadBase: 0,
      cacheHeads: 2,
      streaming: { sink: 8, recent: 300 },
      prefill: [{ slot: 4, pos0: 400, n: 33 }],
      decode: [{ slot: 4, pos: 1000 }, { slot: 1, pos: 200 }, { slot: 2, pos: 307 }],
    },
    shards: 2,
    slots: 5,
  },
];

Deno.test("attention.wgsl over a cache in shards: prefill, decode, merge", gpuTest, async (t) => {
  await h.perPrecision(t, async (p) => {
    for (const sc of SHARD_CASES) {
      const c = sc.c;
      const rng = new Rng(900 + c.headDim + c.nHeads + (c.streaming?.recent ?? 0));
      await checkAttention(h, p, c, rng, sc);
    }
  });
});

// ---- kv_store into shards --------------------------------------------------------------------

/** f32 -> KV conversion: exact for f32; for f16 within one f16 ULP (either neighbour). */
function kvTol(p: ScalarType, x: number): number {
  return p === "f32" ? 0 : Math.max(2 * U16 * Math.abs(x), 2 ** -24);
}

Deno.test(
  "kv_store.wgsl into shards: each dispatch writes its shard's rows",
  gpuTest,
  async (t) => {
    await h.perPrecision(t, async (p) => {
      const rng = new Rng(910);
      const HD = 16, NH = 4, NKV = 2, BASE = 1, CH = 1;
      const stride = (NH + 2 * NKV) * HD;
      const cases = [
        { layout: "paged" as const, units: 32, perShard: 10, unitPositions: 4 },
        { layout: "ring" as const, units: 5, perShard: 2, unitPositions: 2 + 6 },
      ];
      for (const k of cases) {
        const shards = Math.ceil(k.units / k.perShard);
        const MAXP = 8, PS = 4, SINK = 2, RECENT = 6;
        const pageTable = Uint32Array.from(rng.permutation(k.units));
        const kind = k.layout === "paged"
          ? new RetrievalPages(PS)
          : new StreamingRing(SINK, RECENT);
        const kernel = kvStore(
          { HEAD_DIM: HD, N_HEADS: NH, N_KV_HEADS: NKV, KV_HEAD_BASE: BASE, CACHE_HEADS: CH },
          {
            layout: kind.layout,
            constants: kind.constants({ maxPagesPerSeq: MAXP, unitsPerShard: k.perShard, shards }),
          },
        );
        const perShard = k.perShard * k.unitPositions * CH * HD;
        const sizes = Array.from(
          { length: shards },
          (_, s) => Math.min(k.perShard, k.units - s * k.perShard) * k.unitPositions * CH * HD,
        );
        const kBufs = sizes.map((n) => h.filled(n, SENTINEL, p));
        const vBufs = sizes.map((n) => h.filled(n, SENTINEL, p));
        const total = k.units * k.unitPositions * CH * HD;
        const wantK = new Float64Array(total).fill(SENTINEL);
        const wantV = Float64Array.from(wantK);
        const tolK = new Float64Array(total), tolV = new Float64Array(total);
        const seq = (slot: number, pos0: number, n: number, first: number): RowSpec[] =>
          Array.from(
            { length: n },
            (_, r) => ({ slot, pos: pos0 + r, firstRow: first, nSeqRows: n }),
          );
        // A chunk of 10 rows of slot 1 from position 5, then a decode batch over three slots.
        const forwards = [seq(1, 5, 10, 0), [
          ...seq(0, 3, 1, 0),
          ...seq(2, 17, 1, 1),
          ...seq(3, 31, 1, 2),
        ]];
        const pt = h.upload(pageTable, "u32");
        for (const rows of forwards) {
          const qkv = rng.array(rows.length * stride);
          const fwd = h.forward({ nRows: rows.length });
          const common = { fwd, rows: h.rows(rows), qkv: h.upload(qkv), pageTable: pt };
          await h.run(
            p,
            kBufs.map((kb, s) =>
              call(
                kernel,
                { ...common, kCache: kb, vCache: vBufs[s], shard: h.shard(s) },
                [rows.length, 1, 1],
              )
            ),
          );
          for (const [r, row] of rows.entries()) {
            let entry: number; // global position index over all shards
            if (k.layout === "paged") {
              entry = pageTable[row.slot * MAXP + Math.floor(row.pos / PS)] * PS + (row.pos % PS);
            } else {
              const last = row.pos - (r - row.firstRow) + row.nSeqRows - 1;
              if (!(row.pos < SINK || last - row.pos < RECENT)) continue;
              const s = row.pos < SINK ? row.pos : SINK + ((row.pos - SINK) % RECENT);
              entry = row.slot * (SINK + RECENT) + s;
            }
            for (let e = 0; e < CH * HD; e++) {
              const kx = qkv[r * stride + (NH + BASE) * HD + e];
              const vx = qkv[r * stride + (NH + NKV + BASE) * HD + e];
              wantK[entry * CH * HD + e] = kx;
              wantV[entry * CH * HD + e] = vx;
              tolK[entry * CH * HD + e] = kvTol(p, kx);
              tolV[entry * CH * HD + e] = kvTol(p, vx);
            }
          }
        }
        for (let s = 0; s < shards; s++) {
          const at = s * perShard;
          const what = `kv_store ${k.layout} ${p} shard ${s} of ${shards}`;
          const range = (a: Float64Array) => a.subarray(at, at + sizes[s]);
          const tk = range(tolK), tv = range(tolV);
          assertClose(await h.readF32(kBufs[s]), range(wantK), (i) => tk[i], `${what} keys`);
          assertClose(await h.readF32(vBufs[s]), range(wantV), (i) => tv[i], `${what} values`);
        }
        // Every row was written somewhere (the ring keeps all of these: each is its sequence's
        // last or within RECENT of it, except the chunk's first 4 of 10 at positions >= SINK).
        const written = wantK.filter((x) => x !== SENTINEL).length / (CH * HD);
        assert.equal(written, k.layout === "paged" ? 13 : 9);
      }
    });
  },
);

// ---- end to end ------------------------------------------------------------------------------

const config = tinyConfig({ nLayers: 4, nHeads: 4, nKvHeads: 2, maxSeqLen: 256, vocabSize: 96 });
const model = asModel(config, randomModel(config, 5));
/** Duo: mixed layers (a part of each kind), a streaming layer and a retrieval layer. */
const duo = plan(config, "duo", 4, 20, [[1], [0], "streaming", [0, 1]]);

/**
 * Greedy generation of `steps` tokens after `prompt` (prefilled in chunks of 32, decoded 8 steps
 * per readback), on a sequence whose pages come out of order: two sequences before it take pages
 * and are closed, so it gets theirs back last-in first-out, then fresh ones.
 */
async function generate(r: TestRunner, prompt: number[], steps: number) {
  const a = r.cache.open()!, b = r.cache.open()!, c = r.cache.open()!;
  r.cache.reserve(a, 64);
  r.cache.reserve(b, 64);
  r.cache.reserve(c, 32);
  r.cache.close(a);
  r.cache.close(c);
  const seq = r.cache.open()!;
  try {
    const first = await r.prefill(seq, prompt, GREEDY, { chunk: 32, readLogits: true });
    const tokens = [first.token];
    let logits = first.logits!;
    while (tokens.length < steps) {
      const n = Math.min(8, steps - tokens.length);
      const d = await r.decode([{ seq, token: tokens[tokens.length - 1], sampling: GREEDY }], n);
      tokens.push(...d.tokens[0]);
    }
    // One more step, reading its logits: decode attention over every shard.
    const last = await r.decode(
      [{ seq, token: tokens[tokens.length - 1], sampling: GREEDY }],
      1,
      { readLogits: true },
    );
    logits = Float32Array.of(...logits, ...last.logits![0]);
    return { tokens, logits, pages: [...seq.pages], slot: seq.slot };
  } finally {
    r.cache.close(seq);
    r.cache.close(b);
  }
}

Deno.test("generation with the cache in shards equals the unsharded run", gpuTest, async (t) => {
  const rng = new Rng(920);
  const prompt = Array.from({ length: 100 }, () => rng.int(config.vocabSize));
  for (const precision of precisions) {
    await t.step(precision, async () => {
      const bpe = precision === "f16" ? 2 : 4;
      // Shards of 3 pages of the largest paged part (2 KV heads): 2 rings of 2 heads per shard.
      const shardBytes = 3 * 16 * 2 * config.headDim * bpe;
      const kvLimits = { maxStorageBufferBindingSize: shardBytes, maxBufferSize: shardBytes };
      const o = { chunk: 32, maxSeqLen: 256, kvMb: 1 };
      const plain = await makeRunner(model, precision, duo, o);
      const sharded = await makeRunner(model, precision, duo, { ...o, kvLimits });
      try {
        const L = sharded.layout;
        const pagesShards = L.shards(L.kind("retrieval"));
        const ringShards = L.shards(L.kind("streaming"));
        assert.equal(plain.layout.shards(plain.layout.kind("retrieval")).count, 1);
        assert.equal(pagesShards.unitsPerShard, 3);
        assert.ok(pagesShards.count >= 5, `${pagesShards.count} page shards`);
        assert.equal(ringShards.unitsPerShard, 2);
        assert.equal(ringShards.count, 3);
        // Same attention kernel calls per layer; each runs once per shard of its part.
        assert.deepEqual(sharded.attentionCallsPerLayer(), plain.attentionCallsPerLayer());
        const want = await generate(plain, prompt, 24);
        const got = await generate(sharded, prompt, 24);
        // The sequence's 8 pages lie in >= 3 shards out of order, its ring in shard 1.
        const shards = got.pages.map((pg) => Math.floor(pg / pagesShards.unitsPerShard));
        assert.ok(new Set(shards).size >= 3, `pages ${got.pages} in shards ${shards}`);
        assert.ok(shards.some((s, i) => i > 0 && s < shards[i - 1]), `shards ${shards}`);
        assert.equal(Math.floor(got.slot / ringShards.unitsPerShard), 1, `slot ${got.slot}`);
        assert.deepEqual(got.pages, want.pages);
        const tol = precision === "f32" ? 1e-3 : 5e-2;
        const diff = maxAbsDiff(got.logits, want.logits);
        assert.ok(diff <= tol, `logits differ by ${diff}`);
        assert.deepEqual(got.tokens, want.tokens);
      } finally {
        plain.destroy();
        sharded.destroy();
      }
    });
  }
});
