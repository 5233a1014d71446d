// `plan identify`: calibration data, the CPU attention probe, the three methods on a model with a
// planted retrieval layer (tests/planted_model.ts), determinism, and the acceptance run on
// passkey-llama (the identified 50% zigzag plan keeps pass-key accuracy, its complement loses it).

import { runScript } from "./run_cli.ts";
import assert from "node:assert/strict";
import { loadModel } from "../model/load.ts";
import { randomModel, tinyConfig } from "../model/random.ts";
import { Engine } from "../engine/engine.ts";
import { passkeyAccuracy, passkeyCorrect } from "../eval/passkey.ts";
import { answerRows, calibrationSet, passkeyPrompt } from "../identify/calibration.ts";
import { identify, type IdentifyOptions } from "../identify/identify.ts";
import { probeForward } from "../identify/probe.ts";
import { heatmapSvg } from "../plans/heatmap.ts";
import { resolvePlan } from "../plans/resolve.ts";
import { loadPlanFile } from "../plans/schema.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import type { LoadedModel } from "../model/types.ts";
import { asModel, gpu, gpuTest, maxAbsDiff, plan } from "./gpu_helpers.ts";
import { PLANTED_KV_HEAD, PLANTED_LAYER, plantedModel } from "./planted_model.ts";

const PASSKEY = "../shared/models/passkey-llama";

function argmax(xs: number[]): number {
  return xs.reduce((b, v, i) => (v > xs[b] ? i : b), 0);
}

/** Zigzag plan: `retrieval` layers full, the others streaming. */
function zigzag(model: LoadedModel, retrieval: number[], sink: number, recent: number) {
  return plan(
    model.config,
    "zigzag",
    sink,
    recent,
    Array.from(
      { length: model.config.nLayers },
      (_, l) => (retrieval.includes(l) ? "retrieval" : "streaming"),
    ),
  );
}

async function accuracy(
  model: LoadedModel,
  p: ResolvedPlan,
  lengths: number[],
  samples: number,
  seed: number,
): Promise<Record<number, number>> {
  const engine = await Engine.create({
    model,
    gpu,
    precision: "f32",
    plan: p,
    prefillChunk: 256,
    maxBatch: 10,
    decodeSteps: 8,
    maxModelLen: Math.max(...lengths) + 16,
    kvCacheBytes: 96 << 20,
  });
  try {
    const r = await passkeyAccuracy(engine, { lengths, samples, seed });
    return r.byLength;
  } finally {
    await engine.close();
  }
}

Deno.test("calibration: passkeys at depths in [5%, 95%], answers at the end, seeded", async () => {
  const tok = (await loadModel(PASSKEY)).tokenizer!;
  for (const needles of [1, 4]) {
    const opts = { lengths: [512, 1024], samples: 2, seed: 5, needles };
    const set = calibrationSet(tok, opts);
    assert.deepEqual(calibrationSet(tok, opts), set, "deterministic");
    assert.notDeepEqual(
      calibrationSet(tok, { ...opts, seed: 6 }).map((s) => s.text),
      set.map((s) => s.text),
    );
    assert.equal(set.length, 4);
    const texts = new Set(set.map((s) => s.text));
    assert.equal(texts.size, 4, "every document differs");
    for (const s of set) {
      assert.ok(
        s.tokens.length <= s.length && s.tokens.length >= s.length - 40,
        `${s.tokens.length}`,
      );
      assert.equal(s.tokens[0], tok.bosId);
      assert.equal(s.needles.length, needles);
      assert.equal(s.answers.length, needles);
      const body = s.text.length;
      for (const n of s.needles) {
        assert.ok(n.depth >= 0.05 && n.depth <= 0.95);
        const sentence = tok.decode(s.tokens.slice(...n.span));
        assert.equal(
          sentence,
          needles === 1
            ? `The pass key is ${n.value}. Remember it.`
            : `The code for ${n.name} is ${n.value}.`,
        );
        assert.equal(tok.decode(s.tokens.slice(...n.valueSpan)), n.value);
        assert.match(n.value, /^[1-9][0-9]{4}$/);
        // the needle sits inside the haystack, well before the questions
        assert.ok(s.text.indexOf(sentence) < body - 60);
      }
      for (const a of s.answers) {
        assert.equal(tok.decode(s.tokens.slice(...a.span)), s.needles[a.needle].value);
      }
      // answers come after every needle, in the question block at the end
      const firstAnswer = Math.min(...s.answers.map((a) => a.span[0]));
      assert.ok(s.needles.every((n) => n.span[1] < firstAnswer));
      const { rows, targets } = answerRows(s);
      assert.equal(rows.length, 5 * needles);
      rows.forEach((r, i) => assert.equal(s.tokens[r + 1], targets[i]));
      assert.doesNotMatch(s.text.replace(/[0-9]{5}/g, ""), /[0-9]/, "no digits but the keys");
    }
  }
  const p = passkeyPrompt(tok, { length: 512, depth: 0.5, seed: 1 });
  assert.ok(p.tokens.length <= 512 && p.tokens.length > 480);
  assert.match(tok.decode(p.tokens), /\nWhat is the pass key\? The pass key is$/);
  assert.ok(tok.decode(p.tokens).includes(`The pass key is ${p.value}. Remember it.`));
  assert.ok(passkeyCorrect(" 48213.</s>", " 48213"));
  assert.ok(!passkeyCorrect(" 482139", " 48213"));
  assert.ok(!passkeyCorrect(" 4821", " 48213"));
});

Deno.test("CPU attention probe agrees with the GPU runner", gpuTest, async () => {
  for (const style of ["half", "interleaved"] as const) {
    const config = tinyConfig({ nLayers: 2, ropeStyle: style, maxSeqLen: 128 });
    const model = asModel(config, randomModel(config, 11));
    const tokens = Array.from({ length: 70 }, (_, i) => (i * 37 + 5) % config.vocabSize);
    const rows = [3, 40, 69];
    let sums = 0;
    const cpu = probeForward(config, model.weights, tokens, {
      rows,
      onAttention: (_l, _h, row, probs) => {
        assert.equal(probs.length, row + 1);
        sums += probs.reduce((a, b) => a + b, 0);
      },
    });
    assert.ok(Math.abs(sums - rows.length * config.nLayers * config.nHeads) < 1e-4);
    const engine = await Engine.create({
      model,
      gpu,
      precision: "f32",
      plan: plan(config, "full", 0, 1),
      prefillChunk: 32,
      maxBatch: 4,
      kvCacheBytes: 32 << 20,
    });
    const gpuOut = await engine.score(tokens, rows);
    await engine.close();
    rows.forEach((_, i) => {
      assert.ok(maxAbsDiff(cpu.hidden[i], gpuOut.hidden[i]) < 1e-3, style);
      assert.ok(maxAbsDiff(cpu.logits[i], gpuOut.logits[i]) < 1e-3, style);
    });
  }
});

// The planted model (see tests/planted_model.ts): layer 2 holds an induction head that the
// pass-key task needs; every other layer attends 0 to 3 tokens back.
const planted = plantedModel();
const PLANTED_OPTS: Omit<IdentifyOptions, "method" | "mode"> = {
  budget: 0.25,
  lengths: [192],
  samples: 2,
  seed: 1,
  sink: 4,
  recent: 32,
  rounds: 1,
};

Deno.test(
  "planted model: the circuit solves the task only with layer 2's full cache",
  gpuTest,
  async () => {
    const full = await accuracy(planted, plan(planted.config, "full", 4, 32), [192], 1, 3);
    const only = await accuracy(planted, zigzag(planted, [PLANTED_LAYER], 4, 32), [192], 1, 3);
    const without = await accuracy(planted, zigzag(planted, [0, 1, 3], 4, 32), [192], 1, 3);
    assert.deepEqual([full[192], only[192], without[192]], [1, 1, 0]);
  },
);

Deno.test("planted model: every method ranks the planted layer first", gpuTest, async (t) => {
  await t.step("ablate, zigzag (with a swap round)", async () => {
    const r = await identify(planted, { ...PLANTED_OPTS, method: "ablate", mode: "zigzag" });
    const s = r.plan.scores!.layers!;
    assert.equal(argmax(s), PLANTED_LAYER);
    assert.equal(s[PLANTED_LAYER], 1);
    assert.ok(s.every((v, l) => l === PLANTED_LAYER || v < 1e-6), JSON.stringify(s));
    assert.deepEqual(r.retrievalLayers, [PLANTED_LAYER]);
    assert.deepEqual(r.plan.layers, ["streaming", "streaming", "retrieval", "streaming"]);
    // streaming the planted layer costs the answers several nats each
    const abl = r.plan.provenance.ablation as { logprob_drop: number[]; refinement: unknown[] };
    assert.ok(abl.logprob_drop[PLANTED_LAYER] > 3, JSON.stringify(abl));
    assert.ok(abl.refinement.length >= 1);
    // passes over the calibration set: full, 4 single layers, the chosen plan, and 2 swaps (the
    // one chosen layer out, each of the 2 best unchosen in), neither better
    const docs = (r.plan.provenance.calibration as { documents: number[] }).documents;
    assert.equal(r.forwardTokens, 8 * docs.reduce((a, b) => a + b, 0));
    const svg = heatmapSvg(r.plan);
    assert.match(svg, /^<svg /);
    assert.match(svg, />R L2</);
  });
  await t.step("ablate, duo (per KV head)", async () => {
    const r = await identify(planted, { ...PLANTED_OPTS, method: "ablate", mode: "duo" });
    const kv = r.plan.scores!.kv_heads!;
    const flat = kv.flat();
    assert.equal(argmax(flat), PLANTED_LAYER * 2 + PLANTED_KV_HEAD);
    assert.ok(flat.every((v, i) => i === argmax(flat) || v < 1e-6), JSON.stringify(kv));
    assert.equal(r.plan.heads![PLANTED_LAYER][PLANTED_KV_HEAD], "retrieval");
    assert.equal(argmax(r.plan.scores!.layers!), PLANTED_LAYER);
    const resolved = resolvePlan(r.plan, planted.config);
    assert.equal(resolved.mode, "duo");
  });
  await t.step("retrieval-score", async () => {
    const r = await identify(planted, {
      ...PLANTED_OPTS,
      method: "retrieval-score",
      mode: "zigzag",
    });
    const s = r.plan.scores!.layers!;
    assert.equal(argmax(s), PLANTED_LAYER);
    assert.equal(s[PLANTED_LAYER], 1, "the head copies every answer digit from the needle");
    assert.ok(s.every((v, l) => l === PLANTED_LAYER || v === 0), JSON.stringify(s));
    assert.equal(argmax(r.plan.scores!.kv_heads![PLANTED_LAYER]), PLANTED_KV_HEAD);
    assert.deepEqual(r.retrievalLayers, [PLANTED_LAYER]);
  });
  await t.step("razor", async () => {
    const r = await identify(planted, { ...PLANTED_OPTS, method: "razor", mode: "zigzag" });
    const s = r.plan.scores!.layers!;
    assert.equal(argmax(s), PLANTED_LAYER);
    assert.ok(s[PLANTED_LAYER] > 0.95, JSON.stringify(s));
    assert.ok(s.every((v, l) => l === PLANTED_LAYER || v < 0.05), JSON.stringify(s));
    const razor = r.plan.provenance.razor as { induction: number[][] };
    assert.ok(razor.induction[PLANTED_LAYER][0] > 0.95);
    assert.deepEqual(r.retrievalLayers, [PLANTED_LAYER]);
  });
});

Deno.test("identification is deterministic for a seed", gpuTest, async () => {
  for (const method of ["ablate", "retrieval-score", "razor"] as const) {
    const opts = { ...PLANTED_OPTS, method, mode: "zigzag" as const, rounds: 0, samples: 1 };
    const a = await identify(planted, opts);
    const b = await identify(planted, opts);
    const strip = (p: typeof a.plan) => ({
      ...p,
      provenance: { ...p.provenance, created: undefined, wall_seconds: undefined },
    });
    assert.deepEqual(strip(a.plan), strip(b.plan), method);
    assert.equal(a.forwardTokens, b.forwardTokens);
    const c = await identify(planted, { ...opts, seed: 2 });
    assert.deepEqual(c.retrievalLayers, [PLANTED_LAYER], `${method}, another seed`);
    if (method !== "razor") {
      const docs = (p: typeof a.plan) => (p.provenance.calibration as { documents: number[] });
      assert.equal(docs(a.plan).documents.length, 1);
    }
  }
});

// Measured (llvmpipe, f32): ablate with one 512- and one 1024-token document (seed 1) scores
// layer 6 at 1 (log-prob drop 5.8 nats; deviation 2.4) and every other layer below 0.003, and
// chooses layers 0, 1, 6, 7. Pass-key accuracy (5 depths x 1 prompt per length, seed 7):
// full 100% / 100%, plan 100% / 100%, complement (layers 2-5) 0% / 0% at 512 / 1024 tokens.
Deno.test(
  "passkey-llama: the identified 50% zigzag plan keeps pass-key accuracy",
  gpuTest,
  async () => {
    const model = await loadModel(PASSKEY);
    const r = await identify(model, {
      method: "ablate",
      mode: "zigzag",
      budget: 0.5,
      lengths: [512, 1024],
      samples: 1,
      seed: 1,
      sink: 16,
      recent: 64,
      rounds: 0,
    });
    const s = r.plan.scores!.layers!;
    assert.equal(argmax(s), 6, JSON.stringify(s));
    assert.equal(r.retrievalLayers.length, 4);
    assert.ok(r.retrievalLayers.includes(6));
    const complement = [0, 1, 2, 3, 4, 5, 6, 7].filter((l) => !r.retrievalLayers.includes(l));
    const lengths = [512, 1024];
    const full = await accuracy(model, plan(model.config, "full", 16, 64), lengths, 1, 7);
    const chosen = await accuracy(model, resolvePlan(r.plan, model.config), lengths, 1, 7);
    const comp = await accuracy(model, zigzag(model, complement, 16, 64), lengths, 1, 7);
    for (const n of lengths) {
      if (full[n] < 0.8) continue; // a length full attention does not solve
      assert.ok(chosen[n] >= full[n] - 0.05, `${n}: plan ${chosen[n]} vs full ${full[n]}`);
      assert.ok(comp[n] <= full[n] - 0.5, `${n}: complement ${comp[n]} vs full ${full[n]}`);
    }
    assert.deepEqual(full, { 512: 1, 1024: 1 });
  },
);

Deno.test("plan identify CLI: razor on passkey-llama writes the plan, scores and heatmap", async () => {
  const dir = await Deno.makeTempDir();
  // Razor at 25% on 256-token documents, windows of 16 + 64.
  const identifyCli = (...extra: string[]) =>
    runScript(
      "cli/plan.ts",
      "identify",
      ...["--model", PASSKEY, "--method", "razor", "--budget", "0.25", "--lengths", "256"],
      ...["--samples", "1", "--sink", "16", "--recent", "64", ...extra],
    );
  try {
    const out = await identifyCli("--out", `${dir}/p.json`, "--svg", `${dir}/p.svg`);
    const stdout = out.stdout;
    assert.equal(out.code, 0, out.stderr);
    assert.match(stdout, /2 of 8 layers retrieval/);
    assert.match(stdout, /calibration: \d+ forward tokens in [\d.]+ s/);
    const p = await loadPlanFile(`${dir}/p.json`);
    assert.equal(p.provenance.method, "razor");
    assert.equal(p.scores!.layers!.length, 8);
    assert.equal(p.scores!.kv_heads!.length, 8);
    assert.equal(argmax(p.scores!.layers!), 6);
    assert.match(await Deno.readTextFile(`${dir}/p.svg`), /<svg[^]*R L6[^]*<\/svg>/);

    // --windows scored: the same layers, and MoA-style windows from the same scores at the
    // uniform window's bytes (6 streaming layers x 64 recent positions).
    const win = await identifyCli("--windows", "scored", "--out", `${dir}/w.json`);
    assert.equal(win.code, 0, win.stderr);
    assert.match(win.stdout, /windows of their own: recent 32 to 96 over 6/);
    const w = await loadPlanFile(`${dir}/w.json`);
    assert.deepEqual(w.layers, p.layers);
    const recents = w.windows!.map((x) => x && !Array.isArray(x) ? x.recent : 0);
    assert.equal(recents.reduce((a, b) => a + b, 0), 6 * 64);
    const streaming = p.layers!.flatMap((k, l) => k === "streaming" ? [l] : []);
    const top = streaming.reduce((a, l) => p.scores!.layers![l] > p.scores!.layers![a] ? l : a);
    assert.equal(recents[top], 96);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
