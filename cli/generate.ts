// deno task generate --model PATH [--tokenizer PATH] (--prompt TEXT | --prompt-ids 1,2,3)
//   --max-tokens N [--temperature T --top-k K --top-p P --min-p P --seed S]
//   [--precision f16|f32] [--plan full|streaming|FILE] [--sink N --recent N]
//   [--chunk N] [--decode-steps N] [--kv-cache-mb N] [--json]

import { generate } from "../engine/generate.ts";
import { setup } from "../engine/setup.ts";
import { CliError, parseArgs, runMain } from "./args.ts";

const USAGE = "usage: deno task generate --model PATH (--prompt TEXT | --prompt-ids 1,2,3) " +
  "--max-tokens N [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--seed S] " +
  "[--precision f16|f32] [--plan full|streaming|FILE] [--json]";

async function main(): Promise<number> {
  const a = parseArgs(Deno.args, {
    booleans: ["json", "help"],
    values: [
      "model",
      "tokenizer",
      "prompt",
      "prompt-ids",
      "max-tokens",
      "temperature",
      "top-k",
      "top-p",
      "min-p",
      "seed",
      "precision",
      "plan",
      "sink",
      "recent",
      "chunk",
      "decode-steps",
      "kv-cache-mb",
    ],
  });
  if (a.boolean("help")) {
    console.log(USAGE);
    return 0;
  }
  const prompt = a.optionalString("prompt");
  const promptIdsArg = a.optionalString("prompt-ids");
  if ((prompt === undefined) === (promptIdsArg === undefined)) {
    throw new CliError("give exactly one of --prompt and --prompt-ids");
  }
  let promptIds: number[] | undefined;
  if (promptIdsArg !== undefined) {
    promptIds = promptIdsArg.split(",").map((s) => Number(s.trim()));
    if (promptIds.some((v) => !Number.isInteger(v) || v < 0)) {
      throw new CliError(`--prompt-ids must be comma-separated token ids, got "${promptIdsArg}"`);
    }
  }
  const maxTokens = a.number("max-tokens", { integer: true, min: 0 });
  const temperature = a.optionalNumber("temperature", { min: 0 }) ?? 0;
  const topK = a.optionalNumber("top-k", { integer: true, min: 0 });
  const topP = a.optionalNumber("top-p", { min: 0, max: 1 });
  const minP = a.optionalNumber("min-p", { min: 0, max: 1 });
  const seed = a.optionalNumber("seed", { integer: true, min: 0 });
  const chunk = a.optionalNumber("chunk", { integer: true, min: 1 });
  const decodeSteps = a.optionalNumber("decode-steps", { integer: true, min: 1, max: 64 });
  const s = await setup({
    model: a.string("model"),
    tokenizer: a.optionalString("tokenizer"),
    precision: a.optionalChoice("precision", ["f16", "f32"] as const),
    plan: a.optionalString("plan"),
    sink: a.optionalNumber("sink", { integer: true, min: 0 }),
    recent: a.optionalNumber("recent", { integer: true, min: 1 }),
    kvCacheMb: a.optionalNumber("kv-cache-mb", { min: 1 }),
    prefillChunk: chunk,
    decodeSteps,
    maxBatch: 1,
  });
  const tok = s.model.tokenizer;
  if (promptIds === undefined) {
    if (!tok) {
      throw new CliError("--prompt needs a tokenizer: pass --tokenizer PATH or use --prompt-ids");
    }
    promptIds = tok.encode(prompt!);
  }
  const bad = promptIds.find((id) => id >= s.model.config.vocabSize);
  if (bad !== undefined) {
    throw new CliError(
      `--prompt-ids: token ${bad} is outside the vocabulary (${s.model.config.vocabSize})`,
    );
  }
  if (promptIds.length === 0) throw new CliError("the prompt is empty");
  if (promptIds.length + maxTokens > s.runner.maxSeqLen) {
    throw new CliError(
      `--max-tokens: prompt (${promptIds.length}) + max tokens (${maxTokens}) exceed the ` +
        `context of ${s.runner.maxSeqLen}`,
    );
  }
  const json = a.boolean("json");
  const enc = new TextEncoder();
  let printed = "";
  const sofar: number[] = [];
  const res = await generate(s.runner, promptIds, {
    maxTokens,
    sampling: { temperature, topK, topP, minP, seed },
    decodeSteps,
    onTokens: json || !tok ? undefined : (ids) => {
      // Stream text: print what the full decode adds (multi-byte pieces complete late).
      sofar.push(...ids);
      const text = tok.decode(sofar);
      Deno.stdout.writeSync(enc.encode(text.slice(printed.length)));
      printed = text;
    },
  });
  const text = tok ? tok.decode(res.ids) : res.ids.join(" ");
  if (json) {
    console.log(JSON.stringify({
      prompt_ids: promptIds,
      generated_ids: res.ids,
      text,
      finish_reason: res.finishReason,
      precision: s.runner.precision,
      plan: s.plan.mode,
      adapter: s.gpu.adapterName,
      timings: {
        time_to_first_token_ms: res.timeToFirstTokenMs,
        decode_ms: res.decodeMs,
        decode_tokens_per_s: res.ids.length > 1 ? (res.ids.length - 1) / (res.decodeMs / 1000) : 0,
      },
    }));
  } else {
    Deno.stdout.writeSync(enc.encode(text.slice(printed.length) + "\n"));
  }
  return 0;
}

if (import.meta.main) runMain(main, USAGE);
