// The scheduler: a bounded queue in front of continuous batching.
//
// One loop owns the runner. Each iteration it
//  1. drops cancelled requests (their cache slot and pages go back to the pool at once),
//  2. admits queued requests, first come first served, while a batch row, a cache slot and
//     enough pages are free: a request is admitted only when the pool can hold its worst case
//     (prompt + max_tokens + one readback of overshoot), counting what running requests may still
//     claim, so a running sequence never waits for memory and the loop cannot deadlock; a request
//     that does not fit waits in the queue until others finish,
//  3. prefills new prompts, up to `prefillBudget` tokens per iteration in chunks (a long prompt
//     takes several iterations, so running sequences keep decoding in between; only a prompt's
//     last chunk samples and reads back),
//  4. runs ONE `runner.decode` for every running sequence: a batched forward per step (GEMM over
//     the batch, attention per sequence over its own cache), `decodeSteps` tokens per readback.
// Tokens are checked against stop ids and stop strings as they arrive; each request's chunk
// stream gets one chunk per readback.

import type { SeqCache } from "../gpu/kv_cache.ts";
import type { ModelRunner, SamplingParams } from "../gpu/runner.ts";
import type { Tokenizer } from "../model/types.ts";
import { EngineMetrics } from "./metrics.ts";
import { TextStream } from "./text.ts";

export type FinishReason = "stop" | "length" | "cancelled" | "error";

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
}

/** The request's KV-cache use when it finished, in the manager's units. */
export interface CacheFootprint {
  /** Positions held in the cache. */
  tokens: number;
  /** Pages of the retrieval layers' paged cache. */
  pages: number;
  retrieval_bytes: number;
  streaming_bytes: number;
  bytes: number;
  /** What a full-attention cache would hold for the same positions. */
  full_attention_bytes: number;
  ratio_to_full: number;
}

/** What one readback added to a request. */
export interface GenerationChunk {
  ids: number[];
  logprobs: number[];
  /** Text that became final with these tokens (may be empty, e.g. half a character). */
  text: string;
  /** Offset in the whole generated text where each id's text starts. */
  offsets: number[];
}

export interface GenerationResult {
  ids: number[];
  logprobs: number[];
  text: string;
  /** Offset in `text` where each id's text starts. */
  textOffsets: number[];
  finishReason: FinishReason;
  /** The stop string or stop id that ended the request (null for EOS or length). */
  stopReason: string | number | null;
  error?: string;
  promptTokens: number;
  /** From arrival to the first generated token (queueing included). */
  timeToFirstTokenMs: number;
  /** From the first token to the last. */
  decodeMs: number;
  decodeTokensPerS: number;
  queueMs: number;
  e2eMs: number;
  cache: CacheFootprint | null;
}

/** The queue is full: answer 429. */
export class QueueFullError extends Error {
  constructor(readonly maxQueue: number) {
    super(`the server is busy: ${maxQueue} request(s) already waiting`);
    this.name = "QueueFullError";
  }
}

/** The server is shutting down: answer 503. */
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

export interface SchedulerOptions {
  /** Sequences decoded together (default and maximum: the runner's maxBatch). */
  maxBatch?: number;
  /** Requests that may wait for admission; more are refused with QueueFullError. */
  maxQueue: number;
  /** Tokens per readback (default and maximum: the runner's maxDecodeSteps). */
  decodeSteps?: number;
  /** Prompt tokens prefilled per iteration (default: the runner's prefill chunk). */
  prefillBudget?: number;
}

type JobState = "waiting" | "prefill" | "decode" | "done";

/** One request's handle: its chunks as they come and its result. */
export class Job {
  readonly arrival = performance.now();
  readonly result: Promise<GenerationResult>;
  state: JobState = "waiting";
  seq: SeqCache | null = null;
  /** Prompt tokens in the cache. */
  prefilled = 0;
  ids: number[] = [];
  logprobs: number[] = [];
  /** Sampled but not yet fed back. */
  lastToken = -1;
  admittedAt = 0;
  firstTokenAt = 0;
  cancelRequested = false;
  readonly stopSet: Set<number>;
  readonly text: TextStream | null;
  readonly sampling: SamplingParams;
  #resolve!: (r: GenerationResult) => void;
  #chunks: GenerationChunk[] = [];
  #notify: (() => void) | null = null;
  #ended = false;

  constructor(
    readonly id: number,
    readonly request: GenerationRequest,
    eosIds: readonly number[],
    tokenizer: Tokenizer | null,
    readonly scheduler: Scheduler,
  ) {
    this.result = new Promise((r) => (this.#resolve = r));
    this.stopSet = new Set([...(request.ignoreEos ? [] : eosIds), ...(request.stopIds ?? [])]);
    this.text = tokenizer
      ? new TextStream(tokenizer, request.promptIds, request.stopStrings ?? [])
      : null;
    const s = request.sampling;
    // Unseeded sampling: a fresh seed per request (the GPU RNG is keyed by seed and position).
    this.sampling = s.temperature > 0 && s.seed === undefined
      ? { ...s, seed: Math.floor(Math.random() * 0x7fffffff) }
      : s;
  }

  /** Stops the request: its cache goes back to the pool within one decode step. Idempotent. */
  cancel(): void {
    if (this.state === "done" || this.cancelRequested) return;
    this.cancelRequested = true;
    this.scheduler.wake(this);
  }

  get done(): boolean {
    return this.state === "done";
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

  pushChunk(c: GenerationChunk): void {
    if (c.ids.length === 0 && c.text === "") return;
    this.#chunks.push(c);
    this.#notify?.();
    this.#notify = null;
  }

  settle(r: GenerationResult): void {
    this.state = "done";
    this.#ended = true;
    this.#notify?.();
    this.#notify = null;
    this.#resolve(r);
  }
}

export class Scheduler {
  readonly metrics = new EngineMetrics();
  readonly maxBatch: number;
  readonly maxQueue: number;
  readonly decodeSteps: number;
  readonly prefillBudget: number;
  #waiting: Job[] = [];
  #prefilling: Job[] = [];
  #decoding: Job[] = [];
  #accepting = true;
  #closed = false;
  #wake: (() => void) | null = null;
  #idle: (() => void)[] = [];
  #nextId = 1;
  readonly #loop: Promise<void>;

  constructor(
    readonly runner: ModelRunner,
    readonly tokenizer: Tokenizer | null,
    opts: SchedulerOptions,
  ) {
    const ro = runner.opts;
    this.maxBatch = Math.min(opts.maxBatch ?? ro.maxBatch, ro.maxBatch, runner.cache.maxSeqs);
    this.maxQueue = opts.maxQueue;
    this.decodeSteps = Math.min(opts.decodeSteps ?? ro.maxDecodeSteps, ro.maxDecodeSteps);
    this.prefillBudget = Math.max(1, opts.prefillBudget ?? ro.prefillChunk);
    this.#loop = this.#run();
  }

  /** Sequences admitted (prefilling or decoding). */
  get running(): number {
    return this.#prefilling.length + this.#decoding.length;
  }

  /** Requests queued for admission. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** The running requests' cache use, oldest first. */
  sequences(): { id: number; state: string; tokens: number; pages: number }[] {
    return [...this.#prefilling, ...this.#decoding]
      .sort((a, b) => a.id - b.id)
      .map((j) => ({
        id: j.id,
        state: j.state,
        tokens: j.seq!.tokens,
        pages: j.seq!.pages.length,
      }));
  }

  get accepting(): boolean {
    return this.#accepting;
  }

  /**
   * Why a request of this size can never run here, or null. `field` "prompt": the prompt alone
   * fills the context; "max_tokens": prompt + max_tokens exceed the context or the KV pool.
   */
  fitError(promptTokens: number, maxTokens: number): RequestTooLargeError | null {
    const ctx = this.runner.maxSeqLen;
    if (promptTokens >= ctx) {
      return new RequestTooLargeError(
        "prompt",
        `the prompt has ${promptTokens} tokens but the context is ${ctx} tokens ` +
          `(prompt + max_tokens must be at most ${ctx})`,
      );
    }
    if (promptTokens + maxTokens > ctx) {
      return new RequestTooLargeError(
        "max_tokens",
        `prompt (${promptTokens} tokens) + max_tokens (${maxTokens}) = ` +
          `${promptTokens + maxTokens} exceeds the context of ${ctx} tokens`,
      );
    }
    const cache = this.runner.cache;
    const need = this.#worstPages(promptTokens, maxTokens);
    if (need > cache.numPages) {
      return new RequestTooLargeError(
        "max_tokens",
        `prompt (${promptTokens} tokens) + max_tokens (${maxTokens}) need ${need} KV-cache ` +
          `pages but the pool has ${cache.numPages} (raise --kv-cache-mb)`,
      );
    }
    return null;
  }

  /** The most tokens a request with this prompt may ask for (context and KV pool permitting). */
  maxNewTokens(promptTokens: number): number {
    let m = this.runner.maxSeqLen - promptTokens;
    const cache = this.runner.cache;
    if (cache.numPages > 0) {
      m = Math.min(m, cache.numPages * cache.pageSize - promptTokens - this.decodeSteps + 2);
    }
    return Math.max(0, m);
  }

  /** Queues a request. Throws QueueFullError, DrainingError or RequestTooLargeError. */
  submit(req: GenerationRequest): Job {
    if (!this.#accepting) throw new DrainingError();
    if (req.promptIds.length === 0) throw new RequestTooLargeError("prompt", "the prompt is empty");
    if (!(req.maxTokens >= 1)) throw new RequestTooLargeError("max_tokens", "max_tokens < 1");
    const fit = this.fitError(req.promptIds.length, req.maxTokens);
    if (fit) throw fit;
    const job = new Job(this.#nextId++, req, this.runner.config.eosIds, this.tokenizer, this);
    this.#waiting.push(job);
    // A free batch row takes it at once; only requests that must wait count against the queue.
    this.#admit();
    if (this.#waiting.length > this.maxQueue) {
      this.#waiting.splice(this.#waiting.indexOf(job), 1);
      this.metrics.countRejected("queue_full");
      throw new QueueFullError(this.maxQueue);
    }
    this.wake();
    return job;
  }

  /** Wakes the loop; with a job that asked to cancel while queued, drops it at once. */
  wake(job?: Job): void {
    if (job && job.state === "waiting") {
      const i = this.#waiting.indexOf(job);
      if (i >= 0) this.#waiting.splice(i, 1);
      this.#finish(job, "cancelled");
    }
    this.#wake?.();
    this.#wake = null;
  }

  /** Refuses new requests from now on (queued and running ones go on). */
  stopAccepting(): void {
    this.#accepting = false;
  }

  /** Resolves when nothing is queued or running. */
  idle(): Promise<void> {
    if (this.running === 0 && this.waiting === 0) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  /** Cancels every queued and running request. */
  cancelAll(): void {
    for (const j of [...this.#waiting, ...this.#prefilling, ...this.#decoding]) j.cancel();
  }

  /** Cancels everything and stops the loop. */
  async close(): Promise<void> {
    this.stopAccepting();
    this.cancelAll();
    await this.idle();
    this.#closed = true;
    this.wake();
    await this.#loop;
  }

  // ---- the loop ---------------------------------------------------------------------------

  async #run(): Promise<void> {
    while (!this.#closed) {
      this.#reap();
      this.#admit();
      if (this.running === 0) {
        if (this.waiting > 0) continue;
        for (const r of this.#idle.splice(0)) r();
        if (this.#closed) break;
        await new Promise<void>((r) => (this.#wake = r));
        continue;
      }
      const readBack = await this.#prefillStep();
      this.#reap();
      const decoded = await this.#decodeStep();
      // Prefill chunks that sample nothing never wait for the GPU: let HTTP handlers run.
      if (!readBack && !decoded) await new Promise((r) => setTimeout(r, 0));
    }
  }

  /** Pages a request may hold at most: prompt + max_tokens - 1 fed positions, plus up to one
   * readback of overshoot (the batch decodes `steps` tokens even for a sequence needing fewer). */
  #worstPages(promptTokens: number, maxTokens: number): number {
    const cache = this.runner.cache;
    if (cache.numPages === 0) return 0;
    const positions = maxTokens <= 1
      ? promptTokens
      : Math.min(this.runner.maxSeqLen, promptTokens + maxTokens - 1 + this.decodeSteps - 1);
    return Math.ceil(positions / cache.pageSize);
  }

  /** Pages running requests may still claim. */
  #reservedPages(): number {
    let n = 0;
    for (const j of [...this.#prefilling, ...this.#decoding]) {
      const worst = this.#worstPages(j.request.promptIds.length, j.request.maxTokens);
      n += Math.max(0, worst - j.seq!.pages.length);
    }
    return n;
  }

  #admit(): void {
    const cache = this.runner.cache;
    while (this.#waiting.length > 0 && this.running < this.maxBatch) {
      const j = this.#waiting[0];
      const need = this.#worstPages(j.request.promptIds.length, j.request.maxTokens);
      const seq = need > cache.freePages - this.#reservedPages() ? null : cache.open();
      if (!seq) {
        // Waits for running requests to return memory; with none running it never could
        // (submit() rules that out, so this is only a safety net against a stuck queue).
        if (this.running > 0) return;
        this.#waiting.shift();
        this.#finish(j, "error", new Error("the KV cache cannot hold this request"));
        continue;
      }
      this.#waiting.shift();
      j.seq = seq;
      j.state = "prefill";
      j.admittedAt = performance.now();
      this.metrics.queueTime.observe((j.admittedAt - j.arrival) / 1000);
      this.#prefilling.push(j);
    }
  }

  #reap(): void {
    for (const list of [this.#prefilling, this.#decoding]) {
      for (const j of list.filter((j) => j.cancelRequested)) this.#finish(j, "cancelled");
    }
  }

  /** Prefills up to `prefillBudget` prompt tokens; true when a prompt's last chunk sampled. */
  async #prefillStep(): Promise<boolean> {
    let budget = this.prefillBudget;
    let sampled = false;
    for (const j of [...this.#prefilling]) {
      if (budget <= 0) break;
      if (j.cancelRequested) continue;
      const prompt = j.request.promptIds;
      const n = Math.min(prompt.length - j.prefilled, budget);
      const last = j.prefilled + n === prompt.length;
      budget -= n;
      let first;
      try {
        first = await this.runner.prefill(
          j.seq!,
          prompt.slice(j.prefilled, j.prefilled + n),
          j.sampling,
          { sample: last },
        );
      } catch (e) {
        this.#finish(j, "error", e);
        continue;
      }
      j.prefilled += n;
      if (!last) continue;
      sampled = true;
      j.firstTokenAt = performance.now();
      this.#prefilling.splice(this.#prefilling.indexOf(j), 1);
      j.state = "decode";
      this.#decoding.push(j);
      if (j.cancelRequested) continue;
      this.#take(j, [first.token], [first.logprob]);
    }
    return sampled;
  }

  /** One batched decode call for every decoding sequence; false when there were none. */
  async #decodeStep(): Promise<boolean> {
    const batch = this.#decoding.filter((j) => !j.cancelRequested);
    if (batch.length === 0) return false;
    let steps = this.decodeSteps;
    let most = 0;
    for (const j of batch) {
      most = Math.max(most, j.request.maxTokens - j.ids.length);
      steps = Math.min(steps, this.runner.maxSeqLen - j.seq!.tokens);
    }
    steps = Math.max(1, Math.min(steps, most));
    let out;
    try {
      out = await this.runner.decode(
        batch.map((j) => ({ seq: j.seq!, token: j.lastToken, sampling: j.sampling })),
        steps,
      );
    } catch (e) {
      for (const j of batch) this.#finish(j, "error", e);
      return true;
    }
    this.metrics.decodeCalls++;
    this.metrics.decodeRows += batch.length;
    batch.forEach((j, i) => {
      if (j.cancelRequested || j.done) return;
      this.#take(j, out.tokens[i], out.logprobs[i]);
    });
    return true;
  }

  /** Accepts sampled tokens until a stop; emits a chunk; finishes the job when it is over. */
  #take(j: Job, toks: number[], lps: number[]): void {
    const ids: number[] = [];
    const logprobs: number[] = [];
    const first = j.ids.length;
    let reason: FinishReason | null = null;
    let stopReason: string | number | null = null;
    for (let i = 0; i < toks.length; i++) {
      const t = toks[i];
      if (j.stopSet.has(t)) {
        reason = "stop";
        stopReason = j.request.stopIds?.includes(t) ? t : null;
        break;
      }
      j.ids.push(t);
      j.logprobs.push(lps[i]);
      ids.push(t);
      logprobs.push(lps[i]);
      if (j.text?.push(t)) {
        reason = "stop";
        stopReason = j.text.stoppedBy;
        break;
      }
      if (j.ids.length >= j.request.maxTokens) {
        reason = "length";
        break;
      }
    }
    j.lastToken = toks[toks.length - 1];
    if (reason !== null) j.text?.finish();
    j.pushChunk({
      ids,
      logprobs,
      text: j.text?.take(reason !== null) ?? "",
      offsets: j.text ? j.text.offsets.slice(first, first + ids.length) : [],
    });
    if (reason !== null) this.#finish(j, reason, undefined, stopReason);
  }

  #footprint(seq: SeqCache): CacheFootprint {
    const g = this.runner.cache.geometry;
    const retrieval = g.retrievalHeads > 0 ? seq.pages.length * g.pageBytes : 0;
    const streaming = Math.min(seq.tokens, g.ringLength) * g.tokenBytes(g.streamingHeads);
    const full = g.fullBytes(seq.tokens);
    return {
      tokens: seq.tokens,
      pages: seq.pages.length,
      retrieval_bytes: retrieval,
      streaming_bytes: streaming,
      bytes: retrieval + streaming,
      full_attention_bytes: full,
      ratio_to_full: full > 0 ? (retrieval + streaming) / full : 1,
    };
  }

  #finish(
    j: Job,
    reason: FinishReason,
    error?: unknown,
    stopReason: string | number | null = null,
  ): void {
    if (j.done) return;
    const now = performance.now();
    let cache: CacheFootprint | null = null;
    if (j.seq) {
      cache = this.#footprint(j.seq);
      this.runner.cache.close(j.seq);
    }
    for (const list of [this.#prefilling, this.#decoding]) {
      const i = list.indexOf(j);
      if (i >= 0) list.splice(i, 1);
    }
    const m = this.metrics;
    const n = j.ids.length;
    const ttft = j.firstTokenAt ? j.firstTokenAt - j.arrival : 0;
    const decodeMs = j.firstTokenAt ? now - j.firstTokenAt : 0;
    if (j.firstTokenAt) m.timeToFirstToken.observe(ttft / 1000);
    if (n > 1) m.timePerOutputToken.observe(decodeMs / 1000 / (n - 1));
    m.e2eLatency.observe((now - j.arrival) / 1000);
    m.promptTokens += j.prefilled;
    m.generationTokens += n;
    m.countFinished(reason);
    j.settle({
      ids: j.ids,
      logprobs: j.logprobs,
      text: j.text?.text ?? "",
      textOffsets: j.text ? j.text.offsets.slice(0, n) : [],
      finishReason: reason,
      stopReason,
      error: error === undefined
        ? undefined
        : error instanceof Error
        ? error.message
        : String(error),
      promptTokens: j.request.promptIds.length,
      timeToFirstTokenMs: ttft,
      decodeMs,
      decodeTokensPerS: n > 1 && decodeMs > 0 ? (n - 1) / (decodeMs / 1000) : 0,
      queueMs: (j.admittedAt || now) - j.arrival,
      e2eMs: now - j.arrival,
      cache,
    });
    this.wake();
  }
}
