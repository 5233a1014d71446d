// What the generation routes share: prompts to token ids, the request's sampling and stop fields
// to a GenerationRequest submitted to the engine (the client's disconnect cancels it), results,
// and SSE.

import type { Context } from "hono";
import { streamSSE } from "hono/streaming";
import type { Engine } from "../engine/engine.ts";
import {
  DrainingError,
  type GenerationChunk,
  type GenerationResult,
  type Job,
  QueueFullError,
  RequestTooLargeError,
  type SamplingParams,
} from "../engine/request.ts";
import { HfTokenizer } from "../model/tokenizer_hf.ts";
import type { Tokenizer } from "../model/types.ts";
import type { ServerContext } from "./context.ts";
import { ApiError, badField, errorBody } from "./errors.ts";
import { checkTokenIds, needTokenizer } from "./route.ts";

/** What the listener hands every request besides the request itself (Hono's `c.env`). */
export interface AppBindings {
  /** Fires when the client's connection ends (server/listener.ts). */
  clientGone: AbortSignal;
}

/** Fires when the client is gone: its connection ended, or the request's own signal fired
 * (all Deno's HTTP server reports under `deno serve`). */
export function clientSignal(c: Context): AbortSignal {
  const gone = (c.env as Partial<AppBindings> | undefined)?.clientGone;
  return gone ? AbortSignal.any([gone, c.req.raw.signal]) : c.req.raw.signal;
}

/** Token ids of a prompt given as text (refused before tokenizing when it cannot fit; long ones
 * tokenized off the event loop) or as ids (checked against the vocabulary). */
export async function promptIds(
  ctx: ServerContext,
  engine: Engine,
  prompt: string | number[],
  field: string,
): Promise<number[]> {
  let ids: number[];
  if (typeof prompt === "string") {
    needTokenizer(engine, field);
    ids = await ctx.prompts!.encode(prompt, field);
  } else {
    ids = prompt;
    checkTokenIds(engine, ids, field);
  }
  if (ids.length === 0) throw badField(field, "the prompt is empty");
  return ids;
}

/** The fields of a generation body that shape sampling and stopping, snake_case as in the API. */
export interface GenerationBody {
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  seed?: number | null;
  /** Stop strings, and (for /v1/generate) stop token ids. */
  stop?: string | number | (string | number)[] | null;
  stop_token_ids?: number[] | null;
  ignore_eos?: boolean | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  repetition_penalty?: number | null;
  /** Token id (decimal string) -> bias. */
  logit_bias?: Record<string, number> | null;
}

export function samplingOf(b: GenerationBody, defaultTemperature: number): SamplingParams {
  const s: SamplingParams = { temperature: b.temperature ?? defaultTemperature };
  if (b.top_p != null) s.topP = b.top_p;
  if (b.top_k != null && b.top_k > 0) s.topK = b.top_k;
  if (b.min_p != null) s.minP = b.min_p;
  // The GPU RNG takes a u32 seed.
  if (b.seed != null) s.seed = Number(BigInt.asUintN(32, BigInt(b.seed)));
  if (b.presence_penalty) s.presencePenalty = b.presence_penalty;
  if (b.frequency_penalty) s.frequencyPenalty = b.frequency_penalty;
  if (b.repetition_penalty != null && b.repetition_penalty !== 1) {
    s.repetitionPenalty = b.repetition_penalty;
  }
  return s;
}

/**
 * `logit_bias` as [id, bias] pairs, one per id (a key given twice, "7" and "07", keeps the last):
 * a key that is not a token id, or an id outside the vocabulary, is a 400 naming logit_bias.
 */
export function logitBiasOf(
  b: GenerationBody,
  vocab: number,
): [number, number][] | undefined {
  if (!b.logit_bias) return undefined;
  const byId = new Map<number, number>();
  for (const [key, bias] of Object.entries(b.logit_bias)) {
    if (!/^\s*\d+\s*$/.test(key)) {
      throw badField("logit_bias", `key "${key}" is not a token id`);
    }
    const id = Number(key);
    if (id >= vocab) {
      throw badField("logit_bias", `token id ${id} is outside the vocabulary (${vocab})`);
    }
    byId.set(id, bias);
  }
  const out = [...byId].filter(([, bias]) => bias !== 0);
  return out.length ? out : undefined;
}

/** `stop` (a value or a list of strings and ids) and `stop_token_ids` as strings and ids; an id
 * outside the vocabulary is a 400 naming where it was given (`stop`, `stop[2]`,
 * `stop_token_ids[0]`). */
export function stopsOf(
  engine: Engine,
  b: GenerationBody,
): { stopStrings: string[]; stopIds: number[] } {
  const stops = b.stop == null ? [] : Array.isArray(b.stop) ? b.stop : [b.stop];
  const vocab = engine.config.vocabSize;
  stops.forEach((s, i) => {
    if (typeof s === "number" && s >= vocab) {
      const field = Array.isArray(b.stop) ? `stop[${i}]` : "stop";
      throw badField(field, `token id ${s} is outside the vocabulary (${vocab})`);
    }
  });
  checkTokenIds(engine, b.stop_token_ids ?? [], "stop_token_ids");
  return {
    stopStrings: stops.filter((s): s is string => typeof s === "string"),
    stopIds: [
      ...stops.filter((s): s is number => typeof s === "number"),
      ...(b.stop_token_ids ?? []),
    ],
  };
}

export interface GenerationSpec {
  promptIds: number[];
  maxTokens: number;
  /** The temperature when the body gives none. */
  defaultTemperature: number;
  /** The field a prompt that can never fit is reported on. */
  promptField: string;
  /** Top log-probabilities to return per token (0: none). */
  topLogprobs?: number;
}

/**
 * Submits a generation: a 400 when it can never fit (naming the prompt field or max_tokens), 429
 * when the queue is full, 503 while shutting down. The client's disconnect cancels it.
 */
export function startGeneration(
  c: Context,
  engine: Engine,
  body: GenerationBody,
  spec: GenerationSpec,
): Job {
  return startChoices(c, engine, body, spec, 1)[0];
}

/** `startGeneration` for `n` choices of the prompt (engine.submitChoices: prefilled once, with
 * prefix caching; seeds seed + i). */
export function startChoices(
  c: Context,
  engine: Engine,
  body: GenerationBody,
  spec: GenerationSpec,
  n: number,
): Job[] {
  const sampling = samplingOf(body, spec.defaultTemperature);
  const bias = logitBiasOf(body, engine.config.vocabSize);
  if (bias) sampling.logitBias = bias;
  if (spec.topLogprobs) sampling.topLogprobs = spec.topLogprobs;
  const stops = stopsOf(engine, body);
  if (stops.stopStrings.length) needTokenizer(engine, "stop");
  try {
    return engine.submitChoices({
      promptIds: spec.promptIds,
      maxTokens: spec.maxTokens,
      sampling,
      ...stops,
      ignoreEos: body.ignore_eos ?? false,
      signal: clientSignal(c),
    }, n);
  } catch (e) {
    if (e instanceof RequestTooLargeError) {
      throw badField(
        e.field === "prompt" ? spec.promptField : "max_tokens",
        e.message,
        "context_length_exceeded",
      );
    }
    if (e instanceof QueueFullError) {
      throw new ApiError(429, e.message + "; retry later", "rate_limit_error", null, "queue_full", {
        "Retry-After": "1",
      });
    }
    if (e instanceof DrainingError) {
      throw new ApiError(503, e.message, "service_unavailable", null, "shutting_down");
    }
    throw e;
  }
}

/** The error a request the server cut short ends with: 503, as for one refused while draining. */
function abortError(res: GenerationResult): ApiError {
  return new ApiError(
    503,
    `${res.error ?? "the server cut the request short"}; nothing was generated`,
    "service_unavailable",
    null,
    "shutting_down",
  );
}

/** The error a failed request ends with (500). */
function engineError(res: GenerationResult): ApiError {
  return new ApiError(500, `generation failed: ${res.error}`, "server_error", null, "engine_error");
}

/**
 * A finished job's result; the error it ended with (500); or, when the server cut it short
 * before its first token, a 503. Cut short later, the partial result has finish_reason "abort".
 */
export async function resultOf(job: Job): Promise<GenerationResult> {
  const res = await job.result;
  if (res.finishReason === "error") throw engineError(res);
  if (res.finishReason === "abort" && res.ids.length === 0) throw abortError(res);
  return res;
}

/** Every choice's result (as `resultOf`: the first failure throws). */
export function resultsOf(jobs: Job[]): Promise<GenerationResult[]> {
  return Promise.all(jobs.map(resultOf));
}

/** `best_of`: the `n` results with the highest cumulative log-probability (as vLLM ranks them),
 * best first. */
export function bestOf(results: GenerationResult[], n: number): GenerationResult[] {
  const score = (r: GenerationResult) => r.logprobs.reduce((a, b) => a + b, 0);
  return results.map((r) => ({ r, s: score(r) })).sort((a, b) => b.s - a.s).slice(0, n).map((x) =>
    x.r
  );
}

/** `n` and `best_of` as a route takes them: best_of >= n, both at most MAX_CHOICES; best_of
 * cannot stream (the best are known only at the end). */
export function choiceCounts(
  b: { n?: number | null; best_of?: number | null; stream?: boolean | null },
): { n: number; bestOf: number } {
  const n = b.n ?? 1;
  const best = b.best_of ?? n;
  if (best < n) throw badField("best_of", `best_of (${best}) must be at least n (${n})`);
  if (best > n && b.stream) throw badField("best_of", "best_of > n cannot be streamed");
  return { n, bestOf: best };
}

/** OpenAI's finish_reason, and vLLM's "abort" for a request the server cut short (a request its
 * client cancelled has no one left to read it). */
export function finishReason(res: GenerationResult): "stop" | "length" | "abort" {
  return res.finishReason === "length" || res.finishReason === "abort" ? res.finishReason : "stop";
}

/** OpenAI's usage of one or more choices of one prompt (the prompt counted once), with the
 * prompt tokens the prefix cache restored as `prompt_tokens_details.cached_tokens`. */
export function usage(res: GenerationResult | GenerationResult[]) {
  const all = Array.isArray(res) ? res : [res];
  const completion = all.reduce((a, r) => a + r.ids.length, 0);
  return {
    prompt_tokens: all[0].promptTokens,
    completion_tokens: completion,
    total_tokens: all[0].promptTokens + completion,
    // The first choice met the cache as the request found it; the others share its prompt.
    prompt_tokens_details: { cached_tokens: all[0].cachedTokens },
  };
}

/** A token's text for logprobs (special tokens spelled out where the tokenizer knows them). */
export function tokenText(tok: Tokenizer | null, id: number): string {
  if (!tok) return `${id}`;
  if (tok instanceof HfTokenizer) return tok.decodeWithSpecial([id]);
  return tok.decode([id]);
}

export interface SseHandlers {
  /** Events for one readback's chunk. */
  chunk(c: GenerationChunk): unknown[];
  /** Events after the last chunk (before `[DONE]`). */
  end(res: GenerationResult): unknown[];
}

/** Streams a job as server-sent events, one write per readback, ending with `data: [DONE]`. */
export function streamJob(c: Context, job: Job, h: SseHandlers): Response {
  return streamJobs(c, [job], {
    chunk: (ch) => h.chunk(ch),
    end: (res) => h.end(res[0]),
  });
}

/** Handlers of a stream of several choices: chunks carry the choice's index. */
export interface MultiSseHandlers {
  chunk(c: GenerationChunk, index: number): unknown[];
  /** Events after every choice's last chunk. */
  end(res: GenerationResult[]): unknown[];
}

/** Streams the choices of one request as they come (each readback's chunk as one write, the
 * choices interleaved), then the end events and `data: [DONE]`. */
export function streamJobs(c: Context, jobs: Job[], h: MultiSseHandlers): Response {
  return streamSSE(c, async (stream) => {
    stream.onAbort(() => jobs.forEach((j) => j.cancel()));
    const sse = (events: unknown[]) => events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join("");
    // Writes in order, one at a time.
    let writing = Promise.resolve();
    const write = (text: string) => {
      writing = writing.then(() => stream.aborted ? undefined : stream.write(text).then(() => {}));
      return writing;
    };
    await Promise.all(jobs.map(async (job, i) => {
      for await (const chunk of job.chunks()) {
        if (stream.aborted) break;
        const events = h.chunk(chunk, i);
        if (events.length) await write(sse(events));
      }
    }));
    await writing;
    const res = await Promise.all(jobs.map((j) => j.result));
    if (stream.aborted || res.some((r) => r.finishReason === "cancelled")) return;
    // A stream that did not end normally says why in OpenAI's error shape, then [DONE].
    const failed = res.find((r) => r.finishReason === "error");
    const aborted = res.find((r) => r.finishReason === "abort");
    const events = failed
      ? [errorBody(engineError(failed))]
      : aborted
      ? [errorBody(abortError(aborted))]
      : h.end(res);
    await stream.write(sse(events) + "data: [DONE]\n\n");
  });
}

/** A short random id with a prefix, e.g. `cmpl-3f9c...`. */
export function requestId(prefix: string): string {
  const b = crypto.getRandomValues(new Uint8Array(12));
  return `${prefix}-${Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("")}`;
}
