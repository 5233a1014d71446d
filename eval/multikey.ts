// Several keys asked by name: documents with `keys` named codes hidden at stratified depths
// (`The code for <word> is <digits>.`, the format passkey-llama was trained on), each code asked
// in its own prompt (the document followed by `\nWhat is the code for NAME? The code for NAME
// is`), greedy, exact match of " " + digits as in the pass-key task. Harder than one pass key:
// the answer must come from the one needle whose name matches, among several that look alike,
// so a plan that keeps too few retrieval layers answers with a neighbour's code.
//
// A document's first question runs alone and the rest after it, so with prefix caching on (the
// engine's default) later questions restore the document: retrieval pages always; streaming
// layers only when one of the first question's ring snapshots (prompt end, finish; each covers
// the ring's slack of positions) covers a page boundary inside the shared prefix.

import type { Engine } from "../engine/engine.ts";
import { GREEDY } from "../engine/request.ts";
import type { Tokenizer } from "../model/types.ts";
import { type MultiKeyDocument, multiKeyDocument } from "../identify/calibration.ts";
import { passkeyCorrect } from "./passkey.ts";

/** The longest document whose every prompt is at most `length` tokens: the question's tokens
 * depend on the tokenizer and on the names drawn, so shrink by the measured excess. */
function fitDocument(
  make: (documentTokens: number) => MultiKeyDocument,
  length: number,
): MultiKeyDocument {
  let want = length;
  for (let i = 0; i < 8; i++) {
    const doc = make(want);
    const over = Math.max(...doc.asks.map((a) => a.prompt.length)) - length;
    if (over <= 0) return doc;
    want -= over;
  }
  throw new Error(`multikey: no document fits ${length} tokens with its questions`);
}

export interface MultikeyOptions {
  /** Longest prompt in tokens (document + question; BOS included). */
  lengths: number[];
  /** Codes per document (>= 2). */
  keys: number;
  /** Documents per length. */
  samples: number;
  seed: number;
  /** Called as each question's answer comes back. */
  onProgress?: (done: number, total: number) => void;
}

export interface MultikeyCell {
  length: number;
  correct: number;
  total: number;
}

export interface MultikeyResult {
  cells: MultikeyCell[];
  /** Accuracy in [0, 1] per length. */
  byLength: Record<number, number>;
  outputs: { length: number; name: string; answer: string; output: string; ok: boolean }[];
  /** Prompt tokens computed (prefix-cache hits excluded) plus tokens decoded. */
  forwardTokens: number;
  /** Prompt tokens restored from the prefix cache. */
  cachedTokens: number;
}

/** The documents of an evaluation, deterministic from the seed. */
export function multikeyDocuments(
  tokenizer: Tokenizer,
  opts: Pick<MultikeyOptions, "lengths" | "keys" | "samples" | "seed">,
) {
  return opts.lengths.flatMap((length, li) =>
    Array.from({ length: opts.samples }, (_, s) => ({
      length,
      doc: fitDocument(
        (documentTokens) =>
          multiKeyDocument(tokenizer, {
            documentTokens,
            keys: opts.keys,
            seed: (opts.seed * 1000003 + li * 65537 + s * 131 + 17) >>> 0,
          }),
        length,
      ),
    }))
  );
}

export async function multikeyAccuracy(
  engine: Engine,
  opts: MultikeyOptions,
): Promise<MultikeyResult> {
  const tokenizer = engine.tokenizer;
  if (!tokenizer) throw new Error("multikeyAccuracy: the model has no tokenizer");
  const docs = multikeyDocuments(tokenizer, opts);
  const total = docs.reduce((a, d) => a + d.doc.asks.length, 0);
  let done = 0;
  const outputs: MultikeyResult["outputs"] = [];
  let forwardTokens = 0;
  let cachedTokens = 0;
  for (const { length, doc } of docs) {
    const ask = async (a: (typeof doc.asks)[number]) => {
      const res = await engine.generate({
        promptIds: a.prompt,
        maxTokens: tokenizer.encode(a.answer, { addSpecialTokens: false }).length + 1,
        sampling: GREEDY,
        ignoreEos: true,
      });
      if (res.finishReason === "error") throw new Error(`multikey: ${res.error}`);
      opts.onProgress?.(++done, total);
      forwardTokens += res.promptTokens - res.cachedTokens + res.ids.length;
      cachedTokens += res.cachedTokens;
      return {
        length,
        name: a.name,
        answer: a.answer,
        output: res.text,
        ok: passkeyCorrect(res.text, a.answer),
      };
    };
    // The first question fills the prefix cache; the others then share the document.
    const first = await ask(doc.asks[0]);
    outputs.push(first, ...await Promise.all(doc.asks.slice(1).map(ask)));
  }
  const cells: MultikeyCell[] = opts.lengths.map((length) => {
    const os = outputs.filter((o) => o.length === length);
    return { length, correct: os.filter((o) => o.ok).length, total: os.length };
  });
  const byLength: Record<number, number> = {};
  for (const c of cells) byLength[c.length] = c.total ? c.correct / c.total : 0;
  return { cells, byLength, outputs, forwardTokens, cachedTokens };
}
