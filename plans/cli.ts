// `deno task plan <command>`: builds attention plans.
//
//   deno task plan import-duo --tsv full_attention_heads.tsv [--config config.json] --budget 0.5 \
//     --mode zigzag [--criterion sum|demoted] --out plan.json [--architecture NAME] [--head-dim N]

import { CliError, parseArgs, runMain } from "../cli/args.ts";
import { type DuoConfig, importDuo, parseDuoConfig } from "./duo_import.ts";
import { type Plan, savePlan } from "./schema.ts";

export const USAGE = `usage: deno task plan <command> [flags]

commands:
  import-duo   build a duo or zigzag plan from DuoAttention's full_attention_heads.tsv
  identify     find retrieval heads on a model (not available yet)

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
  --recent N           override the recent window`;

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
      `zigzag, budget ${budget}, criterion ${plan.provenance.criterion ?? "sum"}: ` +
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
      "sink",
      "recent",
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
  const sink = args.optionalNumber("sink", { integer: true, min: 0 });
  const recent = args.optionalNumber("recent", { integer: true, min: 1 });

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

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "import-duo":
      return await importDuoCommand(rest);
    case "identify":
      console.error(
        "error: `plan identify` is not available yet; use `plan import-duo` with published " +
          "DuoAttention patterns",
      );
      return 2;
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
