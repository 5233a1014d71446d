// The KV-cache bookkeeping with no GPU and no stub device: the page pool (slots, pages, free list,
// reference counts) and the manager on top of it (admission, exhaustion, release), and the
// manager's statistics against bytes computed by hand for tiny configs and a real model's shape.
//
// Every figure here is an exact integer count of bytes, pages or tokens, so every comparison is
// exact (assert.equal / deepEqual, no tolerance); the one ratio is compared to the quotient of two
// hand-computed integers, which is the same double division and so also exact.

import assert from "node:assert/strict";
import { CacheExhaustedError, CacheLayout, type CacheSizing } from "../cache/layout.ts";
import { KvCacheManager, type SeqCache } from "../cache/manager.ts";
import { PagePool } from "../cache/page_pool.ts";
import { mulberry32, PRESETS, tinyConfig } from "../model/random.ts";
import { type HeadKind, layerAttention, type PlanMode, type ResolvedPlan } from "../plans/types.ts";

const R: HeadKind = "retrieval";
const S: HeadKind = "streaming";

/** A resolved plan written out head by head (layers[l][h] = kind of KV head h of layer l). */
function resolved(
  mode: PlanMode,
  sink: number,
  recent: number,
  layers: HeadKind[][],
): ResolvedPlan {
  return { mode, sink, recent, layers: layers.map((l) => layerAttention(l)) };
}

// 4 layers, 2 KV heads of 16 dims. In f32 one token of one KV head is K + V = 2 * 16 * 4 = 128 B.
const tiny = tinyConfig({ nLayers: 4, nHeads: 4, nKvHeads: 2 });
const HEAD_TOKEN_F32 = 128;
/** Streaming, retrieval, streaming, retrieval layers: 4 retrieval and 4 streaming KV heads. */
const zigzag = resolved("zigzag", 4, 12, [[S, S], [R, R], [S, S], [R, R]]);
/** Layer 0 mixed (head 1 retrieval), layer 3 mixed (head 0 retrieval): 2 retrieval, 6 streaming. */
const duo = resolved("duo", 4, 12, [[S, R], [S, S], [S, S], [R, S]]);
const streaming = resolved("streaming", 4, 12, [[S, S], [S, S], [S, S], [S, S]]);

function manager(plan: ResolvedPlan, s: Partial<CacheSizing> = {}): KvCacheManager {
  return new KvCacheManager(
    new CacheLayout(tiny, plan, {
      budgetBytes: 128 * 1024,
      maxSeqs: 3,
      maxSeqLen: 512,
      kvDtype: "f32",
      ...s,
    }),
  );
}

/** Opens a sequence and fills it to `n` positions the way the engine does (reserve, commit). */
function filled(m: KvCacheManager, n: number): SeqCache {
  const s = m.open()!;
  m.reserve(s, n);
  m.commit(s, n);
  return s;
}

// ---- the page pool on its own ------------------------------------------------------------------

/** The stats of a kind no layer uses. */
const NO_HEADS = {
  tokens: 0,
  bytes_reserved: 0,
  bytes_used: 0,
  bytes_cached: 0,
  pages_used: 0,
  pages_free: 0,
  pages_cached: 0,
};

Deno.test("page pool: pages are handed out low first, all or nothing", () => {
  const pool = new PagePool(5, 2);
  assert.equal(pool.freePages, 5);
  assert.equal(pool.usedPages, 0);
  assert.deepEqual(pool.allocate(0), []);
  assert.deepEqual(pool.allocate(2), [0, 1]);
  assert.deepEqual(pool.allocate(2), [2, 3]);
  assert.equal(pool.allocate(2), null, "2 wanted, 1 free");
  assert.equal(pool.freePages, 1, "a refused allocation takes nothing");
  assert.deepEqual(pool.allocate(1), [4]);
  assert.equal(pool.allocate(1), null);
  assert.equal(pool.usedPages, 5);
  // Released pages come back so that the lowest is handed out first again.
  pool.release([2, 3]);
  pool.release([0, 1]);
  assert.deepEqual(pool.allocate(4), [0, 1, 2, 3]);
});

Deno.test("page pool: reference counts; a shared page is freed by its last holder", () => {
  const pool = new PagePool(4, 1);
  const [a, b] = pool.allocate(2)!;
  assert.equal(pool.refCount(a), 1);
  assert.equal(pool.refCount(2), 0);
  // A second sequence shares page a (a cached prefix).
  pool.retain(a);
  pool.retain(a);
  assert.equal(pool.refCount(a), 3);
  pool.release([a, b]);
  assert.equal(pool.refCount(a), 2);
  assert.equal(pool.refCount(b), 0);
  assert.equal(pool.freePages, 3, "only b is free: a still has holders");
  pool.release([a]);
  assert.equal(pool.freePages, 3);
  pool.release([a]);
  assert.equal(pool.refCount(a), 0);
  assert.equal(pool.freePages, 4);
  assert.throws(() => pool.release([a]), /page 0 released more often than held/);
  assert.throws(() => pool.retain(b), /page 1 is free/);
  assert.throws(() => pool.refCount(4), RangeError);
  assert.throws(() => pool.refCount(-1), RangeError);
});

Deno.test("page pool: slots run out, return, and cannot be closed twice", () => {
  const pool = new PagePool(0, 2);
  assert.equal(pool.openSlot(), 0);
  assert.equal(pool.openSlot(), 1);
  assert.equal(pool.openSlot(), null);
  assert.equal(pool.freeSlots, 0);
  pool.closeSlot(0);
  assert.equal(pool.freeSlots, 1);
  assert.throws(() => pool.closeSlot(0), /slot 0 is not open/);
  assert.throws(() => pool.closeSlot(2), /slot 2 is not open/);
  assert.equal(pool.openSlot(), 0);
  assert.equal(pool.allocate(1), null, "a pool of no pages");
});

// ---- the manager: admission, exhaustion, release -----------------------------------------------

Deno.test("manager admission: sizes, low pages first, all or nothing", () => {
  // Zigzag f32: a page is 16 positions x 4 retrieval heads x 128 B = 8 KiB; a sequence's ring is
  // 16 slots x 4 streaming heads x 128 B = 8 KiB. 3 rings = 24 KiB; (128 - 24) / 8 = 13 pages.
  const m = manager(zigzag);
  assert.equal(m.layout.pageBytes, 8192);
  assert.equal(m.layout.ringBytes, 8192);
  assert.equal(m.numPages, 13);
  assert.equal(m.maxPagesPerSeq, 32); // 512 / 16
  assert.equal(m.freeSlots, 3);
  const a = m.open()!;
  assert.deepEqual([a.slot, a.tokens, a.pages], [0, 0, []]);
  assert.equal(m.pagesNeeded(a, 100), 7);
  assert.ok(m.ensure(a, 100));
  assert.deepEqual(a.pages, [0, 1, 2, 3, 4, 5, 6]);
  assert.ok(m.ensure(a, 112), "positions 100..111 are on page 6 already");
  assert.equal(m.pagesNeeded(a, 112), 0);
  assert.equal(a.pages.length, 7);
  assert.equal(a.tokens, 0, "ensure does not commit");

  const b = m.open()!;
  assert.equal(b.slot, 1);
  assert.equal(m.pagesNeeded(b, 200), 13);
  assert.equal(m.ensure(b, 200), false, "13 pages wanted, 6 free");
  assert.deepEqual(b.pages, []);
  assert.deepEqual(a.pages, [0, 1, 2, 3, 4, 5, 6]);
  assert.equal(m.freePages, 6);
  assert.ok(m.ensure(b, 16));
  assert.deepEqual(b.pages, [7]);
  assert.ok(m.ensure(b, 17));
  assert.deepEqual(b.pages, [7, 8]);
  assert.equal(m.freePages, 4);
  m.commit(b, 17);
  m.commit(b, 5); // commit never moves backwards
  assert.equal(b.tokens, 17);
});

Deno.test("manager admission: a sequence is held to its page-table row", () => {
  // maxSeqLen 60 gives rows of ceil(60 / 16) = 4 pages, while the pool has far more.
  const m = manager(zigzag, { budgetBytes: 1 << 20, maxSeqLen: 60 });
  assert.equal(m.maxPagesPerSeq, 4);
  // (1 MiB - 24 KiB) / 8 KiB = 125 pages, capped at 3 sequences x 4 pages.
  assert.equal(m.numPages, 12);
  const s = m.open()!;
  assert.ok(m.ensure(s, 64));
  assert.equal(m.ensure(s, 65), false, "a fifth page does not fit the row");
  assert.equal(s.pages.length, 4);
  assert.equal(m.freePages, 8);
  assert.throws(() => m.reserve(s, 61), {
    name: "RangeError",
    message: "sequence of 61 tokens exceeds the context of 60",
  });
  m.reserve(s, 60);
});

Deno.test("manager exhaustion: ensure changes nothing, reserve throws the RangeErrors", () => {
  const m = manager(zigzag);
  const a = filled(m, 100); // 7 pages
  const b = m.open()!;
  const free = m.freePages;
  assert.equal(m.ensure(b, 7 * 16), false);
  assert.throws(() => m.reserve(b, 200), {
    name: "RangeError",
    message: "the KV cache has no free pages for 200 tokens",
  });
  assert.throws(() => m.reserve(b, 513), {
    name: "RangeError",
    message: "sequence of 513 tokens exceeds the context of 512",
  });
  assert.deepEqual(b.pages, []);
  assert.equal(b.tokens, 0);
  assert.equal(m.freePages, free);
  assert.equal(a.pages.length, 7);
  // The last page goes to whoever asks first; then even one more position is refused.
  assert.ok(m.ensure(b, 6 * 16));
  assert.equal(m.freePages, 0);
  assert.equal(m.ensure(a, 113), false);
  assert.equal(m.ensure(b, 6 * 16), true, "what a sequence holds stays admissible");
  const c = m.open()!;
  assert.equal(m.ensure(c, 1), false);
  assert.equal(m.open(), null, "3 slots, 3 sequences");
  assert.equal(m.freeSlots, 0);
  // A budget too small for the rings, and one that leaves no page, are refused up front.
  assert.throws(() => manager(zigzag, { budgetBytes: 1024 }), CacheExhaustedError);
  assert.throws(
    () => manager(zigzag, { budgetBytes: 3 * 8192 + 8191 }),
    /leaves no room for a single/,
  );
  assert.equal(manager(zigzag, { budgetBytes: 3 * 8192 + 8192 }).numPages, 1);
});

Deno.test("manager release: close returns pages and slot; double close is harmless", () => {
  const m = manager(zigzag);
  const a = filled(m, 40);
  const b = filled(m, 20);
  assert.deepEqual(a.pages, [0, 1, 2]);
  assert.deepEqual(b.pages, [3, 4]);
  m.close(a);
  assert.deepEqual(a.pages, []);
  assert.equal(m.freePages, 11);
  assert.equal(m.freeSlots, 2);
  assert.equal(m.openSequences, 1);
  m.close(a);
  assert.equal(m.freePages, 11, "closing twice returns nothing twice");
  assert.equal(m.freeSlots, 2);
  assert.throws(() => m.ensure(a, 1), /is not open/);
  // The freed slot and the freed (lowest) pages are reused.
  const c = filled(m, 33);
  assert.equal(c.slot, a.slot);
  assert.deepEqual(c.pages, [0, 1, 2]);
  // A cancelled sequence: pages reserved for a forward that never committed.
  const e = m.open()!;
  assert.equal(e.slot, 2);
  m.reserve(e, 64);
  assert.deepEqual(e.pages, [5, 6, 7, 8]);
  assert.equal(e.tokens, 0);
  m.close(e);
  m.close(b);
  m.close(c);
  assert.equal(m.freePages, m.numPages);
  assert.equal(m.freeSlots, 3);
  for (let p = 0; p < m.numPages; p++) assert.equal(m.pool.refCount(p), 0);
});

Deno.test("manager release: random finish/cancel rounds return the pool to full", () => {
  for (const plan of [zigzag, duo, streaming]) {
    // 160 KiB: zigzag has 16 pages and duo 28 for up to 4 x 13 wanted, so both run out at times.
    const m = manager(plan, { budgetBytes: 160 * 1024, maxSeqs: 4 });
    const rand = mulberry32(11);
    let refused = 0;
    for (let round = 0; round < 40; round++) {
      const open: SeqCache[] = [];
      const lengths: number[] = [];
      // Open until the slots or the pages run out.
      while (open.length < 4) {
        const s = m.open()!;
        const n = 1 + Math.floor(rand() * 200);
        if (!m.ensure(s, n)) {
          refused++;
          m.close(s);
          break;
        }
        m.commit(s, n);
        open.push(s);
        lengths.push(n);
      }
      // Grow some of them by a decode-sized step, as a batch would.
      for (let i = 0; i < open.length; i++) {
        if (rand() < 0.5 && m.ensure(open[i], lengths[i] + 3)) {
          m.commit(open[i], lengths[i] + 3);
          lengths[i] += 3;
        }
      }
      const st = m.stats();
      const want = m.layout.usedBytes(lengths);
      assert.equal(st.retrieval.bytes_used, want.retrieval);
      assert.equal(st.streaming.bytes_used, want.streaming);
      assert.equal(st.total.bytes_used, want.total);
      assert.equal(st.sequences, open.length);
      assert.equal(st.total.tokens, lengths.reduce((x, y) => x + y, 0));
      assert.equal(st.total.pages_used + st.total.pages_free, m.numPages);
      // Finish or cancel in random order, some twice.
      for (const s of [...open].sort(() => rand() - 0.5)) {
        m.close(s);
        if (rand() < 0.3) m.close(s);
      }
      assert.equal(m.freePages, m.numPages);
      assert.equal(m.freeSlots, 4);
      assert.equal(m.openSequences, 0);
      assert.equal(m.stats().total.bytes_used, 0);
    }
    // The paged plans ran out of pages in some rounds (what the refused branch is for).
    if (m.layout.paged) assert.ok(refused > 0, `${plan.mode}: never exhausted`);
  }
});

// ---- statistics against hand-computed bytes ----------------------------------------------------

Deno.test("stats: zigzag bytes by kind, reserved bytes and footprints by hand", () => {
  const m = manager(zigzag);
  const lengths = [100, 16, 1];
  const seqs = lengths.map((n) => filled(m, n));
  // Retrieval: ceil(100/16) + 1 + 1 = 9 pages of 16 positions x 4 heads x 128 B.
  const retrieval = 9 * 16 * 4 * HEAD_TOKEN_F32; // 73728
  // Streaming: min(n, 16) positions kept, 16 + 16 + 1 = 33, x 4 heads x 128 B.
  const streamingBytes = 33 * 4 * HEAD_TOKEN_F32; // 16896
  // Full attention: 117 positions x 4 layers x 2 heads x 128 B.
  const full = 117 * 8 * HEAD_TOKEN_F32; // 119808
  const st = m.stats();
  assert.deepEqual(st, {
    sequences: 3,
    page_size: 16,
    sink: 4,
    recent: 12,
    retrieval: {
      tokens: 117,
      bytes_reserved: 13 * 8192,
      bytes_used: retrieval,
      bytes_cached: 0,
      pages_used: 9,
      pages_free: 4,
      pages_cached: 0,
    },
    streaming: {
      tokens: 33,
      bytes_reserved: 3 * 8192,
      bytes_used: streamingBytes,
      bytes_cached: 0,
      pages_used: 0,
      pages_free: 0,
      pages_cached: 0,
    },
    compensated: NO_HEADS,
    // One ring kind at one window: its figures are the streaming kind's.
    rings: [{
      kind: "streaming",
      sink: 4,
      recent: 12,
      kv_heads: 4,
      tokens: 33,
      bytes_reserved: 3 * 8192,
      bytes_used: streamingBytes,
    }],
    total: {
      tokens: 117,
      bytes_reserved: 128 * 1024, // the whole budget: 13 pages + 3 rings of 8 KiB
      bytes_used: retrieval + streamingBytes,
      bytes_cached: 0,
      pages_used: 9,
      pages_free: 4,
      pages_cached: 0,
    },
    full_attention_bytes: full,
    ratio_to_full: (73728 + 16896) / 119808,
    prefix_cache: null,
  });
  const want = m.layout.usedBytes(lengths);
  assert.deepEqual(want, {
    retrieval,
    streaming: streamingBytes,
    compensated: 0,
    total: retrieval + streamingBytes,
  });
  assert.deepEqual(m.layout.reservedBytes(), {
    retrieval: 13 * 8192,
    streaming: 3 * 8192,
    compensated: 0,
    total: 131072,
  });
  assert.deepEqual(m.footprint(seqs[0]), {
    tokens: 100,
    pages: 7,
    retrieval_bytes: 7 * 8192,
    streaming_bytes: 16 * 4 * HEAD_TOKEN_F32,
    bytes: 7 * 8192 + 8192,
    full_attention_bytes: 100 * 8 * HEAD_TOKEN_F32,
    ratio_to_full: 65536 / 102400,
  });
  for (const s of seqs) assert.deepEqual(m.footprint(s), footprintOf(m, s));
  // Pages reserved ahead of a commit count as used: they are held.
  m.reserve(seqs[2], 40); // 1 -> 3 pages, still 1 token written
  assert.equal(m.stats().retrieval.bytes_used, retrieval + 2 * 8192);
  assert.equal(m.footprint(seqs[2]).retrieval_bytes, 3 * 8192);
  assert.equal(m.footprint(seqs[2]).tokens, 1);
});

/** The footprint from the layout's byte formula (checks the manager's wiring, not the numbers). */
function footprintOf(m: KvCacheManager, s: SeqCache) {
  const b = m.layout.bytes(s);
  const full = m.layout.fullBytes(s.tokens);
  return {
    tokens: s.tokens,
    pages: s.pages.length,
    retrieval_bytes: b.retrieval,
    streaming_bytes: b.streaming,
    bytes: b.total,
    full_attention_bytes: full,
    ratio_to_full: full > 0 ? b.total / full : 1,
  };
}

Deno.test("stats: duo layers mix kinds; bytes by hand", () => {
  // 2 retrieval heads: a page is 16 x 2 x 128 B = 4 KiB; 6 streaming heads: a ring 16 x 6 x 128 B
  // = 12 KiB. Budget 64 KiB, 2 sequences: (64 - 24) / 4 = 10 pages.
  const m = manager(duo, { budgetBytes: 64 * 1024, maxSeqs: 2, maxSeqLen: 256 });
  const g = m.layout;
  assert.equal(g.retrievalHeads, 2);
  assert.equal(g.streamingHeads, 6);
  assert.equal(g.pageBytes, 4096);
  assert.equal(g.ringBytes, 12288);
  assert.equal(m.numPages, 10);
  // Head 1 of layer 0 is retrieval: it comes first in cache order.
  assert.deepEqual(g.kvHeadOrder(0), [1, 0]);
  assert.deepEqual(g.kvHeadOrder(1), [0, 1]);
  assert.deepEqual(g.kvHeadOrder(3), [0, 1]);
  assert.deepEqual(
    g.layers[0].parts.map((p) => [p.kind.name, p.kvHeads, p.kvHeadBase, p.heads]),
    [[R, [1], 0, 1], [S, [0], 1, 1]],
  );
  assert.deepEqual(g.layers[1].parts.map((p) => p.kind.name), [S]);
  const a = filled(m, 40);
  const b = filled(m, 5);
  const st = m.stats();
  // Retrieval: 3 + 1 pages x 4 KiB. Streaming: (16 + 5) positions x 6 heads x 128 B.
  assert.equal(st.retrieval.bytes_used, 4 * 4096);
  assert.equal(st.streaming.bytes_used, 21 * 6 * HEAD_TOKEN_F32);
  assert.equal(st.total.bytes_used, 16384 + 16128);
  assert.equal(st.retrieval.bytes_reserved, 10 * 4096);
  assert.equal(st.streaming.bytes_reserved, 2 * 12288);
  assert.equal(st.total.bytes_reserved, 64 * 1024);
  assert.equal(st.full_attention_bytes, 45 * 8 * HEAD_TOKEN_F32);
  assert.equal(st.retrieval.tokens, 45);
  assert.equal(st.streaming.tokens, 21);
  assert.deepEqual(g.usedBytes([40, 5]), {
    retrieval: 16384,
    streaming: 16128,
    compensated: 0,
    total: 32512,
  });
  assert.equal(m.footprint(a).bytes, 3 * 4096 + 16 * 6 * HEAD_TOKEN_F32);
  assert.equal(m.footprint(b).bytes, 4096 + 5 * 6 * HEAD_TOKEN_F32);
});

Deno.test("stats: streaming-only plans use no pages and hold any length in rings", () => {
  // 8 streaming heads: a ring is 16 x 8 x 128 B = 16 KiB; 4 rings take the whole 64 KiB.
  const m = manager(streaming, { budgetBytes: 64 * 1024, maxSeqs: 4, maxSeqLen: 2048 });
  const g = m.layout;
  assert.equal(g.paged, false);
  assert.equal(g.ringBytes, 16384);
  assert.equal(m.numPages, 0);
  assert.equal(g.pagesFor(1000), 0);
  const a = filled(m, 1000);
  const b = filled(m, 3);
  assert.deepEqual(a.pages, []);
  assert.equal(m.ensure(a, 2048), true);
  assert.equal(m.ensure(a, 2049), false, "past the longest sequence");
  const st = m.stats();
  assert.equal(st.retrieval.bytes_used, 0);
  assert.equal(st.retrieval.bytes_reserved, 0);
  assert.equal(st.retrieval.tokens, 0);
  assert.equal(st.streaming.bytes_used, (16 + 3) * 8 * HEAD_TOKEN_F32);
  assert.equal(st.streaming.bytes_reserved, 65536);
  assert.equal(st.streaming.tokens, 19);
  assert.equal(st.total.pages_used + st.total.pages_free, 0);
  assert.equal(st.full_attention_bytes, 1003 * 8 * HEAD_TOKEN_F32);
  assert.deepEqual(g.usedBytes([1000, 3]), {
    retrieval: 0,
    streaming: 19456,
    compensated: 0,
    total: 19456,
  });
  assert.equal(m.footprint(a).bytes, 16384);
  assert.equal(m.footprint(b).bytes, 3 * 1024);
  m.close(a);
  m.close(b);
  assert.equal(m.freeSlots, 4);
  assert.throws(
    () => manager(streaming, { budgetBytes: 64 * 1024 - 1, maxSeqs: 4 }),
    /kv-cache-mb/,
  );
});

Deno.test("stats: f16 halves every byte; an empty cache reports ratio 1", () => {
  const m = manager(zigzag, { kvDtype: "f16", budgetBytes: 64 * 1024 });
  assert.equal(m.layout.pageBytes, 4096);
  assert.equal(m.layout.ringBytes, 4096);
  assert.equal(m.numPages, 13); // (64 - 12) / 4
  const empty = m.stats();
  assert.equal(empty.total.bytes_used, 0);
  assert.equal(empty.full_attention_bytes, 0);
  assert.equal(empty.ratio_to_full, 1);
  filled(m, 100);
  assert.equal(m.stats().total.bytes_used, (7 * 16 + 16) * 4 * 64);
});

Deno.test("stats: SmolLM2-135M zigzag at 1000 tokens, by hand", () => {
  // 30 layers x 3 KV heads x 64 dims, f16: one head-token is K + V = 2 x 64 x 2 = 256 B.
  // Odd layers retrieval: 15 x 3 = 45 heads of each kind.
  const c = PRESETS["smollm2-135m"];
  const plan = resolved(
    "zigzag",
    64,
    256,
    Array.from({ length: 30 }, (_, l) => Array<HeadKind>(3).fill(l % 2 ? R : S)),
  );
  const layout = new CacheLayout(c, plan, {
    budgetBytes: 64 << 20,
    maxSeqs: 2,
    maxSeqLen: 8192,
    kvDtype: "f16",
  });
  const m = new KvCacheManager(layout);
  filled(m, 1000);
  const st = m.stats();
  assert.equal(st.retrieval.bytes_used, 63 * 16 * 45 * 256); // ceil(1000 / 16) = 63 pages
  assert.equal(st.streaming.bytes_used, 320 * 45 * 256); // sink 64 + recent 256
  assert.equal(st.full_attention_bytes, 1000 * 90 * 256);
  assert.equal(st.retrieval.pages_used, 63);
  // (64 MiB - 2 rings of 320 x 45 x 256 B) / (16 x 45 x 256 B) = 59736064 / 184320 -> 324 pages.
  assert.equal(layout.numPages, 324);
  assert.equal(st.streaming.bytes_reserved, 2 * 320 * 45 * 256);
  assert.deepEqual(layout.usedBytes([1000]), {
    retrieval: st.retrieval.bytes_used,
    streaming: st.streaming.bytes_used,
    compensated: 0,
    total: st.total.bytes_used,
  });
});
