// Token ids -> text while a sequence grows, and stop strings.
//
// Decoding every generated id again on each step costs O(n) per token, and decoding one id at a
// time is wrong for tokenizers whose pieces depend on their neighbours (SentencePiece's leading
// space, byte-fallback and byte-level pieces that only form a character together). As TGI and vLLM
// do, each new token's text is decode(window + token) minus decode(window), where the window
// starts a few tokens back (the prompt's tail at first) and moves on once a complete character has
// come out; text ending in U+FFFD (an incomplete UTF-8 sequence) is held until the next token.
//
// Stop strings: the text is cut before the first occurrence of any of them, and text that could
// still grow into one is not emitted until it cannot.

import type { Tokenizer } from "../model/types.ts";

const REPLACEMENT = "\uFFFD";
/** Prompt tokens kept before the first generated token as decoding context. */
const CONTEXT = 5;

export class TextStream {
  /** Generated text so far (cut before a stop string once one has appeared). */
  text = "";
  /** The stop string that ended the text, or null. */
  stoppedBy: string | null = null;
  /** Offset in `text` where each pushed token's text starts (for logprobs' text_offset). */
  readonly offsets: number[] = [];
  #ids: number[];
  #prefix: number;
  #read: number;
  #emitted = 0;
  readonly #stops: string[];
  readonly #maxStop: number;

  constructor(
    readonly tokenizer: Tokenizer,
    promptIds: readonly number[],
    stops: readonly string[] = [],
  ) {
    this.#ids = promptIds.slice(Math.max(0, promptIds.length - CONTEXT));
    this.#prefix = 0;
    this.#read = this.#ids.length;
    this.#stops = stops.filter((s) => s.length > 0);
    this.#maxStop = this.#stops.reduce((a, s) => Math.max(a, s.length), 0);
  }

  /** Appends one generated token; returns true when a stop string has just appeared. */
  push(id: number): boolean {
    if (this.stoppedBy !== null) return true;
    this.offsets.push(this.text.length);
    this.#ids.push(id);
    const delta = this.#delta(false);
    if (delta === "") return false;
    const from = Math.max(0, this.text.length - this.#maxStop + 1);
    this.text += delta;
    return this.#checkStops(from);
  }

  /** Text of the tokens still held back (an incomplete character at the end); call at the end. */
  finish(): void {
    if (this.stoppedBy !== null) return;
    const delta = this.#delta(true);
    if (delta === "") return;
    const from = Math.max(0, this.text.length - this.#maxStop + 1);
    this.text += delta;
    this.#checkStops(from);
  }

  /**
   * Text not handed out yet. Unless `final`, text that could be the start of a stop string is
   * kept back.
   */
  take(final: boolean): string {
    let end = this.text.length;
    if (!final && this.stoppedBy === null) end -= this.#partialStop();
    if (end <= this.#emitted) return "";
    const out = this.text.slice(this.#emitted, end);
    this.#emitted = end;
    return out;
  }

  #delta(force: boolean): string {
    const tok = this.tokenizer;
    const before = tok.decode(this.#ids.slice(this.#prefix, this.#read));
    const after = tok.decode(this.#ids.slice(this.#prefix));
    if (after.length <= before.length && !force) return "";
    if (after.endsWith(REPLACEMENT) && !force) return "";
    let common = 0;
    const n = Math.min(before.length, after.length);
    while (common < n && before.charCodeAt(common) === after.charCodeAt(common)) common++;
    // Normally `after` extends `before`; if not, the differing tail of `before` was held back
    // text that the new token changed, and `after` from the common prefix replaces it.
    const delta = after.slice(Math.min(common, before.length));
    this.#prefix = this.#read;
    this.#read = this.#ids.length;
    // Keep the window short: its decoded text is recomputed each token.
    if (this.#prefix > 64) {
      this.#ids = this.#ids.slice(this.#prefix);
      this.#read -= this.#prefix;
      this.#prefix = 0;
    }
    return delta;
  }

  #checkStops(from: number): boolean {
    let best = -1;
    let which: string | null = null;
    for (const s of this.#stops) {
      const i = this.text.indexOf(s, from);
      if (i >= 0 && (best < 0 || i < best)) {
        best = i;
        which = s;
      }
    }
    if (which === null) return false;
    this.text = this.text.slice(0, best);
    this.stoppedBy = which;
    return true;
  }

  /** Length of the longest tail of `text` that is a proper prefix of a stop string. */
  #partialStop(): number {
    let keep = 0;
    const t = this.text;
    for (const s of this.#stops) {
      for (let k = Math.min(s.length - 1, t.length); k > keep; k--) {
        if (t.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
      }
    }
    // An incomplete character at the very end stays back too.
    if (keep === 0 && t.endsWith(REPLACEMENT)) keep = 1;
    return keep;
  }
}
