// Pass-key retrieval accuracy of a model under a plan: prompts with a 5-digit key hidden at a
// depth of a filler haystack, ending with `\nWhat is the pass key? The pass key is`; greedy decode
// of the answer's length + 1 tokens; correct when the text starts with " " + digits and no further
// digit follows (exact match of ' '+digits, as in passkey-llama's eval.json).

import { GREEDY, type ModelRunner } from "../gpu/runner.ts";
import type { Tokenizer } from "../model/types.ts";
import { type PasskeyPrompt, passkeyPrompt } from "./calibration.ts";

export interface PasskeyOptions {
  lengths: number[];
  /** Relative depths of the key (default 0.1, 0.3, 0.5, 0.7, 0.9). */
  depths?: number[];
  /** Prompts per (length, depth) cell. */
  samples: number;
  seed: number;
  digits?: number;
  haystack?: string;
  /** Called after each batch. */
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
 * Runs the pass-key evaluation on a runner (its plan decides the attention). Prompts are prefilled
 * one by one and decoded together, `runner.opts.maxBatch` at a time. The runner's maxSeqLen must
 * leave room for the answer after the longest prompt (length + 8 is plenty for 5 digits).
 */
export async function passkeyAccuracy(
  runner: ModelRunner,
  tokenizer: Tokenizer,
  opts: PasskeyOptions,
): Promise<PasskeyResult> {
  const prompts = passkeyPrompts(tokenizer, opts);
  const outputs: PasskeyResult["outputs"] = [];
  let forwardTokens = 0;
  const batch = Math.max(1, Math.min(runner.opts.maxBatch, runner.cache.maxSeqs));
  for (let b0 = 0; b0 < prompts.length; b0 += batch) {
    const group = prompts.slice(b0, b0 + batch);
    const seqs = group.map(() => {
      const s = runner.cache.open();
      if (!s) throw new Error("passkeyAccuracy: no free sequence slot");
      return s;
    });
    try {
      const first: number[] = [];
      for (let i = 0; i < group.length; i++) {
        const r = await runner.prefill(seqs[i], group[i].tokens, GREEDY);
        first.push(r.token);
        forwardTokens += group[i].tokens.length;
      }
      const want = Math.max(...group.map((p) =>
        tokenizer.encode(p.answer, { addSpecialTokens: false }).length
      )) + 1;
      const generated = first.map((t) => [t]);
      while (generated[0].length < want) {
        const steps = Math.min(runner.opts.maxDecodeSteps, want - generated[0].length);
        const d = await runner.decode(
          seqs.map((seq, i) => ({
            seq,
            token: generated[i][generated[i].length - 1],
            sampling: GREEDY,
          })),
          steps,
        );
        d.tokens.forEach((t, i) =>
          generated[i].push(...t)
        );
        forwardTokens += steps * group.length;
      }
      group.forEach((p, i) => {
        const output = tokenizer.decode(generated[i]);
        outputs.push({
          length: p.length,
          depth: p.depth,
          answer: p.answer,
          output,
          ok: passkeyCorrect(output, p.answer),
        });
      });
    } finally {
      for (const s of seqs) runner.cache.close(s);
    }
    opts.onProgress?.(Math.min(b0 + batch, prompts.length), prompts.length);
  }
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
