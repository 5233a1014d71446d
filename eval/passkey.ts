// Pass-key retrieval accuracy of a model under a plan: prompts with a 5-digit key hidden at a
// depth of a filler haystack, ending with `\nWhat is the pass key? The pass key is`; greedy decode
// of the answer's length + 1 tokens; correct when the text starts with " " + digits and no further
// digit follows (exact match of ' '+digits, as in passkey-llama's eval.json).

import type { Engine } from "../engine/engine.ts";
import { GREEDY } from "../engine/request.ts";
import type { Tokenizer } from "../model/types.ts";
import { type PasskeyPrompt, passkeyPrompt } from "../identify/calibration.ts";

export interface PasskeyOptions {
  lengths: number[];
  /** Relative depths of the key (default 0.1, 0.3, 0.5, 0.7, 0.9). */
  depths?: number[];
  /** Prompts per (length, depth) cell. */
  samples: number;
  seed: number;
  digits?: number;
  haystack?: string;
  /** Called as each prompt's answer comes back. */
  onProgress?: (done: number, total: number) => void;
}

export interface PasskeyCell {
  length: number;
  depth: number;
  correct: number;
  total: number;
}

export interface PasskeyResult {
  cells: PasskeyCell[];
  /** Accuracy in [0, 1] per length. */
  byLength: Record<number, number>;
  /** Every prompt with what the model produced. */
  outputs: { length: number; depth: number; answer: string; output: string; ok: boolean }[];
  /** Prompt tokens prefilled plus tokens decoded. */
  forwardTokens: number;
}

export const DEFAULT_DEPTHS = [0.1, 0.3, 0.5, 0.7, 0.9];

/** The prompts an evaluation runs, deterministic from the seed. */
export function passkeyPrompts(tokenizer: Tokenizer, opts: PasskeyOptions): PasskeyPrompt[] {
  const depths = opts.depths ?? DEFAULT_DEPTHS;
  const out: PasskeyPrompt[] = [];
  opts.lengths.forEach((length, li) =>
    depths.forEach((depth, di) => {
      for (let s = 0; s < opts.samples; s++) {
        const seed = (opts.seed * 1000003 + li * 65537 + di * 8191 + s * 131) >>> 0;
        out.push(passkeyPrompt(tokenizer, {
          length,
          depth,
          seed,
          digits: opts.digits,
          haystack: opts.haystack,
        }));
      }
    })
  );
  return out;
}

/** True when `output` is `answer` (" " + digits) not followed by another digit. */
export function passkeyCorrect(output: string, answer: string): boolean {
  return output.startsWith(answer) && !/^[0-9]/.test(output.slice(answer.length));
}

/**
 * Runs the pass-key evaluation on an engine (its plan decides the attention): every prompt is
 * submitted at once as a greedy request of its answer's length + 1 tokens, EOS ignored, and the
 * engine batches them. Its context must leave room for the answer after the longest prompt
 * (length + 8 is plenty for 5 digits).
 */
export async function passkeyAccuracy(
  engine: Engine,
  opts: PasskeyOptions,
): Promise<PasskeyResult> {
  const tokenizer = engine.tokenizer;
  if (!tokenizer) throw new Error("passkeyAccuracy: the model has no tokenizer");
  const prompts = passkeyPrompts(tokenizer, opts);
  let done = 0;
  const results = await Promise.all(prompts.map(async (p) => {
    const res = await engine.generate({
      promptIds: p.tokens,
      maxTokens: tokenizer.encode(p.answer, { addSpecialTokens: false }).length + 1,
      sampling: GREEDY,
      ignoreEos: true,
    });
    opts.onProgress?.(++done, prompts.length);
    return res;
  }));
  const outputs: PasskeyResult["outputs"] = prompts.map((p, i) => {
    const output = results[i].text;
    return {
      length: p.length,
      depth: p.depth,
      answer: p.answer,
      output,
      ok: passkeyCorrect(output, p.answer),
    };
  });
  // Every position that went through a forward pass: the prompt and the fed decode tokens.
  const forwardTokens = results.reduce((a, r) => a + (r.cache?.tokens ?? 0), 0);
  const cells: PasskeyCell[] = [];
  for (const o of outputs) {
    let cell = cells.find((c) => c.length === o.length && c.depth === o.depth);
    if (!cell) cells.push(cell = { length: o.length, depth: o.depth, correct: 0, total: 0 });
    cell.total++;
    if (o.ok) cell.correct++;
  }
  const byLength: Record<number, number> = {};
  for (const length of opts.lengths) {
    const cs = cells.filter((c) => c.length === length);
    const total = cs.reduce((a, c) => a + c.total, 0);
    byLength[length] = total === 0 ? 0 : cs.reduce((a, c) => a + c.correct, 0) / total;
  }
  return { cells, byLength, outputs, forwardTokens };
}
