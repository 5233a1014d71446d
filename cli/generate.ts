// deno task generate --model PATH [--tokenizer PATH] (--prompt TEXT | --prompt-ids 1,2,3)
//   --max-tokens N [--temperature T --top-k K --top-p P --min-p P --seed S]
//   [--presence-penalty X --frequency-penalty X --repetition-penalty X]
//   [--logit-bias ID:BIAS,ID:BIAS] [--top-logprobs K]
//   [--precision f16|f32] [--kv-dtype f16|f32|int8|int4] [--weights native|float|q8_0|q4_0]
//   [--plan full|streaming|FILE]
//   [--sink N --recent N]
//   [--chunk N] [--decode-steps N] [--kv-cache-mb N] [--max-model-len N] [--json]
//
// An engine with one batch row: the text is printed chunk by chunk as the server streams it.
// --top-logprobs K adds `top_logprobs` to the --json output: per generated token, the K most
// likely tokens as {id, logprob}, most likely first.

import { Engine } from "../engine/engine.ts";
import type { GenerationResult } from "../engine/request.ts";
import { CliError, parseArgs, runMain } from "../util/args.ts";
import {
  checkLogitBias,
  ENGINE_BOOLEANS,
  ENGINE_FLAGS,
  engineFlags,
  SAMPLING_FLAGS,
  samplingFlags,
} from "./flags.ts";

const USAGE = "usage: deno task generate --model PATH (--prompt TEXT | --prompt-ids 1,2,3) " +
  "--max-tokens N [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--seed S] " +
  "[--presence-penalty X] [--frequency-penalty X] [--repetition-penalty X] " +
  "[--logit-bias ID:BIAS,ID:BIAS] [--top-logprobs K] " +
  "[--precision f16|f32] [--kv-dtype f16|f32|int8|int4] [--weights native|float|q8_0|q4_0] " +
  "[--plan full|streaming|FILE] [--compensation] [--json]";

async function main(): Promise<number> {
  const a = parseArgs(Deno.args, {
    booleans: ["json", "help", ...ENGINE_BOOLEANS],
    values: [...ENGINE_FLAGS, ...SAMPLING_FLAGS, "prompt", "prompt-ids", "max-tokens"],
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
  // Reproducible unless asked otherwise: greedy, seed 0 when none is given (the server draws one).
  const sampling = samplingFlags(a);
  const engine = await Engine.create({ ...engineFlags(a), maxBatch: 1 });
  try {
    const tok = engine.tokenizer;
    const vocab = engine.config.vocabSize;
    checkLogitBias(sampling, vocab);
    if (promptIds === undefined) {
      if (!tok) {
        throw new CliError("--prompt needs a tokenizer: pass --tokenizer PATH or use --prompt-ids");
      }
      promptIds = tok.encode(prompt!);
    }
    const bad = promptIds.find((id) => id >= vocab);
    if (bad !== undefined) {
      throw new CliError(`--prompt-ids: token ${bad} is outside the vocabulary (${vocab})`);
    }
    if (promptIds.length === 0) throw new CliError("the prompt is empty");
    const context = engine.limits.context;
    if (promptIds.length + maxTokens > context) {
      throw new CliError(
        `--max-tokens: prompt (${promptIds.length}) + max tokens (${maxTokens}) exceed the ` +
          `context of ${context}`,
      );
    }
    const json = a.boolean("json");
    const enc = new TextEncoder();
    let ids: number[] = [];
    let top: [number, number][][] = [];
    let text = "";
    let finishReason: GenerationResult["finishReason"] = "length";
    let timings = { time_to_first_token_ms: 0, decode_ms: 0, decode_tokens_per_s: 0 };
    // --max-tokens 0: nothing to generate, so nothing is submitted.
    if (maxTokens > 0) {
      const job = engine.submit({ promptIds, maxTokens, sampling });
      for await (const chunk of job.chunks()) {
        if (!json && tok) Deno.stdout.writeSync(enc.encode(chunk.text));
      }
      const res = await job.result;
      if (res.finishReason === "error") throw new Error(`generation failed: ${res.error}`);
      ids = res.ids;
      top = res.topLogprobs ?? [];
      text = tok ? res.text : res.ids.join(" ");
      finishReason = res.finishReason;
      timings = {
        time_to_first_token_ms: res.timeToFirstTokenMs,
        decode_ms: res.decodeMs,
        decode_tokens_per_s: res.decodeTokensPerS,
      };
    }
    if (json) {
      console.log(JSON.stringify({
        prompt_ids: promptIds,
        generated_ids: ids,
        text,
        finish_reason: finishReason,
        precision: engine.precision,
        kv_dtype: engine.layout.kvDtype,
        plan: engine.plan.mode,
        adapter: engine.adapterName,
        ...(sampling.topLogprobs
          ? {
            top_logprobs: top.map((entries) => entries.map(([id, logprob]) => ({ id, logprob }))),
          }
          : {}),
        timings,
      }));
    } else {
      // With a tokenizer the text went out chunk by chunk; without one the ids come at the end.
      Deno.stdout.writeSync(enc.encode((tok ? "" : text) + "\n"));
    }
  } finally {
    await engine.close();
  }
  return 0;
}

if (import.meta.main) runMain(main, USAGE);
