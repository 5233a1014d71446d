// Held-out text loss: what a plan costs on ordinary text, beside what it costs on retrieval.
// Documents of filler prose (identify/calibration.ts's generator, the haystack the passkey model
// was trained around; seeds disjoint from the calibration and retrieval tasks', so the text is
// held out) cut to each length in tokens, scored teacher-forced by Engine.promptLogprobs: the mean
// negative log-likelihood per predicted token (nats; tokens 1.. given the ones before) and bits
// per byte (the summed NLL over the UTF-8 bytes of the predicted tokens' text, / ln 2), the
// tokenizer-independent figure the passkey model's own eval.json reports.

import type { Engine } from "../engine/engine.ts";
import { fillerText } from "../identify/calibration.ts";
import type { Tokenizer } from "../model/types.ts";

export interface TextLossOptions {
  /** Document lengths in tokens (BOS included). */
  lengths: number[];
  /** Documents per length. */
  samples: number;
  seed: number;
  onProgress?: (done: number, total: number) => void;
}

export interface TextLossCell {
  length: number;
  documents: number;
  /** Tokens predicted (every document's length - 1). */
  tokens: number;
  /** UTF-8 bytes of the predicted tokens' text. */
  bytes: number;
  /** Summed negative log-likelihood, nats. */
  nll: number;
  nats_per_token: number;
  bits_per_byte: number;
}

/** The documents, deterministic from the seed: each exactly `length` tokens. */
export function textDocuments(
  tokenizer: Tokenizer,
  o: Pick<TextLossOptions, "lengths" | "samples" | "seed">,
): { length: number; ids: number[] }[] {
  return o.lengths.flatMap((length, li) =>
    Array.from({ length: o.samples }, (_, s) => {
      // Seeds away from calibrationSet's and the tasks' (they hash small offsets of `seed`).
      const seed = (o.seed * 2654435761 + li * 97 + s * 7 + 0x7e47) >>> 0;
      // A token is at most ~8 characters for the tokenizers we load; cut to the length.
      const ids = tokenizer.encode(fillerText(seed, length * 8 + 64)).slice(0, length);
      if (ids.length < length) throw new Error(`text: filler shorter than ${length} tokens`);
      return { length, ids };
    })
  );
}

/** Scores every document on `engine` (its plan decides the attention). */
export async function textLoss(engine: Engine, o: TextLossOptions): Promise<TextLossCell[]> {
  const tokenizer = engine.tokenizer;
  if (!tokenizer) throw new Error("textLoss: the model has no tokenizer");
  const docs = textDocuments(tokenizer, o);
  const cells = new Map<number, TextLossCell>();
  let done = 0;
  for (const d of docs) {
    const { logprobs } = await engine.promptLogprobs(d.ids);
    let nll = 0;
    for (let i = 1; i < logprobs.length; i++) nll -= logprobs[i];
    // The predicted tokens' text: all but the first token (BOS or not, it is never predicted).
    const bytes = new TextEncoder().encode(
      tokenizer.decode(d.ids).slice(tokenizer.decode(d.ids.slice(0, 1)).length),
    ).length;
    let c = cells.get(d.length);
    if (!c) {
      c = {
        length: d.length,
        documents: 0,
        tokens: 0,
        bytes: 0,
        nll: 0,
        nats_per_token: 0,
        bits_per_byte: 0,
      };
      cells.set(d.length, c);
    }
    c.documents++;
    c.tokens += d.ids.length - 1;
    c.bytes += bytes;
    c.nll += nll;
    o.onProgress?.(++done, docs.length);
  }
  return [...cells.values()].map((c) => ({
    ...c,
    nats_per_token: c.nll / c.tokens,
    bits_per_byte: c.nll / Math.LN2 / c.bytes,
  }));
}
