// `deno task bench --serve` (or `--serve --serve-only prefix`): automatic prefix caching, many
// questions of one long document (issue 16's targets). On the pass-key model:
//   - One ~1,900-token document with 8 named codes hidden in it (identify/calibration.ts's
//     K > 1 format, the one passkey-llama was trained on) and 8 questions sent one after another,
//     each prompt = the document + `\nWhat is the code for NAME? The code for NAME is`, greedy,
//     8 new tokens each, on an engine with the shipped zigzag 50% plan and prefix caching on.
//     Measured: the time to first token of question 1 (it prefills the whole document) and of
//     questions 2-8 (they resume from the cache), the prompt tokens actually computed
//     (sum of promptTokens - cachedTokens) against one document's tokens, and the answers
//     against a prefixCache: false engine's answers for the same prompts (it runs the same
//     8 questions, so its times to first token are reported as the uncached reference).
//   - The bytes one cached prefix holds: after question 1 alone on a fresh engine,
//     cacheReport().total.bytes_cached under zigzag 50% and under the "full" plan, and against the
//     analytic full-attention bytes of that prompt (CacheLayout.fullBytes).
// Everything runs in one process: the ratios are quotients of figures of the same run. Targets
// are printed with their gaps, never asserted.

import { Engine } from "../engine/engine.ts";
import { type GenerationResult, GREEDY } from "../engine/request.ts";
import { getGpu, type Precision, resolvePrecision } from "../gpu/device.ts";
import { multiKeyDocument } from "../identify/calibration.ts";
import { loadModel } from "../model/load.ts";
import { loadPlanArg } from "../plans/resolve.ts";
import { makeTarget, type Ratio, type Target } from "./report.ts";

export const PREFIX_SCHEMA = "zigzag-bench-prefix/1";

const ROOT = new URL("../", import.meta.url).pathname;
export const PREFIX_MODEL = `${ROOT}../shared/models/passkey-llama`;
export const PREFIX_PLAN = `${ROOT}plans/shipped/passkey-llama.zigzag50.json`;

export interface PrefixBenchOptions {
  /** A Hugging Face directory with a tokenizer (default the pass-key model). */
  model?: string;
  /** The plan under test (default the shipped zigzag 50% plan of the pass-key model). */
  plan?: string;
  precision?: Precision;
  /** Tokens of the document, BOS included (at most; as close as the words allow). */
  documentTokens?: number;
  questions?: number;
  maxTokens?: number;
  seed?: number;
  onProgress?: (done: number, total: number, note?: string) => void;
}

export interface PrefixQuestion {
  name: string;
  expected: string;
  prompt_tokens: number;
  /** Prompt tokens restored from the prefix cache. */
  cached_tokens: number;
  /** prompt_tokens - cached_tokens: what the engine prefilled. */
  computed_tokens: number;
  ttft_ms: number;
  /** The same prompt on the prefixCache: false engine. */
  uncached_ttft_ms: number;
  answer: string;
  uncached_answer: string;
  /** Greedy ids equal to the uncached engine's. */
  identical: boolean;
  /** The answer starts with the code (not followed by another digit). */
  correct: boolean;
}

export interface CachedPrefixBytes {
  plan: string;
  mode: string;
  /** cacheReport().total.bytes_cached after question 1 alone on a fresh engine. */
  bytes_cached: number;
  retrieval_bytes_cached: number;
  streaming_bytes_cached: number;
  pages_cached: number;
  snapshots: number;
  ring_bytes: number;
  page_bytes: number;
}

export interface PrefixBenchResult {
  schema: typeof PREFIX_SCHEMA;
  created: string;
  model: string;
  plan: string;
  precision: string;
  adapter: string;
  seed: number;
  page_size: number;
  max_tokens: number;
  document_tokens: number;
  questions: PrefixQuestion[];
  ttft: {
    q1_ms: number;
    rest_max_ms: number;
    rest_mean_ms: number;
    /** Question 1 on the uncached engine (the same prompt, computed from token 0). */
    uncached_q1_ms: number;
    uncached_rest_mean_ms: number;
  };
  computed: { tokens: number; uncached_tokens: number };
  identical: { questions: number; equal: number; all: boolean };
  correct: { cached: number; uncached: number };
  bytes: {
    /** Question 1's prompt: the prefix cached. */
    prefix_tokens: number;
    /** CacheLayout.fullBytes(prefix_tokens): what full attention holds for it, no paging. */
    analytic_full_bytes: number;
    zigzag: CachedPrefixBytes;
    full: CachedPrefixBytes;
  };
  ratios: Ratio[];
  targets: Target[];
  elapsed_s: number;
}

const fmtBytes = (b: number) => `${(b / 1024).toFixed(1)} KiB`;

export async function runPrefixBench(o: PrefixBenchOptions = {}): Promise<PrefixBenchResult> {
  const started = performance.now();
  const modelPath = o.model ?? PREFIX_MODEL;
  const planPath = o.plan ?? PREFIX_PLAN;
  const nq = o.questions ?? 8;
  const maxTokens = o.maxTokens ?? 8;
  const seed = o.seed ?? 1;
  const model = await loadModel(modelPath);
  const tokenizer = model.tokenizer;
  if (!tokenizer) throw new Error(`${modelPath}: the prefix bench needs a tokenizer`);
  const gpu = await getGpu();
  const precision = resolvePrecision(gpu, o.precision ?? "f32");
  const docTokens = Math.min(o.documentTokens ?? 1900, model.config.maxSeqLen - 64 - maxTokens);
  const doc = multiKeyDocument(tokenizer, { documentTokens: docTokens, keys: nq, seed });
  const longest = Math.max(...doc.asks.map((a) => a.prompt.length)) + maxTokens;
  if (longest > model.config.maxSeqLen) {
    throw new Error(`prefix bench: ${longest} tokens exceed the model's ${model.config.maxSeqLen}`);
  }
  const zigzagPlan = await loadPlanArg(planPath, model.config);
  const fullPlan = await loadPlanArg("full", model.config);

  // Engines: zigzag cached, zigzag uncached, full cached (question 1 only).
  const total = 3 + nq * 2 + 1;
  let done = 0;
  const step = (note: string) => o.onProgress?.(++done, total, note);
  o.onProgress?.(0, total, "engines");
  const engine = (plan: typeof zigzagPlan, prefixCache: boolean) =>
    Engine.create({
      model,
      gpu,
      precision,
      plan,
      prefixCache,
      maxBatch: 1,
      decodeSteps: 8,
      prefillChunk: 256,
      kvCacheBytes: 64 << 20,
      maxModelLen: model.config.maxSeqLen,
      quiet: true,
    });
  const cached = await engine(zigzagPlan, true);
  const uncached = await engine(zigzagPlan, false);
  const full = await engine(fullPlan, true);
  const ask = (e: Engine, prompt: number[]): Promise<GenerationResult> =>
    e.generate({ promptIds: prompt, maxTokens, sampling: GREEDY, ignoreEos: true });
  try {
    for (const e of [cached, uncached, full]) {
      await e.warmUp();
      step("warm-up");
    }
    const bytesOf = (e: Engine, plan: string): CachedPrefixBytes => {
      const r = e.cacheReport();
      return {
        plan,
        mode: r.plan.mode,
        bytes_cached: r.total.bytes_cached,
        retrieval_bytes_cached: r.retrieval?.bytes_cached ?? 0,
        streaming_bytes_cached: r.streaming?.bytes_cached ?? 0,
        pages_cached: r.prefix_cache?.pages ?? 0,
        snapshots: r.prefix_cache?.snapshots ?? 0,
        ring_bytes: r.geometry.ring_bytes,
        page_bytes: r.geometry.page_bytes,
      };
    };
    // Question 1 on the full-attention engine: the bytes of the same prefix.
    await ask(full, doc.asks[0].prompt);
    const fullBytes = bytesOf(full, "full");
    step("full: question 1");
    // The questions in order on the cached engine; its cache after question 1 is the figure.
    const hits: GenerationResult[] = [];
    let zigzagBytes: CachedPrefixBytes | null = null;
    for (const [i, a] of doc.asks.entries()) {
      hits.push(await ask(cached, a.prompt));
      if (i === 0) zigzagBytes = bytesOf(cached, planPath.replace(ROOT, ""));
      step(`cached: question ${i + 1}`);
    }
    const misses: GenerationResult[] = [];
    for (const [i, a] of doc.asks.entries()) {
      misses.push(await ask(uncached, a.prompt));
      step(`uncached: question ${i + 1}`);
    }
    const correct = (text: string, value: string) =>
      text.startsWith(" " + value) && !/^[0-9]/.test(text.slice(value.length + 1));
    const questions: PrefixQuestion[] = doc.asks.map((a, i) => ({
      name: a.name,
      expected: " " + a.value,
      prompt_tokens: hits[i].promptTokens,
      cached_tokens: hits[i].cachedTokens,
      computed_tokens: hits[i].promptTokens - hits[i].cachedTokens,
      ttft_ms: +hits[i].timeToFirstTokenMs.toFixed(2),
      uncached_ttft_ms: +misses[i].timeToFirstTokenMs.toFixed(2),
      answer: hits[i].text,
      uncached_answer: misses[i].text,
      identical: hits[i].ids.length === misses[i].ids.length &&
        hits[i].ids.every((t, k) => t === misses[i].ids[k]),
      correct: correct(hits[i].text, a.value),
    }));
    const rest = questions.slice(1).map((q) => q.ttft_ms);
    const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
    const equal = questions.filter((q) => q.identical).length;
    const result: PrefixBenchResult = {
      schema: PREFIX_SCHEMA,
      created: new Date().toISOString(),
      model: modelPath.replace(ROOT, ""),
      plan: planPath.replace(ROOT, ""),
      precision,
      adapter: gpu.adapterName,
      seed,
      page_size: cached.layout.pageSize,
      max_tokens: maxTokens,
      document_tokens: doc.tokens,
      questions,
      ttft: {
        q1_ms: questions[0].ttft_ms,
        rest_max_ms: Math.max(...rest),
        rest_mean_ms: +mean(rest).toFixed(2),
        uncached_q1_ms: questions[0].uncached_ttft_ms,
        uncached_rest_mean_ms: +mean(questions.slice(1).map((q) => q.uncached_ttft_ms)).toFixed(2),
      },
      computed: {
        tokens: questions.reduce((s, q) => s + q.computed_tokens, 0),
        uncached_tokens: misses.reduce((s, r) => s + r.promptTokens - r.cachedTokens, 0),
      },
      identical: { questions: questions.length, equal, all: equal === questions.length },
      correct: {
        cached: questions.filter((q) => q.correct).length,
        uncached: doc.asks.filter((a, i) => correct(misses[i].text, a.value)).length,
      },
      bytes: {
        prefix_tokens: doc.asks[0].prompt.length,
        analytic_full_bytes: cached.layout.fullBytes(doc.asks[0].prompt.length),
        zigzag: zigzagBytes!,
        full: fullBytes,
      },
      ratios: [],
      targets: [],
      elapsed_s: 0,
    };
    const ratio = (id: string, label: string, numRef: string, denRef: string) => {
      const num = at(result, numRef);
      const den = at(result, denRef);
      result.ratios.push({
        id,
        label,
        value: den > 0 ? num / den : NaN,
        num,
        den,
        num_ref: numRef,
        den_ref: denRef,
      });
    };
    ratio(
      "ttft.rest_max/q1",
      "TTFT, max of questions 2-8 / question 1",
      "ttft.rest_max_ms",
      "ttft.q1_ms",
    );
    ratio(
      "ttft.rest_mean/q1",
      "TTFT, mean of questions 2-8 / question 1",
      "ttft.rest_mean_ms",
      "ttft.q1_ms",
    );
    ratio(
      "ttft.uncached_rest_mean/uncached_q1",
      "uncached TTFT, mean of questions 2-8 / question 1 (reference)",
      "ttft.uncached_rest_mean_ms",
      "ttft.uncached_q1_ms",
    );
    ratio(
      "computed/document",
      `prompt tokens computed over the ${nq} questions / one document`,
      "computed.tokens",
      "document_tokens",
    );
    ratio(
      "computed.uncached/document",
      `uncached: prompt tokens computed over the ${nq} questions / one document (reference)`,
      "computed.uncached_tokens",
      "document_tokens",
    );
    ratio(
      "bytes.zigzag/full",
      "bytes held by the cached prefix, zigzag 50% / full",
      "bytes.zigzag.bytes_cached",
      "bytes.full.bytes_cached",
    );
    ratio(
      "bytes.zigzag/analytic",
      "bytes held by the cached prefix, zigzag 50% / analytic full-attention bytes",
      "bytes.zigzag.bytes_cached",
      "bytes.analytic_full_bytes",
    );
    ratio(
      "bytes.full/analytic",
      "bytes held by the cached prefix, full / analytic full-attention bytes (whole pages)",
      "bytes.full.bytes_cached",
      "bytes.analytic_full_bytes",
    );
    const rv = (id: string) => result.ratios.find((r) => r.id === id)?.value ?? null;
    result.targets = [
      makeTarget(
        "prefix.ttft.max",
        "TTFT of questions 2-8 (max) <= 0.15x question 1",
        "<=",
        0.15,
        rv("ttft.rest_max/q1"),
        "ttft.rest_max/q1",
      ),
      makeTarget(
        "prefix.ttft.mean",
        "TTFT of questions 2-8 (mean) <= 0.15x question 1",
        "<=",
        0.15,
        rv("ttft.rest_mean/q1"),
        "ttft.rest_mean/q1",
      ),
      makeTarget(
        "prefix.computed",
        `prompt tokens computed over ${nq} questions <= 1.2x one document`,
        "<=",
        1.2,
        rv("computed/document"),
        "computed/document",
      ),
      makeTarget(
        "prefix.identical",
        `answers identical to the uncached run (${nq} of ${nq})`,
        ">=",
        nq,
        equal,
        null,
        undefined,
        "identical.equal",
      ),
      makeTarget(
        "prefix.bytes",
        "bytes held by one cached prefix, zigzag 50% <= 0.6x full",
        "<=",
        0.6,
        rv("bytes.zigzag/full"),
        "bytes.zigzag/full",
        `${result.bytes.prefix_tokens}-token prefix`,
      ),
    ];
    result.elapsed_s = +((performance.now() - started) / 1000).toFixed(1);
    return result;
  } finally {
    for (const e of [cached, uncached, full]) await e.close();
  }
}

/** Resolves `a.b` in the result (numbers only). */
function at(root: unknown, path: string): number {
  let cur: unknown = root;
  for (const part of path.split(".")) cur = (cur as Record<string, unknown>)?.[part];
  if (typeof cur !== "number") throw new Error(`prefix bench: ${path} is not a number`);
  return cur;
}

/** A Markdown summary: the questions, the cached bytes, the ratios and the targets with gaps. */
export function prefixMarkdown(r: PrefixBenchResult): string {
  const f = (v: number) => v.toFixed(3);
  const ms = (v: number) => v.toFixed(1);
  const q1 = r.questions[0];
  const L = [
    `Prefix caching, \`${r.model.replace(ROOT, "")}\` (${r.precision}) with \`${
      r.plan.replace(ROOT, "")
    }\`: one ${r.document_tokens}-token document, ${r.questions.length} questions one after ` +
    `another (document + \`\\nWhat is the code for NAME? The code for NAME is\`), greedy, ` +
    `${r.max_tokens} tokens each; pages of ${r.page_size} tokens.`,
    "",
    "| # | code for | prompt tokens | cached | computed | TTFT ms | uncached TTFT ms | answer | identical | correct |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | :---: | :---: |",
    ...r.questions.map((q, i) =>
      `| ${i + 1} | ${q.name} | ${q.prompt_tokens} | ${q.cached_tokens} | ${q.computed_tokens} | ${
        ms(q.ttft_ms)
      } | ${ms(q.uncached_ttft_ms)} | \`${JSON.stringify(q.answer).slice(1, -1)}\` | ${
        q.identical ? "yes" : "no"
      } | ${q.correct ? "yes" : "no"} |`
    ),
    "",
    `Computed ${r.computed.tokens} prompt tokens with the cache, ${r.computed.uncached_tokens} ` +
    `without; correct answers ${r.correct.cached}/${r.questions.length} cached, ` +
    `${r.correct.uncached}/${r.questions.length} uncached.`,
    "",
    `Bytes held by one cached ${r.bytes.prefix_tokens}-token prefix (question 1's prompt, after ` +
    `question 1 alone on a fresh engine; analytic full-attention bytes ${
      fmtBytes(r.bytes.analytic_full_bytes)
    }):`,
    "",
    "| plan | bytes cached | retrieval | streaming | pages | snapshots (ring bytes) |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
    ...[r.bytes.zigzag, r.bytes.full].map((b) =>
      `| ${b.mode} | ${fmtBytes(b.bytes_cached)} | ${fmtBytes(b.retrieval_bytes_cached)} | ${
        fmtBytes(b.streaming_bytes_cached)
      } | ${b.pages_cached} | ${b.snapshots} (${fmtBytes(b.ring_bytes)}) |`
    ),
    "",
    "| ratio | value |",
    "| --- | ---: |",
    ...r.ratios.map((x) => `| ${x.label} | ${f(x.value)} |`),
    "",
    "Targets (not asserted):",
    "",
    "| target | value | met | gap |",
    "| --- | ---: | :---: | --- |",
    ...r.targets.map((t) => {
      const fv = (v: number) => t.value_ref ? String(Math.round(v)) : f(v);
      const gap = t.met === null
        ? "not measured"
        : t.met
        ? `met (margin ${fv(Math.abs(t.gap!))})`
        : `missed by ${fv(t.gap!)} (needs ${f(t.factor_needed!)}x)`;
      return `| ${t.label} | ${t.value === null ? "-" : fv(t.value)} | ${
        t.met === null ? "-" : t.met ? "yes" : "no"
      } | ${gap} |`;
    }),
    "",
    `Question 1 ${ms(q1.ttft_ms)} ms to first token, questions 2-${r.questions.length} ` +
    `${ms(r.ttft.rest_mean_ms)} ms mean, ${ms(r.ttft.rest_max_ms)} ms max (${r.adapter}).`,
  ];
  return L.join("\n") + "\n";
}
