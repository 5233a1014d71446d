// deno task eval: retrieval accuracy per plan on a real model (../shared/models/passkey-llama by
// default), exact match of " " + digits, greedy, fixed seeds. Tasks (--tasks):
//   passkey   one pass key on a grid of lengths x depths (eval/passkey.ts);
//   multikey  --keys named codes per document, each asked by name (eval/multikey.ts): harder,
//             it separates plans that both find a single key;
//   text      held-out prose, teacher-forced: nats per token and bits per byte (eval/text.ts),
//             what a plan costs where no retrieval is asked for.
// Writes JSON, Markdown tables and one SVG heatmap per plan, with progress on a TTY.
//
//   deno task eval [--model DIR] [--plans full,streaming,zigzag.json,...] [--lengths 256,512]
//     [--depths 0.1,0.5,0.9] [--samples N] [--seed S] [--sink 16 --recent 64]
//     [--tasks passkey,multikey,text] [--keys 4]
//     [--precision f16|f32] [--kv-dtypes f16,int8,int4] [--quick] [--out DIR]
//
// With several --kv-dtypes every plan runs over a cache of each, and the first is the reference
// the others are held to: int8 must equal it on every cell, int4 stay within 5 points of it at
// every length (issue 15's targets; f16 / f32 as a later dtype: equal, like int8).

import { PRECISION_FLAG, precisionFlag, WINDOW_FLAGS, windowFlags } from "../cli/flags.ts";
import { Engine, KV_DTYPES, type KvDtype } from "../engine/engine.ts";
import { getGpu, resolvePrecision } from "../gpu/device.ts";
import { loadModel } from "../model/load.ts";
import type { LoadedModel } from "../model/types.ts";
import { loadPlanArg } from "../plans/resolve.ts";
import { hasOwnWindows } from "../plans/types.ts";
import { CliError, parseArgs, runMain } from "../util/args.ts";
import { denoFmt } from "../util/fmt.ts";
import { progress } from "../util/progress.ts";
import { accuracyHeatmap } from "./heatmap.ts";
import { multikeyAccuracy, type MultikeyCell } from "./multikey.ts";
import { DEFAULT_DEPTHS, passkeyAccuracy, type PasskeyCell } from "./passkey.ts";
import { textLoss, type TextLossCell } from "./text.ts";

/** The eval's tasks (`--tasks`). */
export const EVAL_TASKS = ["passkey", "multikey", "text"] as const;
export type EvalTask = typeof EVAL_TASKS[number];

const DEFAULT_MODEL = "../shared/models/passkey-llama";
export const EVAL_SCHEMA = "zigzag-eval/1";

export interface PlanEval {
  /** What was passed to --plans. */
  plan: string;
  /** How the KV cache stored keys and values. */
  kv_dtype: KvDtype;
  mode: string;
  sink: number;
  recent: number;
  /** The plan's layers keep windows of their own (sink and recent are its defaults). */
  per_layer_windows?: boolean;
  retrieval_layers: number[];
  cells: PasskeyCell[];
  /** Accuracy per length, in [0, 1]. */
  by_length: Record<string, number>;
  /** Accuracy over every prompt. */
  overall: number;
  forward_tokens: number;
  wall_s: number;
  /** The multi-key task (absent when it did not run). */
  multikey?: {
    keys: number;
    cells: MultikeyCell[];
    by_length: Record<string, number>;
    overall: number;
    forward_tokens: number;
    /** Prompt tokens the prefix cache restored (each document is computed once). */
    cached_tokens: number;
    wall_s: number;
  };
  /** The held-out text task (absent when it did not run). */
  text?: {
    cells: TextLossCell[];
    /** Over every length. */
    nats_per_token: number;
    bits_per_byte: number;
    wall_s: number;
  };
}

export interface EvalResult {
  schema: typeof EVAL_SCHEMA;
  created: string;
  model: string;
  adapter: string;
  deno: string;
  precision: string;
  /** The KV dtypes each plan ran with; the first is the reference of `kv_target`. */
  kv_dtypes: KvDtype[];
  /** The tasks that ran (absent in results written before the multi-key task: passkey). */
  tasks?: EvalTask[];
  /** Codes per document of the multi-key task. */
  keys?: number;
  seed: number;
  samples: number;
  lengths: number[];
  depths: number[];
  plans: PlanEval[];
  /** Plans (other than full) within 5 points of full at every length where full >= 90%. */
  target: { description: string; results: { plan: string; met: boolean; worst_gap: number }[] };
  /** Each plan over each later KV dtype against the same plan over the first. */
  kv_target: { description: string; results: KvTargetResult[] };
}

export interface KvTargetResult {
  plan: string;
  kv_dtype: KvDtype;
  /** "equal": every cell's accuracy equal to the reference's; "within 5": every length within
   * 5 points. */
  rule: "equal" | "within 5";
  met: boolean;
  /** Largest shortfall against the reference over lengths, points (negative: better). */
  worst_gap: number;
  /** Cells (length x depth) whose accuracy differs from the reference's. */
  cells_differing: number;
}

export interface EvalOptions {
  model: LoadedModel;
  modelPath: string;
  plans: string[];
  lengths: number[];
  depths: number[];
  samples: number;
  seed: number;
  sink: number;
  recent: number;
  precision?: "f16" | "f32";
  /** KV dtypes to run every plan with (default: the precision alone). */
  kvDtypes?: KvDtype[];
  /** Default: passkey alone. */
  tasks?: EvalTask[];
  /** Codes per multi-key document (default 4). */
  keys?: number;
  quiet?: boolean;
}

/** "sink + recent" of a plan's row; "per layer" when its layers have windows of their own. */
function windowLabel(p: PlanEval): string {
  if (p.mode === "full") return "-";
  return p.per_layer_windows ? `per layer (${p.sink} + ${p.recent})` : `${p.sink} + ${p.recent}`;
}

export async function runEval(o: EvalOptions): Promise<EvalResult> {
  const gpu = await getGpu();
  const precision = resolvePrecision(gpu, o.precision ?? "f32");
  const tokenizer = o.model.tokenizer;
  if (!tokenizer) throw new CliError(`--model ${o.modelPath}: the model has no tokenizer`);
  const maxLen = Math.max(...o.lengths) + 16;
  if (maxLen > o.model.config.maxSeqLen + 16) {
    throw new CliError(`--lengths: ${Math.max(...o.lengths)} exceeds the model's context`);
  }
  const kvDtypes = o.kvDtypes?.length ? o.kvDtypes : [precision];
  const tasks: EvalTask[] = o.tasks?.length ? o.tasks : ["passkey"];
  const keys = o.keys ?? 4;
  const plans: PlanEval[] = [];
  for (const [name, kv] of o.plans.flatMap((n) => kvDtypes.map((k) => [n, k] as const))) {
    // Plans with per-layer windows keep them; the others are evaluated at the eval's window.
    const plan = await loadPlanArg(name, o.model.config, {
      sink: o.sink,
      recent: o.recent,
      keepWindows: true,
    });
    const engine = await Engine.create({
      model: o.model,
      gpu,
      precision,
      kvDtype: kv,
      plan,
      prefillChunk: 256,
      maxBatch: 8,
      decodeSteps: 8,
      kvCacheBytes: 256 << 20,
      maxModelLen: Math.min(o.model.config.maxSeqLen, maxLen),
    });
    const bar = o.quiet ? null : progress(`eval ${name}${kvDtypes.length > 1 ? ` ${kv}` : ""}`);
    const t0 = performance.now();
    let res;
    let multi: PlanEval["multikey"];
    let text: PlanEval["text"];
    try {
      res = tasks.includes("passkey")
        ? await passkeyAccuracy(engine, {
          lengths: o.lengths,
          depths: o.depths,
          samples: o.samples,
          seed: o.seed,
          onProgress: (d, t) => bar?.update(d, t, "passkey"),
        })
        : { cells: [], byLength: {}, forwardTokens: 0 };
      if (tasks.includes("multikey")) {
        const m0 = performance.now();
        const m = await multikeyAccuracy(engine, {
          lengths: o.lengths,
          keys,
          samples: o.samples,
          seed: o.seed,
          onProgress: (d, t) => bar?.update(d, t, "multikey"),
        });
        const n = m.cells.reduce((a, c) => a + c.total, 0);
        multi = {
          keys,
          cells: m.cells,
          by_length: Object.fromEntries(Object.entries(m.byLength)),
          overall: n ? m.cells.reduce((a, c) => a + c.correct, 0) / n : 0,
          forward_tokens: m.forwardTokens,
          cached_tokens: m.cachedTokens,
          wall_s: (performance.now() - m0) / 1000,
        };
      }
      if (tasks.includes("text")) {
        const t0 = performance.now();
        const cells = await textLoss(engine, {
          lengths: o.lengths,
          samples: o.samples,
          seed: o.seed,
          onProgress: (d, t) => bar?.update(d, t, "text"),
        });
        const sum = (f: (c: TextLossCell) => number) => cells.reduce((a, c) => a + f(c), 0);
        text = {
          cells,
          nats_per_token: sum((c) => c.nll) / sum((c) => c.tokens),
          bits_per_byte: sum((c) => c.nll) / Math.LN2 / sum((c) => c.bytes),
          wall_s: (performance.now() - t0) / 1000,
        };
      }
    } finally {
      await engine.close();
    }
    const wall = (performance.now() - t0) / 1000;
    bar?.done();
    const total = res.cells.reduce((a, c) => a + c.total, 0);
    plans.push({
      plan: name,
      kv_dtype: kv,
      mode: plan.mode,
      sink: plan.sink,
      recent: plan.recent,
      ...(hasOwnWindows(plan) ? { per_layer_windows: true } : {}),
      retrieval_layers: plan.layers.flatMap((l, i) => l.kind === "retrieval" ? [i] : []),
      cells: res.cells,
      by_length: Object.fromEntries(Object.entries(res.byLength).map(([k, v]) => [k, v])),
      overall: total ? res.cells.reduce((a, c) => a + c.correct, 0) / total : 0,
      forward_tokens: res.forwardTokens,
      wall_s: wall,
      ...(multi ? { multikey: multi } : {}),
      ...(text ? { text } : {}),
    });
  }
  const base = kvDtypes[0];
  const full = plans.find((p) => p.mode === "full" && p.kv_dtype === base);
  // The targets are the pass-key task's.
  const scored = tasks.includes("passkey") ? plans : [];
  const results = scored.filter((p) => p !== full && p.kv_dtype === base).map((p) => {
    let worst = 0;
    for (const l of o.lengths) {
      const f = full?.by_length[l] ?? 0;
      if (f >= 0.9) worst = Math.max(worst, (f - (p.by_length[l] ?? 0)) * 100);
    }
    return { plan: p.plan, met: full !== undefined && worst <= 5, worst_gap: worst };
  });
  const kvResults = scored.filter((p) => p.kv_dtype !== base).map((p): KvTargetResult => {
    const ref = plans.find((q) => q.plan === p.plan && q.kv_dtype === base)!;
    const rule = p.kv_dtype === "int4" ? "within 5" : "equal";
    let worst = -Infinity;
    for (const l of o.lengths) worst = Math.max(worst, (ref.by_length[l] - p.by_length[l]) * 100);
    const differing = p.cells.filter((c) => {
      const r = ref.cells.find((x) => x.length === c.length && x.depth === c.depth)!;
      return r.correct !== c.correct || r.total !== c.total;
    }).length;
    const met = rule === "equal" ? differing === 0 : worst <= 5;
    return {
      plan: p.plan,
      kv_dtype: p.kv_dtype,
      rule,
      met,
      worst_gap: worst,
      cells_differing: differing,
    };
  });
  return {
    schema: EVAL_SCHEMA,
    created: new Date().toISOString(),
    model: o.modelPath,
    adapter: gpu.adapterName,
    deno: Deno.version.deno,
    precision,
    kv_dtypes: kvDtypes,
    tasks,
    ...(tasks.includes("multikey") ? { keys } : {}),
    seed: o.seed,
    samples: o.samples,
    lengths: o.lengths,
    depths: o.depths,
    plans,
    target: {
      description: "accuracy within 5 points of full wherever full is >= 90% (worst gap, points)",
      results,
    },
    kv_target: {
      description: `each plan over each KV dtype against the same plan over ${base}: int8 ` +
        "(and float dtypes) equal on every cell, int4 within 5 points at every length",
      results: kvResults,
    },
  };
}

/** The Markdown table: one row per plan, accuracy per length. */
export function evalMarkdown(r: EvalResult): string {
  const pct = (v: number) => `${(v * 100).toFixed(0)}%`;
  const tasks = r.tasks ?? ["passkey"];
  const lines = tasks.includes("passkey") ? passkeyMarkdown(r) : [];
  if (r.plans.some((p) => p.multikey)) {
    if (lines.length) lines.push("");
    lines.push(
      `Several keys asked by name on \`${r.model}\` (${r.keys} codes per document, each asked ` +
        `in its own prompt; ${r.samples} documents per length, seed ${r.seed}; a document's first ` +
        `question runs first, so the prefix cache can restore the document for the others: ` +
        `pages always, streaming layers when a ring snapshot covers a page boundary of the ` +
        `shared prefix):`,
      "",
      `| plan | KV | sink + recent | ${r.lengths.join(" | ")} | all | prompt tokens cached |`,
      `| --- | --- | --- | ${r.lengths.map(() => "---").join(" | ")} | --- | ---: |`,
    );
    for (const p of r.plans) {
      const m = p.multikey;
      if (!m) continue;
      const sr = windowLabel(p);
      lines.push(
        `| ${p.plan} | ${p.kv_dtype ?? r.precision} | ${sr} | ${
          r.lengths.map((l) => pct(m.by_length[l])).join(" | ")
        } | ${pct(m.overall)} | ${m.cached_tokens} |`,
      );
    }
  }
  if (r.plans.some((p) => p.text)) {
    if (lines.length) lines.push("");
    lines.push(
      `Held-out text (filler prose from seeds no other task draws, ${r.samples} documents per ` +
        "length, teacher-forced; bits per byte over every length; lower is better), nats per token:",
      "",
      `| plan | KV | sink + recent | ${r.lengths.join(" | ")} | bits per byte |`,
      `| --- | --- | --- | ${r.lengths.map(() => "---:").join(" | ")} | ---: |`,
    );
    for (const p of r.plans) {
      const x = p.text;
      if (!x) continue;
      const sr = windowLabel(p);
      lines.push(
        `| ${p.plan} | ${p.kv_dtype ?? r.precision} | ${sr} | ${
          r.lengths.map((l) => x.cells.find((c) => c.length === l)?.nats_per_token.toFixed(4))
            .join(" | ")
        } | ${x.bits_per_byte.toFixed(4)} |`,
      );
    }
  }
  return lines.join("\n") + "\n";
}

/** The pass-key table and its targets. */
function passkeyMarkdown(r: EvalResult): string[] {
  const pct = (v: number) => `${(v * 100).toFixed(0)}%`;
  const lines = [
    `Pass-key accuracy on \`${r.model}\` (${r.adapter}, ${r.precision}, KV ` +
    `${(r.kv_dtypes ?? [r.precision]).join(" / ")}; ${r.samples} prompts ` +
    `per length x depth, depths ${r.depths.join(", ")}, seed ${r.seed}):`,
    "",
    `| plan | KV | sink + recent | layers all-retrieval | ${r.lengths.join(" | ")} | all |`,
    `| --- | --- | --- | --- | ${r.lengths.map(() => "---").join(" | ")} | --- |`,
  ];
  for (const p of r.plans) {
    const sr = windowLabel(p);
    const layers = p.mode === "full"
      ? "all"
      : p.retrieval_layers.length
      ? p.retrieval_layers.join(", ")
      : "none";
    lines.push(
      `| ${p.plan} | ${p.kv_dtype ?? r.precision} | ${sr} | ${layers} | ${
        r.lengths.map((l) => pct(p.by_length[l])).join(" | ")
      } | ${pct(p.overall)} |`,
    );
  }
  lines.push("");
  for (const t of r.target.results) {
    lines.push(
      `- ${t.plan}: ${t.met ? "meets" : "misses"} the target (worst gap ${
        t.worst_gap.toFixed(1)
      } points where full >= 90%)`,
    );
  }
  // (Files written before KV dtypes existed have neither field.)
  for (const t of r.kv_target?.results ?? []) {
    lines.push(
      `- ${t.plan} over ${t.kv_dtype} KV: ${t.met ? "meets" : "misses"} "${t.rule}" against ` +
        `${r.kv_dtypes[0]} (worst gap ${t.worst_gap.toFixed(1)} points, ${t.cells_differing} ` +
        "cells differ)",
    );
  }
  return lines;
}

function list(s: string, flag: string, parse: (v: string) => number): number[] {
  const out = s.split(",").map((v) => parse(v.trim()));
  if (out.some((v) => !Number.isFinite(v))) throw new CliError(`--${flag}: bad list "${s}"`);
  return out;
}

/** File name of a plan's accuracy heatmap (`kv`: its KV dtype, when the run had several). */
export function heatmapName(plan: string, kv?: string): string {
  return `eval-${
    plan.replace(/^.*\//, "").replace(/\.json$/, "").replace(/[^A-Za-z0-9._-]/g, "_")
  }${kv ? `-${kv}` : ""}.svg`;
}

async function main(): Promise<number> {
  const a = parseArgs(Deno.args, {
    booleans: ["quick", "help"],
    values: [
      "model",
      "plans",
      "lengths",
      "depths",
      "samples",
      "seed",
      "out",
      ...WINDOW_FLAGS,
      PRECISION_FLAG,
      "kv-dtypes",
      "tasks",
      "keys",
    ],
  });
  if (a.boolean("help")) {
    console.log(
      "usage: deno task eval [--model DIR] [--plans full,streaming,FILE] [--lengths 256,512] " +
        "[--depths 0.1,0.5] [--samples N] [--seed S] [--sink N --recent N] [--precision f16|f32] " +
        "[--kv-dtypes f16,int8,int4] [--tasks passkey,multikey,text] [--keys N] [--quick] " +
        "[--out DIR]",
    );
    return 0;
  }
  const quick = a.boolean("quick");
  const modelPath = a.optionalString("model") ?? DEFAULT_MODEL;
  const model = await loadModel(modelPath);
  const shipped = await shippedPlansFor(model);
  const plans = (a.optionalString("plans") ?? ["full", "streaming", ...shipped].join(","))
    .split(",").map((s) => s.trim()).filter(Boolean);
  const lengths = list(
    a.optionalString("lengths") ?? (quick ? "256,512" : "256,512,1024,2048"),
    "lengths",
    (v) => parseInt(v, 10),
  );
  const depths = list(
    a.optionalString("depths") ?? (quick ? "0.1,0.5,0.9" : DEFAULT_DEPTHS.join(",")),
    "depths",
    Number,
  );
  if (depths.some((d) => d < 0 || d > 1)) throw new CliError("--depths must lie in [0, 1]");
  const samples = a.optionalNumber("samples", { integer: true, min: 1 }) ?? (quick ? 2 : 6);
  const seed = a.optionalNumber("seed", { integer: true, min: 0 }) ?? 1;
  const window = windowFlags(a);
  const kvArg = a.optionalString("kv-dtypes");
  const kvDtypes = kvArg?.split(",").map((s) => s.trim()).filter(Boolean);
  for (const k of kvDtypes ?? []) {
    if (!(KV_DTYPES as readonly string[]).includes(k)) {
      throw new CliError(`--kv-dtypes: "${k}" is not one of ${KV_DTYPES.join(", ")}`);
    }
  }
  if (kvDtypes && new Set(kvDtypes).size !== kvDtypes.length) {
    throw new CliError("--kv-dtypes: each dtype at most once");
  }
  const tasks = (a.optionalString("tasks") ?? EVAL_TASKS.join(",")).split(",").map((s) => s.trim())
    .filter(Boolean);
  for (const t of tasks) {
    if (!(EVAL_TASKS as readonly string[]).includes(t)) {
      throw new CliError(`--tasks: "${t}" is not one of ${EVAL_TASKS.join(", ")}`);
    }
  }
  if (tasks.length === 0) throw new CliError("--tasks: name at least one task");
  const keys = a.optionalNumber("keys", { integer: true, min: 2 }) ?? 4;
  const result = await runEval({
    model,
    modelPath,
    plans,
    lengths,
    depths,
    samples,
    seed,
    sink: window.sink ?? 16,
    recent: window.recent ?? 64,
    precision: precisionFlag(a),
    kvDtypes: kvDtypes as KvDtype[] | undefined,
    tasks: tasks as EvalTask[],
    keys,
  });
  const out = a.optionalString("out") ?? "eval/results";
  await Deno.mkdir(out, { recursive: true });
  // Formatted as `deno fmt` wants them: the results are committed.
  await Deno.writeTextFile(
    `${out}/eval.json`,
    await denoFmt(JSON.stringify(result, null, 2) + "\n", "json"),
  );
  const md = evalMarkdown(result);
  await Deno.writeTextFile(`${out}/eval.md`, await denoFmt(md, "md"));
  for (const p of result.plans) {
    const kv = result.kv_dtypes.length > 1 ? p.kv_dtype : undefined;
    await Deno.writeTextFile(
      `${out}/${heatmapName(p.plan, kv)}`,
      await denoFmt(
        accuracyHeatmap(
          p.cells,
          `${p.plan}${kv ? ` (${kv} KV)` : ""}: pass-key accuracy`,
          result.lengths,
          result.depths,
        ),
        "svg",
      ),
    );
  }
  console.log(md);
  console.log(`wrote ${out}/eval.json, ${out}/eval.md and ${result.plans.length} heatmaps`);
  return 0;
}

/** Shipped plans whose fingerprint fits this model (identified or imported for it). */
async function shippedPlansFor(model: LoadedModel): Promise<string[]> {
  const dir = new URL("../plans/shipped/", import.meta.url);
  const found: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.endsWith(".json")) continue;
    // Repository-relative when run from the repository root, as the tasks are.
    const abs = decodeURIComponent(new URL(e.name, dir).pathname);
    const path = abs.startsWith(`${Deno.cwd()}/`) ? abs.slice(Deno.cwd().length + 1) : abs;
    try {
      await loadPlanArg(path, model.config);
      found.push(path);
    } catch { /* a plan for another model */ }
  }
  return found.sort();
}

if (import.meta.main) runMain(main);
