import assert from "node:assert/strict";
import { runScript } from "./run_cli.ts";
import type { ModelConfig } from "../model/types.ts";
import {
  importDuo,
  layerScores,
  parseDuoConfig,
  parseGateTsv,
  retrievalCount,
} from "../plans/duo_import.ts";
import { builtinPlan, loadPlanArg, resolvePlan } from "../plans/resolve.ts";
import {
  loadPlanFile,
  parsePlan,
  type Plan,
  type PlanInput,
  savePlan,
  stringifyPlan,
} from "../plans/schema.ts";

const PATTERNS = "../shared/duo-patterns";
const SHIPPED = "plans/shipped";

interface Pattern {
  name: string;
  tsv: string;
  configText: string;
  gates: number[][];
}

function loadPatterns(): Pattern[] {
  const out: Pattern[] = [];
  for (const entry of Deno.readDirSync(PATTERNS)) {
    if (!entry.isDirectory) continue;
    const dir = `${PATTERNS}/${entry.name}`;
    const tsv = Deno.readTextFileSync(`${dir}/full_attention_heads.tsv`);
    // An independent parse: np.savetxt writes tab-separated floats, one layer per line.
    const gates = tsv.trim().split("\n").map((line) => line.split("\t").map(Number));
    out.push({
      name: entry.name,
      tsv,
      configText: Deno.readTextFileSync(`${dir}/config.json`),
      gates,
    });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

const patterns = loadPatterns();

function configFor(
  layers: number,
  kvHeads: number,
  headDim: number,
  architecture = "LlamaForCausalLM",
): ModelConfig {
  return {
    architecture,
    dim: kvHeads * headDim,
    hiddenDim: 4 * kvHeads * headDim,
    nLayers: layers,
    nHeads: kvHeads,
    nKvHeads: kvHeads,
    headDim,
    vocabSize: 32,
    maxSeqLen: 128,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeStyle: "half",
    ropeScaling: null,
    qkvBias: false,
    tiedEmbeddings: false,
    bosId: 1,
    eosIds: [2],
  };
}

function architectureOf(name: string): string {
  return name.startsWith("Mistral") ? "MistralForCausalLM" : "LlamaForCausalLM";
}

function retrievalLayers(plan: Plan): number[] {
  return plan.layers!.flatMap((k, l) => (k === "retrieval" ? [l] : []));
}

function retrievalHeads(plan: Plan): [number, number][] {
  return plan.heads!.flatMap((row, l) =>
    row.flatMap((k, h) => (k === "retrieval" ? [[l, h] as [number, number]] : []))
  );
}

Deno.test("six DuoAttention patterns are present", () => {
  assert.equal(patterns.length, 6);
  for (const p of patterns) {
    assert.equal(p.gates.length, 32, p.name);
    for (const row of p.gates) assert.equal(row.length, p.gates[0].length, p.name);
  }
});

Deno.test("duo import keeps exactly ceil(L*H*B) heads, the top gates", () => {
  for (const p of patterns) {
    const L = p.gates.length;
    const H = p.gates[0].length;
    for (const budget of [0.25, 0.5, 0.3, 1]) {
      const plan = importDuo({ tsv: p.tsv, budget, mode: "duo", architecture: "X" });
      assert.equal(plan.mode, "duo");
      const kept = retrievalHeads(plan);
      const expected = Math.ceil(L * H * budget);
      assert.equal(kept.length, expected, `${p.name} budget ${budget}`);
      // Independent check: the expected-th largest gate is the threshold; everything above it is
      // kept, everything below it is not, and ties at it go to the lowest (layer, head).
      const sorted = p.gates.flat().sort((a, b) => b - a);
      const threshold = sorted[expected - 1];
      const above = sorted.filter((g) => g > threshold).length;
      let tiesLeft = expected - above;
      for (let l = 0; l < L; l++) {
        for (let h = 0; h < H; h++) {
          const g = p.gates[l][h];
          const isKept = plan.heads![l][h] === "retrieval";
          if (g > threshold) assert.ok(isKept, `${p.name} [${l}][${h}] gate ${g} must be kept`);
          else if (g < threshold) assert.ok(!isKept, `${p.name} [${l}][${h}] must not be kept`);
          else {
            assert.equal(isKept, tiesLeft > 0, `${p.name} tie at [${l}][${h}]`);
            if (isKept) tiesLeft--;
          }
        }
      }
      assert.deepEqual(plan.scores?.kv_heads, p.gates);
    }
  }
});

Deno.test("zigzag import keeps exactly ceil(L*B) layers ranked by the criterion", () => {
  for (const p of patterns) {
    const L = p.gates.length;
    for (const budget of [0.25, 0.5, 0.3, 1]) {
      // sum: the sum of the layer's gates, computed here independently.
      const sums = p.gates.map((row) => {
        let s = 0;
        for (const g of row) s += g;
        return s;
      });
      // demoted: the sum over the heads the duo plan at the same budget keeps.
      const duo = importDuo({ tsv: p.tsv, budget, mode: "duo", architecture: "X" });
      const demoted = p.gates.map((row, l) => {
        let s = 0;
        row.forEach((g, h) => {
          if (duo.heads![l][h] === "retrieval") s += g;
        });
        return s;
      });
      for (const [criterion, scores] of [["sum", sums], ["demoted", demoted]] as const) {
        const plan = importDuo({
          tsv: p.tsv,
          budget,
          mode: "zigzag",
          criterion,
          architecture: "X",
        });
        const chosen = retrievalLayers(plan);
        const what = `${p.name} ${criterion} budget ${budget}`;
        assert.equal(chosen.length, Math.ceil(L * budget), what);
        assert.equal(plan.provenance.criterion, criterion);
        assert.deepEqual(plan.scores?.layers, scores, what);
        const chosenSet = new Set(chosen);
        for (const a of chosen) {
          for (let b = 0; b < L; b++) {
            if (chosenSet.has(b)) continue;
            assert.ok(
              scores[a] > scores[b] || (scores[a] === scores[b] && a < b),
              `${what}: layer ${a} chosen over ${b}`,
            );
          }
        }
      }
    }
  }
});

Deno.test("Llama-3-8B-Instruct-Gradient-1048k zigzag 50% is deterministic and matches shipped", async () => {
  const p = patterns.find((x) => x.name === "Llama-3-8B-Instruct-Gradient-1048k")!;
  const config = parseDuoConfig(p.configText);
  const run = () =>
    importDuo({
      tsv: p.tsv,
      config,
      budget: 0.5,
      mode: "zigzag",
      architecture: "LlamaForCausalLM",
    });
  const first = retrievalLayers(run());
  for (let i = 0; i < 3; i++) assert.deepEqual(retrievalLayers(run()), first);
  const shipped = await loadPlanFile(`${SHIPPED}/llama-3-8b-instruct-gradient-1048k.zigzag50.json`);
  assert.deepEqual(retrievalLayers(shipped), first);
});

Deno.test("shipped plans parse, fit their model and equal a fresh import", async () => {
  let count = 0;
  for (const p of patterns) {
    const L = p.gates.length;
    const H = p.gates[0].length;
    const arch = architectureOf(p.name);
    const config = configFor(L, H, 128, arch);
    for (const mode of ["zigzag", "duo"] as const) {
      const file = `${SHIPPED}/${p.name.toLowerCase()}.${mode}50.json`;
      const shipped = await loadPlanFile(file);
      const fresh = importDuo({
        tsv: p.tsv,
        config: parseDuoConfig(p.configText),
        budget: 0.5,
        mode,
        architecture: arch,
      });
      assert.deepEqual(shipped.model, {
        architecture: arch,
        num_layers: L,
        num_kv_heads: H,
        head_dim: 128,
      });
      assert.equal(shipped.mode, mode);
      assert.deepEqual(shipped.layers, fresh.layers, file);
      assert.deepEqual(shipped.heads, fresh.heads, file);
      assert.equal(shipped.sink, 128); // DuoAttention's config.json sink_size
      assert.equal(shipped.recent, 256);
      assert.equal(shipped.provenance.budget, 0.5);
      const resolved = resolvePlan(shipped, config);
      assert.equal(resolved.layers.length, L);
      const full = resolved.layers.reduce((n, l) => n + l.retrievalKvHeads.length, 0);
      assert.equal(full, mode === "duo" ? (L * H) / 2 : (L / 2) * H);
      count++;
    }
  }
  assert.equal(count, 12);
});

Deno.test("a plan for another model shape is rejected naming both shapes", async () => {
  const plan = await loadPlanFile(`${SHIPPED}/llama-3-8b-instruct-gradient-1048k.zigzag50.json`);
  assert.throws(
    () => resolvePlan(plan, configFor(5, 4, 8)),
    (e: Error) => {
      assert.match(e.message, /32 layers x 8 KV heads \(head_dim 128\)/);
      assert.match(e.message, /5 layers x 4 KV heads \(head_dim 8\)/);
      return true;
    },
  );
  // Same shape, head_dim differs.
  assert.throws(() => resolvePlan(plan, configFor(32, 8, 64)), /head_dim 128.*head_dim 64/);
  // Same shape, another architecture.
  assert.throws(
    () => resolvePlan(plan, configFor(32, 8, 128, "MistralForCausalLM")),
    /LlamaForCausalLM.*MistralForCausalLM/,
  );
});

function tinyPlan(extra: Record<string, unknown>): Record<string, unknown> {
  return {
    version: 1,
    model: { architecture: "LlamaForCausalLM", num_layers: 3, num_kv_heads: 2, head_dim: 8 },
    provenance: { method: "test", budget: 0.5, source: "test" },
    ...extra,
  };
}

Deno.test("schema errors name the file and the field", () => {
  const bad = (value: unknown, field: RegExp) =>
    assert.throws(() => parsePlan(value, "bad.json"), (e: Error) => {
      assert.match(e.message, /^bad\.json: /);
      assert.match(e.message, field);
      return true;
    });
  bad("{not json", /not valid JSON/);
  bad(tinyPlan({ mode: "sideways" }), /mode: Invalid enum value/);
  const noLayers = tinyPlan({ mode: "full" });
  delete (noLayers.model as Record<string, unknown>).num_layers;
  bad(noLayers, /model\.num_layers: Required/);
  bad(tinyPlan({ mode: "zigzag" }), /layers: required when mode is zigzag/);
  bad(tinyPlan({ mode: "zigzag", layers: ["retrieval"] }), /layers: has 1 entries/);
  bad(tinyPlan({ mode: "zigzag", layers: ["retrieval", "full", "streaming"] }), /layers\[1\]/);
  bad(
    tinyPlan({
      mode: "duo",
      heads: [["retrieval", "streaming"], ["retrieval"], ["streaming", "streaming"]],
    }),
    /heads\[1\]: has 1 entries but model.num_kv_heads is 2/,
  );
  bad(tinyPlan({ mode: "full", layers: ["retrieval", "retrieval", "retrieval"] }), /layers: only/);
  bad(tinyPlan({ mode: "full", sink: -1 }), /sink:/);
  bad(tinyPlan({ mode: "full", recent: 2.5 }), /recent:/);
  bad(tinyPlan({ mode: "full", sinks: 4 }), /Unrecognized key.*sinks/);
  bad(tinyPlan({ mode: "full", version: 2 }), /version:/);
  bad(tinyPlan({ mode: "full", scores: { layers: [1, 2] } }), /scores\.layers: has 2 entries/);
  bad({ ...tinyPlan({ mode: "full" }), provenance: undefined }, /provenance: Required/);
});

Deno.test("resolvePlan yields per-layer kinds and head lists", () => {
  const config = configFor(3, 2, 8);
  const duo = parsePlan(
    tinyPlan({
      mode: "duo",
      heads: [["retrieval", "retrieval"], ["streaming", "streaming"], ["streaming", "retrieval"]],
    }),
    "duo.json",
  );
  assert.equal(duo.sink, 64);
  assert.equal(duo.recent, 256);
  assert.deepEqual(resolvePlan(duo, config), {
    mode: "duo",
    sink: 64,
    recent: 256,
    layers: [
      {
        kind: "retrieval",
        kvHeadKinds: ["retrieval", "retrieval"],
        retrievalKvHeads: [0, 1],
        streamingKvHeads: [],
      },
      {
        kind: "streaming",
        kvHeadKinds: ["streaming", "streaming"],
        retrievalKvHeads: [],
        streamingKvHeads: [0, 1],
      },
      {
        kind: "mixed",
        kvHeadKinds: ["streaming", "retrieval"],
        retrievalKvHeads: [1],
        streamingKvHeads: [0],
      },
    ],
  });
  const zigzag = parsePlan(
    tinyPlan({
      mode: "zigzag",
      layers: ["streaming", "retrieval", "streaming"],
      sink: 4,
      recent: 16,
    }),
    "zigzag.json",
  );
  assert.deepEqual(resolvePlan(zigzag, config), {
    mode: "zigzag",
    sink: 4,
    recent: 16,
    layers: [
      {
        kind: "streaming",
        kvHeadKinds: ["streaming", "streaming"],
        retrievalKvHeads: [],
        streamingKvHeads: [0, 1],
      },
      {
        kind: "retrieval",
        kvHeadKinds: ["retrieval", "retrieval"],
        retrievalKvHeads: [0, 1],
        streamingKvHeads: [],
      },
      {
        kind: "streaming",
        kvHeadKinds: ["streaming", "streaming"],
        retrievalKvHeads: [],
        streamingKvHeads: [0, 1],
      },
    ],
  });
});

Deno.test("builtin full and streaming plans", async () => {
  const config = configFor(2, 3, 8, "llama2.c");
  const full = builtinPlan("full", config);
  assert.equal(full.mode, "full");
  assert.deepEqual(full.model, {
    architecture: "llama2.c",
    num_layers: 2,
    num_kv_heads: 3,
    head_dim: 8,
  });
  assert.equal(full.sink, 64);
  assert.equal(full.recent, 256);
  const all = {
    kind: "retrieval",
    kvHeadKinds: ["retrieval", "retrieval", "retrieval"],
    retrievalKvHeads: [0, 1, 2],
    streamingKvHeads: [],
  };
  assert.deepEqual(resolvePlan(full, config).layers, [all, all]);

  const streaming = builtinPlan("streaming", config, { sink: 4, recent: 32 });
  const none = {
    kind: "streaming",
    kvHeadKinds: ["streaming", "streaming", "streaming"],
    retrievalKvHeads: [],
    streamingKvHeads: [0, 1, 2],
  };
  assert.deepEqual(resolvePlan(streaming, config), {
    mode: "streaming",
    sink: 4,
    recent: 32,
    layers: [none, none],
  });
  assert.throws(() => builtinPlan("streaming", config, { recent: 0 }), /recent/);

  assert.deepEqual(await loadPlanArg("full", config), resolvePlan(full, config));
  assert.deepEqual((await loadPlanArg("streaming", config, { sink: 4, recent: 32 })).layers, [
    none,
    none,
  ]);
});

Deno.test("loadPlanArg reads files, applies overrides and names a missing file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const config = configFor(3, 2, 8);
    const path = `${dir}/plan.json`;
    await savePlan(
      path,
      tinyPlan({ mode: "zigzag", layers: ["retrieval", "streaming", "streaming"] }) as PlanInput,
    );
    const resolved = await loadPlanArg(path, config);
    assert.equal(resolved.mode, "zigzag");
    assert.deepEqual(resolved.layers.map((l) => l.kind), ["retrieval", "streaming", "streaming"]);
    const overridden = await loadPlanArg(path, config, { sink: 8 });
    assert.equal(overridden.sink, 8);
    assert.equal(overridden.recent, 256);
    await assert.rejects(
      () => loadPlanArg(`${dir}/nope.json`, config),
      (e: Error) => {
        assert.match(e.message, /plan file not found: .*nope\.json/);
        assert.match(e.message, /"full", "streaming"/);
        return true;
      },
    );
    await assert.rejects(() => loadPlanArg(path, configFor(4, 2, 8)), /3 layers x 2 KV heads/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("savePlan output round-trips and keeps matrix rows compact", () => {
  const p = patterns.find((x) => x.name === "Llama-3-8B-Instruct-Gradient-1048k")!;
  const plan = importDuo({
    tsv: p.tsv,
    budget: 0.5,
    mode: "duo",
    architecture: "LlamaForCausalLM",
  });
  const text = stringifyPlan(plan);
  assert.deepEqual(parsePlan(text, "x.json"), plan);
  assert.ok(text.split("\n").every((line) => line.length <= 100));
});

Deno.test("importer input errors", () => {
  const ok = "0.5\t0.25\n0.75\t1\n";
  assert.deepEqual(parseGateTsv(ok), [[0.5, 0.25], [0.75, 1]]);
  assert.throws(
    () => parseGateTsv("0.5\t0.25\n0.75\n", "g.tsv"),
    /g\.tsv: line 2: has 1 values.*ragged/,
  );
  assert.throws(
    () => parseGateTsv("0.5\t0.25\n0.75\tabc\n", "g.tsv"),
    /g\.tsv: line 2, column 2: not a number/,
  );
  assert.throws(() => parseGateTsv("0.5\t0.25\n\n0.1\t0.2\n", "g.tsv"), /line 2: empty line/);
  assert.throws(() => parseGateTsv("\n\n", "g.tsv"), /empty/);
  for (const budget of [0, -0.5, 1.5, NaN]) {
    assert.throws(
      () => importDuo({ tsv: ok, budget, mode: "duo", architecture: "X" }),
      /budget must be in \(0, 1\]/,
    );
  }
  assert.throws(() => importDuo({ tsv: ok, budget: 0.5, mode: "duo" }), /architecture/);
  // Architecture guessed from DuoAttention's model_name; sink / recent from its config.
  const plan = importDuo({
    tsv: ok,
    budget: 0.5,
    mode: "zigzag",
    config: { model_name: "models/Mistral-7B-Instruct-v0.2", sink_size: 128, recent_size: 512 },
  });
  assert.equal(plan.model.architecture, "MistralForCausalLM");
  assert.equal(plan.model.head_dim, 128);
  assert.equal(plan.sink, 128);
  assert.equal(plan.recent, 512);
  assert.deepEqual(plan.layers, ["streaming", "retrieval"]);
  const deploy = importDuo({
    tsv: ok,
    budget: 1,
    mode: "duo",
    architecture: "X",
    headDim: 8,
    config: { sink_size: 128, deploy_sink_size: 32 },
  });
  assert.equal(deploy.sink, 32);
  assert.equal(deploy.recent, 256);
  assert.equal(deploy.model.head_dim, 8);
  assert.throws(() => parseDuoConfig('{"sink_size": "big"}', "c.json"), /c\.json: sink_size/);
});

Deno.test("budget rounding is ceil, robust to float error", () => {
  assert.equal(retrievalCount(10, 0.7), 7);
  assert.equal(retrievalCount(32, 0.3), 10);
  assert.equal(retrievalCount(256, 0.5), 128);
  assert.equal(retrievalCount(32, 0.01), 1);
  assert.equal(retrievalCount(32, 1), 32);
  // Ties: equal gates go to the lower layer / head.
  const tied = "1\t1\n1\t1\n";
  const duo = importDuo({ tsv: tied, budget: 0.5, mode: "duo", architecture: "X" });
  assert.deepEqual(duo.heads, [["retrieval", "retrieval"], ["streaming", "streaming"]]);
  const zz = importDuo({ tsv: tied, budget: 0.5, mode: "zigzag", architecture: "X" });
  assert.deepEqual(zz.layers, ["retrieval", "streaming"]);
  assert.deepEqual(layerScores([[1, 2], [3, 4]], "demoted", 0.5), [0, 7]);
});

// ---- CLI, end to end ----

const cli = (...args: string[]) => runScript("cli/plan.ts", ...args);

Deno.test("plan CLI: import-duo, bad flags, identify", async () => {
  const dir = await Deno.makeTempDir();
  const model = `${PATTERNS}/Llama-3-8B-Instruct-Gradient-1048k`;
  try {
    const out = `${dir}/sub/zz.json`;
    const ok = await cli(
      "import-duo",
      "--tsv",
      `${model}/full_attention_heads.tsv`,
      `--config=${model}/config.json`,
      "--budget",
      "0.5",
      "--mode",
      "zigzag",
      "--criterion",
      "sum",
      "--out",
      out,
    );
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /16 of 32 layers retrieval/);
    assert.match(ok.stdout, /retrieval layers: \d+(, \d+){15}\n/);
    assert.match(ok.stdout, new RegExp(`wrote ${out.replaceAll(".", "\\.")}`));
    const plan = await loadPlanFile(out);
    assert.equal(plan.model.architecture, "LlamaForCausalLM"); // guessed from config.json
    assert.equal(plan.sink, 128);
    const shipped = await loadPlanFile(
      `${SHIPPED}/llama-3-8b-instruct-gradient-1048k.zigzag50.json`,
    );
    assert.deepEqual(plan.layers, shipped.layers);
    assert.ok(plan.provenance.created);

    const badFlag = await cli(
      "import-duo",
      "--tsv",
      `${model}/full_attention_heads.tsv`,
      "--budgte",
      "0.5",
    );
    assert.equal(badFlag.code, 2);
    assert.match(badFlag.stderr, /unknown flag --budgte/);
    assert.doesNotMatch(badFlag.stderr, /\n\s+at /); // no stack trace

    const badBudget = await cli(
      "import-duo",
      "--tsv",
      `${model}/full_attention_heads.tsv`,
      "--budget",
      "1.5",
      "--mode",
      "duo",
      "--out",
      `${dir}/x.json`,
    );
    assert.equal(badBudget.code, 2);
    assert.match(badBudget.stderr, /--budget must be in \(0, 1\], got 1\.5/);

    const badMode = await cli(
      "import-duo",
      "--tsv",
      "x.tsv",
      "--budget",
      "0.5",
      "--mode",
      "both",
      "--out",
      "y",
    );
    assert.equal(badMode.code, 2);
    assert.match(badMode.stderr, /--mode must be one of duo, zigzag/);

    const identify = await cli("identify", "--budget", "0.5", "--out", `${dir}/id.json`);
    assert.equal(identify.code, 2);
    assert.match(identify.stderr, /missing required flag --model/);
    assert.equal(identify.stdout, "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
