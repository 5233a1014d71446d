// The prompt's own tokens and log-probabilities, for POST /v1/completions `echo` and
// POST /v1/generate `prompt_logprobs` (issue 18). Both score the prompt teacher-forced with
// Engine.promptLogprobs (beside the engine's loop, in a cache slot of its own); log-probs are the
// log-softmax of the raw model logits at the position before each token.

import { CacheExhaustedError, type Engine, type PromptLogprobs } from "../engine/engine.ts";
import { type Job, RequestTooLargeError } from "../engine/request.ts";
import { TextStream } from "../engine/text.ts";
import type { Tokenizer } from "../model/types.ts";
import { ApiError, badField } from "./errors.ts";
import { tokenText } from "./generation.ts";
import { needTokenizer } from "./route.ts";

/**
 * Engine.promptLogprobs as a route calls it: a prompt over the model length is a 400 naming
 * `promptField`; no room in the KV cache beside the running requests a 429 (retry later).
 */
export async function scorePrompt(
  engine: Engine,
  ids: number[],
  topK: number,
  promptField: string,
): Promise<PromptLogprobs> {
  try {
    return await engine.promptLogprobs(ids, { topK });
  } catch (e) {
    if (e instanceof RequestTooLargeError) {
      throw badField(promptField, e.message, "context_length_exceeded");
    }
    if (e instanceof CacheExhaustedError) {
      throw new ApiError(429, e.message + "; retry later", "rate_limit_error", null, "cache_full", {
        "Retry-After": "1",
      });
    }
    throw e;
  }
}

/** The legacy completions' logprobs object (OpenAI's shape). */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[] | null;
  text_offset: number[];
}

/** What `echo` puts before a choice's completion: the prompt's text and, with `logprobs`, its
 * tokens' logprobs object. */
export interface EchoedPrompt {
  text: string;
  logprobs: CompletionLogprobs | null;
}

/**
 * The echoed prompt: its text as the tokenizer decodes its ids (the same incremental decoding as
 * generated text; `text_offset` counts from its start) and, when `logprobs` is not null, its
 * tokens with their log-probabilities: the first token's is null (nothing predicts it), and with
 * `logprobs` > 0 each later token's `logprobs` most likely tokens (first: null).
 */
export async function echoPrompt(
  engine: Engine,
  tok: Tokenizer,
  ids: number[],
  logprobs: number | null,
): Promise<EchoedPrompt> {
  const stream = new TextStream(tok, []);
  for (const id of ids) stream.push(id);
  stream.finish();
  if (logprobs === null) return { text: stream.text, logprobs: null };
  const pl = await scorePrompt(engine, ids, logprobs, "prompt");
  return {
    text: stream.text,
    logprobs: {
      tokens: ids.map((id) => tokenText(tok, id)),
      token_logprobs: ids.map((_, i) => i === 0 ? null : pl.logprobs[i]),
      top_logprobs: pl.top
        ? pl.top.map((t, i) =>
          i === 0
            ? null
            : Object.fromEntries(t.ids.map((id, j) => [tokenText(tok, id), t.logprobs[j]]))
        )
        : null,
      text_offset: stream.offsets.slice(0, ids.length),
    },
  };
}

/** A completion's text and logprobs after the echoed prompt: texts joined, logprobs lists
 * concatenated, the completion's text offsets moved past the prompt's text. */
export function withEcho<L extends CompletionLogprobs | null>(
  echo: EchoedPrompt | null,
  text: string,
  logprobs: L,
): { text: string; logprobs: L } {
  if (!echo) return { text, logprobs };
  if (!logprobs || !echo.logprobs) return { text: echo.text + text, logprobs };
  const p = echo.logprobs;
  return {
    text: echo.text + text,
    logprobs: {
      tokens: [...p.tokens, ...logprobs.tokens],
      token_logprobs: [...p.token_logprobs, ...logprobs.token_logprobs],
      top_logprobs: p.top_logprobs && logprobs.top_logprobs
        ? [...p.top_logprobs, ...logprobs.top_logprobs]
        : null,
      text_offset: [...p.text_offset, ...logprobs.text_offset.map((o) => o + echo.text.length)],
    } as L,
  };
}

/** Offsets of a streamed chunk's logprobs moved past the echoed prompt's text. */
export function shiftOffsets<L extends CompletionLogprobs | null>(logprobs: L, by: number): L {
  if (!logprobs || by === 0) return logprobs;
  return { ...logprobs, text_offset: logprobs.text_offset.map((o) => o + by) };
}

/** One entry of vLLM's prompt_logprobs. */
export interface TokenLogprob {
  logprob: number;
  /** 1 + the number of tokens whose logit is above this one's. */
  rank: number;
  decoded_token: string;
}

/**
 * vLLM's `prompt_logprobs` for /v1/generate: per prompt position, null for the first, else an
 * object keyed by token id (a decimal string) holding the prompt token and the k most likely
 * tokens (k entries, or k + 1 when the prompt token is not among them).
 */
export function generatePromptLogprobs(
  tok: Tokenizer | null,
  ids: number[],
  pl: PromptLogprobs,
): (Record<string, TokenLogprob> | null)[] {
  return ids.map((id, i) => {
    if (i === 0) return null;
    const out: Record<string, TokenLogprob> = {
      [`${id}`]: { logprob: pl.logprobs[i], rank: pl.ranks[i], decoded_token: tokenText(tok, id) },
    };
    const top = pl.top?.[i];
    top?.ids.forEach((t, j) => {
      out[`${t}`] = { logprob: top.logprobs[j], rank: j + 1, decoded_token: tokenText(tok, t) };
    });
    return out;
  });
}

/**
 * The tokenizer `echo` decodes the prompt with (null without echo); `max_tokens: 0` is only
 * allowed with echo (the prompt's text and log-probs alone), else a 400 naming max_tokens.
 */
export function echoTokenizer(
  engine: Engine,
  body: { echo?: boolean | null; max_tokens?: number | null },
): Tokenizer | null {
  if (body.max_tokens === 0 && !body.echo) {
    throw badField("max_tokens", "must be at least 1 (0 is allowed only with echo)");
  }
  return body.echo ? needTokenizer(engine, "echo") : null;
}

/** The echoed prompt (or prompt log-probs), awaited after the choices were queued: a failure
 * cancels them. */
export async function echoOrCancel<T>(jobs: Job[], echo: () => Promise<T>): Promise<T> {
  try {
    return await echo();
  } catch (e) {
    for (const j of jobs) j.cancel();
    throw e;
  }
}

/** `max_tokens: 0` with echo: each choice is the prompt alone, finish_reason "length". */
export function echoOnly(echo: EchoedPrompt, n: number, promptTokens: number) {
  return {
    choices: Array.from({ length: n }, (_, index) => ({
      index,
      text: echo.text,
      logprobs: echo.logprobs,
      finish_reason: "length" as const,
      stop_reason: null,
    })),
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: 0,
      total_tokens: promptTokens,
      prompt_tokens_details: { cached_tokens: 0 },
    },
  };
}
