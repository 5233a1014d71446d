// The cache's shape without a GPU: the kinds (what each holds for n tokens), the parts of each
// layer in cache order, the byte formula, the sizes a budget gives, and the WGSL constants.
// Bytes, pages and positions are exact integers: every comparison is exact.

import assert from "node:assert/strict";
import { CACHE_KINDS, KIND_NAMES, RetrievalPages, StreamingRing } from "../cache/kinds.ts";
import {
  CacheExhaustedError,
  CacheGeometry,
  CacheLayout,
  DEFAULT_BUFFER_LIMITS,
  MAX_SHARD_BYTES,
  mb,
} from "../cache/layout.ts";
import { tinyConfig } from "../model/random.ts";
import { type HeadKind, layerAttention, type ResolvedPlan } from "../plans/types.ts";

const R: HeadKind = "retrieval";
const S: HeadKind = "streaming";

// 3 layers, 4 KV heads of 8 dims: one f16 head-token (K + V) is 2 x 8 x 2 = 32 B.
const config = tinyConfig({ nLayers: 3, nHeads: 4, nKvHeads: 4, dim: 32 });
const plan: ResolvedPlan = {
  mode: "duo",
  sink: 2,
  recent: 6,
  layers: [[S, R, S, R], [R, R, R, R], [S, S, S, S]].map((l) => layerAttention(l)),
};

Deno.test("cache kinds: what each keeps of a sequence", () => {
  assert.deepEqual(KIND_NAMES, [R, S, "compensated"]);
  assert.deepEqual(CACHE_KINDS.map((k) => k.make({ pageSize: 8, sink: 1, recent: 3 }).layout), [
    "paged",
    "ring",
    "ring",
  ]);
  const pages = new RetrievalPages(8);
  assert.equal(pages.slotsPerSeq, 0);
  assert.equal(pages.tokensHeld(100), 100);
  assert.equal(pages.slotsHeld({ tokens: 17, pages: [4, 9, 2] }), 24, "3 pages of 8");
  assert.equal(pages.unitPositions, 8, "shards hold whole pages");
  const sizes = { maxPagesPerSeq: 5, unitsPerShard: 3, shards: 2 };
  assert.deepEqual(pages.constants(sizes), {
    PAGE_SIZE: 8,
    MAX_PAGES: 5,
    PAGES_PER_SHARD: 3,
    CACHE_SHARDS: 2,
  });
  const ring = new StreamingRing(2, 6);
  assert.equal(ring.slotsPerSeq, 8);
  assert.deepEqual([0, 5, 8, 9, 1000].map((n) => ring.tokensHeld(n)), [0, 5, 8, 8, 8]);
  assert.equal(ring.slotsHeld({ tokens: 3, pages: [0, 1] }), 3, "pages are not the ring's");
  assert.equal(ring.unitPositions, 8, "shards hold whole rings");
  assert.deepEqual(ring.constants(sizes), {
    SINK: 2,
    RECENT: 6,
    RECENT_BASE: 6, // not elastic: the window is RECENT
    GROWTH_Q16: 0,
    SLACK: 0,
    SLOTS_PER_SHARD: 3,
    CACHE_SHARDS: 2,
  });
  assert.equal(ring.stateWords(128), 0);
  // A compensated ring: the same ring (slack included), and per head 4 x head_dim words of sums
  // and 4 for the position they reach.
  const comp = CACHE_KINDS[2].make({ pageSize: 8, sink: 2, recent: 6, ringSlack: 5 });
  assert.equal(comp.slotsPerSeq, 13);
  assert.equal(comp.compensated, true);
  assert.equal(comp.stateWords(128), 516);
  assert.deepEqual(
    comp.constants(sizes),
    new StreamingRing(2, 6, 5).constants(sizes),
  );
});

Deno.test("cache geometry: parts per layer in cache order, and the byte formula", () => {
  const g = new CacheGeometry(config, plan, "f16", 8);
  assert.equal(config.headDim, 8);
  assert.deepEqual(
    g.layers.map((l) => l.parts.map((p) => `${p.kind.name}:${p.kvHeads}@${p.kvHeadBase}`)),
    [["retrieval:1,3@0", "streaming:0,2@2"], ["retrieval:0,1,2,3@0"], ["streaming:0,1,2,3@0"]],
  );
  assert.deepEqual(g.kvHeadOrder(0), [1, 3, 0, 2]);
  assert.deepEqual(g.kvHeadOrder(2), [0, 1, 2, 3]);
  assert.equal(g.retrievalHeads, 6);
  assert.equal(g.streamingHeads, 6);
  assert.equal(g.paged, true);
  assert.equal(g.tokenBytes(1), 32);
  assert.equal(g.pageBytes, 8 * 6 * 32); // 1536
  assert.equal(g.ringBytes, 8 * 6 * 32); // sink + recent = 8 positions
  assert.equal(g.ringLength, 8);
  assert.deepEqual([0, 1, 8, 9].map((n) => g.pagesFor(n)), [0, 1, 1, 2]);
  // 20 tokens: 3 pages (24 positions) x 6 heads; 8 ring positions x 6 heads.
  assert.deepEqual(g.bytes(g.stateFor(20)), {
    retrieval: 24 * 6 * 32,
    streaming: 8 * 6 * 32,
    compensated: 0,
    total: 32 * 6 * 32,
  });
  assert.deepEqual(g.usedBytes([20, 3]), {
    retrieval: (24 + 8) * 192,
    streaming: (8 + 3) * 192,
    compensated: 0,
    total: 43 * 192,
  });
  assert.deepEqual(g.usedBytes([]), { retrieval: 0, streaming: 0, compensated: 0, total: 0 });
  assert.equal(g.fullBytes(20), 20 * 12 * 32);
  // f32 doubles every byte.
  assert.equal(new CacheGeometry(config, plan, "f32", 8).bytes(g.stateFor(20)).total, 2 * 6144);
});

Deno.test("cache layout: a budget gives pages, rows, capacities and reserved bytes", () => {
  // Rings: 2 x 1536 B; pages of 1536 B: floor((16384 - 3072) / 1536) = 8.
  const l = new CacheLayout(config, plan, {
    budgetBytes: 16384,
    maxSeqs: 2,
    maxSeqLen: 50,
    kvDtype: "f16",
    pageSize: 8,
  });
  assert.equal(l.maxPagesPerSeq, 7); // ceil(50 / 8)
  assert.equal(l.numPages, 8);
  assert.equal(l.capacity(l.kind(R)), 64); // 8 pages x 8
  assert.equal(l.capacity(l.kind(S)), 16); // 2 rings x 8
  assert.deepEqual(l.reservedBytes(), {
    retrieval: 64 * 192,
    streaming: 16 * 192,
    compensated: 0,
    total: 80 * 192, // 15360: 1024 B of the budget is less than a page
  });
  // WebGPU's default limits by default: one shard of each kind at this size.
  assert.deepEqual(l.shards(l.kind(R)), { count: 1, unitsPerShard: 8, units: 8 });
  assert.deepEqual(l.shards(l.kind(S)), { count: 1, unitsPerShard: 2, units: 2 });
  assert.equal(l.maxShardBytes, DEFAULT_BUFFER_LIMITS.maxStorageBufferBindingSize);
  assert.deepEqual(l.constants(l.kind(R)), {
    PAGE_SIZE: 8,
    MAX_PAGES: 7,
    PAGES_PER_SHARD: 8,
    CACHE_SHARDS: 1,
  });
  assert.deepEqual(l.constants(l.kind(S)), {
    SINK: 2,
    RECENT: 6,
    RECENT_BASE: 6,
    GROWTH_Q16: 0,
    SLACK: 0,
    SLOTS_PER_SHARD: 2,
    CACHE_SHARDS: 1,
  });
  // A huge budget stops at what the page-table rows can use: 2 x 7 pages.
  const big = new CacheLayout(config, plan, {
    budgetBytes: 1 << 30,
    maxSeqs: 2,
    maxSeqLen: 50,
    kvDtype: "f16",
    pageSize: 8,
  });
  assert.equal(big.numPages, 14);
  assert.equal(mb(1 << 20), "1.0");
  assert.equal(mb(1536), "0.001");
});

Deno.test("cache layout: shards of whole units within the binding and buffer limits", () => {
  const sizing = { budgetBytes: 16384, maxSeqs: 2, maxSeqLen: 50, kvDtype: "f16" as const };
  const at = (binding: number, buffer = 1 << 30) =>
    new CacheLayout(config, plan, {
      ...sizing,
      pageSize: 8,
      limits: { maxStorageBufferBindingSize: binding, maxBufferSize: buffer },
    });
  // The largest retrieval part (layer 1) has 4 heads: a page of its K is 8 x 4 x 8 x 2 = 512 B;
  // the largest streaming part (layer 2) has 4 heads: a ring of 8 positions is 512 B too.
  const l = at(1100);
  assert.deepEqual(l.shards(l.kind(R)), { count: 4, unitsPerShard: 2, units: 8 });
  assert.deepEqual(l.shards(l.kind(S)), { count: 1, unitsPerShard: 2, units: 2 });
  assert.deepEqual(l.constants(l.kind(R)), {
    PAGE_SIZE: 8,
    MAX_PAGES: 7,
    PAGES_PER_SHARD: 2,
    CACHE_SHARDS: 4,
  });
  // Layer 0's retrieval part has 2 heads: its shards are half the size, same pages each.
  assert.equal(l.shardBytes(l.kind(R), 4, 0), 1024);
  assert.equal(l.shardBytes(l.kind(R), 2, 3), 512);
  // maxBufferSize counts too; 3 pages per shard leave a last shard of 2.
  const m = at(1 << 20, 1600);
  assert.deepEqual(m.shards(m.kind(R)), { count: 3, unitsPerShard: 3, units: 8 });
  assert.equal(m.shardBytes(m.kind(R), 4, 2), 2 * 512);
  // One unit per shard; the bytes of the shards add up to the reserved bytes.
  const one = at(512);
  assert.deepEqual(one.shards(one.kind(R)), { count: 8, unitsPerShard: 1, units: 8 });
  assert.deepEqual(one.shards(one.kind(S)), { count: 2, unitsPerShard: 1, units: 2 });
  for (const k of [one.kind(R), one.kind(S)]) {
    let sum = 0;
    for (const layer of one.layers) {
      for (const p of layer.parts.filter((p) => p.kind === k)) {
        for (let s = 0; s < one.shards(k).count; s++) sum += 2 * one.shardBytes(k, p.heads, s);
      }
    }
    assert.equal(sum, one.reservedBytes()[k.name], k.name);
  }
  // Not even one page (or ring) fits a binding: refused, naming the kind.
  assert.throws(() => at(511), CacheExhaustedError);
  assert.throws(() => at(511), /one page of a retrieval layer needs 0\.000 MB/);
});

Deno.test("cache layout: 1M- and 4M-token caches shard so every index stays within u32", () => {
  // Llama-3-8B shapes, full attention: 32 layers x 8 KV heads x 128 dims.
  const big = tinyConfig({
    nLayers: 32,
    nHeads: 32,
    nKvHeads: 8,
    dim: 4096,
    headDim: 128,
    maxSeqLen: 1 << 22,
  });
  const full: ResolvedPlan = {
    mode: "full",
    sink: 0,
    recent: 1,
    layers: Array.from({ length: 32 }, () => layerAttention(new Array(8).fill(R))),
  };
  const cases = [
    { tokens: 1 << 20, dtype: "f16" as const, binding: 128 << 20, shards: 16 },
    { tokens: 1 << 22, dtype: "f16" as const, binding: 128 << 20, shards: 64 },
    { tokens: 1 << 22, dtype: "f32" as const, binding: 128 << 20, shards: 128 },
    // An adapter binding 4 GiB: shards stop at MAX_SHARD_BYTES (2 GiB).
    { tokens: 1 << 22, dtype: "f16" as const, binding: 2 ** 32 - 4, shards: 4 },
  ];
  for (const c of cases) {
    const g = new CacheGeometry(big, full, c.dtype);
    const l = new CacheLayout(big, full, {
      budgetBytes: g.fullBytes(c.tokens),
      maxSeqs: 1,
      maxSeqLen: c.tokens,
      kvDtype: c.dtype,
      limits: { maxStorageBufferBindingSize: c.binding, maxBufferSize: 2 ** 40 },
    });
    const what = `${c.tokens} tokens ${c.dtype}, binding ${mb(c.binding)} MB`;
    assert.equal(l.numPages * l.pageSize, c.tokens, what);
    const kind = l.kind(R);
    const s = l.shards(kind);
    assert.equal(s.count, c.shards, what);
    const heads = 8, hd = 128;
    // The element index of the last entry of a shard (local page unitsPerShard - 1, last
    // position, last head, last dim): below 2^31 (bit 31 flags fresh keys in attention), while
    // the same index over one unsharded buffer would not fit in u32 at 4M tokens.
    const lastLocal = ((s.unitsPerShard * l.pageSize - 1) * heads + heads - 1) * hd + hd - 1;
    assert.ok(lastLocal < 2 ** 31, `${what}: local index ${lastLocal}`);
    assert.ok(l.shardBytes(kind, heads, 0) <= Math.min(c.binding, MAX_SHARD_BYTES), what);
    if (c.tokens === 1 << 22) assert.ok(c.tokens * heads * hd >= 2 ** 32, "unsharded overflows");
    // The page index itself and pages per shard x page size stay small.
    assert.ok(l.numPages < 2 ** 32 && s.unitsPerShard * l.pageSize < 2 ** 32);
    let total = 0;
    for (let i = 0; i < s.count; i++) total += l.shardBytes(kind, heads, i);
    assert.equal(total * 2 * 32, l.reservedBytes().total, `${what}: shards add up`);
  }
});

Deno.test("quantized KV dtypes: the byte formula counts values and scales", () => {
  // head_dim 8: int8 = 8 bytes + a 4-byte amax, int4 = 4 bytes of nibbles + 4 of (scale, zero).
  const perHead = { f32: 32, f16: 16, int8: 12, int4: 8 } as const;
  for (const [dt, entry] of Object.entries(perHead) as [keyof typeof perHead, number][]) {
    const g = new CacheGeometry(config, plan, dt);
    assert.equal(g.entryBytes, entry, dt);
    // 6 retrieval and 6 streaming KV heads over the 3 layers.
    assert.equal(g.pageBytes, 16 * 2 * 6 * entry, `${dt} page`);
    assert.equal(g.ringBytes, (2 + 6) * 2 * 6 * entry, `${dt} ring`);
    assert.equal(g.fullBytes(100), 100 * 2 * 12 * entry, `${dt} full`);
    const layout = new CacheLayout(config, plan, {
      budgetBytes: 1 << 20,
      maxSeqs: 2,
      maxSeqLen: 64,
      kvDtype: dt,
    });
    assert.equal(layout.shardBytes(layout.kind(R), 4, 0), layout.numPages * 16 * 4 * entry);
  }
  const odd = tinyConfig({ nLayers: 1, nHeads: 2, nKvHeads: 2, dim: 24, headDim: 12 });
  const one: ResolvedPlan = { mode: "full", sink: 0, recent: 1, layers: [layerAttention([R, R])] };
  assert.equal(new CacheGeometry(odd, one, "int8").entryBytes, 12 + 4);
  assert.throws(
    () => new CacheGeometry(odd, one, "int4"),
    /--kv-dtype int4 .* multiple of 8 .* 12/,
  );
});
