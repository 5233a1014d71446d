// deno task eval: the accuracy grid against the passkey model's shipped eval numbers
// (../shared/models/passkey-llama/eval.json: full attention 100% at 512 tokens, every layer
// streaming with sink 16 + recent 64: 0%).

import assert from "node:assert/strict";
import { EVAL_SCHEMA, evalMarkdown, runEval } from "../eval/eval.ts";
import { accuracyHeatmap } from "../eval/heatmap.ts";
import { loadModel } from "../model/load.ts";
import { gpuTest } from "./gpu_helpers.ts";

const MODEL = "../shared/models/passkey-llama";

Deno.test("eval: full finds every key at 512 tokens, all-streaming none", gpuTest, async () => {
  const shipped = JSON.parse(await Deno.readTextFile(`${MODEL}/eval.json`));
  assert.equal(shipped.passkey_full["512"].mean, 1);
  assert.equal(shipped.passkey_stream_all["512"].mean, 0);
  const model = await loadModel(MODEL);
  const r = await runEval({
    model,
    modelPath: MODEL,
    plans: ["full", "streaming"],
    lengths: [512],
    depths: [0.3, 0.7],
    samples: 2,
    seed: 3,
    sink: 16,
    recent: 64,
    precision: "f32",
    quiet: true,
  });
  assert.equal(r.schema, EVAL_SCHEMA);
  assert.deepEqual(r.plans.map((p) => p.plan), ["full", "streaming"]);
  const [full, stream] = r.plans;
  assert.equal(full.by_length["512"], shipped.passkey_full["512"].mean);
  assert.equal(stream.by_length["512"], shipped.passkey_stream_all["512"].mean);
  for (const p of r.plans) {
    assert.equal(p.cells.reduce((a, c) => a + c.total, 0), 4);
    assert.ok(p.forward_tokens >= 4 * 512);
  }
  // The target is computed from the measured accuracies: streaming misses by 100 points.
  assert.deepEqual(r.target.results, [{ plan: "streaming", met: false, worst_gap: 100 }]);
  assert.match(evalMarkdown(r), /\| full \| f32 \| - \| all \| 100% \| 100% \|/);
  assert.deepEqual(r.kv_dtypes, ["f32"]);
  assert.deepEqual(r.kv_target.results, []);
  const svg = accuracyHeatmap(stream.cells, "streaming", r.lengths, r.depths);
  assert.match(svg, /^<svg[^>]*>/);
  assert.equal((svg.match(/>0%</g) ?? []).length, 2);
});

Deno.test(
  "eval: full attention over int8 and int4 KV caches finds every key it finds in f32",
  gpuTest,
  async () => {
    const model = await loadModel(MODEL);
    const r = await runEval({
      model,
      modelPath: MODEL,
      plans: ["full"],
      lengths: [512],
      depths: [0.3, 0.7],
      samples: 2,
      seed: 3,
      sink: 16,
      recent: 64,
      precision: "f32",
      kvDtypes: ["f32", "int8", "int4"],
      quiet: true,
    });
    assert.deepEqual(r.plans.map((p) => p.kv_dtype), ["f32", "int8", "int4"]);
    for (const p of r.plans) assert.equal(p.by_length["512"], 1, `${p.kv_dtype}`);
    assert.deepEqual(r.kv_target.results, [
      {
        plan: "full",
        kv_dtype: "int8",
        rule: "equal",
        met: true,
        worst_gap: 0,
        cells_differing: 0,
      },
      {
        plan: "full",
        kv_dtype: "int4",
        rule: "within 5",
        met: true,
        worst_gap: 0,
        cells_differing: 0,
      },
    ]);
    const md = evalMarkdown(r);
    assert.match(md, /\| full \| int4 \| - \| all \| 100% \| 100% \|/);
    assert.match(md, /full over int8 KV: meets "equal" against f32/);
  },
);
