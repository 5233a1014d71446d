// What a caller hands the engine and what it gets back: one request type, one finish reason, the
// chunks a request streams and its result, the errors `submit` throws, and the `Job` handle.
//
// A `Job` is the reading side only: its chunks as they come, its result, and `cancel()`, which
// calls the hook the engine installed when it opened the job (the job knows nothing else of the
// engine). The engine writes through the `JobWriter` that `Job.open` returns with it.

import type { CacheFootprint } from "../cache/manager.ts";
import type { SamplingParams } from "../gpu/runner.ts";

export { GREEDY, type SamplingParams } from "../gpu/runner.ts";
export { MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS } from "../gpu/kernels/sample.ts";

/** presence_penalty and frequency_penalty lie in [-MAX_PENALTY, MAX_PENALTY] (OpenAI's range). */
export const MAX_PENALTY = 2;
/** repetition_penalty lies in (0, MAX_REPETITION_PENALTY]. */
export const MAX_REPETITION_PENALTY = 100;
/** A logit_bias value lies in [-MAX_BIAS_VALUE, MAX_BIAS_VALUE] (OpenAI's range). */
export const MAX_BIAS_VALUE = 100;
export type { CacheFootprint };

/** Why a request ended: a stop (EOS, stop id or string), max_tokens, its caller's cancel, the
 * server cutting it short (shutdown: "abort", as vLLM says), or a failure. */
export type FinishReason = "stop" | "length" | "cancelled" | "abort" | "error";

export interface GenerationRequest {
  promptIds: number[];
  /** At least 1. */
  maxTokens: number;
  sampling: SamplingParams;
  /** Token ids that end generation besides the model's EOS ids; not part of the output. */
  stopIds?: number[];
  /** Strings that end generation; the text is cut before them. Needs a tokenizer. */
  stopStrings?: string[];
  /** Do not stop at the model's EOS ids. */
  ignoreEos?: boolean;
  /** Cancels the request when it fires (e.g. the HTTP client went away). */
  signal?: AbortSignal;
}

/** What one readback added to a request. */
export interface GenerationChunk {
  ids: number[];
  logprobs: number[];
  /** Per id, the sampler's top log-probabilities [id, logprob] (`sampling.topLogprobs` > 0). */
  topLogprobs?: [number, number][][];
  /** Text that became final with these tokens (may be empty, e.g. half a character). */
  text: string;
  /** Offset in the whole generated text where each id's text starts. */
  offsets: number[];
}

export interface GenerationResult {
  ids: number[];
  logprobs: number[];
  /** Per id, the sampler's top log-probabilities [id, logprob] (`sampling.topLogprobs` > 0). */
  topLogprobs?: [number, number][][];
  text: string;
  /** Offset in `text` where each id's text starts. */
  textOffsets: number[];
  finishReason: FinishReason;
  /** The stop string or stop id that ended the request (null for EOS or length). */
  stopReason: string | number | null;
  error?: string;
  promptTokens: number;
  /** Prompt tokens restored from the prefix cache instead of computed. */
  cachedTokens: number;
  /** From arrival to the first generated token (queueing included). */
  timeToFirstTokenMs: number;
  /** From the first token to the last. */
  decodeMs: number;
  decodeTokensPerS: number;
  queueMs: number;
  e2eMs: number;
  /** The request's KV-cache use when it finished (null when it never held any). */
  cache: CacheFootprint | null;
}

/** The queue is full: answer 429. */
export class QueueFullError extends Error {
  constructor(readonly maxQueue: number) {
    super(`the server is busy: ${maxQueue} request(s) already waiting`);
    this.name = "QueueFullError";
  }
}

/** The engine is shutting down: answer 503. */
export class DrainingError extends Error {
  constructor() {
    super("the server is shutting down");
    this.name = "DrainingError";
  }
}

/** A request that can never run here; `field` is "prompt" or "max_tokens". */
export class RequestTooLargeError extends Error {
  constructor(readonly field: "prompt" | "max_tokens", message: string) {
    super(message);
    this.name = "RequestTooLargeError";
  }
}

/** The engine's side of a job. */
export interface JobWriter {
  /** Hands out one readback's chunk (empty chunks are dropped). */
  push(chunk: GenerationChunk): void;
  /** Ends the job with its result; later calls are ignored. */
  settle(result: GenerationResult): void;
}

/** One request's handle: its chunks as they come, its result, and cancellation. */
export class Job {
  readonly result: Promise<GenerationResult>;
  #resolve!: (r: GenerationResult) => void;
  #chunks: GenerationChunk[] = [];
  #notify: (() => void) | null = null;
  #ended = false;
  #cancelled = false;

  private constructor(
    readonly id: number,
    readonly request: GenerationRequest,
    readonly arrival: number,
    readonly onCancel: (job: Job) => void,
  ) {
    this.result = new Promise((r) => (this.#resolve = r));
  }

  /** A job and the writer the engine fills it through; `onCancel` runs on the first cancel(). */
  static open(
    id: number,
    request: GenerationRequest,
    onCancel: (job: Job) => void,
  ): { job: Job; writer: JobWriter } {
    const job = new Job(id, request, performance.now(), onCancel);
    return {
      job,
      writer: { push: (c) => job.#push(c), settle: (r) => job.#settle(r) },
    };
  }

  /** Stops the request: its cache goes back to the pool within one decode step. Idempotent. */
  cancel(): void {
    if (this.#ended || this.#cancelled) return;
    this.#cancelled = true;
    this.onCancel(this);
  }

  get cancelled(): boolean {
    return this.#cancelled;
  }

  get done(): boolean {
    return this.#ended;
  }

  /** The chunks, one per readback, until the request ends. */
  async *chunks(): AsyncGenerator<GenerationChunk> {
    for (;;) {
      const c = this.#chunks.shift();
      if (c) {
        yield c;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((r) => (this.#notify = r));
    }
  }

  #push(c: GenerationChunk): void {
    if (this.#ended || (c.ids.length === 0 && c.text === "")) return;
    this.#chunks.push(c);
    this.#wakeReader();
  }

  #settle(r: GenerationResult): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#wakeReader();
    this.#resolve(r);
  }

  #wakeReader(): void {
    this.#notify?.();
    this.#notify = null;
  }
}
