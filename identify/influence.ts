// AttentionInfluence (Hua et al. 2025, "AttentionInfluence: Adopting Attention Head Influence for
// Weak-to-Strong Pretraining Data Selection"): rank documents by how much a model's loss on them
// rises when its retrieval heads are masked. Documents whose later tokens can only be predicted by
// looking far back (repeated strings, facts stated early and used late, reasoning over context)
// lose the most; ordinary local text barely changes.
//
// Here the "masked" model is the same model with the retrieval heads of a plan (plans/) turned
// streaming (attention sinks + a recent window), the base model runs under another plan (default
// "full"), and each document's loss is the mean negative log-likelihood of its tokens given the
// ones before (BOS included as the tokenizer adds it; the first token is not predicted):
//   loss        = -mean_{i>=1} log p_base(x_i | x_<i)
//   masked_loss = -mean_{i>=1} log p_masked(x_i | x_<i)
//   influence   = masked_loss - loss           (ranked: 1 = highest)
//   relative_influence = influence / loss      (the paper's score, (L_masked - L_ref) / L_ref)
//
// The CLI is `deno task score` (cli/score.ts); everything here but `scoreDocuments` is pure.

import type { Tokenizer } from "../model/types.ts";
import { type HeadKind, layerAttention, type PlanMode, type ResolvedPlan } from "../plans/types.ts";

/** A bad input file: names the file and line. */
export class InfluenceInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InfluenceInputError";
  }
}

/** One document of the input: its object as read, and where it was. */
export interface InfluenceDoc {
  /** 1-based line number in the input file. */
  line: number;
  /** The JSON object of the line, passed through to the output. */
  record: Record<string, unknown>;
  text: string;
}

/**
 * Parses JSONL: one JSON object per line with a non-empty string `text` field (other fields are
 * kept). Blank lines are skipped. Errors name `fileName:line`.
 */
export function parseJsonl(text: string, fileName: string): InfluenceDoc[] {
  const docs: InfluenceDoc[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].replace(/\r$/, "");
    if (raw.trim() === "") continue;
    const where = `${fileName}:${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (e) {
      throw new InfluenceInputError(`${where}: not valid JSON: ${(e as Error).message}`);
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new InfluenceInputError(`${where}: expected a JSON object with a "text" field`);
    }
    const record = value as Record<string, unknown>;
    if (typeof record.text !== "string") {
      throw new InfluenceInputError(
        `${where}: "text" must be a string` +
          (record.text === undefined ? " (the field is missing)" : `, got ${typeof record.text}`),
      );
    }
    if (record.text === "") throw new InfluenceInputError(`${where}: "text" is empty`);
    docs.push({ line: i + 1, record, text: record.text });
  }
  if (docs.length === 0) throw new InfluenceInputError(`${fileName}: no documents`);
  return docs;
}

/** Mean negative log-likelihood of tokens 1.. (entry 0, the unpredicted first token, is skipped). */
export function meanNll(logprobs: ArrayLike<number>): number {
  if (logprobs.length < 2) throw new RangeError("a loss needs at least two tokens");
  let sum = 0;
  for (let i = 1; i < logprobs.length; i++) sum += logprobs[i];
  return -sum / (logprobs.length - 1);
}

/**
 * `base` with every KV head that is retrieval in `mask` turned streaming; the other heads keep
 * their kind in `base`. The window (sink, recent) is `window`'s, else `mask`'s. Both plans must be
 * for the same model shape.
 */
export function maskPlan(
  base: ResolvedPlan,
  mask: ResolvedPlan,
  window: { sink?: number; recent?: number } = {},
): ResolvedPlan {
  if (base.layers.length !== mask.layers.length) {
    throw new Error(`plans of ${base.layers.length} and ${mask.layers.length} layers`);
  }
  const layers = base.layers.map((l, i) => {
    const m = mask.layers[i].kvHeadKinds;
    if (m.length !== l.kvHeadKinds.length) {
      throw new Error(`layer ${i}: ${l.kvHeadKinds.length} and ${m.length} KV heads`);
    }
    return layerAttention(
      l.kvHeadKinds.map((k, h): HeadKind => (m[h] === "retrieval" ? "streaming" : k)),
    );
  });
  return {
    mode: planMode(layers.map((l) => l.kind)),
    sink: window.sink ?? mask.sink,
    recent: window.recent ?? mask.recent,
    layers,
  };
}

function planMode(kinds: string[]): PlanMode {
  if (kinds.every((k) => k === "retrieval")) return "full";
  if (kinds.every((k) => k === "streaming")) return "streaming";
  return kinds.includes("mixed") ? "duo" : "zigzag";
}

/** KV heads that are retrieval in `base` and streaming in `masked`: what the masking removed. */
export function maskedHeads(base: ResolvedPlan, masked: ResolvedPlan): [number, number][] {
  const out: [number, number][] = [];
  base.layers.forEach((l, i) =>
    l.kvHeadKinds.forEach((k, h) => {
      if (k === "retrieval" && masked.layers[i].kvHeadKinds[h] === "streaming") out.push([i, h]);
    })
  );
  return out;
}

/** A short description of the heads masked: `layers 0, 1, 6, 7 (all KV heads)` or `L0H1, ...`. */
export function describeMasked(heads: [number, number][], nKvHeads: number): string {
  if (heads.length === 0) return "none";
  const byLayer = new Map<number, number[]>();
  for (const [l, h] of heads) byLayer.set(l, [...(byLayer.get(l) ?? []), h]);
  if ([...byLayer.values()].every((hs) => hs.length === nKvHeads)) {
    return `layers ${[...byLayer.keys()].join(", ")} (all KV heads)`;
  }
  return heads.map(([l, h]) => `L${l}H${h}`).join(", ");
}

/** One document's two losses. */
export interface ScoredDoc {
  doc: InfluenceDoc;
  /** Tokens scored, BOS included (after truncation). */
  tokens: number;
  /** Whether the document was cut to `tokens`. */
  truncated: boolean;
  loss: number;
  maskedLoss: number;
}

export interface RankedDoc extends ScoredDoc {
  influence: number;
  relativeInfluence: number;
  /** 1 = highest influence; ties keep input order. */
  rank: number;
}

/** What ranks the documents: the loss difference (default) or the paper's relative score. */
export type RankBy = "influence" | "relative";
export const RANK_BY: readonly RankBy[] = ["influence", "relative"];

/** Influence and rank of each document (by `by`), in input order. */
export function rankInfluence(
  scored: readonly ScoredDoc[],
  by: RankBy = "influence",
): RankedDoc[] {
  const ranked: RankedDoc[] = scored.map((s) => ({
    ...s,
    influence: s.maskedLoss - s.loss,
    relativeInfluence: s.loss > 0 ? (s.maskedLoss - s.loss) / s.loss : 0,
    rank: 0,
  }));
  const key = (r: RankedDoc) => by === "relative" ? r.relativeInfluence : r.influence;
  const order = ranked.map((_, i) => i).sort((a, b) => key(ranked[b]) - key(ranked[a]) || a - b);
  order.forEach((i, r) => (ranked[i].rank = r + 1));
  return ranked;
}

/** The output object of a document: its input fields, then the scores. */
export function outputRecord(r: RankedDoc): Record<string, unknown> {
  return {
    ...r.doc.record,
    tokens: r.tokens,
    truncated: r.truncated,
    loss: r.loss,
    masked_loss: r.maskedLoss,
    influence: r.influence,
    relative_influence: r.relativeInfluence,
    rank: r.rank,
  };
}

/** JSONL of the ranked documents, in input order. */
export function toJsonl(ranked: readonly RankedDoc[]): string {
  return ranked.map((r) => JSON.stringify(outputRecord(r)) + "\n").join("");
}

/** Where the Markdown summary goes beside `output`: `x.jsonl` -> `x.md`, else `output + .md`. */
export function summaryPath(output: string): string {
  return output.endsWith(".jsonl") ? output.slice(0, -".jsonl".length) + ".md" : `${output}.md`;
}

/** What the summary's header says about the run. */
export interface SummaryMeta {
  model: string;
  input: string;
  /** The base plan, as named. */
  base: string;
  /** The plan whose retrieval heads were masked, as named. */
  plan: string;
  masked: string;
  sink: number;
  recent: number;
  precision: string;
  maxTokensPerDoc?: number;
  elapsedS?: number;
  /** What the ranks follow (default "influence"). */
  rankBy?: RankBy;
}

function excerpt(text: string, chars = 60): string {
  const flat = text.replace(/\s+/g, " ").trim();
  const cut = flat.length > chars ? flat.slice(0, chars - 1) + "…" : flat;
  return cut.replace(/\\/g, "\\\\").replace(/\|/g, "\\|").replace(/`/g, "\\`");
}

const fix = (x: number, d = 4) => x.toFixed(d);

function table(rows: readonly RankedDoc[]): string[] {
  return [
    "| rank | line | tokens | loss | masked loss | influence | relative | text |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ...rows.map((r) =>
      `| ${r.rank} | ${r.doc.line} | ${r.tokens}${r.truncated ? "*" : ""} | ${fix(r.loss)} | ` +
      `${fix(r.maskedLoss)} | ${fix(r.influence)} | ${fix(r.relativeInfluence, 3)} | ` +
      `${excerpt(r.doc.text)} |`
    ),
  ];
}

/** The Markdown summary: the run, the means, and the top / bottom `top` documents by influence. */
export function summaryMarkdown(
  ranked: readonly RankedDoc[],
  meta: SummaryMeta,
  top = 10,
): string {
  const byRank = [...ranked].sort((a, b) => a.rank - b.rank);
  const n = byRank.length;
  const mean = (f: (r: RankedDoc) => number) => byRank.reduce((s, r) => s + f(r), 0) / n;
  const tokens = byRank.reduce((s, r) => s + r.tokens, 0);
  const truncated = byRank.filter((r) => r.truncated).length;
  const out = [
    "# AttentionInfluence",
    "",
    `- model: \`${meta.model}\`, precision ${meta.precision}`,
    `- input: \`${meta.input}\`: ${n} documents, ${tokens} tokens` +
    (truncated > 0 ? `, ${truncated} truncated to ${meta.maxTokensPerDoc ?? "the context"}` : ""),
    `- loss under \`${meta.base}\`; masked loss with the retrieval heads of \`${meta.plan}\` ` +
    `streaming (sink ${meta.sink}, recent ${meta.recent}): ${meta.masked}`,
    `- influence = masked loss - loss (mean NLL per token, nats); relative = influence / loss; ` +
    `ranked by ${meta.rankBy ?? "influence"}`,
    `- means: loss ${fix(mean((r) => r.loss))}, masked loss ${fix(mean((r) => r.maskedLoss))}, ` +
    `influence ${fix(mean((r) => r.influence))}` +
    (meta.elapsedS === undefined ? "" : `; ${meta.elapsedS.toFixed(1)} s`),
    "",
  ];
  const by = meta.rankBy ?? "influence";
  if (n <= 2 * top) {
    out.push(`## All documents by ${by}`, "", ...table(byRank));
  } else {
    out.push(
      `## Top ${top} (highest ${by})`,
      "",
      ...table(byRank.slice(0, top)),
      "",
      `## Bottom ${top} (lowest ${by})`,
      "",
      ...table(byRank.slice(n - top)),
    );
  }
  if (truncated > 0) out.push("", "\\* truncated");
  return out.join("\n") + "\n";
}

// ---- scoring ---------------------------------------------------------------------------------

/** What scores a document: `Engine.promptLogprobs` ([0] = NaN, [i] = log p(ids[i] | ids[<i])). */
export interface LogprobScorer {
  promptLogprobs(promptIds: number[]): Promise<{ logprobs: Float32Array }>;
}

export interface ScoreOptions {
  /** Tokens per document at most, BOS included (longer ones are truncated). */
  maxTokens: number;
  /** Documents in flight at once on each scorer (default 1). */
  concurrency?: number;
  onProgress?: (done: number, total: number, note: string) => void;
}

/** Tokens of a document as the model reads them (BOS first when the tokenizer adds one), cut to
 * `maxTokens`. Throws naming the line when fewer than two tokens remain (nothing to predict). */
export function documentTokens(
  tokenizer: Tokenizer,
  doc: InfluenceDoc,
  maxTokens: number,
  fileName = "input",
): { ids: number[]; truncated: boolean } {
  const all = tokenizer.encode(doc.text);
  const ids = all.slice(0, maxTokens);
  if (ids.length < 2) {
    throw new InfluenceInputError(
      `${fileName}:${doc.line}: the text is ${ids.length} token(s); a loss needs at least 2`,
    );
  }
  return { ids, truncated: ids.length < all.length };
}

/** Both losses of every document, `base` and `masked` scoring side by side. */
export async function scoreDocuments(
  docs: readonly InfluenceDoc[],
  tokenized: readonly { ids: number[]; truncated: boolean }[],
  base: LogprobScorer,
  masked: LogprobScorer,
  opts: ScoreOptions,
): Promise<ScoredDoc[]> {
  const out: ScoredDoc[] = new Array(docs.length);
  const total = tokenized.reduce((s, t) => s + t.ids.length, 0);
  let doneTokens = 0;
  let doneDocs = 0;
  let next = 0;
  const lossOf = async (s: LogprobScorer, ids: number[], what: string, line: number) => {
    const lp = (await s.promptLogprobs(ids)).logprobs;
    if (lp.length !== ids.length) {
      throw new Error(`line ${line}: ${what} gave ${lp.length} log-probs for ${ids.length} tokens`);
    }
    const loss = meanNll(lp);
    if (!Number.isFinite(loss)) throw new Error(`line ${line}: ${what} loss is ${loss}`);
    return loss;
  };
  const worker = async () => {
    while (next < docs.length) {
      const i = next++;
      const { ids, truncated } = tokenized[i];
      const [loss, maskedLoss] = await Promise.all([
        lossOf(base, ids, "the base", docs[i].line),
        lossOf(masked, ids, "the masked", docs[i].line),
      ]);
      out[i] = { doc: docs[i], tokens: ids.length, truncated, loss, maskedLoss };
      doneTokens += ids.length;
      opts.onProgress?.(doneTokens, total, `${++doneDocs}/${docs.length} docs`);
    }
  };
  const n = Math.max(1, Math.min(opts.concurrency ?? 1, docs.length));
  await Promise.all(Array.from({ length: n }, worker));
  return out;
}
