// Automatic prefix caching (cache/prefix_cache.ts): the bookkeeping without a GPU, then whole
// engines whose greedy outputs with cache hits must equal the outputs with --no-prefix-cache.

import assert from "node:assert/strict";
import { CacheGeometry, CacheLayout } from "../cache/layout.ts";
import { KvCacheManager } from "../cache/manager.ts";
import { TokenChain } from "../cache/prefix_cache.ts";
import { Engine } from "../engine/engine.ts";
import { GREEDY } from "../gpu/runner.ts";
import { loadModel } from "../model/load.ts";
import type { ModelConfig } from "../model/types.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import { EngineLimits, Scheduler } from "../engine/scheduler.ts";
import { gpu, gpuTest, plan } from "./gpu_helpers.ts";

const config = {
  dim: 64,
  nLayers: 4,
  nHeads: 4,
  nKvHeads: 2,
  headDim: 16,
  hiddenDim: 128,
  vocabSize: 512,
  maxSeqLen: 512,
} as ModelConfig;

const ids = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (i * 31 + seed) % 500);

function manager(p: ResolvedPlan, pages = 16, snapshots = 4, slack = 40) {
  const g = new CacheGeometry(config, p, "f32", 16, slack);
  const layout = new CacheLayout(config, p, {
    budgetBytes: (3 + snapshots) * g.ringBytes + pages * g.pageBytes,
    maxSeqs: 3,
    maxSeqLen: 512,
    kvDtype: "f32",
    ringSlack: slack,
    snapshotSlots: snapshots,
  });
  return new KvCacheManager(layout, { prefixCache: true });
}

/** A sequence that wrote `tokens` and is registered as the engine does at a prompt's end. */
function write(m: KvCacheManager, tokens: number[]) {
  const seq = m.open()!;
  const chain = new TokenChain(m.pageSize).extend(tokens);
  assert.ok(m.ensure(seq, tokens.length));
  m.commit(seq, tokens.length);
  m.cachePages(seq, chain);
  const snapshot = m.snapshot(seq, chain);
  return { seq, chain, snapshot };
}

Deno.test("hash chain: a page's hash names every token before it", () => {
  const a = ids(70, 1);
  const ch = new TokenChain(16).extend(a);
  assert.equal(ch.length, 4, "full pages only");
  const inc = new TokenChain(16);
  inc.extend(a, 20);
  inc.extend(a, 50);
  assert.deepEqual(inc.extend(a), ch, "extending in steps gives the same chain");
  const b = [...a];
  b[3]++;
  const chb = new TokenChain(16).extend(b);
  assert.ok(ch.every((h, i) => h !== chb[i]), "a change in page 0 renames every later page");
  const c = [...a];
  c[40]++;
  const chc = new TokenChain(16).extend(c);
  assert.deepEqual(chc.slice(0, 2), ch.slice(0, 2));
  assert.notEqual(chc[2], ch[2]);
});

Deno.test("prefix cache: pages shared read-only, snapshots, resume below the last token", () => {
  const zig = plan(config, "zigzag", 4, 16, ["retrieval", "streaming", "retrieval", "streaming"]);
  const m = manager(zig);
  const total = m.freePages;
  const doc = ids(100, 3);
  const a = write(m, doc);
  assert.equal(a.seq.pages.length, 7);
  assert.notEqual(a.snapshot, null, "the prompt's end is snapshotted");
  assert.ok(a.snapshot! >= m.maxSeqs, "into a snapshot ring, not a sequence's");
  // Another prompt sharing 100 tokens resumes at the last page boundary <= 100 the snapshot
  // (taken at 100, slack 40) restores: 96.
  const q = [...doc, 7, 8, 9];
  const hit = m.lookup(new TokenChain(16).extend(q), q.length);
  assert.equal(hit.positions, 96);
  assert.deepEqual(hit.pages, a.seq.pages.slice(0, 6));
  assert.equal(hit.snapshot, a.snapshot);
  assert.equal(hit.idlePages, 0, "its writer still holds them");
  // The same prompt again: its last token is recomputed, so at most floor(99 / 16) pages.
  assert.equal(m.lookup(a.chain, doc.length).positions, 96);
  assert.equal(m.lookup(a.chain, 96).positions, 80, "96 tokens: resume at 80, recompute 16");
  assert.equal(m.lookup(a.chain, 60).positions, 0, "48 is outside what the snapshot restores");

  m.close(a.seq);
  assert.equal(m.freePages, total, "idle cached pages count as free");
  assert.equal(m.stats().total.pages_used, 0);
  assert.equal(m.stats().total.pages_cached, 6);
  const hit2 = m.lookup(new TokenChain(16).extend(q), q.length);
  assert.equal(hit2.idlePages, 6);
  const b = m.open()!;
  m.resume(b, hit2);
  assert.equal(b.tokens, 96);
  for (const p of b.pages) assert.equal(m.pool.refCount(p), 2, "the cache and b hold it");
  // b writes its own pages from 96 on: never into a shared one.
  assert.ok(m.ensure(b, 103));
  assert.equal(b.pages.length, 7);
  assert.ok(!hit2.pages.includes(b.pages[6]));
  assert.equal(m.pool.refCount(b.pages[6]), 1);
  m.close(b);
  assert.equal(m.stats().total.pages_used, 0);
});

Deno.test("prefix cache: eviction frees idle pages from a chain's end, and their snapshots", () => {
  const zig = plan(config, "zigzag", 4, 16, ["retrieval", "streaming", "retrieval", "streaming"]);
  const m = manager(zig, 12, 2);
  const a = write(m, ids(64, 1)); // 4 pages, snapshot at 64
  m.close(a.seq);
  const b = write(m, ids(64, 2));
  m.close(b.seq);
  assert.equal(m.stats().total.pages_cached, 8);
  assert.equal(m.stats().prefix_cache!.snapshots, 2);
  // A sequence needing 6 pages: 4 free, then the 2 least recently idle: the end of a's chain.
  const c = m.open()!;
  assert.ok(m.ensure(c, 96));
  assert.equal(m.stats().total.pages_cached, 6);
  // a's snapshot (taken at 64, slack 40) restored 32, 48 and 64; 48 and 64 went with pages 3-4.
  assert.equal(m.lookup(a.chain, 200).positions, 32);
  assert.equal(m.stats().prefix_cache!.snapshots, 2);
  assert.equal(m.lookup(b.chain, 200).positions, 64, "b is whole");
  // Two more pages: the rest of a's chain, and with it the last depth its snapshot restored.
  const d = m.open()!;
  assert.ok(m.ensure(d, 32));
  assert.equal(m.lookup(a.chain, 200).positions, 0);
  assert.equal(m.stats().prefix_cache!.snapshots, 1, "a snapshot restoring nothing is freed");
  m.close(d);
  // Everything back: nothing leaked.
  m.close(c);
  const st = m.stats();
  assert.equal(st.total.pages_used, 0);
  assert.equal(st.total.pages_free, 12);
  assert.ok(!m.ensure(m.open()!, 13 * 16), "12 pages in all");
});

Deno.test("prefix cache: a full plan needs no snapshot; a streaming plan needs nothing but one", () => {
  const full = manager(plan(config, "full", 0, 1), 16, 4);
  assert.equal(full.layout.snapshotSlots, 0, "no rings, no snapshot rings");
  const f = write(full, ids(50, 4));
  assert.equal(f.snapshot, null);
  assert.equal(full.lookup(f.chain, 50).positions, 48);
  const stream = manager(plan(config, "streaming", 4, 16), 16, 4);
  assert.equal(stream.layout.numPages, 0);
  const s = write(stream, ids(50, 4));
  assert.notEqual(s.snapshot, null);
  assert.equal(stream.lookup(s.chain, 50).positions, 48);
  assert.equal(stream.lookup(s.chain, 200).positions, 48);
  const off = new KvCacheManager(full.layout, { prefixCache: false });
  const o = write(off, ids(50, 4));
  assert.equal(off.lookup(o.chain, 50).positions, 0);
  assert.equal(off.stats().prefix_cache, null);
});

Deno.test("scheduler: a request's cached pages are not claimed again", () => {
  const m = manager(plan(config, "full", 0, 1), 10, 0);
  const limits = new EngineLimits(512, 4, 1, 64, m.layout);
  const s = new Scheduler(limits);
  const view = (prefixPages: number, prefixIdlePages: number) => ({
    promptTokens: 120,
    maxTokens: 30,
    prefilled: 0,
    generated: 0,
    cachedTokens: 0,
    pagesHeld: 0,
    cancelled: false,
    prefixPages,
    prefixIdlePages,
  });
  // 149 positions = 10 pages; 6 free beside a running request that may claim 4 more.
  const running = [{ ...view(0, 0), pagesHeld: 6, maxTokens: 10, promptTokens: 150 }];
  const room = { freePages: 4, freeSlots: 2 };
  assert.equal(s.admit([view(0, 0)], running, { ...room, freePages: 10 }).admit.length, 0);
  assert.equal(s.admit([view(6, 0)], running, { ...room, freePages: 8 }).admit.length, 1);
  assert.equal(
    s.admit([view(6, 6)], running, { ...room, freePages: 8 }).admit.length,
    0,
    "idle cached pages it takes leave the free room",
  );
});

// ---- whole engines ------------------------------------------------------------------------------

const STORIES = new URL("../../shared/models/stories260K", import.meta.url).pathname;

Deno.test(
  "prefix cache: greedy outputs with hits equal --no-prefix-cache's",
  gpuTest,
  async (t) => {
    const model = await loadModel(STORIES);
    const c = model.config;
    const plans: Record<string, ResolvedPlan> = {
      full: plan(c, "full", 0, 1),
      streaming: plan(c, "streaming", 4, 16),
      zigzag: plan(c, "zigzag", 4, 16, [
        "streaming",
        "retrieval",
        "streaming",
        "retrieval",
        "streaming",
      ]),
      duo: plan(c, "duo", 4, 16, [[1], [0, 2], "streaming", [0, 1, 3], "retrieval"]),
      // Compensation tokens: a snapshot's sums serve every position of its slack.
      "zigzag compensated": plan(c, "zigzag", 4, 16, [
        "streaming",
        "retrieval",
        "streaming",
        "retrieval",
        "streaming",
      ], true),
      "duo compensated": plan(
        c,
        "duo",
        4,
        16,
        [[1], [0, 2], "streaming", [0, 1, 3], "retrieval"],
        true,
      ),
    };
    // 300 tokens: the 4 + 16 rings wrap 14 times over the shared document.
    const doc = [1, ...ids(299, 5).map((x) => 3 + x)];
    const q1 = [...doc, 5, 6, 7];
    const q2 = [...doc, 9, 10, 11, 12, 13];
    // A second document asked two questions of 60 tokens: longer than the rings' slack, so the
    // streaming layers resume from the boundary before q3's final prefill piece (320), not its end.
    const doc2 = [1, ...ids(299, 8).map((x) => 3 + x)];
    const q3 = [...doc2, ...ids(60, 9).map((x) => 3 + x)];
    const q4 = [...doc2, ...ids(60, 10).map((x) => 3 + x)];
    for (const [name, p] of Object.entries(plans)) {
      await t.step(name, async () => {
        const run = async (prefixCache: boolean) => {
          const e = await Engine.create({
            model,
            gpu,
            precision: "f32",
            plan: p,
            prefixCache,
            quiet: true,
            prefillChunk: 64,
          });
          try {
            const gen = (promptIds: number[]) =>
              e.generate({ promptIds, maxTokens: 12, sampling: GREEDY, ignoreEos: true });
            const a = await gen(q1);
            const b = await gen(q2); // shares the document
            const again = await gen(q1); // the same prompt: a hit ending mid-page
            const turn2 = await gen([...q1, ...a.ids, 42, 43]); // resumes from a's end
            const c3 = await gen(q3);
            const c4 = await gen(q4);
            const st = e.cacheReport();
            assert.equal(st.total.pages_used, 0, "idle again");
            const all = [a, b, again, turn2, c3, c4];
            return { ids: all.map((r) => r.ids), cached: all.map((r) => r.cachedTokens) };
          } finally {
            await e.close();
          }
        };
        const off = await run(false);
        const on = await run(true);
        assert.deepEqual(off.cached, [0, 0, 0, 0, 0, 0]);
        // b: the document's 300 tokens, page-aligned: 288. again: 303 tokens, resume at 288 and
        // recompute 15 (mid-page). turn2: 303 + 12 + 2 = 317 fed, a's end snapshotted at 314.
        // c4: doc2's 288, from the snapshot q3 took at 320 (it covers 280..320).
        assert.deepEqual(on.cached, [0, 288, 288, 304, 0, 288]);
        assert.deepEqual(on.ids, off.ids);
      });
    }
  },
);

Deno.test(
  "prefix cache: eviction under a small pool loses no request and leaks no page",
  gpuTest,
  async () => {
    const model = await loadModel(STORIES);
    const p = plan(model.config, "zigzag", 4, 16, [
      "streaming",
      "retrieval",
      "streaming",
      "retrieval",
      "streaming",
    ]);
    const prompts = Array.from(
      { length: 10 },
      (_, i) => [1, ...ids(150, 17 * i + 1).map((x) => 3 + x)],
    );
    const run = async (prefixCache: boolean) => {
      const e = await Engine.create({
        model,
        gpu,
        precision: "f32",
        plan: p,
        prefixCache,
        quiet: true,
        maxBatch: 2,
        prefixSnapshots: 3,
        // 3 rings and 3 snapshot rings of 46,080 B (60 positions x 3 layers x 4 heads x 8 x 2
        // x 4 B), then 30 pages of 8 KiB: about 3 requests' pages, so prefixes must be evicted
        // as new ones come.
        kvCacheBytes: 1 << 19,
        maxModelLen: 256,
      });
      try {
        const gen = (promptIds: number[]) =>
          e.generate({ promptIds, maxTokens: 8, sampling: GREEDY, ignoreEos: true });
        // Each prompt twice, two at a time, then the first few again (evicted by then).
        const out = [];
        for (let i = 0; i < prompts.length; i += 2) {
          out.push(
            ...(await Promise.all([gen(prompts[i]), gen(prompts[i + 1])])).map((r) => r.ids),
          );
        }
        out.push(...(await Promise.all(prompts.slice(0, 3).map(gen))).map((r) => r.ids));
        const st = e.cacheReport();
        assert.equal(st.total.pages_used, 0);
        assert.equal(st.total.pages_free, st.pages_total, "no page leaked");
        if (prefixCache) {
          assert.ok(
            st.total.pages_cached > 0 && st.total.pages_cached < st.pages_total,
          );
        }
        return out;
      } finally {
        await e.close();
      }
    };
    assert.deepEqual(await run(true), await run(false));
  },
);

Deno.test(
  "n choices: prefilled once, seeded choices reproducible, greedy ones equal",
  gpuTest,
  async () => {
    const model = await loadModel(STORIES);
    const e = await Engine.create({ model, gpu, precision: "f32", quiet: true });
    try {
      const prompt = [1, ...ids(120, 9).map((x) => 3 + x)];
      const req = { promptIds: prompt, maxTokens: 10, ignoreEos: true };
      const all = (jobs: { result: Promise<{ ids: number[]; cachedTokens: number }> }[]) =>
        Promise.all(jobs.map((j) => j.result));
      const seeded = { temperature: 1, seed: 77 };
      const a = await all(e.submitChoices({ ...req, sampling: seeded }, 4));
      const b = await all(e.submitChoices({ ...req, sampling: seeded }, 4));
      assert.deepEqual(a.map((r) => r.ids), b.map((r) => r.ids), "reproducible");
      assert.ok(new Set(a.map((r) => r.ids.join())).size > 1, "different seeds, different choices");
      // Choice i is the request alone with seed 77 + i.
      const third = await e.generate({ ...req, sampling: { temperature: 1, seed: 79 } });
      assert.deepEqual(a[2].ids, third.ids);
      // The later choices resumed from the first one's cached prompt (its last page recomputed).
      assert.deepEqual(a.slice(1).map((r) => r.cachedTokens), [112, 112, 112]);
      const g = await all(e.submitChoices({ ...req, sampling: GREEDY }, 4));
      const alone = await e.generate({ ...req, sampling: GREEDY });
      for (const r of g) assert.deepEqual(r.ids, alone.ids);
    } finally {
      await e.close();
    }
  },
);
