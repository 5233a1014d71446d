// The engine: every generation in zigzag runs here (the server's routes, the CLI, the pass-key
// eval, the serving bench, the warm-up), and teacher-forced scoring for plan identification.
//
// It owns the model runner and the KV-cache manager. One loop, as vLLM v1's: each iteration
//   1. applies cancellations (a cancelled request's slot and pages go back to the pool at once),
//   2. schedules: the policy (engine/scheduler.ts) admits queued requests, picks the prompt
//      pieces to prefill and the sequences to decode,
//   3. allocates: the cache manager assigns the pages those positions need (`reserve`) and
//      records them as written (`commit`) as their forward is issued,
//   4. runs: the runner prefills each piece (only a prompt's last piece samples and reads back),
//      then ONE batched decode of `decodeSteps` tokens for every running sequence (overlapped:
//      the next one is queued behind it before its readback is awaited, see #decodeStep),
//   5. applies the outputs: hands the sampled tokens to each request's output (engine/output.ts:
//      stops and text), streams one chunk per readback and finishes the requests that are over.

import { CacheExhaustedError, type CacheLayout, KV_DTYPES, type KvDtype } from "../cache/layout.ts";
import type { WeightChoice } from "../gpu/weights.ts";
import { KIND_NAMES } from "../cache/kinds.ts";
import { KvCacheManager, NO_HIT, type PrefixHit, type SeqCache } from "../cache/manager.ts";
import { TokenChain } from "../cache/prefix_cache.ts";
import { getGpu, type Gpu, type Precision, resolvePrecision } from "../gpu/device.ts";
import { type Decoded, GREEDY, type SamplingParams } from "../gpu/runner.ts";
import { penalised } from "../gpu/kernels/sample.ts";
import { checkTopK, type PromptLogprobs } from "../gpu/logprobs.ts";
import { loadModel } from "../model/load.ts";
import { weightBytes } from "../model/tensors.ts";
import type { AnyTensor, LoadedModel, ModelConfig, Tokenizer } from "../model/types.ts";
import { loadPlanArg } from "../plans/resolve.ts";
import {
  hasOwnWindows,
  type HeadKind,
  headWindow,
  type ResolvedPlan,
  windowJson,
} from "../plans/types.ts";
import { progress } from "../util/progress.ts";
import { EngineMetrics } from "./metrics.ts";
import { RequestOutput } from "./output.ts";
import {
  type CacheFootprint,
  DrainingError,
  type FinishReason,
  type GenerationRequest,
  type GenerationResult,
  Job,
  type JobWriter,
  QueueFullError,
  RequestTooLargeError,
} from "./request.ts";
import { type EngineRunner, RunnerThread } from "./runner_thread.ts";
import { createRunner, type RunnerShape, runnerShape } from "./runners.ts";
import { type DecodeWork, EngineLimits, type RequestView, Scheduler } from "./scheduler.ts";

/** Most tokens per readback `decodeSteps: "auto"` may choose (the runner is sized for them). */
export const AUTO_DECODE_STEPS = 8;

/** What `decodeSteps: "auto"` measured and chose. */
export interface StepTiming {
  /** GPU-bound ms per decode step (two-count slope). */
  stepMs: number;
  /** ms a readback adds beyond its steps. */
  readbackWaitMs: number;
  /** Tokens per readback chosen. */
  steps: number;
}

/** A decode submitted to the runner whose tokens are not read back yet. */
interface PendingDecode extends DecodeWork<RequestState> {
  /** Settles once the runner has queued it (rejects when it could not). */
  submitted: Promise<void>;
  /** Queued behind another decode, continuing it on the GPU. */
  chained: boolean;
}

// What callers need to name the engine's failures and settings without reaching below it.
export { CacheExhaustedError, KV_DTYPES, type KvDtype };
export type { WeightFormat } from "../gpu/kernels/matmul.ts";
export { WEIGHT_CHOICES, type WeightChoice } from "../gpu/weights.ts";
export { createRunner, type RunnerSizes } from "./runners.ts";
export { GpuUnavailableError, type Precision } from "../gpu/device.ts";
export { MAX_PROMPT_TOP, type PromptLogprobs } from "../gpu/logprobs.ts";

export interface EngineOptions {
  /** A model path (llama2.c file or directory, Hugging Face directory) or a model loaded already. */
  model: string | LoadedModel<AnyTensor>;
  /** Tokenizer path, when it is not beside the model (with a model path only). */
  tokenizer?: string;
  /** The device (default: the process's shared one). */
  gpu?: Gpu;
  /** Run the model on a worker thread that owns its own device (a model path only; `gpu` is
   * ignored): a pending readback then holds up nothing on this thread (see runner_thread.ts).
   * The server does; tests and tools that drive a device of their own do not. */
  gpuThread?: boolean;
  /** Weights and activations (default f16 where the adapter has it). */
  precision?: Precision;
  /** How the KV cache stores keys and values (default: the precision). */
  kvDtype?: KvDtype;
  /** How matmul weights are stored: "native" (default: a GGUF's own quantized blocks where it
   * has them, else the precision), "float" (the precision), or quantized on load to GGUF's
   * Q8_0 / Q4_0 blocks. */
  weights?: WeightChoice;
  /** "full", "streaming", a plan file, or a resolved plan (default "full"). */
  plan?: string | ResolvedPlan;
  /** Override the named plan's streaming window. */
  sink?: number;
  recent?: number;
  /** Streaming heads keep RazorAttention's compensation token (default: the plan's). */
  compensation?: boolean;
  /** KV-cache budget (default 256 MiB). */
  kvCacheBytes?: number;
  /** Sequences decoded together, at most 64 (default 8). */
  maxBatch?: number;
  /** Sequences that hold cache at once (default maxBatch + 1: room for `score` beside a full
   * batch). */
  maxSeqs?: number;
  /** Requests that may wait for admission; more are refused with QueueFullError (default: no
   * limit). */
  maxQueue?: number;
  /** Prompt tokens per prefill forward, and per loop iteration (default 128). */
  prefillChunk?: number;
  /** Tokens per readback (default 8), or "auto": at most AUTO_DECODE_STEPS, the fewest whose GPU
   * time covers a readback's wait, timed at warm-up (see `warmUp`). */
  decodeSteps?: number | "auto";
  /** Queue the next decode steps before waiting on a readback (default on): the GPU keeps
   * working through the ~10 ms each readback costs. Tokens are the same either way. */
  overlapDecode?: boolean;
  /** Longest sequence served (default: the model's context). */
  maxModelLen?: number;
  /** Automatic prefix caching (default on): later requests resume from the pages and ring
   * snapshots earlier ones left (cache/prefix_cache.ts). */
  prefixCache?: boolean;
  /** Snapshot rings of the prefix cache (default: 2 per sequence slot, within a quarter of the
   * KV budget). */
  prefixSnapshots?: number;
  /** No progress bar while loading (it is drawn only on a terminal anyway). */
  quiet?: boolean;
}

/** The request as the loop tracks it. */
class RequestState implements RequestView {
  phase: "waiting" | "prefill" | "decode" | "done" = "waiting";
  seq: SeqCache | null = null;
  prefilled = 0;
  /** Sampled but not fed back yet. */
  lastToken = -1;
  admittedAt = 0;
  firstTokenAt = 0;
  /** Why the server cut it short (abortAll), or null. */
  abortedBecause: string | null = null;
  /** Every token the runner sampled for it, a readback's overshoot included: position
   * promptTokens + i holds sampled[i] once it is fed. */
  readonly sampled: number[] = [];
  /** Submitted decodes that include it, not read back yet. */
  inFlight = 0;
  /** Finished while a decode including it was in flight: its pages are released (and cached)
   * once that decode is read back, since the GPU still writes them. */
  releaseDeferred = false;
  /** Its cache may be kept for reuse when released (it did not fail). */
  reusable = true;
  /** Its pages went back to the pool. */
  released = false;
  /** Hash chain of the full pages of what it has fed (prefix caching). */
  readonly chain: TokenChain;
  /** Where the prefix cache lets it resume, as last looked up while it waited. */
  hit: PrefixHit = NO_HIT;
  /** Prompt tokens restored from the prefix cache at admission. */
  cachedPromptTokens = 0;
  /** The snapshot copy into its rings, issued at admission (awaited before its prefill). */
  restoring: Promise<void> | null = null;
  /** A choice of an n > 1 request waits for its first choice's prompt to be cached. */
  after: RequestState | null = null;

  constructor(
    readonly job: Job,
    readonly writer: JobWriter,
    readonly output: RequestOutput,
    readonly sampling: SamplingParams,
    /** Counted in the metrics (the warm-up is not). */
    readonly metered: boolean,
    pageSize: number,
  ) {
    this.chain = new TokenChain(pageSize);
  }

  get promptTokens(): number {
    return this.job.request.promptIds.length;
  }

  get maxTokens(): number {
    return this.job.request.maxTokens;
  }

  get generated(): number {
    return this.output.ids.length;
  }

  get cachedTokens(): number {
    return this.seq?.tokens ?? 0;
  }

  get pagesHeld(): number {
    return this.seq?.pages.length ?? 0;
  }

  get prefixPages(): number {
    return this.hit.pages.length;
  }

  get prefixIdlePages(): number {
    return this.hit.idlePages;
  }

  /** The token fed at each position written so far (prompt, then sampled tokens). */
  fedTokens(positions: number): number[] {
    const p = this.job.request.promptIds;
    if (positions <= p.length) return p.slice(0, positions);
    return [...p, ...this.sampled.slice(0, positions - p.length)];
  }

  get cancelled(): boolean {
    return this.job.cancelled;
  }
}

/** A running request's cache use, as /v1/cache/stats lists it. */
export interface SequenceReport {
  id: number;
  state: string;
  tokens: number;
  pages: number;
}

export class Engine {
  readonly metrics = new EngineMetrics();
  readonly limits: EngineLimits;
  readonly maxQueue: number;
  /** The cache's kinds, in the order statistics and metrics list them. */
  readonly cacheKinds: readonly HeadKind[] = KIND_NAMES;
  readonly #runner: EngineRunner;
  readonly #cache: KvCacheManager;
  readonly #scheduler: Scheduler;
  #waiting: RequestState[] = [];
  #prefilling: RequestState[] = [];
  #decoding: RequestState[] = [];
  #accepting = true;
  #closed = false;
  #closing: Promise<void> | null = null;
  #wakeLoop: (() => void) | null = null;
  #idle: (() => void)[] = [];
  #nextId = 1;
  /** The engine opened the model's files (closed with the engine). */
  #ownsModel = false;
  readonly #loop: Promise<void>;
  readonly #overlap: boolean;
  readonly #autoSteps: boolean;
  /** What `--decode-steps auto` measured at warm-up (null before, or with a fixed count). */
  stepTiming: StepTiming | null = null;
  /** The decode submitted ahead, whose tokens are not read back yet (overlapped decode). */
  #pending: PendingDecode | null = null;
  /** The runner's last forward was a decode that a chained one may continue (no prefill or
   * scoring forward since). */
  #chainable = false;

  private constructor(
    readonly model: LoadedModel<AnyTensor>,
    readonly plan: ResolvedPlan,
    /** How the plan was named: "full", "streaming", a file, or a resolved plan's mode. */
    readonly planSource: string,
    readonly precision: Precision,
    readonly adapterName: string,
    runner: EngineRunner,
    readonly shape: RunnerShape,
    maxQueue: number,
    overlap: boolean,
    autoSteps: boolean,
  ) {
    this.#autoSteps = autoSteps;
    this.#runner = runner;
    this.#overlap = overlap;
    this.#cache = new KvCacheManager(shape.layout, { prefixCache: shape.prefixCache });
    this.limits = new EngineLimits(
      shape.maxSeqLen,
      Math.min(shape.maxBatch, this.#cache.maxSeqs),
      shape.maxDecodeSteps,
      Math.max(1, shape.prefillChunk),
      shape.layout,
    );
    this.#scheduler = new Scheduler(this.limits);
    this.maxQueue = maxQueue;
    this.#loop = this.#run();
  }

  /** Loads what is not given (model, device, plan), sizes the cache and builds the runner. */
  static async create(o: EngineOptions): Promise<Engine> {
    // A model given by path is opened lazily: its config, plan, cache geometry and every buffer
    // are checked before a byte of weights is read, and the upload streams them from disk.
    const owned = typeof o.model === "string";
    const model: LoadedModel<AnyTensor> = typeof o.model === "string"
      ? await loadModel(o.model, { tokenizerPath: o.tokenizer, lazy: true })
      : o.model;
    try {
      const plan = typeof o.plan === "object"
        ? o.plan
        : await loadPlanArg(o.plan ?? "full", model.config, {
          sink: o.sink,
          recent: o.recent,
          compensation: o.compensation,
        });
      const bar = o.quiet ? null : progress("loading model");
      const total = weightBytes(model.weights);
      let done = 0;
      const onUploadBytes = (bytes: number) => bar?.update(done += bytes, total);
      const sizes = {
        kvCacheBytes: o.kvCacheBytes,
        maxBatch: o.maxBatch,
        maxSeqs: o.maxSeqs,
        prefillChunk: o.prefillChunk,
        decodeSteps: o.decodeSteps === "auto" ? AUTO_DECODE_STEPS : o.decodeSteps,
        maxModelLen: o.maxModelLen,
        kvDtype: o.kvDtype,
        prefixCache: o.prefixCache,
        prefixSnapshots: o.prefixSnapshots,
        // A GGUF's own quantized formats unless told otherwise (packed as stored).
        weights: o.weights ?? "native",
      };
      let runner: EngineRunner;
      let shape: RunnerShape;
      let precision: Precision;
      let adapterName: string;
      if (o.gpuThread && typeof o.model === "string") {
        const thread = await RunnerThread.start(
          { model: o.model, tokenizer: o.tokenizer, plan, sizes, precision: o.precision },
          onUploadBytes,
        );
        ({ precision, adapterName } = thread.ready);
        // The same layout as the worker's: the same inputs and the adapter's limits.
        shape = runnerShape(model.config, plan, { ...sizes, precision }, thread.ready.limits);
        runner = thread;
      } else {
        const gpu = o.gpu ?? await getGpu();
        precision = resolvePrecision(gpu, o.precision);
        adapterName = gpu.adapterName;
        const local = await createRunner(gpu, model, plan, { ...sizes, precision, onUploadBytes });
        shape = {
          ...local.opts,
          layout: local.layout,
          maxSeqLen: local.maxSeqLen,
          prefixCache: o.prefixCache ?? true,
        };
        runner = local;
      }
      bar?.done();
      const planSource = typeof o.plan === "object" ? o.plan.mode : o.plan ?? "full";
      const engine = new Engine(
        model,
        plan,
        planSource,
        precision,
        adapterName,
        runner,
        shape,
        o.maxQueue ?? Infinity,
        o.overlapDecode ?? true,
        o.decodeSteps === "auto",
      );
      if (owned) engine.#ownsModel = true;
      return engine;
    } catch (e) {
      if (owned) model.close?.();
      throw e;
    }
  }

  get config(): ModelConfig {
    return this.model.config;
  }

  get tokenizer(): Tokenizer | null {
    return this.model.tokenizer;
  }

  /** The cache's geometry and sizes (pages, slots, the byte formula). */
  get layout(): CacheLayout {
    return this.shape.layout;
  }

  /** Requests admitted (prefilling or decoding). */
  get running(): number {
    return this.#prefilling.length + this.#decoding.length;
  }

  /** Requests queued for admission. */
  get waiting(): number {
    return this.#waiting.length;
  }

  get accepting(): boolean {
    return this.#accepting;
  }

  // ---- requests ---------------------------------------------------------------------------

  /** Queues a request. Throws RequestTooLargeError, DrainingError or QueueFullError. */
  submit(req: GenerationRequest): Job {
    return this.#submit(req, true).job;
  }

  /**
   * Queues `n` choices of one request (OpenAI's `n`, and `best_of`'s candidates). Choice i samples
   * with seed `seed + i` when the request is seeded (a fresh seed each when not). With prefix
   * caching the first choice prefills the prompt and the others wait until it is cached, then
   * share its pages and resume from its snapshot (recomputing only the prompt's last partial
   * page), as vLLM's parallel sampling does. Throws as `submit`, with none of the choices queued.
   */
  submitChoices(req: GenerationRequest, n: number): Job[] {
    if (!(Number.isInteger(n) && n >= 1)) throw new RangeError(`n = ${n}`);
    const states: RequestState[] = [];
    try {
      for (let i = 0; i < n; i++) {
        const s = req.sampling;
        const sampling = s.seed === undefined ? s : { ...s, seed: (s.seed + i) >>> 0 };
        const after = i > 0 && this.#cache.prefix ? states[0] : null;
        states.push(this.#submit({ ...req, sampling }, true, after));
      }
    } catch (e) {
      for (const st of states) st.job.cancel();
      throw e;
    }
    return states.map((st) => st.job);
  }

  /** A request start to finish; rejects when it ended in an error. */
  async generate(req: GenerationRequest): Promise<GenerationResult> {
    const res = await this.submit(req).result;
    if (res.finishReason === "error") throw new Error(`generation failed: ${res.error}`);
    return res;
  }

  /** One short prefill and decode, so the first request does not pay for shader compilation. */
  async warmUp(): Promise<void> {
    const ctx = this.limits.context;
    const steps = Math.min(2, this.limits.decodeSteps, Math.max(0, ctx - 2));
    const n = Math.min(9, ctx - 1 - steps);
    // A pool too small for a readback of overshoot still gets its prefill warmed.
    const maxTokens = this.limits.fitError(n, 1 + steps) ? 1 : 1 + steps;
    const res = await this.#submit({
      promptIds: new Array(n).fill(Math.max(0, this.config.bosId)),
      maxTokens,
      sampling: GREEDY,
      ignoreEos: true,
    }, false).job.result;
    if (res.finishReason === "error") throw new Error(`warm-up failed: ${res.error}`);
    if (this.#autoSteps) await this.#chooseSteps();
  }

  /** Tokens per readback the scheduler asks for now (`decodeSteps`, or what auto chose). */
  get stepsPerReadback(): number {
    return this.#scheduler.stepsPerReadback;
  }

  /**
   * `--decode-steps auto`: times one sequence's decode of 1 and of `cap` steps per readback
   * (fastest of 3 each, no overlap) on a scratch slot, solves ms = readbackWait + steps * step,
   * and picks the fewest steps whose GPU time covers twice the wait when decode is overlapped
   * (the queued steps must outlast the readback), or keeps the wait under 10% of a readback's
   * time when it is not. Streamed chunks stay as small as that allows.
   */
  async #chooseSteps(): Promise<void> {
    const cap = this.limits.decodeSteps;
    const positions = 1 + 2 * (1 + cap);
    const cache = this.#cache;
    if (cap < 2 || positions > this.limits.context) return;
    if (this.layout.pagesFor(positions) > cache.freePages) return;
    const seq = cache.open();
    if (!seq) return;
    try {
      this.#chainable = false;
      const bos = Math.max(0, this.config.bosId);
      let token = (await this.#runner.prefill(this.#allocate(seq, 1), [bos], GREEDY)).token;
      const time = async (steps: number) => {
        const t0 = performance.now();
        const out = await this.#runner.decode(
          [{ seq: this.#allocate(seq, steps), token, sampling: GREEDY }],
          steps,
        );
        token = out.tokens[0][steps - 1];
        return performance.now() - t0;
      };
      let one = Infinity;
      let many = Infinity;
      for (let r = 0; r < 3; r++) {
        one = Math.min(one, await time(1));
        many = Math.min(many, await time(cap));
      }
      const stepMs = Math.max(1e-3, (many - one) / (cap - 1));
      const waitMs = Math.max(0, one - stepMs);
      const need = this.#overlap ? 2 * waitMs / stepMs : 9 * waitMs / stepMs;
      const steps = Math.max(1, Math.min(cap, Math.ceil(need)));
      this.#scheduler.stepsPerReadback = steps;
      this.stepTiming = { stepMs, readbackWaitMs: waitMs, steps };
    } finally {
      cache.close(seq);
    }
  }

  /**
   * Teacher-forced scoring: feeds `promptIds` and returns, for each index in `rows`, the hidden
   * state after the final norm and the logits predicting the next token. Runs beside the loop in
   * a cache slot of its own; throws when the cache has no room for it besides what running
   * requests may claim.
   */
  async score(
    promptIds: number[],
    rows: number[],
  ): Promise<{ hidden: Float32Array[]; logits: Float32Array[] }> {
    const cache = this.#cache;
    const need = this.layout.pagesFor(promptIds.length);
    const reserved = this.#scheduler.reservedPages(this.#runningStates());
    const seq = need > cache.freePages - reserved ? null : cache.open();
    if (!seq) {
      throw new Error(
        `score: the KV cache has no room for ${promptIds.length} tokens beside ` +
          `${this.running} running request(s)`,
      );
    }
    try {
      this.#chainable = false;
      return await this.#runner.evaluate(this.#allocate(seq, promptIds.length), promptIds, rows);
    } finally {
      cache.close(seq);
    }
  }

  /**
   * Teacher-forced prompt log-probabilities (echo, prompt_logprobs): logprobs[i] = log p(
   * promptIds[i] | promptIds[<i]) ([0] NaN) and, with `topK` (0..20), each position's topK most
   * likely tokens ([0] empty). The runner reduces each group of logits rows as it reads it back,
   * in f64 (gpu/logprobs.ts). Runs beside the loop in a cache slot of its own, as `score`; throws
   * when the prompt exceeds the model's length or the cache has no room for it.
   */
  async promptLogprobs(
    promptIds: number[],
    opts: { topK?: number } = {},
  ): Promise<PromptLogprobs> {
    const topK = checkTopK(opts.topK ?? 0);
    const n = promptIds.length;
    if (n === 0) throw new RangeError("promptLogprobs: the prompt is empty");
    const V = this.config.vocabSize;
    const bad = promptIds.find((t) => !(Number.isInteger(t) && t >= 0 && t < V));
    if (bad !== undefined) {
      throw new RangeError(`promptLogprobs: token id ${bad} is outside the vocabulary of ${V}`);
    }
    if (n > this.limits.context) {
      throw new RequestTooLargeError(
        "prompt",
        `promptLogprobs: the prompt has ${n} tokens but the model length is ` +
          `${this.limits.context} tokens`,
      );
    }
    const cache = this.#cache;
    const need = this.layout.pagesFor(n);
    const reserved = this.#scheduler.reservedPages(this.#runningStates());
    const seq = need > cache.freePages - reserved ? null : cache.open();
    if (!seq) {
      throw new CacheExhaustedError(
        `promptLogprobs: the KV cache has no room for ${n} tokens beside ` +
          `${this.running} running request(s)`,
      );
    }
    try {
      this.#chainable = false;
      return await this.#runner.evaluateLogprobs(this.#allocate(seq, n), promptIds, topK);
    } finally {
      cache.close(seq);
    }
  }

  // ---- figures ----------------------------------------------------------------------------

  /** The running requests' cache use, oldest first. */
  sequences(): SequenceReport[] {
    return this.#runningStates()
      .sort((a, b) => a.job.id - b.job.id)
      .map((r) => ({
        id: r.job.id,
        state: r.phase,
        tokens: r.seq!.tokens,
        pages: r.seq!.pages.length,
      }));
  }

  /** What /v1/cache/stats answers: the manager's figures, the requests, geometry and plan. */
  cacheReport() {
    const cache = this.#cache;
    const g = this.layout;
    const plan = this.plan;
    const c = this.config;
    const count = (k: string) => plan.layers.filter((l) => l.kind === k).length;
    return {
      ...cache.stats(),
      pages_total: cache.numPages,
      max_sequences: cache.maxSeqs,
      requests: { running: this.running, waiting: this.waiting },
      per_sequence: this.sequences(),
      geometry: {
        kv_dtype: g.kvDtype,
        weights: this.shape.weights ?? "native",
        page_size: cache.pageSize,
        page_bytes: g.pageBytes,
        ring_length: g.ringLength,
        ring_bytes: g.ringBytes,
        retrieval_kv_heads: g.retrievalHeads,
        streaming_kv_heads: g.streamingHeads,
        compensated_kv_heads: g.headsOf("compensated"),
        full_token_bytes: g.tokenBytes(c.nLayers * c.nKvHeads),
      },
      plan: {
        mode: plan.mode,
        source: this.planSource,
        sink: plan.sink,
        recent: plan.recent,
        compensation: g.compensated,
        layers_by_kind: {
          retrieval: count("retrieval"),
          streaming: count("streaming"),
          mixed: count("mixed"),
        },
        per_layer_windows: hasOwnWindows(plan),
        layers: plan.layers.map((l, i) => ({
          kind: l.kind,
          retrieval_kv_heads: l.retrievalKvHeads,
          streaming_kv_heads: l.streamingKvHeads,
          // The window of each streaming KV head, in streaming_kv_heads order.
          windows: l.streamingKvHeads.map((h) => windowJson(headWindow(plan, i, h))),
        })),
      },
    };
  }

  // ---- lifecycle --------------------------------------------------------------------------

  /** Refuses new requests from now on (queued and running ones go on). */
  stopAccepting(): void {
    this.#accepting = false;
  }

  /** Resolves when nothing is queued or running. */
  idle(): Promise<void> {
    if (this.running === 0 && this.waiting === 0) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  /** Ends every queued and running request with "abort" (those its caller already cancelled
   * stay "cancelled"); queued ones at once, running ones at the next iteration boundary. */
  abortAll(why: string): void {
    for (const r of [...this.#waiting, ...this.#runningStates()]) {
      if (r.cancelled) continue;
      r.abortedBecause = why;
      r.job.cancel();
    }
  }

  /** Cancels everything, stops the loop and frees the GPU memory. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.stopAccepting();
      this.abortAll("the server is shutting down");
      await this.idle();
      this.#closed = true;
      this.#wake();
      await this.#loop;
      this.#runner.destroy();
      if (this.#ownsModel) this.model.close?.();
    })();
    return this.#closing;
  }

  // ---- the loop ---------------------------------------------------------------------------

  #submit(
    req: GenerationRequest,
    metered: boolean,
    after: RequestState | null = null,
  ): RequestState {
    if (req.promptIds.length === 0) throw new RequestTooLargeError("prompt", "the prompt is empty");
    if (!(req.maxTokens >= 1)) throw new RequestTooLargeError("max_tokens", "max_tokens < 1");
    const fit = this.limits.fitError(req.promptIds.length, req.maxTokens);
    if (fit) throw fit;
    if (!this.#accepting) throw new DrainingError();
    const s = req.sampling;
    // Unseeded sampling: a fresh seed per request (the GPU RNG is keyed by seed and position).
    const sampling = s.temperature > 0 && s.seed === undefined
      ? { ...s, seed: Math.floor(Math.random() * 0x7fffffff) }
      : s;
    // The job's cancel hook runs only once the job is handed out, when `state` exists.
    const { job, writer } = Job.open(metered ? this.#nextId++ : 0, req, () => this.#cancel(state));
    const output = new RequestOutput(req, this.config.eosIds, this.tokenizer);
    const state = new RequestState(job, writer, output, sampling, metered, this.layout.pageSize);
    state.after = after;
    if (this.#cache.prefix && metered) state.chain.extend(req.promptIds);
    this.#waiting.push(state);
    // A free batch row takes it at once; only requests that must wait count against the queue.
    this.#admit();
    if (this.#waiting.length > this.maxQueue) {
      this.#waiting.splice(this.#waiting.indexOf(state), 1);
      this.metrics.countRejected("queue_full");
      throw new QueueFullError(this.maxQueue);
    }
    const signal = req.signal;
    // The signal may also fire after a normal finish: cancel() is a no-op then.
    if (signal?.aborted) job.cancel();
    else signal?.addEventListener("abort", () => job.cancel(), { once: true });
    this.#wake();
    return state;
  }

  /** A queued request ends at once; a running one at the next iteration boundary. */
  #cancel(r: RequestState): void {
    if (r.phase === "waiting") {
      const i = this.#waiting.indexOf(r);
      if (i >= 0) this.#waiting.splice(i, 1);
      this.#finishCancelled(r);
    }
    this.#wake();
  }

  #wake(): void {
    this.#wakeLoop?.();
    this.#wakeLoop = null;
  }

  #runningStates(): RequestState[] {
    return [...this.#prefilling, ...this.#decoding];
  }

  async #run(): Promise<void> {
    while (!this.#closed) {
      this.#dropCancelled();
      this.#admit();
      if (this.running === 0) {
        // Sequences that finished with steps in flight hold their pages until those are read.
        if (this.#pending) {
          await this.#decodeStep();
          continue;
        }
        if (this.waiting > 0) continue;
        for (const r of this.#idle.splice(0)) r();
        if (this.#closed) break;
        await new Promise<void>((r) => (this.#wakeLoop = r));
        continue;
      }
      const sampled = await this.#prefillStep();
      this.#dropCancelled();
      const decoded = await this.#decodeStep();
      // Prefill pieces that sample nothing never wait for the GPU: let HTTP handlers run.
      if (!sampled && !decoded) await new Promise((r) => setTimeout(r, 0));
    }
    while (this.#pending) await this.#decodeStep();
  }

  #dropCancelled(): void {
    // One with steps in flight ends when they are read back, its pages free at once then.
    for (const r of this.#runningStates()) {
      if (r.cancelled && r.inFlight === 0) this.#finishCancelled(r);
    }
  }

  #finishCancelled(r: RequestState): void {
    if (r.abortedBecause === null) this.#finish(r, "cancelled");
    else this.#finish(r, "abort", new Error(r.abortedBecause));
  }

  /**
   * Schedules admissions; each admitted request gets a cache slot and, with prefix caching, starts
   * at the longest cached prefix of its prompt (shared pages, its rings copied from a snapshot).
   */
  #admit(): void {
    const cache = this.#cache;
    // A later choice of an n > 1 request waits until its first choice's prompt is cached.
    const ready = this.#waiting.filter((r) =>
      !r.after || r.after.phase === "decode" ||
      r.after.phase === "done"
    );
    if (cache.prefix) {
      // Only those that could be admitted now are looked up (hashes were taken at submit).
      const rows = Math.max(0, this.limits.maxBatch - this.running);
      for (const r of ready.slice(0, rows)) r.hit = cache.lookup(r.chain.hashes, r.promptTokens);
    }
    const { admit, unfit } = this.#scheduler.admit(ready, this.#runningStates(), {
      freePages: cache.freePages,
      freeSlots: cache.freeSlots,
    });
    for (const r of unfit) {
      this.#waiting.splice(this.#waiting.indexOf(r), 1);
      this.#finish(r, "error", new Error("the KV cache cannot hold this request"));
    }
    for (const r of admit) {
      const seq = cache.open();
      if (!seq) throw new Error("the scheduler admitted a request without a free cache slot");
      this.#waiting.splice(this.#waiting.indexOf(r), 1);
      r.seq = seq;
      const hit = r.hit;
      r.hit = NO_HIT;
      if (hit.positions > 0) {
        cache.resume(seq, hit);
        r.prefilled = hit.positions;
        r.cachedPromptTokens = hit.positions;
        if (hit.snapshot !== null) r.restoring = this.#runner.copyRing(hit.snapshot, seq.slot);
      }
      if (r.metered && cache.prefix) {
        this.metrics.prefixCacheQueries += r.promptTokens;
        this.metrics.prefixCacheHits += hit.positions;
      }
      r.phase = "prefill";
      r.admittedAt = performance.now();
      if (r.metered) this.metrics.queueTime.observe((r.admittedAt - r.job.arrival) / 1000);
      this.#prefilling.push(r);
    }
  }

  /** Prefills this iteration's prompt pieces; true when a prompt's last piece sampled. */
  async #prefillStep(): Promise<boolean> {
    let sampled = false;
    for (const work of this.#scheduler.prefill(this.#prefilling)) {
      const r = work.request;
      if (r.cancelled) continue;
      const seq = r.seq!;
      const tokens = r.job.request.promptIds.slice(r.prefilled, r.prefilled + work.tokens);
      let first;
      try {
        if (r.restoring) {
          const restoring = r.restoring;
          r.restoring = null;
          await restoring;
        }
        const at = this.#allocate(seq, tokens.length);
        // A penalised sampler's token counts start from the whole prompt (prefix-cache hits
        // included), at the prefill that samples.
        this.#chainable = false;
        first = await this.#runner.prefill(at, tokens, r.sampling, {
          sample: work.last,
          ...(work.last && penalised(r.sampling) ? { prompt: r.job.request.promptIds } : {}),
        });
      } catch (e) {
        this.#finish(r, "error", e);
        continue;
      }
      r.prefilled += tokens.length;
      // Its full prompt pages are reusable as soon as their forward is queued (queue order).
      if (r.metered) this.#cache.cachePages(seq, r.chain.hashes);
      if (!work.last) {
        // The boundary before the prompt's final piece is a resume point too: requests that
        // share a document but not its question (longer than the rings' slack) restore from it.
        const left = r.promptTokens - r.prefilled;
        if (r.metered && left <= this.limits.prefillBudget) this.#snapshot(r);
        continue;
      }
      if (r.metered) this.#snapshot(r);
      sampled = true;
      r.firstTokenAt = performance.now();
      this.#prefilling.splice(this.#prefilling.indexOf(r), 1);
      r.phase = "decode";
      this.#decoding.push(r);
      r.sampled.push(first.token);
      if (r.cancelled) continue;
      this.#applyTokens(r, [first.token], [first.logprob], first.top && [first.top]);
    }
    return sampled;
  }

  /**
   * One batched decode for every decoding sequence; false when there were none. Overlapped: the
   * decode after this one is submitted before this one's readback is awaited, when it can
   * continue it on the GPU (the same rows, each needing tokens beyond those in flight, no other
   * forward in between); the readback of a decode submitted ahead is awaited in the next call,
   * after queueing the next again. New prompts join when the chain breaks.
   */
  async #decodeStep(): Promise<boolean> {
    let current = this.#pending;
    this.#pending = null;
    if (!current) {
      const work = this.#scheduler.decode(this.#decoding);
      if (!work) return false;
      current = this.#submitDecode(work, false);
    }
    // The readback is asked for before the next steps are queued: Deno's mapAsync call returns
    // once the GPU has finished all work queued so far and its promise settles ~10 ms later, so
    // steps queued after the call keep the GPU busy through that wait (queued before it, they
    // would be waited for too).
    const readback = this.#runner.collectDecode();
    readback.catch(() => {}); // awaited in #collectDecode
    if (this.#overlap && this.#chainable) {
      const next = this.#scheduler.decodeAhead(this.#decoding, current.batch, current.steps);
      if (next) this.#pending = this.#submitDecode(next, true);
    }
    await this.#collectDecode(current, readback);
    return true;
  }

  /** Allocates the positions of a decode and queues it on the runner (no readback). */
  #submitDecode(work: DecodeWork<RequestState>, chained: boolean): PendingDecode {
    const { batch, steps } = work;
    let submitted: Promise<void>;
    try {
      const rows = batch.map((r) => ({
        seq: this.#allocate(r.seq!, steps),
        // A chained decode's first tokens are on the GPU (the previous decode's last samples).
        token: chained ? 0 : r.lastToken,
        sampling: r.sampling,
      }));
      submitted = this.#runner.submitDecode(rows, steps, { chained });
    } catch (e) {
      submitted = Promise.reject(e);
    }
    for (const r of batch) r.inFlight++;
    this.#chainable = true;
    return { batch, steps, chained, submitted };
  }

  /** Applies a submitted decode's tokens once read back (a finished request's are dropped). */
  async #collectDecode(p: PendingDecode, readback: Promise<Decoded>): Promise<void> {
    const { batch } = p;
    let out;
    try {
      // A decode that could not be queued reports why, not the empty readback.
      await p.submitted;
      out = await readback;
    } catch (e) {
      this.#chainable = false;
      for (const r of batch) this.#finish(r, "error", e);
      return;
    } finally {
      for (const r of batch) {
        r.inFlight--;
        if (r.inFlight === 0 && r.releaseDeferred && out === undefined) this.#release(r, false);
      }
    }
    const metered = batch.filter((r) => r.metered).length;
    if (metered > 0) {
      this.metrics.decodeCalls++;
      this.metrics.decodeRows += metered;
      if (p.chained) this.metrics.decodeOverlapped++;
    }
    batch.forEach((r, i) => {
      r.sampled.push(...out.tokens[i]);
      if (r.inFlight === 0 && r.releaseDeferred) this.#release(r, true);
      if (r.cancelled && r.inFlight === 0) this.#finishCancelled(r);
      if (r.cancelled || r.phase === "done") return;
      // Rows that asked none get no top lists, whichever batch carried them.
      const top = (r.sampling.topLogprobs ?? 0) > 0 ? out.top?.[i] : undefined;
      this.#applyTokens(r, out.tokens[i], out.logprobs[i], top);
    });
  }

  /**
   * Allocates the pages of the next `n` positions of `seq` and commits them, returning the
   * sequence as the forward that writes them must see it (starting at the old length). The
   * positions count as written from the moment their forward is issued, so the statistics read
   * while the GPU works show pages and tokens that agree.
   */
  #allocate(seq: SeqCache, n: number): SeqCache {
    this.#cache.reserve(seq, seq.tokens + n);
    const at: SeqCache = { id: seq.id, slot: seq.slot, pages: [...seq.pages], tokens: seq.tokens };
    this.#cache.commit(seq, seq.tokens + n);
    return at;
  }

  /** Copies a sequence's rings into a snapshot ring, when that restores a page boundary the
   * prefix cache cannot restore yet (its state at `seq.tokens`). */
  #snapshot(r: RequestState): void {
    const cache = this.#cache;
    const seq = r.seq!;
    const slot = cache.snapshot(seq, r.chain.hashes);
    if (slot === null) return;
    // Issued now, so it runs after the forwards that wrote the rings and before any later one;
    // a copy that fails must not be resumed from.
    this.#runner.copyRing(seq.slot, slot).catch(() => cache.prefix?.dropSnapshot(slot));
  }

  /** Hands sampled tokens to the request's output; streams the chunk; finishes it when over. */
  #applyTokens(
    r: RequestState,
    tokens: number[],
    logprobs: number[],
    top?: [number, number][][],
  ): void {
    r.lastToken = tokens[tokens.length - 1];
    r.writer.push(r.output.accept(tokens, logprobs, top));
    if (r.output.finishReason !== null) {
      this.#finish(r, r.output.finishReason, undefined, r.output.stopReason);
    }
  }

  /** Returns a finished request's pages to the pool, first caching them when `reusable`. */
  #release(r: RequestState, reusable: boolean): void {
    const seq = r.seq;
    if (!seq || r.released) return;
    r.released = true;
    r.releaseDeferred = false;
    if (this.#cache.prefix && r.metered && reusable && r.reusable) {
      r.chain.extend(r.fedTokens(seq.tokens));
      this.#cache.cachePages(seq, r.chain.hashes);
      this.#snapshot(r);
    }
    this.#cache.close(seq);
  }

  #finish(
    r: RequestState,
    reason: FinishReason,
    error?: unknown,
    stopReason: string | number | null = null,
  ): void {
    if (r.phase === "done") return;
    const now = performance.now();
    let cache: CacheFootprint | null = null;
    if (r.seq) {
      cache = this.#cache.footprint(r.seq);
      // What it wrote stays reusable: a multi-turn chat resumes from the previous turn. A
      // failed request's cache is not trusted.
      const reusable = reason !== "error" && reason !== "abort";
      if (r.inFlight > 0) {
        r.releaseDeferred = true;
        r.reusable = reusable;
      } else this.#release(r, reusable);
    }
    for (const list of [this.#prefilling, this.#decoding]) {
      const i = list.indexOf(r);
      if (i >= 0) list.splice(i, 1);
    }
    r.phase = "done";
    const arrival = r.job.arrival;
    const n = r.output.ids.length;
    const ttft = r.firstTokenAt ? r.firstTokenAt - arrival : 0;
    const decodeMs = r.firstTokenAt ? now - r.firstTokenAt : 0;
    if (r.metered) {
      const m = this.metrics;
      if (r.firstTokenAt) m.timeToFirstToken.observe(ttft / 1000);
      if (n > 1) m.timePerOutputToken.observe(decodeMs / 1000 / (n - 1));
      m.e2eLatency.observe((now - arrival) / 1000);
      m.promptTokens += r.prefilled;
      m.generationTokens += n;
      m.countFinished(reason);
    }
    r.writer.settle({
      ids: r.output.ids,
      logprobs: r.output.logprobs,
      ...(r.output.topLogprobs ? { topLogprobs: r.output.topLogprobs } : {}),
      text: r.output.text,
      textOffsets: r.output.textOffsets,
      finishReason: reason,
      stopReason,
      error: error === undefined
        ? undefined
        : error instanceof Error
        ? error.message
        : String(error),
      promptTokens: r.promptTokens,
      cachedTokens: r.cachedPromptTokens,
      timeToFirstTokenMs: ttft,
      decodeMs,
      decodeTokensPerS: n > 1 && decodeMs > 0 ? (n - 1) / (decodeMs / 1000) : 0,
      queueMs: (r.admittedAt || now) - arrival,
      e2eMs: now - arrival,
      cache,
    });
    this.#wake();
  }
}
