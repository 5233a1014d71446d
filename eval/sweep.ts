// deno task eval-sweep: accuracy and text loss against KV bytes, one line per identification
// method and plan form, as the DuoAttention / RazorAttention papers plot them.
//
//   deno task eval-sweep [--model DIR] [--methods ablate,retrieval-score,razor]
//     [--budgets 0.125,0.25,0.375,0.5] [--random-seeds 3] [--lengths 512,1024] [--samples 2]
//     [--keys 4] [--sink 16 --recent 64] [--compensation off|on|both]
//     [--windows uniform|scored|both] [--precision f16|f32] [--out DIR]
//
// 1. Identification: each method runs once in duo form (identify/identify.ts), which scores every
//    KV head and every layer; the plans of every budget are those scores re-thresholded
//    (selectZigzagLayers for zigzag, selectDuoHeads for duo), so a method's line is one ranking
//    cut at several sizes. (Ablate's zigzag swap refinement is not rerun per budget.)
// 2. Baselines: random layers (zigzag, `--random-seeds` seeds per budget), the complement of
//    every method's 50% plans (its retrieval and streaming units swapped), full and streaming.
//    `--compensation both` adds every method's and the streaming plan with RazorAttention's
//    compensation token on their streaming heads (lines "... +comp"); `on` evaluates only those.
//    `--windows both` adds every method's plans with MoA-style windows of their own chosen from
//    the same scores at equal KV bytes (identify/windows.ts: lines "... +win"); `scored` only those.
// 3. Every distinct plan is evaluated (eval/eval.ts: the multi-key task and held-out text, same
//    lengths, seeds and windows), and placed at its KV bytes: the closed form
//    (retrieval units x L + the sum over streaming units of min(L, sink + recent)) / (all units x
//    L) at the longest length L, the fraction of full attention's cache (a compensated streaming
//    unit counts its sums as the positions of as many bytes; units are KV heads, each with its
//    own window in +win plans).
// Writes sweep.json, sweep.md, sweep-accuracy.svg, sweep-text.svg and the plans (plans/*.json).

import { PRECISION_FLAG, precisionFlag, WINDOW_FLAGS, windowFlags } from "../cli/flags.ts";
import { getGpu, resolvePrecision } from "../gpu/device.ts";
import { identify, type IdentifyMethod, METHODS } from "../identify/identify.ts";
import { mulberry32 } from "../model/random.ts";
import { loadModel } from "../model/load.ts";
import type { LoadedModel } from "../model/types.ts";
import { kvEntryBytes } from "../cache/layout.ts";
import { CompensatedRing } from "../cache/kinds.ts";
import { retrievalCount, selectDuoHeads, selectZigzagLayers } from "../plans/duo_import.ts";
import { parsePlan, type PlanInput } from "../plans/schema.ts";
import { builtinPlan, resolvePlan } from "../plans/resolve.ts";
import { headWindow, type ResolvedPlan, ringRecent } from "../plans/types.ts";
import { scoredWindows } from "../identify/windows.ts";
import { lineChart, type Series } from "../util/svg.ts";
import { CliError, parseArgs, runMain } from "../util/args.ts";
import { denoFmt } from "../util/fmt.ts";
import { progress } from "../util/progress.ts";
import { type EvalResult, runEval } from "./eval.ts";

export const SWEEP_SCHEMA = "zigzag-eval-sweep/1";
const DEFAULT_MODEL = "../shared/models/passkey-llama";

/** One point of the sweep: a plan, where it came from, its KV bytes and its scores. */
export interface SweepPoint {
  /** Line it belongs to: "ablate zigzag", "random zigzag", "full", ... */
  series: string;
  method: IdentifyMethod | "random" | "complement" | "full" | "streaming";
  form: "zigzag" | "duo" | "full" | "streaming";
  budget: number;
  seed?: number;
  /** Streaming heads keep the compensation token. */
  compensation?: boolean;
  /** Streaming units keep windows of their own, chosen from the method's scores. */
  windows?: "scored";
  /** The plan file evaluated (under the output folder), or "full" / "streaming". */
  plan: string;
  retrieval_units: number;
  units: number;
  /** KV bytes / full attention's at the longest length (closed form). */
  kv_fraction: number;
  multikey: number;
  multikey_by_length: Record<string, number>;
  nats_per_token: number;
  bits_per_byte: number;
}

export interface SweepResult {
  schema: typeof SWEEP_SCHEMA;
  created: string;
  model: string;
  adapter: string;
  precision: string;
  methods: IdentifyMethod[];
  budgets: number[];
  lengths: number[];
  samples: number;
  keys: number;
  sink: number;
  recent: number;
  /** Absent in sweeps written before compensation tokens: "off". */
  compensation?: CompensationChoice;
  /** Absent in sweeps written before per-layer windows: "uniform". */
  windows?: WindowsChoice;
  identification: { method: IdentifyMethod; wall_s: number; forward_tokens: number }[];
  points: SweepPoint[];
  elapsed_s: number;
}

/** Which plans the sweep evaluates: plain streaming heads, compensated ones, or both. */
export type CompensationChoice = "off" | "on" | "both";
export const COMPENSATION_CHOICES: readonly CompensationChoice[] = ["off", "on", "both"];

/** Which windows the method's plans keep: the uniform sink + recent, scored ones, or both. */
export type WindowsChoice = "uniform" | "scored" | "both";
export const WINDOWS_CHOICES: readonly WindowsChoice[] = ["uniform", "scored", "both"];

export interface SweepOptions {
  model: LoadedModel;
  modelPath: string;
  methods: IdentifyMethod[];
  budgets: number[];
  randomSeeds: number;
  lengths: number[];
  samples: number;
  keys: number;
  sink: number;
  recent: number;
  /** Default "off". */
  compensation?: CompensationChoice;
  /** Default "uniform". */
  windows?: WindowsChoice;
  seed: number;
  precision?: "f16" | "f32";
  out: string;
  quiet?: boolean;
}

/** A plan's KV bytes over full attention's at `length` tokens: every KV head holds `length`
 * positions, or its ring's (an elastic window's largest; compensated, `compPositions` more for
 * its sums). */
export function planKvFraction(plan: ResolvedPlan, length: number, compPositions = 0): number {
  let positions = 0;
  let units = 0;
  plan.layers.forEach((l, li) =>
    l.kvHeadKinds.forEach((k, h) => {
      const w = headWindow(plan, li, h);
      units++;
      positions += k === "retrieval"
        ? length
        : Math.min(length, w.sink + ringRecent(w)) + (k === "compensated" ? compPositions : 0);
    })
  );
  return positions / (units * length);
}

/** `k` distinct layers of `n`, deterministic from the seed. */
export function randomLayers(n: number, k: number, seed: number): number[] {
  const r = mulberry32(seed);
  const idx = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx.slice(0, k).sort((a, b) => a - b);
}

export async function runSweep(o: SweepOptions): Promise<SweepResult> {
  const t0 = performance.now();
  const c = o.model.config;
  const gpu = await getGpu();
  const precision = resolvePrecision(gpu, o.precision ?? "f32");
  const model = {
    architecture: c.architecture,
    num_layers: c.nLayers,
    num_kv_heads: c.nKvHeads,
    head_dim: c.headDim,
  };
  const units = c.nLayers * c.nKvHeads;
  const L = Math.max(...o.lengths);
  const choice = o.compensation ?? "off";
  const variants = choice === "both" ? [false, true] : [choice === "on"];
  // A compensated unit's sums, in positions of K and V entries (the KV cache in the precision).
  const compPositions = new CompensatedRing(o.sink, o.recent).stateWords(c.headDim) * 4 /
    (2 * kvEntryBytes(precision, c.headDim));
  const winChoice = o.windows ?? "uniform";
  const winVariants = winChoice === "both" ? [false, true] : [winChoice === "scored"];
  const suffix = (comp: boolean, win = false) => (win ? " +win" : "") + (comp ? " +comp" : "");
  await Deno.mkdir(`${o.out}/plans`, { recursive: true });

  // Plans by their content, so that equal plans are evaluated once; each evaluated plan resolved,
  // for its KV bytes.
  const files = new Map<string, string>();
  const resolved = new Map<string, ResolvedPlan>([
    ["full", resolvePlan(builtinPlan("full", c), c)],
    ["streaming", resolvePlan(builtinPlan("streaming", c, { sink: o.sink, recent: o.recent }), c)],
  ]);
  const planFile = async (name: string, p: PlanInput): Promise<string> => {
    const key = JSON.stringify([p.mode, p.layers, p.heads, p.compensation ?? false, p.windows]);
    const known = files.get(key);
    if (known) return known;
    const path = `${o.out}/plans/${name}.json`;
    await Deno.writeTextFile(path, await denoFmt(JSON.stringify(p, null, 2) + "\n", "json"));
    files.set(key, path);
    resolved.set(path, resolvePlan(parsePlan(p, path), c));
    return path;
  };
  // The same plan with windows of its own from the scores it carries.
  const windowed = (p: PlanInput): PlanInput => scoredWindows(parsePlan(p, "sweep plan"));
  // What every plan of the sweep shares, in plan-file order: the model, its mode, where it came
  // from, the window and whether its streaming heads are compensated.
  const common = (
    mode: "zigzag" | "duo" | "streaming",
    method: string,
    budget: number,
    comp: boolean,
  ) => ({
    version: 1 as const,
    model,
    mode,
    provenance: { source: o.modelPath, method: `eval-sweep: ${method}`, budget },
    sink: o.sink,
    recent: o.recent,
    ...(comp ? { compensation: true } : {}),
  });
  const zigzag = (
    layers: number[],
    method: string,
    budget: number,
    comp = false,
    scores?: number[],
  ): PlanInput => ({
    ...common("zigzag", method, budget, comp),
    layers: Array.from(
      { length: c.nLayers },
      (_, l) => layers.includes(l) ? "retrieval" : "streaming",
    ),
    ...(scores ? { scores: { layers: scores } } : {}),
  });
  const duo = (
    sel: boolean[][],
    method: string,
    budget: number,
    comp = false,
    scores?: number[][],
  ): PlanInput => ({
    ...common("duo", method, budget, comp),
    heads: sel.map((row) => row.map((r) => (r ? "retrieval" : "streaming"))),
    ...(scores ? { scores: { kv_heads: scores } } : {}),
  });

  type Pending = Omit<
    SweepPoint,
    | "multikey"
    | "multikey_by_length"
    | "nats_per_token"
    | "bits_per_byte"
    | "kv_fraction"
    | "units"
  >;
  const pending: Pending[] = [
    {
      series: "full",
      method: "full",
      form: "full",
      budget: 1,
      plan: "full",
      retrieval_units: units,
    },
  ];
  for (const comp of variants) {
    pending.push({
      series: `streaming${suffix(comp)}`,
      method: "streaming",
      form: "streaming",
      budget: 0,
      ...(comp ? { compensation: true } : {}),
      plan: !comp
        ? "streaming"
        : await planFile("streaming-comp", common("streaming", "streaming", 0, true)),
      retrieval_units: 0,
    });
  }
  const identification: SweepResult["identification"] = [];
  for (const method of o.methods) {
    const bar = o.quiet ? null : progress(`identify ${method}`);
    const r = await identify(o.model, {
      method,
      mode: "duo",
      budget: 0.5,
      lengths: o.lengths,
      samples: 1,
      seed: o.seed,
      sink: o.sink,
      recent: o.recent,
      precision,
      gpu,
      onProgress: (d, t, note) => bar?.update(d, t, note),
    });
    bar?.done();
    identification.push({
      method,
      wall_s: +r.wallSeconds.toFixed(1),
      forward_tokens: r.forwardTokens,
    });
    const heads = r.plan.scores?.kv_heads;
    const layers = r.plan.scores?.layers;
    if (!heads || !layers) throw new Error(`identify ${method}: no head and layer scores`);
    for (const comp of variants) {
      for (const win of winVariants) {
        const tag = (win ? "-win" : "") + (comp ? "-comp" : "");
        const flag = {
          ...(comp ? { compensation: true } : {}),
          ...(win ? { windows: "scored" as const } : {}),
        };
        const form = (p: PlanInput) => win ? windowed(p) : p;
        for (const b of o.budgets) {
          const chosen = selectZigzagLayers(layers, b);
          pending.push({
            series: `${method} zigzag${suffix(comp, win)}`,
            method,
            form: "zigzag",
            budget: b,
            ...flag,
            plan: await planFile(
              `${method}-zigzag-${b}${tag}`,
              form(zigzag(chosen, method, b, comp, layers)),
            ),
            retrieval_units: chosen.length * c.nKvHeads,
          });
          const sel = selectDuoHeads(heads, b);
          pending.push({
            series: `${method} duo${suffix(comp, win)}`,
            method,
            form: "duo",
            budget: b,
            ...flag,
            plan: await planFile(
              `${method}-duo-${b}${tag}`,
              form(duo(sel, method, b, comp, heads)),
            ),
            retrieval_units: sel.flat().filter(Boolean).length,
          });
        }
      }
    }
    // The complement at 50%: what the method left out, at the same bytes.
    const half = selectZigzagLayers(layers, 0.5);
    const rest = Array.from({ length: c.nLayers }, (_, l) => l).filter((l) => !half.includes(l));
    pending.push({
      series: "complement zigzag",
      method: "complement",
      form: "zigzag",
      budget: rest.length / c.nLayers,
      plan: await planFile(
        `${method}-zigzag-complement`,
        zigzag(rest, `${method} complement`, 0.5),
      ),
      retrieval_units: rest.length * c.nKvHeads,
    });
    const selHalf = selectDuoHeads(heads, 0.5).map((row) => row.map((x) => !x));
    pending.push({
      series: "complement duo",
      method: "complement",
      form: "duo",
      budget: selHalf.flat().filter(Boolean).length / units,
      plan: await planFile(`${method}-duo-complement`, duo(selHalf, `${method} complement`, 0.5)),
      retrieval_units: selHalf.flat().filter(Boolean).length,
    });
  }
  for (const b of o.budgets) {
    for (let s = 1; s <= o.randomSeeds; s++) {
      const chosen = randomLayers(c.nLayers, retrievalCount(c.nLayers, b), s * 7919 + o.seed);
      pending.push({
        series: "random zigzag",
        method: "random",
        form: "zigzag",
        budget: b,
        seed: s,
        plan: await planFile(`random-zigzag-${b}-${s}`, zigzag(chosen, `random seed ${s}`, b)),
        retrieval_units: chosen.length * c.nKvHeads,
      });
    }
  }

  const distinct = [...new Set(pending.map((p) => p.plan))];
  const r: EvalResult = await runEval({
    model: o.model,
    modelPath: o.modelPath,
    plans: distinct,
    lengths: o.lengths,
    depths: [0.5],
    samples: o.samples,
    seed: o.seed,
    sink: o.sink,
    recent: o.recent,
    precision,
    tasks: ["multikey", "text"],
    keys: o.keys,
    quiet: o.quiet,
  });
  const points: SweepPoint[] = pending.map((p) => {
    const e = r.plans.find((x) => x.plan === p.plan)!;
    return {
      ...p,
      units,
      kv_fraction: planKvFraction(resolved.get(p.plan)!, L, compPositions),
      multikey: e.multikey!.overall,
      multikey_by_length: e.multikey!.by_length,
      nats_per_token: e.text!.nats_per_token,
      bits_per_byte: e.text!.bits_per_byte,
    };
  });
  return {
    schema: SWEEP_SCHEMA,
    created: new Date().toISOString(),
    model: o.modelPath,
    adapter: gpu.adapterName,
    precision,
    methods: o.methods,
    budgets: o.budgets,
    lengths: o.lengths,
    samples: o.samples,
    keys: o.keys,
    sink: o.sink,
    recent: o.recent,
    compensation: choice,
    windows: winChoice,
    identification,
    points,
    elapsed_s: +((performance.now() - t0) / 1000).toFixed(1),
  };
}

/** Each line's points by KV bytes (random seeds averaged per budget). */
export function sweepSeries(r: SweepResult, y: (p: SweepPoint) => number): Series[] {
  const names = [...new Set(r.points.map((p) => p.series))];
  return names.map((name, i) => {
    const ps = r.points.filter((p) => p.series === name);
    const byX = new Map<number, number[]>();
    for (const p of ps) byX.set(p.kv_fraction, [...(byX.get(p.kv_fraction) ?? []), y(p)]);
    const points = [...byX.entries()].sort((a, b) => a[0] - b[0]).map(([x, ys]) =>
      [x, ys.reduce((a, v) => a + v, 0) / ys.length] as [number, number]
    );
    return {
      name,
      points,
      dashed: name.includes("duo") || name.startsWith("random"),
      // A method's zigzag and duo lines (and their +comp lines) share a color.
      color: seriesColor(name, i),
    };
  });
}

const METHOD_COLORS: Record<string, string> = {
  full: "#444444",
  streaming: "#8c564b",
  ablate: "#1f77b4",
  "retrieval-score": "#d62728",
  razor: "#2ca02c",
  random: "#9467bd",
  complement: "#7f7f7f",
};

/** A line's color by its method; "+comp" lines a lighter shade of it, "+win" ones a darker. */
function seriesColor(name: string, i: number): string | undefined {
  const base = METHOD_COLORS[name.split(" ")[0]];
  if (!base) return ["#17becf", "#bcbd22", "#e377c2"][i % 3];
  let c = [1, 3, 5].map((k) => parseInt(base.slice(k, k + 2), 16));
  // Half way to white; two thirds of the way to black.
  if (name.endsWith("+comp")) c = c.map((v) => (v + 255) / 2);
  if (name.includes("+win")) c = c.map((v) => v / 1.6);
  return "#" + c.map((v) => Math.round(v).toString(16).padStart(2, "0")).join("");
}

/** The Markdown table: every point, by line then bytes. */
export function sweepMarkdown(r: SweepResult): string {
  const pct = (v: number) => `${(v * 100).toFixed(0)}%`;
  const L = [
    `Budget sweep on \`${r.model}\` (${r.adapter}, ${r.precision}; sink ${r.sink} + recent ` +
    `${r.recent}${
      (r.compensation ?? "off") === "off"
        ? ""
        : r.compensation === "on"
        ? ", every streaming head compensated"
        : "; +comp: streaming heads with the compensation token"
    }${
      (r.windows ?? "uniform") === "uniform"
        ? ""
        : "; +win: per-layer (duo: per-head) windows chosen from the method's scores, at the " +
          "uniform window's KV bytes"
    }; multi-key: ${r.keys} codes per document, ${r.samples} documents per length at ` +
    `${r.lengths.join(", ")} tokens; text: ${r.samples} held-out documents per length). KV ` +
    `bytes are the fraction of full attention's cache at ${Math.max(...r.lengths)} tokens.`,
    "",
    `| line | budget | KV bytes | multi-key | ${
      r.lengths.map((l) => `@${l}`).join(" | ")
    } | nats / token | plan |`,
    `| --- | ---: | ---: | ---: | ${r.lengths.map(() => "---:").join(" | ")} | ---: | --- |`,
  ];
  const order = [...new Set(r.points.map((p) => p.series))];
  const sorted = [...r.points].sort((a, b) =>
    order.indexOf(a.series) - order.indexOf(b.series) || a.kv_fraction - b.kv_fraction ||
    (a.seed ?? 0) - (b.seed ?? 0)
  );
  for (const p of sorted) {
    L.push(
      `| ${p.series}${p.seed ? ` (seed ${p.seed})` : ""} | ${p.budget.toFixed(3)} | ${
        p.kv_fraction.toFixed(3)
      } | ${pct(p.multikey)} | ${
        r.lengths.map((l) => pct(p.multikey_by_length[l])).join(" | ")
      } | ${p.nats_per_token.toFixed(4)} | ${p.plan.replace(/^.*\//, "")} |`,
    );
  }
  L.push(
    "",
    "Identification: " +
      r.identification.map((x) => `${x.method} ${x.wall_s} s (${x.forward_tokens} forward tokens)`)
        .join(", ") +
      `; the whole sweep ${r.elapsed_s} s.`,
  );
  return L.join("\n") + "\n";
}

function list(s: string, flag: string): number[] {
  const out = s.split(",").map((v) => Number(v.trim()));
  if (out.some((v) => !Number.isFinite(v))) throw new CliError(`--${flag}: bad list "${s}"`);
  return out;
}

async function main(): Promise<number> {
  const a = parseArgs(Deno.args, {
    booleans: ["help"],
    values: [
      "model",
      "methods",
      "budgets",
      "random-seeds",
      "lengths",
      "samples",
      "keys",
      "seed",
      "out",
      "compensation",
      "windows",
      ...WINDOW_FLAGS,
      PRECISION_FLAG,
    ],
  });
  if (a.boolean("help")) {
    console.log(
      "usage: deno task eval-sweep [--model DIR] [--methods ablate,retrieval-score,razor] " +
        "[--budgets 0.125,0.25,0.375,0.5] [--random-seeds N] [--lengths 512,1024] [--samples N] " +
        "[--keys N] [--seed S] [--sink N --recent N] [--compensation off|on|both] " +
        "[--windows uniform|scored|both] " +
        "[--precision f16|f32] [--out DIR]",
    );
    return 0;
  }
  const methods = (a.optionalString("methods") ?? METHODS.join(",")).split(",").map((s) =>
    s.trim()
  );
  for (const m of methods) {
    if (!(METHODS as readonly string[]).includes(m)) {
      throw new CliError(`--methods: "${m}" is not one of ${METHODS.join(", ")}`);
    }
  }
  const budgets = list(a.optionalString("budgets") ?? "0.125,0.25,0.375,0.5", "budgets");
  if (budgets.some((b) => !(b > 0 && b <= 1))) throw new CliError("--budgets must lie in (0, 1]");
  const modelPath = a.optionalString("model") ?? DEFAULT_MODEL;
  const model = await loadModel(modelPath);
  const window = windowFlags(a);
  const out = a.optionalString("out") ?? "eval/results/sweep";
  const r = await runSweep({
    model,
    modelPath,
    methods: methods as IdentifyMethod[],
    budgets,
    randomSeeds: a.optionalNumber("random-seeds", { integer: true, min: 0 }) ?? 3,
    lengths: list(a.optionalString("lengths") ?? "512,1024", "lengths"),
    samples: a.optionalNumber("samples", { integer: true, min: 1 }) ?? 2,
    keys: a.optionalNumber("keys", { integer: true, min: 2 }) ?? 4,
    seed: a.optionalNumber("seed", { integer: true, min: 0 }) ?? 1,
    sink: window.sink ?? 16,
    recent: window.recent ?? 64,
    compensation: a.optionalChoice("compensation", COMPENSATION_CHOICES) ?? "off",
    windows: a.optionalChoice("windows", WINDOWS_CHOICES) ?? "uniform",
    precision: precisionFlag(a),
    out,
  });
  // Formatted as `deno fmt` wants them: the results are committed.
  await Deno.writeTextFile(
    `${out}/sweep.json`,
    await denoFmt(JSON.stringify(r, null, 2) + "\n", "json"),
  );
  const md = sweepMarkdown(r);
  await Deno.writeTextFile(`${out}/sweep.md`, await denoFmt(md, "md"));
  const chart = (title: string, yLabel: string, y: (p: SweepPoint) => number) =>
    lineChart({
      title,
      xLabel: `KV bytes / full attention's at ${Math.max(...r.lengths)} tokens`,
      yLabel,
      series: sweepSeries(r, y),
      width: 760,
      xFormat: (v) => v.toFixed(2),
    });
  await Deno.writeTextFile(
    `${out}/sweep-accuracy.svg`,
    await denoFmt(
      chart("Multi-key accuracy against KV bytes", "accuracy", (p) => p.multikey),
      "svg",
    ),
  );
  await Deno.writeTextFile(
    `${out}/sweep-text.svg`,
    await denoFmt(
      chart("Held-out text loss against KV bytes", "nats per token", (p) => p.nats_per_token),
      "svg",
    ),
  );
  console.log(md);
  console.log(`wrote ${out}/sweep.json, sweep.md, sweep-accuracy.svg, sweep-text.svg`);
  return 0;
}

if (import.meta.main) runMain(main);
