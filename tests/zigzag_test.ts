// ZigzagAttention core: streaming, duo and zigzag plans on the GPU against full attention and
// against the CPU reference with the same sink + recent mask; the cache manager's bookkeeping.

import assert from "node:assert/strict";
import { CacheGeometry, CacheLayout } from "../cache/layout.ts";
import { KvCacheManager } from "../cache/manager.ts";
import { loadModel } from "../model/load.ts";
import { mulberry32, randomModel, tinyConfig } from "../model/random.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import { argmax, CpuLlama } from "./reference/cpu_llama.ts";
import {
  asModel,
  gpuGreedy,
  gpuTest,
  makeRunner,
  maxAbsDiff,
  plan,
  precisions,
} from "./gpu_helpers.ts";

const config = tinyConfig({ nLayers: 4, nHeads: 4, nKvHeads: 2, maxSeqLen: 512, vocabSize: 96 });
const weights = randomModel(config, 3);
const model = asModel(config, weights);

/** The four modes on the tiny model; duo mixes heads inside layers (head 1 retrieval first, so
 * the load-time reordering of q/k/v/o is exercised). */
function plans(sink: number, recent: number): Record<string, ResolvedPlan> {
  return {
    streaming: plan(config, "streaming", sink, recent),
    zigzag: plan(config, "zigzag", sink, recent, [
      "streaming",
      "retrieval",
      "streaming",
      "retrieval",
    ]),
    duo: plan(config, "duo", sink, recent, [[1], [0], "streaming", [0, 1]]),
  };
}

const prompt = (n: number, seed: number) => {
  const r = mulberry32(seed);
  return Array.from({ length: n }, () => Math.floor(r() * config.vocabSize));
};

Deno.test("with sink + recent >= length, every plan equals full", gpuTest, async (t) => {
  const p = prompt(40, 1);
  for (const precision of precisions) {
    const full = await makeRunner(model, precision, plan(config, "full", 0, 1));
    const ref = await gpuGreedy(full, p, 64);
    full.destroy();
    for (const [name, pl] of Object.entries(plans(8, 100))) {
      await t.step(`${name} ${precision}`, async () => {
        const r = await makeRunner(model, precision, pl);
        const out = await gpuGreedy(r, p, 64);
        // Same kernels over the same keys: only the summation grouping of the cache part
        // differs, so the kernel-test tolerance applies (1e-3 f32, 5e-2 f16).
        const tol = precision === "f32" ? 1e-3 : 5e-2;
        assert.ok(maxAbsDiff(out.logits, ref.logits) <= tol);
        assert.deepEqual(out.tokens, ref.tokens);
        // One attention kernel per layer, except duo layers that mix head kinds.
        const calls = name === "duo" ? [2, 2, 1, 1] : [1, 1, 1, 1];
        assert.deepEqual(r.attentionCallsPerLayer(), calls);
        r.destroy();
      });
    }
  }
});

Deno.test(
  "long sequences: GPU equals the CPU reference under the sink+recent mask",
  gpuTest,
  async (t) => {
    // Ring of 4 + 12 = 16 slots; 70 prompt tokens then 64 decode steps: the ring wraps 8 times.
    const sink = 4;
    const recent = 12;
    const p = prompt(70, 2);
    for (const [name, pl] of Object.entries(plans(sink, recent))) {
      const cpu = new CpuLlama(config, weights, pl);
      let logits: Float32Array = new Float32Array();
      p.forEach((tok, i) => (logits = cpu.forward(tok, i)));
      const cpuFirst: Float32Array = logits;
      const cpuTokens = [argmax(logits)];
      while (cpuTokens.length < 64) {
        logits = cpu.forward(cpuTokens[cpuTokens.length - 1], p.length + cpuTokens.length - 1);
        cpuTokens.push(argmax(logits));
      }
      // Check the mask really bites: full attention decodes differently.
      const fullCpu = new CpuLlama(config, weights);
      let fl: Float32Array = new Float32Array();
      p.forEach((tok, i) => (fl = fullCpu.forward(tok, i)));
      assert.ok(maxAbsDiff(fl, cpuFirst) > 1e-3, `${name}: mask has no effect`);
      for (const precision of precisions) {
        for (const chunk of [128, 9]) {
          await t.step(`${name} ${precision} chunk ${chunk}`, async () => {
            const r = await makeRunner(model, precision, pl, { chunk });
            const out = await gpuGreedy(r, p, 64, { perReadback: 8 });
            const tol = precision === "f32" ? 1e-3 : 5e-2;
            const d = maxAbsDiff(out.logits, cpuFirst);
            assert.ok(d <= tol, `prefill max |diff| ${d}`);
            if (precision === "f32") assert.deepEqual(out.tokens, cpuTokens);
            else assert.equal(out.tokens[0], cpuTokens[0]);
            r.destroy();
          });
        }
      }
    }
  },
);

Deno.test(
  "KV-cache manager: pages return to the pool, bytes match the closed form",
  gpuTest,
  async (t) => {
    const zig = plan(config, "zigzag", 4, 12, ["streaming", "retrieval", "streaming", "retrieval"]);
    await t.step("random finish and cancel", async () => {
      const r = await makeRunner(model, "f32", zig, { maxBatch: 4 });
      // The runner only runs: the caller allocates (reserve) before a forward, commits after.
      const cache = new KvCacheManager(r.layout);
      const total = cache.freePages;
      const rand = mulberry32(9);
      for (let round = 0; round < 12; round++) {
        const seqs = [cache.open()!, cache.open()!, cache.open()!];
        const lengths = seqs.map(() => 1 + Math.floor(rand() * 60));
        for (let i = 0; i < seqs.length; i++) {
          cache.reserve(seqs[i], seqs[i].tokens + lengths[i]);
          await r.prefill(seqs[i], prompt(lengths[i], round * 3 + i), { temperature: 0 }, {
            sample: false,
          });
          cache.commit(seqs[i], seqs[i].tokens + lengths[i]);
        }
        // Decode a few steps for two of them.
        const decoding = seqs.slice(0, 2);
        for (const seq of decoding) cache.reserve(seq, seq.tokens + 3);
        const d = await r.decode(
          decoding.map((seq) => ({ seq, token: 5, sampling: { temperature: 0 } })),
          3,
        );
        for (const seq of decoding) cache.commit(seq, seq.tokens + 3);
        assert.equal(d.tokens.length, 2);
        lengths[0] += 3;
        lengths[1] += 3;
        const st = cache.stats();
        const want = cache.layout.usedBytes(lengths);
        assert.equal(st.retrieval.bytes_used, want.retrieval);
        assert.equal(st.streaming.bytes_used, want.streaming);
        assert.equal(st.total.tokens, lengths.reduce((a, b) => a + b, 0));
        assert.equal(st.retrieval.pages_used + st.retrieval.pages_free, total);
        // Finish one, cancel the others in random order.
        for (const s of seqs.sort(() => rand() - 0.5)) cache.close(s);
        cache.close(seqs[0]); // double close is harmless
        assert.equal(cache.freePages, total);
        assert.equal(cache.stats().sequences, 0);
      }
      r.destroy();
    });

    await t.step("closed form and a 50% zigzag ratio", () => {
      // Llama-3-8B shapes, independent arithmetic: 32 layers x 8 KV heads x 128 dims, f16.
      const big = { ...config, nLayers: 32, nKvHeads: 8, nHeads: 32, headDim: 128 };
      const layers = Array.from(
        { length: 32 },
        (_, l): "retrieval" | "streaming" => l % 2 ? "retrieval" : "streaming",
      );
      const zp = plan(big, "zigzag", 64, 256, layers);
      const g = new CacheGeometry(big, zp, "f16", 16);
      const n = 32768;
      const perTokenLayer = 2 * 8 * 128 * 2; // K and V, 8 heads, 128 dims, 2 bytes
      const full = n * 32 * perTokenLayer;
      assert.equal(g.fullBytes(n), full);
      const used = g.usedBytes([n]);
      assert.equal(used.retrieval, Math.ceil(n / 16) * 16 * 16 * perTokenLayer);
      assert.equal(used.streaming, 320 * 16 * perTokenLayer);
      const ratio = (used.retrieval + used.streaming) / full;
      assert.ok(Math.abs(ratio - (0.5 + 320 / (2 * n))) < 1e-12);
      assert.ok(ratio <= 0.52);
    });

    await t.step("budget: a sequence that cannot get pages is refused, others untouched", () => {
      const small = new KvCacheManager(
        new CacheLayout(config, zig, {
          // Rings: 3 seqs x 16 slots x 8 KB/slot-set = 24 KB; pages of 8 KB: (128 - 24) / 8 = 13.
          budgetBytes: 128 * 1024,
          maxSeqs: 3,
          maxSeqLen: 512,
          kvDtype: "f32",
        }),
      );
      const a = small.open()!;
      assert.ok(small.ensure(a, 100));
      const before = [...a.pages];
      const b = small.open()!;
      assert.equal(small.numPages, 13);
      assert.equal(small.ensure(b, 200), false); // 13 pages wanted, 6 free
      assert.deepEqual(b.pages, []);
      assert.deepEqual(a.pages, before);
      const free = small.freePages;
      assert.ok(small.ensure(b, 16));
      assert.equal(small.freePages, free - 1);
      small.close(a);
      small.close(b);
      assert.equal(small.freePages, small.numPages);
      assert.throws(
        () =>
          new CacheLayout(config, zig, {
            budgetBytes: 1024,
            maxSeqs: 3,
            maxSeqLen: 512,
            kvDtype: "f32",
          }),
        /kv-cache-mb/,
      );
    });
  },
);

Deno.test(
  "passkey-llama: all-layers streaming loses the key that full attention finds",
  gpuTest,
  async () => {
    const m = await loadModel("../shared/models/passkey-llama");
    const golden = JSON.parse(
      await Deno.readTextFile("../shared/models/passkey-llama/golden_streaming.json"),
    );
    // The model maker's PyTorch oracle, sink 16 + recent 64 on every layer.
    const entries = golden.prompts.filter((e: { name: string }) => e.name.startsWith("passkey"));
    assert.ok(entries.length >= 2);
    const full = await makeRunner(m, "f32", plan(m.config, "full", 0, 1), {
      chunk: 128,
      maxSeqLen: 2048,
    });
    const stream = await makeRunner(m, "f32", plan(m.config, "streaming", 16, 64), {
      chunk: 128,
      maxSeqLen: 2048,
    });
    const dec = (ids: number[]) =>
      new TextDecoder().decode(new Uint8Array(ids.filter((i) => i < 256)));
    for (const e of entries) {
      const f = await gpuGreedy(full, e.input_ids, 32);
      const s = await gpuGreedy(stream, e.input_ids, 32);
      assert.deepEqual(f.tokens, e.greedy_32_ids, `${e.name} full`);
      assert.deepEqual(s.tokens, e.streaming_all_layers_greedy_32_ids, `${e.name} streaming`);
      const key = e.prompt.match(/pass key is (\d+)/)[1];
      assert.ok(dec(f.tokens).startsWith(` ${key}.`));
      assert.ok(!dec(s.tokens).includes(key));
    }
    full.destroy();
    stream.destroy();
  },
);
