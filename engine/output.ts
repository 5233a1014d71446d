// Sampled tokens -> a request's output: the one place that decides where a generation stops (the
// model's EOS ids unless ignored, the request's stop ids, its stop strings, max_tokens) and that
// turns ids into text (engine/text.ts's TextStream). Every caller of the engine, the server's
// routes, the CLI, the eval, gets its text and finish reason from here.

import type { Tokenizer } from "../model/types.ts";
import type { GenerationChunk, GenerationRequest } from "./request.ts";
import { TextStream } from "./text.ts";

export class RequestOutput {
  readonly ids: number[] = [];
  readonly logprobs: number[] = [];
  /** Per kept id, its top log-probabilities [id, logprob] (when the sampler returns them). */
  topLogprobs: [number, number][][] | null = null;
  /** Set once the output is over: "stop" or "length". */
  finishReason: "stop" | "length" | null = null;
  /** The stop string or stop id that ended it (null for EOS or length). */
  stopReason: string | number | null = null;
  readonly #stopIds: Set<number>;
  readonly #text: TextStream | null;

  constructor(
    readonly request: GenerationRequest,
    eosIds: readonly number[],
    tokenizer: Tokenizer | null,
  ) {
    this.#stopIds = new Set([...(request.ignoreEos ? [] : eosIds), ...(request.stopIds ?? [])]);
    this.#text = tokenizer
      ? new TextStream(tokenizer, request.promptIds, request.stopStrings ?? [])
      : null;
  }

  get finished(): boolean {
    return this.finishReason !== null;
  }

  /** The generated text so far (cut before a stop string); "" without a tokenizer. */
  get text(): string {
    return this.#text?.text ?? "";
  }

  /** Where each kept id's text starts in `text`. */
  get textOffsets(): number[] {
    return this.#text ? this.#text.offsets.slice(0, this.ids.length) : [];
  }

  /**
   * Takes sampled tokens in order until one ends the output, and returns what they add. Tokens
   * after the stop (the rest of a readback) are dropped; a stop id or EOS is not kept.
   */
  accept(
    tokens: readonly number[],
    logprobs: readonly number[],
    top?: readonly [number, number][][],
  ): GenerationChunk {
    const first = this.ids.length;
    if (top && !this.topLogprobs) this.topLogprobs = [];
    for (let i = 0; i < tokens.length && !this.finished; i++) {
      const t = tokens[i];
      if (this.#stopIds.has(t)) {
        this.finishReason = "stop";
        this.stopReason = this.request.stopIds?.includes(t) ? t : null;
        break;
      }
      this.ids.push(t);
      this.logprobs.push(logprobs[i]);
      if (this.topLogprobs) this.topLogprobs.push(top?.[i] ?? []);
      if (this.#text?.push(t)) {
        this.finishReason = "stop";
        this.stopReason = this.#text.stoppedBy;
      } else if (this.ids.length >= this.request.maxTokens) {
        this.finishReason = "length";
      }
    }
    if (this.finished) this.#text?.finish();
    return {
      ids: this.ids.slice(first),
      logprobs: this.logprobs.slice(first),
      ...(this.topLogprobs ? { topLogprobs: this.topLogprobs.slice(first) } : {}),
      text: this.#text?.take(this.finished) ?? "",
      offsets: this.#text ? this.#text.offsets.slice(first, this.ids.length) : [],
    };
  }
}
