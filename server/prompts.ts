// Prompt text to token ids without letting one huge prompt stall the server. Two measures:
//   1. A text that cannot fit is refused before it is tokenized: a tokenizer whose tokens never
//      stand for more than B bytes of input turns a text of N bytes into at least N / B tokens,
//      and a prompt needs fewer tokens than the context. (Tokenizing 8 MiB with stories260K's
//      tokenizer took 28 s and 400 MB here, all to answer "too long".)
//   2. A text that may fit but is long is tokenized on a worker thread, so health probes and
//      running streams go on meanwhile.

import type { ChatFormatter } from "../engine/chat.ts";
import { TokenizerThread } from "../model/tokenizer_thread.ts";
import type { ChatMessage, Tokenizer } from "../model/types.ts";
import { badField } from "./errors.ts";

/** Texts shorter than this (UTF-16 code units) are tokenized on the event loop: at about 3 us per
 * byte (stories260K's tokenizer on this 2-core machine) that blocks it for under 25 ms. */
export const INLINE_CHARS = 8192;

export class PromptEncoder {
  readonly #thread: TokenizerThread | null;

  constructor(
    readonly tokenizer: Tokenizer,
    /** Longest sequence; a prompt must be shorter. */
    readonly context: number,
  ) {
    this.#thread = tokenizer.portable ? new TokenizerThread(tokenizer.portable) : null;
  }

  /** The fewest tokens `text` can encode to (0 when the tokenizer promises no bound), and the
   * fewest UTF-8 bytes it has. */
  minTokens(text: string): { tokens: number; bytes: number } {
    const per = this.tokenizer.maxBytesPerToken;
    if (per === undefined) return { tokens: 0, bytes: text.length };
    // UTF-16 code units never outnumber UTF-8 bytes: enough, and free, for a huge text.
    let bytes = text.length;
    if (Math.floor(bytes / per) < this.context) bytes = new TextEncoder().encode(text).length;
    return { tokens: Math.floor(bytes / per), bytes };
  }

  /** A 400 on `field` when `text` cannot possibly fit the context (checked before tokenizing). */
  checkFits(text: string, field: string): void {
    const { tokens, bytes } = this.minTokens(text);
    if (tokens >= this.context) {
      throw badField(
        field,
        `the text is at least ${tokens} tokens (at least ${bytes} bytes, and no token of this ` +
          `tokenizer stands for more than ${this.tokenizer.maxBytesPerToken} bytes), but the ` +
          `context is ${this.context} tokens`,
        "context_length_exceeded",
      );
    }
  }

  /** Token ids of `text`, refused first when it cannot fit; long texts on the worker thread. */
  async encode(
    text: string,
    field: string,
    opts: { addSpecialTokens?: boolean } = {},
  ): Promise<number[]> {
    this.checkFits(text, field);
    if (text.length < INLINE_CHARS || !this.#thread) return this.tokenizer.encode(text, opts);
    return await this.#thread.encode(text, opts);
  }

  /** A chat rendered with its template, then encoded as `encode` does. */
  async encodeChat(
    chat: ChatFormatter,
    messages: ChatMessage[],
    addGenerationPrompt: boolean,
    field: string,
  ): Promise<number[]> {
    // Rendering is cheap (8 MiB of content in 2 ms here); the rendered text is what is checked.
    let text: string;
    try {
      text = chat.render(messages, addGenerationPrompt);
    } catch (e) {
      throw badField(field, `the chat template failed: ${(e as Error).message}`);
    }
    return await this.encode(text, field, chat.encodeOptions(text));
  }

  /** Stops the worker thread (encodes in flight reject). */
  close(): void {
    this.#thread?.close();
  }
}
