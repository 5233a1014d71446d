// `deno task plan <command>`: builds attention plans.
//
//   deno task plan import-duo --tsv full_attention_heads.tsv [--config config.json] --budget 0.5 \
//     --mode zigzag [--criterion sum|demoted] --out plan.json [--architecture NAME] [--head-dim N]
//   deno task plan identify --model PATH [--method ablate|retrieval-score|razor] --budget 0.5 \
//     [--mode zigzag|duo] [--lengths 512,1024] [--samples N] [--seed S] [--sink N --recent N] \
//     [--windows uniform|scored [--window-spread S] [--window-budget F]] --out plan.json \
//     [--svg heatmap.svg]
//   deno task plan windows --plan plan.json [--spread S] [--budget F] --out plan.windows.json

import { getGpu, resolvePrecision } from "../gpu/device.ts";
import { identify, METHODS } from "../identify/identify.ts";
import { loadModel } from "../model/load.ts";
import { type DuoConfig, importDuo, parseDuoConfig } from "../plans/duo_import.ts";
import { heatmapSvg } from "../plans/heatmap.ts";
import { loadPlanFile, type Plan, PlanError, savePlan } from "../plans/schema.ts";
import { scoredWindows } from "../identify/windows.ts";
import { CliError, parseArgs, runMain } from "../util/args.ts";
import { progress } from "../util/progress.ts";
import { PRECISION_FLAG, precisionFlag, WINDOW_FLAGS, windowFlags } from "./flags.ts";

export const USAGE = `usage: deno task plan <command> [flags]

commands:
  import-duo   build a duo or zigzag plan from DuoAttention's full_attention_heads.tsv
  identify     find a model's retrieval layers (zigzag) or KV heads (duo) with forward passes
  windows      give a plan's streaming layers (duo: KV heads) windows of their own from its scores

import-duo flags:
  --tsv FILE           DuoAttention gate matrix, num_layers x num_kv_heads (required)
  --config FILE        DuoAttention config.json: sink_size / recent_size (default 64 / 256)
  --budget B           fraction of KV heads (duo) or layers (zigzag) kept as retrieval, in (0, 1];
                       keeps ceil(count * B) (required)
  --mode MODE          duo or zigzag (required)
  --criterion C        layer score: sum (default) or demoted
  --out FILE           where to write the plan JSON (required)
  --architecture NAME  model architecture (default: guessed from config.json's model_name)
  --head-dim N         the model's head dimension (default 128)
  --source TEXT        provenance.source (default: the --tsv path)
  --sink N             override the sink size
  --recent N           override the recent window

identify flags:
  --model PATH         model directory (Hugging Face) or llama2.c .bin (required)
  --tokenizer PATH     tokenizer, when not next to the model
  --method M           ablate (default; GPU engine), retrieval-score or razor (these two run a
                       CPU forward that records attention: meant for small models)
  --mode MODE          zigzag (default) or duo
  --budget B           fraction of layers (zigzag) or KV heads (duo) kept as retrieval, in (0, 1];
                       keeps ceil(count * B) (required)
  --lengths L,...      calibration document lengths in tokens (default: 1024 or the context)
  --samples N          documents per length (default 2); razor: random sequences
  --seed S             calibration seed (default 0)
  --needles K          passkeys per document (default 1: "The pass key is ..."; more: named codes)
  --haystack FILE      plain text to hide the passkeys in (default: built-in filler)
  --sink N             attention-sink tokens of streaming units (default 64)
  --recent N           recent window of streaming units (default 256)
  --precision P        ablate: f32 (default) or f16
  --chunk N            ablate: prefill chunk (default 256)
  --rounds N           ablate, zigzag: layer-swap rounds after the first choice (default 2)
  --head-scores        ablate, zigzag: also ablate each KV head alone (scores.kv_heads; the
                       heatmap's cells); costs num_layers * num_kv_heads more calibration passes
  --out FILE           where to write the plan JSON (required)
  --windows W          uniform (default): every streaming unit keeps --sink/--recent; scored:
                       MoA-style windows of their own, widest for the highest scores, at equal
                       KV bytes (see \`windows\`)
  --window-spread S    scored windows: recents from (1 - S) to (1 + S) x --recent (default 0.5)
  --window-budget F    scored windows: their recents sum to F x the uniform ones (default 1)
  --svg FILE           also write a heatmap of the scores (layers x KV heads)

windows flags:
  --plan FILE          a zigzag, duo or streaming plan with scores (required)
  --spread S           in [0, 1): recents from (1 - S) to (1 + S) x the plan's recent, by score
                       rank (default 0.5)
  --budget F           the recents sum to F x the uniform plan's: 1 (default) keeps its KV bytes
  --out FILE           where to write the plan JSON (required)`;

async function readFlagFile(flag: string, path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new CliError(`--${flag}: file not found: ${path}`);
    throw new CliError(`--${flag}: cannot read ${path}: ${(e as Error).message}`);
  }
}

/** A short human summary of what a plan keeps. */
export function describePlan(plan: Plan): string[] {
  const m = plan.model;
  const lines = [
    `model: ${m.architecture}, ${m.num_layers} layers x ${m.num_kv_heads} KV heads ` +
    `(head_dim ${m.head_dim}); sink ${plan.sink}, recent ${plan.recent}`,
  ];
  const budget = plan.provenance.budget;
  if (plan.mode === "zigzag") {
    const chosen = plan.layers!.flatMap((k, l) => (k === "retrieval" ? [l] : []));
    lines.push(
      `zigzag, budget ${budget}, ${
        typeof plan.provenance.layer_score === "string"
          ? `method ${plan.provenance.method}`
          : `criterion ${plan.provenance.criterion ?? "sum"}`
      }: ` +
        `${chosen.length} of ${m.num_layers} layers retrieval`,
      `retrieval layers: ${chosen.join(", ")}`,
    );
  } else if (plan.mode === "duo") {
    const perLayer = plan.heads!.map((row) => row.filter((k) => k === "retrieval").length);
    const total = perLayer.reduce((a, b) => a + b, 0);
    lines.push(
      `duo, budget ${budget}: ${total} of ${m.num_layers * m.num_kv_heads} KV heads retrieval`,
      `retrieval KV heads per layer: ${perLayer.join(" ")}`,
    );
  } else {
    lines.push(`${plan.mode}: every KV head ${plan.mode === "full" ? "retrieval" : "streaming"}`);
  }
  if (plan.windows) {
    const recents = plan.windows.flatMap((w) =>
      w === null ? [] : Array.isArray(w) ? w.flatMap((h) => h ? [h.recent] : []) : [w.recent]
    );
    lines.push(
      `windows of their own: recent ${Math.min(...recents)} to ${Math.max(...recents)} over ` +
        `${recents.length} streaming ${plan.mode === "duo" ? "KV heads" : "layers"} ` +
        `(sum ${recents.reduce((a, b) => a + b, 0)})`,
    );
  }
  return lines;
}

async function importDuoCommand(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return 0;
  }
  const args = parseArgs(argv, {
    values: [
      "tsv",
      "config",
      "budget",
      "mode",
      "criterion",
      "out",
      "architecture",
      "head-dim",
      "source",
      ...WINDOW_FLAGS,
    ],
  });
  if (args.positionals.length > 0) {
    throw new CliError(`unexpected argument ${JSON.stringify(args.positionals[0])}`);
  }
  const tsvPath = args.string("tsv");
  const configPath = args.optionalString("config");
  const budget = args.number("budget");
  if (!(budget > 0 && budget <= 1)) throw new CliError(`--budget must be in (0, 1], got ${budget}`);
  const mode = args.choice("mode", ["duo", "zigzag"] as const);
  const criterion = args.optionalChoice("criterion", ["sum", "demoted"] as const);
  const out = args.string("out");
  const architecture = args.optionalString("architecture");
  if (architecture !== undefined && architecture.trim() === "") {
    throw new CliError("--architecture must not be empty");
  }
  const headDim = args.optionalNumber("head-dim", { integer: true, min: 1 });
  const source = args.optionalString("source");
  const { sink, recent } = windowFlags(args);

  const tsv = await readFlagFile("tsv", tsvPath);
  let config: DuoConfig | undefined;
  if (configPath !== undefined) {
    config = parseDuoConfig(await readFlagFile("config", configPath), configPath);
  }
  if (sink !== undefined || recent !== undefined) {
    config = { ...config };
    if (sink !== undefined) config.sink_size = config.deploy_sink_size = sink;
    if (recent !== undefined) config.recent_size = config.deploy_recent_size = recent;
  }
  const plan = importDuo({
    tsv,
    tsvName: tsvPath,
    config,
    budget,
    mode,
    criterion,
    architecture,
    headDim,
    source: source ?? tsvPath,
    created: new Date().toISOString(),
  });

  const slash = out.lastIndexOf("/");
  if (slash > 0) await Deno.mkdir(out.slice(0, slash), { recursive: true });
  await savePlan(out, plan);
  for (const line of describePlan(plan)) console.log(line);
  console.log(`wrote ${out}`);
  return 0;
}

function parseLengths(raw: string | undefined, context: number): number[] {
  if (raw === undefined) return [Math.min(1024, context)];
  const parts = raw.split(",").map((p) => p.trim());
  const out = parts.map((p) => {
    const v = Number(p);
    if (p === "" || !Number.isInteger(v) || v < 16) {
      throw new CliError(`--lengths: expected integers >= 16 separated by commas, got ${raw}`);
    }
    if (v > context) {
      throw new CliError(`--lengths: ${v} exceeds the model's context of ${context} tokens`);
    }
    return v;
  });
  return out;
}

async function writeFile(path: string, text: string): Promise<void> {
  const slash = path.lastIndexOf("/");
  if (slash > 0) await Deno.mkdir(path.slice(0, slash), { recursive: true });
  await Deno.writeTextFile(path, text);
}

async function identifyCommand(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return 0;
  }
  const args = parseArgs(argv, {
    booleans: ["head-scores"],
    values: [
      "model",
      "tokenizer",
      "method",
      "mode",
      "budget",
      "lengths",
      "samples",
      "seed",
      "needles",
      "haystack",
      ...WINDOW_FLAGS,
      PRECISION_FLAG,
      "chunk",
      "rounds",
      "windows",
      "window-spread",
      "window-budget",
      "out",
      "svg",
    ],
  });
  if (args.positionals.length > 0) {
    throw new CliError(`unexpected argument ${JSON.stringify(args.positionals[0])}`);
  }
  const modelPath = args.string("model");
  const method = args.optionalChoice("method", METHODS) ?? "ablate";
  const mode = args.optionalChoice("mode", ["zigzag", "duo"] as const) ?? "zigzag";
  const budget = args.number("budget");
  if (!(budget > 0 && budget <= 1)) throw new CliError(`--budget must be in (0, 1], got ${budget}`);
  const samples = args.optionalNumber("samples", { integer: true, min: 1 }) ?? 2;
  const seed = args.optionalNumber("seed", { integer: true, min: 0 }) ?? 0;
  const needles = args.optionalNumber("needles", { integer: true, min: 1, max: 64 }) ?? 1;
  const window = windowFlags(args);
  const sink = window.sink ?? 64;
  const recent = window.recent ?? 256;
  const precisionArg = precisionFlag(args);
  const chunk = args.optionalNumber("chunk", { integer: true, min: 1, max: 4096 });
  const rounds = args.optionalNumber("rounds", { integer: true, min: 0, max: 100 });
  const windows = args.optionalChoice("windows", ["uniform", "scored"] as const) ?? "uniform";
  const windowOpts = {
    spread: args.optionalNumber("window-spread", { min: 0, max: 0.999 }),
    budget: args.optionalNumber("window-budget", { min: 0.01, max: 100 }),
  };
  if (windows === "uniform" && (windowOpts.spread ?? windowOpts.budget) !== undefined) {
    throw new CliError("--window-spread and --window-budget need --windows scored");
  }
  const out = args.string("out");
  const svg = args.optionalString("svg");
  const haystackPath = args.optionalString("haystack");
  const haystack = haystackPath === undefined
    ? undefined
    : await readFlagFile("haystack", haystackPath);
  if (haystack !== undefined && haystack.trim().length < 200) {
    throw new CliError(`--haystack: ${haystackPath} holds too little text`);
  }

  const loading = progress("loading model");
  const model = await loadModel(modelPath, {
    tokenizerPath: args.optionalString("tokenizer"),
    onProgress: (done, total) => loading.update(done, total),
  });
  loading.done();
  const lengths = parseLengths(args.optionalString("lengths"), model.config.maxSeqLen);
  if (Math.max(...lengths) <= sink + recent && method !== "razor") {
    console.error(
      `warning: every calibration document fits in the streaming window (sink ${sink} + recent ` +
        `${recent}); streaming changes nothing there. Use longer --lengths or a smaller window.`,
    );
  }
  let precision: "f16" | "f32" = "f32";
  let gpu;
  if (method === "ablate") {
    gpu = await getGpu();
    precision = resolvePrecision(gpu, precisionArg ?? "f32");
    console.error(`device: ${gpu.adapterName} (${gpu.backend}), ${precision}`);
  }
  const bar = progress(`identify (${method})`);
  const result = await identify(model, {
    method,
    mode,
    budget,
    lengths,
    samples,
    seed,
    sink,
    recent,
    needles,
    haystack,
    haystackName: haystackPath,
    precision,
    chunk,
    rounds,
    headScores: args.boolean("head-scores"),
    gpu,
    source: modelPath,
    onProgress: (done, total, note) => bar.update(done, total, note),
  });
  bar.done();
  const plan = windows === "scored" ? scoredWindows(result.plan, windowOpts) : result.plan;
  await savePlan(out, plan);
  for (const line of describePlan(plan)) console.log(line);
  const scores = result.plan.scores?.layers ?? [];
  console.log(`layer scores: ${scores.map((v) => Number(v.toPrecision(3))).join(" ")}`);
  console.log(
    `calibration: ${result.forwardTokens} forward tokens in ${result.wallSeconds.toFixed(1)} s ` +
      `(${Math.round(result.forwardTokens / Math.max(1e-9, result.wallSeconds))} tokens/s)`,
  );
  console.log(`wrote ${out}`);
  if (svg !== undefined) {
    await writeFile(svg, heatmapSvg(result.plan));
    console.log(`wrote ${svg}`);
  }
  return 0;
}

async function windowsCommand(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return 0;
  }
  const args = parseArgs(argv, { values: ["plan", "spread", "budget", "out"] });
  if (args.positionals.length > 0) {
    throw new CliError(`unexpected argument ${JSON.stringify(args.positionals[0])}`);
  }
  const path = args.string("plan");
  const spread = args.optionalNumber("spread", { min: 0, max: 0.999 });
  const budget = args.optionalNumber("budget", { min: 0.01, max: 100 });
  const out = args.string("out");
  let plan: Plan;
  try {
    plan = await loadPlanFile(path);
  } catch (e) {
    if (e instanceof PlanError) throw new CliError(`--plan: ${e.message}`);
    throw e;
  }
  try {
    plan = scoredWindows(plan, { spread, budget });
  } catch (e) {
    if (e instanceof PlanError) throw new CliError(`--plan ${path}: ${e.message}`);
    throw e;
  }
  await savePlan(out, plan);
  for (const line of describePlan(plan)) console.log(line);
  console.log(`wrote ${out}`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "import-duo":
      return await importDuoCommand(rest);
    case "identify":
      return await identifyCommand(rest);
    case "windows":
      return await windowsCommand(rest);
    case "help":
    case "--help":
    case "-h":
      console.log(USAGE);
      return 0;
    case undefined:
      throw new CliError("missing command");
    default:
      throw new CliError(`unknown command ${JSON.stringify(command)}`);
  }
}

if (import.meta.main) {
  await runMain(() => main(Deno.args), "run `deno task plan --help` for usage");
}
