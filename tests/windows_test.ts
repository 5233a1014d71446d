// MoA-style per-layer windows: a plan's `windows` give each layer (duo plans: each KV head) a
// sink and recent of its own. The plan format's checks; the cache geometry's one ring instance per
// (kind, window) and its byte formula; zigzag and duo plans with several windows (and with the
// compensation token) on the GPU against the CPU reference, whose mask reads each head's window;
// the engine's report and stats listing every ring.

import { runScript } from "./run_cli.ts";
import assert from "node:assert/strict";
import { CacheGeometry } from "../cache/layout.ts";
import { Engine } from "../engine/engine.ts";
import { mulberry32 } from "../model/random.ts";
import { loadPlanFile, parsePlan, type PlanInput } from "../plans/schema.ts";
import { loadPlanArg, resolvePlan } from "../plans/resolve.ts";
import { hasOwnWindows, headWindow, type ResolvedPlan } from "../plans/types.ts";
import { apportion, scoredWindows } from "../identify/windows.ts";
import { cpuGreedy, CpuLlama, elasticRecent } from "./reference/cpu_llama.ts";
import {
  biasedKvModel,
  expectReferenceRun,
  gpu,
  gpuTest,
  GREEDY,
  maxAbsDiff,
  precisions,
} from "./gpu_helpers.ts";

const { config, weights, model } = biasedKvModel(5, 13);

const fingerprint = {
  architecture: config.architecture,
  num_layers: config.nLayers,
  num_kv_heads: config.nKvHeads,
  head_dim: config.headDim,
};
const provenance = { method: "test", budget: 0.5, source: "test" };
const S = "streaming" as const;
const R = "retrieval" as const;

const ELASTIC = { sink: 3, recent: 2, growth: 0.1, max_recent: 12 };
const ELASTIC_RESOLVED = { sink: 3, recent: 2, growth: 6554 / 65536, maxRecent: 12 };

/** zigzag: layers 0, 2, 3 streaming with windows (2, 6), an elastic one (sink 4, recent 3 +
 * position / 8, at most 14: 11 at the prompt's end, 14 from position 87 on) and the plan's (4,
 * 8). */
const zigzagInput = (compensation = false): PlanInput => ({
  version: 1,
  model: fingerprint,
  mode: "zigzag",
  layers: [S, R, S, S],
  sink: 4,
  recent: 8,
  ...(compensation ? { compensation } : {}),
  windows: [
    { sink: 2, recent: 6 },
    null,
    { sink: 4, recent: 3, growth: 0.125, max_recent: 14 },
    null,
  ],
  provenance,
});

/** duo: layer 1's two streaming heads have windows of their own, layer 3's head 1 an elastic
 * one (growth 0.1, rounded to 6554 / 65536, so the GPU and the CPU floor the same product). */
const duoInput = (compensation = false): PlanInput => ({
  version: 1,
  model: fingerprint,
  mode: "duo",
  heads: [[S, R], [S, S], [R, R], [S, S]],
  sink: 4,
  recent: 8,
  ...(compensation ? { compensation } : {}),
  windows: [{ sink: 2, recent: 6 }, [{ sink: 2, recent: 6 }, { sink: 4, recent: 12 }], null, [
    null,
    ELASTIC,
  ]],
  provenance,
});

const resolve = (p: PlanInput, name = "test plan") => resolvePlan(parsePlan(p, name), config);

/** The same plan with every layer at the plan's sink and recent. */
const uniform = (p: PlanInput) => resolve({ ...p, windows: undefined });

Deno.test("plan windows: format checks name the field", () => {
  const bad = (p: PlanInput, field: RegExp) =>
    assert.throws(() => parsePlan(p, "w.json"), (e: Error) => field.test(e.message));
  bad({ ...zigzagInput(), windows: [null, null] }, /w\.json.*windows: has 2 entries/);
  bad(
    { ...zigzagInput(), windows: [[{ sink: 1, recent: 2 }, null], null, null, null] },
    /windows\[0\]: per-KV-head windows need mode duo/,
  );
  bad(
    { ...zigzagInput(), windows: [null, { sink: 1, recent: 2 }, null, null] },
    /windows\[1\]: is a retrieval layer/,
  );
  bad(
    { ...duoInput(), windows: [[null, { sink: 1, recent: 2 }], null, null, null] },
    /windows\[0\]\[1\]: is a retrieval head/,
  );
  bad({ ...duoInput(), windows: [[null], null, null, null] }, /windows\[0\]: has 1 entries/);
  bad({ ...duoInput(), windows: [{ sink: 1, recent: 0 }, null, null, null] }, /windows\[0\]/);
  bad(
    { ...zigzagInput(), windows: [{ sink: 1, recent: 2, growth: 0.5 }, null, null, null] },
    /windows\[0\]\.max_recent: required with growth/,
  );
  bad(
    { ...zigzagInput(), windows: [{ sink: 1, recent: 2, max_recent: 9 }, null, null, null] },
    /windows\[0\]\.max_recent: only used with growth/,
  );
  bad(
    {
      ...zigzagInput(),
      windows: [{ sink: 1, recent: 20, growth: 0.5, max_recent: 9 }, null, null, null],
    },
    /windows\[0\]\.max_recent: must be at least recent/,
  );
  bad(
    { ...zigzagInput(), windows: [{ sink: 1, recent: 2, growth: 1 }, null, null, null] },
    /windows\[0\]\.growth/,
  );
  bad(
    { ...zigzagInput(), mode: "full", layers: undefined },
    /windows: a full plan has no streaming heads/,
  );
});

Deno.test("plan windows: resolved per KV head; the geometry keeps one ring kind per window", () => {
  const duo = resolve(duoInput());
  assert.ok(hasOwnWindows(duo));
  assert.ok(!hasOwnWindows(uniform(duoInput())));
  assert.deepEqual(headWindow(duo, 0, 0), { sink: 2, recent: 6 });
  assert.deepEqual(headWindow(duo, 1, 1), { sink: 4, recent: 12 });
  assert.deepEqual(headWindow(duo, 3, 0), { sink: 4, recent: 8 });
  assert.deepEqual(headWindow(duo, 3, 1), ELASTIC_RESOLVED);
  // MoA's span as the CPU reference (the GPU tests' oracle) computes it: recent + floor(growth (i + 1)),
  // at most max_recent.
  assert.deepEqual(
    [0, 9, 10, 50, 98, 99, 1000].map((i) => elasticRecent(headWindow(duo, 3, 1), i)),
    [
      2,
      3,
      3,
      7,
      11,
      12,
      12,
    ],
  );

  const g = new CacheGeometry(config, duo, "f32", 16);
  // Layer 1: two streaming parts (one per window), in window order.
  assert.deepEqual(
    g.layers[1].parts.map((p) => [p.kind.name, p.kind.window, p.kvHeads]),
    [[S, { sink: 2, recent: 6 }, [0]], [S, { sink: 4, recent: 12 }, [1]]],
  );
  assert.deepEqual(
    g.layers[3].parts.map((p) => [p.kind.window, p.kvHeads]),
    [[ELASTIC_RESOLVED, [1]], [{ sink: 4, recent: 8 }, [0]]],
  );
  assert.deepEqual(g.kvHeadOrder(3), [1, 0]);
  assert.equal(g.headsOf(S), 5);
  assert.equal(g.ringLength, 16);
  // The byte formula, head by head: a streaming head holds min(tokens, sink + recent) positions.
  const entry = config.headDim * 4;
  for (const tokens of [1, 7, 9, 12, 40]) {
    let want = 0;
    duo.layers.forEach((l, li) =>
      l.kvHeadKinds.forEach((k, h) => {
        const w = headWindow(duo, li, h);
        // An elastic window's ring holds its largest window.
        const ring = w.sink + (w.maxRecent ?? w.recent);
        const held = k === R ? Math.ceil(tokens / 16) * 16 : Math.min(tokens, ring);
        want += 2 * held * entry;
      })
    );
    assert.equal(g.bytes(g.stateFor(tokens)).total, want, `${tokens} tokens`);
  }
  // One slot's rings: 8 + 16 + 8 + 12 + 15 positions over the five streaming heads.
  assert.equal(g.ringBytes, 2 * (8 + 16 + 8 + 12 + 15) * entry);
  // The elastic ring's kernels: RECENT is the ring, RECENT_BASE and GROWTH_Q16 the window.
  const elastic = g.layers[3].parts[0].kind;
  const sizes = { maxPagesPerSeq: 1, unitsPerShard: 1, shards: 1 };
  assert.deepEqual(elastic.constants(sizes), {
    SINK: 3,
    RECENT: 12,
    RECENT_BASE: 2,
    GROWTH_Q16: 6554,
    SLACK: 0,
    SLOTS_PER_SHARD: 1,
    CACHE_SHARDS: 1,
  });
});

Deno.test("scored windows: widest for the highest scores, at the uniform plan's KV bytes", async (t) => {
  const zig = parsePlan({
    version: 1,
    model: { ...fingerprint, num_layers: 4 },
    mode: "zigzag",
    layers: [S, R, S, S],
    sink: 4,
    recent: 64,
    provenance,
    scores: { layers: [0.3, 0.9, 0.1, 0.5] },
  }, "zig");
  await t.step("zigzag: one window per streaming layer", () => {
    const w = scoredWindows(zig, { spread: 0.5 });
    // Streaming layers by score: 2 (0.1), 0 (0.3), 3 (0.5) -> 32, 64, 96 recent.
    assert.deepEqual(w.windows, [{ sink: 4, recent: 64 }, null, { sink: 4, recent: 32 }, {
      sink: 4,
      recent: 96,
    }]);
    const g = (p: typeof zig) => new CacheGeometry(config, resolvePlan(p, config), "f32", 16);
    assert.equal(g(w).ringBytes, g(zig).ringBytes);
    for (const n of [500, 1000]) {
      assert.equal(g(w).bytes(g(w).stateFor(n)).total, g(zig).bytes(g(zig).stateFor(n)).total);
    }
    // A budget of 1.5: the recents sum to 1.5 x 3 x 64.
    const wide = scoredWindows(zig, { spread: 0.25, budget: 1.5 });
    const recents = wide.windows!.flatMap((x) => x && !Array.isArray(x) ? [x.recent] : []);
    assert.equal(recents.reduce((a, b) => a + b, 0), 288);
    assert.deepEqual(recents, [96, 72, 120]);
    // Spread 0: the uniform windows.
    assert.deepEqual(
      scoredWindows(zig, { spread: 0 }).windows!.filter((x) => x !== null),
      [{ sink: 4, recent: 64 }, { sink: 4, recent: 64 }, { sink: 4, recent: 64 }],
    );
  });
  await t.step("duo: one window per streaming KV head, sums kept exactly", () => {
    const duo = parsePlan({
      version: 1,
      model: fingerprint,
      mode: "duo",
      heads: [[S, R], [S, S], [R, R], [S, S]],
      sink: 4,
      recent: 10,
      provenance,
      scores: { kv_heads: [[0.1, 0.9], [0.4, 0.2], [0.8, 0.7], [0.3, 0.5]] },
    }, "duo");
    const w = scoredWindows(duo, { spread: 0.5 });
    const heads: number[] = [];
    w.windows!.forEach((row) => {
      if (Array.isArray(row)) { for (const h of row) if (h) heads.push(h.recent); }
    });
    // Five streaming heads ranked 0.1 < 0.2 < 0.3 < 0.4 < 0.5: targets 5, 7.5, 10, 12.5, 15.
    assert.equal(heads.reduce((a, b) => a + b, 0), 50);
    assert.deepEqual(w.windows![0], [{ sink: 4, recent: 5 }, null]);
    assert.deepEqual(w.windows![3], [{ sink: 4, recent: 10 }, { sink: 4, recent: 15 }]);
    assert.equal(w.windows![2], null);
    // It is a valid plan the cache sizes head by head.
    const g = new CacheGeometry(config, resolvePlan(parsePlan(w, "w"), config), "f32", 16);
    assert.equal(g.ringBytes, 2 * (5 * 4 + 50) * config.headDim * 4);
  });
  await t.step("needs the scores it ranks by", () => {
    assert.throws(
      () => scoredWindows({ ...zig, scores: undefined }),
      /per-layer windows need the plan's scores\.layers/,
    );
  });
  await t.step("apportion keeps the total and a floor of 1", () => {
    assert.deepEqual(apportion([0.2, 0.3, 5.5], 6), [1, 1, 4]);
    assert.deepEqual(apportion([1.5, 1.5, 1.5], 5), [2, 2, 1]);
  });
});

const prompt = (n: number, seed: number) => {
  const r = mulberry32(seed);
  return Array.from({ length: n }, () => Math.floor(r() * config.vocabSize));
};

function cpuRun(pl: ResolvedPlan, p: number[], steps: number) {
  return cpuGreedy(new CpuLlama(config, weights, pl), p, steps);
}

Deno.test(
  "per-layer windows: GPU equals the CPU reference while every ring wraps many times",
  gpuTest,
  async (t) => {
    // 70 prompt tokens and 40 decode steps: rings of 8 to 16 positions wrap 6 to 13 times.
    const p = prompt(70, 4);
    const inputs = { zigzag: zigzagInput, duo: duoInput };
    for (const [name, input] of Object.entries(inputs)) {
      for (const comp of [false, true]) {
        const pl = resolve(input(comp));
        const ref = cpuRun(pl, p, 40);
        // The windows matter: the plan's uniform window gives other logits.
        const flat = cpuRun(uniform(input(comp)), p, 1);
        assert.ok(maxAbsDiff(flat.first, ref.first) > 1e-3, `${name}: windows change nothing`);
        for (const precision of precisions) {
          // One chunk, and chunks shorter than every window.
          for (const chunk of precision === "f32" ? [128, 5] : [5]) {
            const label = `${name}${comp ? " +comp" : ""} ${precision} chunk ${chunk}`;
            await t.step(label, () => expectReferenceRun(model, precision, pl, chunk, p, 40, ref));
          }
        }
      }
    }
  },
);

Deno.test(
  "per-layer windows: engine with and without the prefix cache; report and stats list every ring",
  gpuTest,
  async () => {
    const pl = resolve(duoInput(true));
    // Two questions of one 40-token document: with the prefix cache the second resumes from a
    // snapshot of every ring (each window its own), and the tokens must not change.
    const doc = prompt(40, 8);
    const prompts = [[...doc, 1, 2, 3, 4, 5], [...doc, 9, 8, 7]];
    const refs = prompts.map((q) => cpuRun(pl, q, 12));
    for (const prefixCache of [false, true]) {
      const e = await Engine.create({
        model,
        gpu,
        precision: "f32",
        plan: pl,
        quiet: true,
        decodeSteps: 4,
        prefillChunk: 16,
        prefixCache,
      });
      try {
        const outs = [];
        for (const promptIds of prompts) {
          outs.push(
            await e.generate({ promptIds, maxTokens: 12, sampling: GREEDY, ignoreEos: true }),
          );
        }
        assert.deepEqual(
          outs.map((o) => o.ids),
          refs.map((r) => r.tokens),
          `prefix ${prefixCache}`,
        );
        if (prefixCache) assert.ok(outs[1].cachedTokens > 0, "the second request hit no prefix");
        const rep = e.cacheReport();
        assert.equal(rep.plan.per_layer_windows, true);
        assert.deepEqual(rep.plan.layers[1].windows, [{ sink: 2, recent: 6 }, {
          sink: 4,
          recent: 12,
        }]);
        assert.deepEqual(rep.plan.layers[3].windows, [{ sink: 4, recent: 8 }, {
          sink: 3,
          recent: 2,
          growth: ELASTIC_RESOLVED.growth,
          max_recent: 12,
        }]);
        // Rings by window: (2, 6) holds layer 0's head 0 and layer 1's head 0, and so on.
        assert.deepEqual(
          rep.rings.map((r) => [r.sink, r.recent, r.max_recent ?? r.recent, r.kv_heads]),
          [[2, 6, 6, 2], [3, 2, 12, 1], [4, 8, 8, 1], [4, 12, 12, 1]],
        );
        assert.ok(rep.rings.every((r) => r.kind === "compensated"));
        // Every ring's bytes from its own window: reserved = slots x (positions x K and V +
        // sums), summing to the kind's.
        const g = e.layout;
        const slots = g.ringSlots;
        const entry = 2 * config.headDim * 4;
        const sums = (4 * config.headDim + 4) * 4;
        for (const r of rep.rings) {
          const positions = r.sink + (r.max_recent ?? r.recent) + g.ringSlack;
          assert.equal(r.bytes_reserved, slots * r.kv_heads * (positions * entry + sums));
        }
        assert.equal(
          rep.rings.reduce((a, r) => a + r.bytes_reserved, 0),
          rep.compensated.bytes_reserved,
        );
      } finally {
        await e.close();
      }
    }
  },
);

const planCli = (...args: string[]) => runScript("cli/plan.ts", ...args);

Deno.test("plan windows CLI: a shipped plan re-windowed at equal bytes; errors name the flag", async () => {
  const dir = await Deno.makeTempDir();
  const shipped = "plans/shipped/llama-3-8b-instruct-gradient-1048k.zigzag50.json";
  try {
    const out = `${dir}/w.json`;
    const ok = await planCli("windows", "--plan", shipped, "--spread", "0.75", "--out", out);
    assert.equal(ok.code, 0, ok.stderr);
    // 16 streaming layers at recent 256: 64 to 448, summing to 16 x 256.
    assert.match(
      ok.stdout,
      /windows of their own: recent 64 to 448 over 16 streaming layers \(sum 4096\)/,
    );
    const src = await loadPlanFile(shipped);
    const plan = await loadPlanFile(out);
    assert.deepEqual(plan.layers, src.layers);
    const streaming = src.layers!.flatMap((k, l) => k === "streaming" ? [l] : []);
    // The streaming layer the plan scores highest gets the widest window.
    const top = streaming.reduce((a, l) => src.scores!.layers![l] > src.scores!.layers![a] ? l : a);
    assert.deepEqual(plan.windows![top], { sink: 128, recent: 448 });
    assert.ok(plan.windows!.every((w, l) => (w === null) === (src.layers![l] === "retrieval")));

    const missing = await planCli("windows", "--plan", `${dir}/nope.json`, "--out", out);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /--plan: plan file not found/);
    const spread = await planCli("windows", "--plan", shipped, "--spread", "1.5", "--out", out);
    assert.notEqual(spread.code, 0);
    assert.match(spread.stderr, /--spread/);
    const full = `${dir}/full.json`;
    await Deno.writeTextFile(full, JSON.stringify({ ...src, mode: "full", layers: undefined }));
    const noStreaming = await planCli("windows", "--plan", full, "--out", out);
    assert.notEqual(noStreaming.code, 0);
    assert.match(noStreaming.stderr, /--plan .*full\.json: a full plan has no streaming heads/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadPlanArg: --sink/--recent give every layer one window unless windows are kept", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/zig.json`;
    await Deno.writeTextFile(path, JSON.stringify(zigzagInput()));
    const own = await loadPlanArg(path, config);
    assert.deepEqual(headWindow(own, 0, 0), { sink: 2, recent: 6 });
    const overridden = await loadPlanArg(path, config, { sink: 1, recent: 9 });
    assert.ok(!hasOwnWindows(overridden));
    assert.deepEqual(headWindow(overridden, 0, 0), { sink: 1, recent: 9 });
    const kept = await loadPlanArg(path, config, { sink: 1, recent: 9, keepWindows: true });
    assert.deepEqual(headWindow(kept, 0, 0), { sink: 2, recent: 6 });
    assert.deepEqual(headWindow(kept, 3, 0), { sink: 1, recent: 9 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
