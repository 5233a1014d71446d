// The cache's shape without a GPU: the kinds (what each holds for n tokens), the parts of each
// layer in cache order, the byte formula, the sizes a budget gives, and the WGSL constants.
// Bytes, pages and positions are exact integers: every comparison is exact.

import assert from "node:assert/strict";
import { CACHE_KINDS, KIND_NAMES, RetrievalPages, StreamingRing } from "../cache/kinds.ts";
import { CacheGeometry, CacheLayout, mb } from "../cache/layout.ts";
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
  assert.deepEqual(KIND_NAMES, [R, S]);
  assert.deepEqual(CACHE_KINDS.map((k) => k.make({ pageSize: 8, sink: 1, recent: 3 }).layout), [
    "paged",
    "ring",
  ]);
  const pages = new RetrievalPages(8);
  assert.equal(pages.slotsPerSeq, 0);
  assert.equal(pages.tokensHeld(100), 100);
  assert.equal(pages.slotsHeld({ tokens: 17, pages: [4, 9, 2] }), 24, "3 pages of 8");
  assert.deepEqual(pages.constants(5), { PAGE_SIZE: 8, MAX_PAGES: 5 });
  const ring = new StreamingRing(2, 6);
  assert.equal(ring.slotsPerSeq, 8);
  assert.deepEqual([0, 5, 8, 9, 1000].map((n) => ring.tokensHeld(n)), [0, 5, 8, 8, 8]);
  assert.equal(ring.slotsHeld({ tokens: 3, pages: [0, 1] }), 3, "pages are not the ring's");
  assert.deepEqual(ring.constants(5), { SINK: 2, RECENT: 6 });
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
    total: 32 * 6 * 32,
  });
  assert.deepEqual(g.usedBytes([20, 3]), {
    retrieval: (24 + 8) * 192,
    streaming: (8 + 3) * 192,
    total: 43 * 192,
  });
  assert.deepEqual(g.usedBytes([]), { retrieval: 0, streaming: 0, total: 0 });
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
    total: 80 * 192, // 15360: 1024 B of the budget is less than a page
  });
  assert.deepEqual(l.constants(l.kind(R)), { PAGE_SIZE: 8, MAX_PAGES: 7 });
  assert.deepEqual(l.constants(l.kind(S)), { SINK: 2, RECENT: 6 });
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
