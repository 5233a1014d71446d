// deno task score: AttentionInfluence data scoring (identify/influence.ts). For each document of a
// JSONL file (one object per line with a `text` field), the model's mean per-token loss under the
// base plan and with the retrieval heads of --plan turned streaming, and their difference:
//
//   deno task score --input docs.jsonl [--output docs.influence.jsonl] [--model DIR]
//     [--plan full|streaming|FILE] [--base full|FILE] [--sink N --recent N]
//     [--max-tokens-per-doc N] [--precision f16|f32] [--top N] [--rank-by influence|relative]
//     [--batch N]
//     [--kv-cache-mb N] [--chunk N] [--tokenizer FILE]
//
// Writes the input objects plus tokens, truncated, loss, masked_loss, influence,
// relative_influence and rank (1 = highest influence), in input order, and a Markdown summary
// beside it (docs.influence.md). Two engines on one device, one per plan, score each document
// side by side (Engine.promptLogprobs: one prefill per chunk, the logits read back --batch rows at
// a time and reduced on the host); a progress bar with an ETA is drawn on a terminal.

import { CacheGeometry } from "../cache/layout.ts";
import { Engine } from "../engine/engine.ts";
import { getGpu, resolvePrecision } from "../gpu/device.ts";
import {
  describeMasked,
  documentTokens,
  maskedHeads,
  maskPlan,
  parseJsonl,
  RANK_BY,
  rankInfluence,
  scoreDocuments,
  summaryMarkdown,
  summaryPath,
  toJsonl,
} from "../identify/influence.ts";
import { loadModel } from "../model/load.ts";
import { loadPlanArg } from "../plans/resolve.ts";
import { CliError, parseArgs, runMain } from "../util/args.ts";
import { progress } from "../util/progress.ts";
import { PRECISION_FLAG, precisionFlag, WINDOW_FLAGS, windowFlags } from "./flags.ts";

const DEFAULT_MODEL = "../shared/models/passkey-llama";

const USAGE = "usage: deno task score --input FILE.jsonl [--output FILE.jsonl] [--model DIR] " +
  "[--plan full|streaming|FILE] [--base full|FILE] [--sink N --recent N] " +
  "[--max-tokens-per-doc N] [--precision f16|f32] [--top N] [--rank-by influence|relative] " +
  "[--batch N] " +
  "[--kv-cache-mb N] [--chunk N] [--tokenizer FILE] [--quiet]";

/** `docs.jsonl` -> `docs.influence.jsonl`. */
export function defaultOutput(input: string): string {
  return input.replace(/\.jsonl?$/, "") + ".influence.jsonl";
}

async function main(): Promise<number> {
  const a = parseArgs(Deno.args, {
    booleans: ["help", "quiet"],
    values: [
      "model",
      "tokenizer",
      "input",
      "output",
      "plan",
      "base",
      ...WINDOW_FLAGS,
      "max-tokens-per-doc",
      PRECISION_FLAG,
      "top",
      "rank-by",
      "batch",
      "kv-cache-mb",
      "chunk",
    ],
  });
  if (a.boolean("help")) {
    console.log(USAGE);
    return 0;
  }
  if (a.positionals.length > 0) {
    throw new CliError(`unexpected argument ${JSON.stringify(a.positionals[0])} (use --input)`);
  }
  const input = a.string("input");
  const output = a.optionalString("output") ?? defaultOutput(input);
  if (output === input) throw new CliError(`--output must differ from --input (${input})`);
  const modelPath = a.optionalString("model") ?? DEFAULT_MODEL;
  const planArg = a.optionalString("plan") ?? "full";
  const baseArg = a.optionalString("base") ?? "full";
  const window = windowFlags(a);
  const maxTokensFlag = a.optionalNumber("max-tokens-per-doc", { integer: true, min: 2 });
  const precisionArg = precisionFlag(a);
  const top = a.optionalNumber("top", { integer: true, min: 1 }) ?? 10;
  const rankBy = a.optionalChoice("rank-by", RANK_BY) ?? "influence";
  const batch = a.optionalNumber("batch", { integer: true, min: 1, max: 64 }) ?? 32;
  const kvCacheMb = a.optionalNumber("kv-cache-mb", { min: 1 });
  const chunk = a.optionalNumber("chunk", { integer: true, min: 1 });
  const quiet = a.boolean("quiet");

  let text: string;
  try {
    text = await Deno.readTextFile(input);
  } catch (e) {
    throw new CliError(`--input ${input}: ${(e as Error).message}`);
  }
  const docs = parseJsonl(text, input);

  const t0 = performance.now();
  const model = await loadModel(modelPath, {
    tokenizerPath: a.optionalString("tokenizer"),
    lazy: true,
  });
  try {
    const tokenizer = model.tokenizer;
    if (!tokenizer) throw new CliError(`--model ${modelPath} has no tokenizer (give --tokenizer)`);
    const c = model.config;
    // The plan named by --plan gives the heads to mask and, unless --sink / --recent say
    // otherwise, the window; the base plan runs with the same window.
    const mask = await loadPlanArg(planArg, c, window);
    const win = { sink: mask.sink, recent: mask.recent };
    const base = await loadPlanArg(baseArg, c, win);
    const masked = maskPlan(base, mask, win);
    const heads = maskedHeads(base, masked);
    if (heads.length === 0) {
      throw new CliError(
        `--plan ${planArg} masks nothing: none of its retrieval heads is retrieval under ` +
          `--base ${baseArg}`,
      );
    }

    const maxTokens = Math.min(maxTokensFlag ?? c.maxSeqLen, c.maxSeqLen);
    const tokenized = docs.map((d) => documentTokens(tokenizer, d, maxTokens, input));
    const longest = Math.max(...tokenized.map((t) => t.ids.length));
    if (longest <= masked.sink + masked.recent) {
      console.error(
        `warning: every document fits the streaming window (sink ${masked.sink} + recent ` +
          `${masked.recent} >= ${longest} tokens): masking changes nothing, every influence is 0`,
      );
    }

    const gpu = await getGpu();
    const precision = resolvePrecision(gpu, precisionArg);
    // One document at a time per engine (the runner runs one forward at a time anyway).
    const seqs = 1;
    const need = (p: typeof base) => {
      const g = new CacheGeometry(c, p, "f32");
      return seqs * (g.ringBytes + g.pagesFor(longest + 16) * g.pageBytes);
    };
    const kvCacheBytes = kvCacheMb !== undefined
      ? kvCacheMb * (1 << 20)
      : Math.max(16 << 20, Math.ceil(1.25 * Math.max(need(base), need(masked))) + (1 << 20));
    const engineFor = (plan: typeof base) =>
      Engine.create({
        model,
        gpu,
        precision,
        plan,
        // Logits rows per readback of promptLogprobs.
        maxBatch: batch,
        maxSeqs: seqs,
        prefillChunk: chunk ?? 256,
        decodeSteps: 1,
        maxModelLen: Math.min(c.maxSeqLen, longest + 1),
        kvCacheBytes,
        prefixCache: false,
        quiet,
      });
    const baseEngine = await engineFor(base);
    let ranked;
    let elapsedS: number;
    try {
      const maskedEngine = await engineFor(masked);
      try {
        const bar = quiet ? null : progress("scoring");
        const scored = await scoreDocuments(docs, tokenized, baseEngine, maskedEngine, {
          maxTokens,
          onProgress: (done, total, note) => bar?.update(done, total, note),
        });
        bar?.done(`${docs.length} documents`);
        ranked = rankInfluence(scored, rankBy);
        elapsedS = (performance.now() - t0) / 1000;
      } finally {
        await maskedEngine.close();
      }
    } finally {
      await baseEngine.close();
    }

    const md = summaryMarkdown(ranked, {
      model: modelPath,
      input,
      base: baseArg,
      plan: planArg,
      masked: describeMasked(heads, c.nKvHeads),
      sink: masked.sink,
      recent: masked.recent,
      precision,
      maxTokensPerDoc: maxTokens,
      elapsedS,
      rankBy,
    }, top);
    await Deno.writeTextFile(output, toJsonl(ranked));
    const mdPath = summaryPath(output);
    await Deno.writeTextFile(mdPath, md);
    if (!quiet) console.log(md);
    console.log(`wrote ${output} and ${mdPath}`);
    return 0;
  } finally {
    model.close?.();
  }
}

if (import.meta.main) runMain(main, "run `deno task score --help` for usage");
