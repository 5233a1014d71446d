// The model runner: runs forward passes on the GPU.
//
// A forward takes rows of tokens: either a prefill chunk of one sequence or a decode batch with
// one row per sequence. The weights (gpu/weights.ts), the activations (here) and the forward
// program (gpu/forward.ts, every dispatch with its bind group) are made once at start-up; a
// forward only stages a few small per-row buffers (`#stage`, the one path prefill, evaluation
// and decode share) and records dispatches, so several decode steps fit in one submission and
// tokens come back in one readback.
//
// The runner never allocates KV memory: a forward over positions [seq.tokens, seq.tokens + n)
// needs the cache manager to have assigned their pages (`cache.reserve`) beforehand, and the
// caller commits the positions (`cache.commit`) afterwards.

import type { CacheLayout } from "../cache/layout.ts";
import type { SeqCache } from "../cache/manager.ts";
import type { AnyTensor, LoadedModel, ModelConfig, ModelWeights } from "../model/types.ts";
import {
  createTensor,
  type GpuTensor,
  readBuffers,
  readStaged,
  type StagedRead,
  stageRead,
} from "./buffers.ts";
import type { Gpu, Precision } from "./device.ts";
import {
  type Activations,
  buildPrograms,
  type Dispatch,
  type ForwardShape,
  type Programs,
} from "./forward.ts";
import { ATTENTION_GEOMETRY, CARRY_FLOATS, maxSplitsFor, splitsFor } from "./kernels/attention.ts";
import { encodeForward, encodeRows, FORWARD_BYTES, type RowParams } from "./kernels/common.ts";
import { compRowWords } from "./kernels/compensation.ts";
import { DECODE_STEP_MAX_ROWS } from "./kernels/decode_step.ts";
import type { Bound, Groups } from "./kernels/kernel.ts";
import { gemmFor } from "./kernels/matmul.ts";

import {
  encodeBias,
  encodeSampling,
  MAX_LOGIT_BIAS,
  MAX_TOP_LOGPROBS,
  penalised,
  promptCounts,
  SAMPLING_BYTES,
  type SamplingParams,
  topOf,
} from "./kernels/sample.ts";
import { KvBuffers } from "./kv_buffers.ts";
import { checkTopK, type PromptLogprobs, reduceRow } from "./logprobs.ts";
import { checkBufferPlan, type PlannedBuffer, withValidation } from "./limits.ts";
import { Pipelines } from "./pipelines.ts";
import {
  type ConvertOn,
  destroyWeights,
  type ModelTensors,
  partLimit,
  uploadWeights,
  weightBuffers,
  type WeightChoice,
} from "./weights.ts";

export type { SamplingParams };

export const GREEDY: SamplingParams = { temperature: 0 };

export interface RunnerOptions {
  precision: Precision;
  /** The KV cache's parts and sizes (cache/layout.ts); its plan orders the heads. */
  layout: CacheLayout;
  /** Largest prefill chunk (rows of one forward). */
  prefillChunk: number;
  /** Most sequences decoded together (<= 64). */
  maxBatch: number;
  /** Most decode steps recorded in one submission. */
  maxDecodeSteps: number;
  /** Largest weight-matrix part in bytes (default: what the adapter binds); tests lower it to
   * split small matrices. */
  bindingLimit?: number;
  /** How matmul weights are stored: "float" (the precision, default) or quantized on load to
   * GGUF's Q8_0 / Q4_0 blocks (`--weights`). */
  weights?: WeightChoice;
  /** Where checkpoint dtypes are converted (default: the host on CPU adapters, else the GPU). */
  convertOn?: ConvertOn;
  /** Source bytes of weights uploaded so far (progress). */
  onUploadBytes?: (bytes: number) => void;
}

export interface Sampled {
  token: number;
  logprob: number;
  /** The `sampling.topLogprobs` most likely tokens, [id, logprob], by logprob then lower id. */
  top?: [number, number][];
}

/** What a decode returns: per sequence, per step. */
export interface Decoded {
  tokens: number[][];
  logprobs: number[][];
  /** Per sequence, per step, its top log-probabilities (sequences asking none: empty lists). */
  top?: [number, number][][][];
  logits?: Float32Array[];
}

/** A submitted decode awaiting its readback: tokens [steps][maxBatch], log-probs, and (when a
 * row asked) top log-probs, staged. */
interface InFlightDecode {
  read: StagedRead;
  steps: number;
  /** Each row's top log-probs count (one entry per row). */
  topK: number[];
}

/** One decode row: a sequence, its next input token and its sampler. */
export interface DecodeRow {
  seq: SeqCache;
  token: number;
  sampling: SamplingParams;
}

/** A dispatch of a staged forward with its workgroup counts (bench/profile.ts times each). */
export interface StagedDispatch extends Bound {
  groups: Groups;
}

/** The inputs of one forward: what `#stage` writes before its dispatches are recorded. */
interface ForwardInputs {
  /** Each sequence's tokens, at consecutive positions from `pos`, in row order. */
  seqs: { seq: SeqCache; tokens: number[]; pos: number }[];
  /** Positions each sequence covers from `pos` (its rows, or the decode steps chained). */
  reach: number;
  /** Rows whose logits are computed (row indices of this forward). */
  logitRows: number[];
  /** One sampler per logits row, when the forward samples. */
  sampling?: SamplingParams[];
}

export class ModelRunner {
  readonly config: ModelConfig;
  readonly layout: CacheLayout;
  readonly kv: KvBuffers;
  readonly maxSeqLen: number;
  readonly maxRows: number;
  readonly maxSplits: number;
  readonly device: GPUDevice;
  readonly pipelines: Pipelines;
  /** Sequence slots the sampler's token counts hold (penalties): slots >= this cannot use them. */
  readonly countsSlots: number;

  #weights!: ModelTensors;
  #act!: Activations;
  #programs!: Programs;
  #busy: Promise<unknown> = Promise.resolve();
  /** Decodes submitted whose tokens are not read back yet, oldest first (submitDecode). */
  #inFlight: InFlightDecode[] = [];
  /** The last forward submitted, when it was a decode: the rows (slots) and steps a chained
   * decode continues from. */
  #chainFrom: { slots: string; steps: number } | null = null;

  private constructor(
    readonly gpu: Gpu,
    readonly model: LoadedModel<AnyTensor>,
    readonly opts: RunnerOptions,
  ) {
    this.device = gpu.device;
    this.config = model.config;
    this.pipelines = Pipelines.forDevice(gpu.device);
    this.layout = opts.layout;
    this.maxSeqLen = opts.layout.maxSeqLen;
    if (opts.maxBatch > DECODE_STEP_MAX_ROWS) {
      throw new Error(`--max-batch is at most ${DECODE_STEP_MAX_ROWS}`);
    }
    this.maxRows = Math.max(opts.prefillChunk, opts.maxBatch);
    this.maxSplits = runnerSplits(this.config, opts);
    this.countsSlots = countsSlots(this.config, opts, gpu.limits);
    this.kv = new KvBuffers(gpu.device, opts.layout);
  }

  /**
   * Checks every weight and activation buffer against the adapter's limits (naming the first
   * that does not fit) before anything is allocated, then uploads and builds inside a validation
   * error scope, so that a GPU validation error is an exception, never wrong output.
   */
  static async create(
    gpu: Gpu,
    model: LoadedModel<AnyTensor>,
    opts: RunnerOptions,
  ): Promise<ModelRunner> {
    validateModel(model.config, opts.layout);
    checkBufferPlan(
      gpu.limits,
      runnerBuffers(model.config, opts, gpu.limits, tiedHead(model), model.weights),
    );
    return await withValidation(gpu.device, "building the model on the GPU", async () => {
      const r = new ModelRunner(gpu, model, opts);
      r.#weights = await uploadWeights(
        gpu.device,
        r.pipelines,
        model.config,
        model.weights,
        opts.layout,
        opts.precision,
        {
          bindingLimit: opts.bindingLimit,
          onBytes: opts.onUploadBytes,
          weights: opts.weights,
          // Measured on llvmpipe (2 layers of Llama-3-8B, bf16 -> f16): 35 s on the host, 45 s in
          // its compute pass, which is a loop on the same cores.
          convertOn: opts.convertOn ?? (gpu.isCpu ? "host" : "gpu"),
        },
      );
      r.#act = r.#allocateActivations();
      r.#programs = await buildPrograms({
        pipelines: r.pipelines,
        precision: opts.precision,
        config: model.config,
        weights: r.#weights,
        act: r.#act,
        kv: r.kv,
        maxBatch: opts.maxBatch,
        maxSplits: r.maxSplits,
        gemm: gemmFor(gpu),
      });
      return r;
    });
  }

  /** Reads buffers back; a validation error since the last readback throws instead. */
  async #read(what: string, parts: { buffer: GPUBuffer; bytes: number }[]): Promise<ArrayBuffer[]> {
    const out = await readBuffers(this.device, parts);
    this.gpu.validation.check(what);
    return out;
  }

  /** Attention kernel calls (dispatch sequences) each layer issues: 1, or 2 for a duo layer. */
  attentionCallsPerLayer(): number[] {
    return [...this.#programs.attentionCalls];
  }

  get precision(): Precision {
    return this.opts.precision;
  }

  #allocateActivations(): Activations {
    const c = this.config;
    const R = this.maxRows;
    const B = this.opts.maxBatch;
    const S = this.opts.maxDecodeSteps;
    const qkvDim = (c.nHeads + 2 * c.nKvHeads) * c.headDim;
    const t = (shape: number[], label: string, dtype: "f32" | "u32" = "f32") =>
      createTensor(this.device, shape, dtype, label);
    return {
      fwd: this.device.createBuffer({
        label: "forward",
        size: FORWARD_BYTES,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      }),
      tokens: t([R], "tokens", "u32"),
      rows: t([R, 4], "rows", "u32"),
      gather: t([B], "logit rows", "u32"),
      sampling: t([B, SAMPLING_BYTES / 4], "sampling", "u32"),
      step: t([1], "step", "u32"),
      x: t([R, c.dim], "x"),
      qkv: t([R, qkvDim], "qkv"),
      attn: t([R, c.nHeads * c.headDim], "attn"),
      gateUp: t([R, 2 * c.hiddenDim], "gate_up"),
      xFinal: t([B, c.dim], "x_final"),
      logits: t([B, c.vocabSize], "logits"),
      partials: t([B, c.nHeads, this.maxSplits, c.headDim + 2], "attn partials"),
      carry: t([R, c.nHeads, CARRY_FLOATS], "attn carry"),
      sampled: t([S, B], "sampled", "u32"),
      logprobs: t([S, B], "logprobs"),
      work: t([B, c.vocabSize], "sampler logits"),
      counts: t([this.countsSlots, c.vocabSize], "sampler token counts", "u32"),
      bias: t([B, MAX_LOGIT_BIAS, 2], "logit bias", "u32"),
      top: t([S, B, MAX_TOP_LOGPROBS, 2], "top logprobs", "u32"),
      compRows: t([Math.max(1, compRowsWords(c, this.opts))], "compensation rows"),
      unused: t([4], "unused binding"),
    };
  }

  // ---- running ------------------------------------------------------------------------------

  /** Serialises GPU work: forwards share the activation buffers. */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#busy.then(fn, fn);
    this.#busy = run.catch(() => {});
    return run;
  }

  /**
   * Stages a forward's inputs: the page table rows of its sequences (checked to cover the
   * positions it reaches), token ids and `Row`s, the logits rows and their samplers (the decode
   * step counter restarts at 0), and the `Forward` uniform. Returns the forward's shape.
   */
  #stage(f: ForwardInputs): ForwardShape {
    // Any forward overwrites the tokens a chained decode would continue from.
    this.#chainFrom = null;
    let end = 0;
    for (const s of f.seqs) {
      this.kv.sync(s.seq, s.pos + f.reach);
      end = Math.max(end, s.pos + f.reach);
    }
    const rows: RowParams[] = [];
    const tokens: number[] = [];
    for (const s of f.seqs) {
      const firstRow = rows.length;
      s.tokens.forEach((tok, i) => {
        rows.push({ slot: s.seq.slot, pos: s.pos + i, firstRow, nSeqRows: s.tokens.length });
        tokens.push(tok);
      });
    }
    const q = this.device.queue;
    const a = this.#act;
    q.writeBuffer(a.tokens.buffer, 0, new Uint32Array(tokens));
    q.writeBuffer(a.rows.buffer, 0, encodeRows(rows));
    if (f.logitRows.length > 0) q.writeBuffer(a.gather.buffer, 0, new Uint32Array(f.logitRows));
    if (f.sampling) {
      q.writeBuffer(a.step.buffer, 0, new Uint32Array([0]));
      q.writeBuffer(a.sampling.buffer, 0, encodeSampling(f.sampling));
      if (f.sampling.some((p) => p.logitBias?.length)) {
        q.writeBuffer(a.bias.buffer, 0, encodeBias(f.sampling));
      }
    }
    const shape = {
      rows: rows.length,
      logitRows: f.logitRows.length,
      ...splitsFor(end, this.maxSplits),
    };
    q.writeBuffer(a.fwd, 0, encodeForward(shape));
    return shape;
  }

  /** The dispatches of `programs` that run at `shape`, with their workgroup counts. */
  #dispatches(programs: Dispatch[][], shape: ForwardShape): StagedDispatch[] {
    const out: StagedDispatch[] = [];
    for (const d of programs.flat()) {
      const groups = d.groups(shape);
      if (!groups || groups.some((g) => g === 0)) continue;
      out.push({ name: d.name, pipeline: d.pipeline, bindGroup: d.bindGroup, groups });
    }
    return out;
  }

  #record(pass: GPUComputePassEncoder, programs: Dispatch[][], shape: ForwardShape): void {
    for (const d of this.#dispatches(programs, shape)) {
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(...d.groups);
    }
  }

  /** One submission of one compute pass. */
  #submit(record: (pass: GPUComputePassEncoder) => void): void {
    const enc = this.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    record(pass);
    pass.end();
    this.device.queue.submit([enc.finish()]);
  }

  /** Chunks of at most `chunk` (capped by the prefill chunk) over `n` tokens: [start, length]. */
  #chunks(n: number, chunk: number | undefined): [number, number][] {
    const size = Math.min(chunk ?? this.opts.prefillChunk, this.opts.prefillChunk);
    const out: [number, number][] = [];
    for (let c0 = 0; c0 < n; c0 += size) out.push([c0, Math.min(size, n - c0)]);
    return out;
  }

  /** Throws when a penalised sequence's slot has no row of token counts. */
  #checkCounts(seq: SeqCache, sampling: SamplingParams): void {
    if (penalised(sampling) && seq.slot >= this.countsSlots) {
      throw new Error(
        `penalties need a row of the sampler token counts buffer, which holds ${this.countsSlots} ` +
          `of the ${this.layout.maxSeqs} sequence slots at vocab ${this.config.vocabSize} ` +
          `(the adapter's binding limit): lower --max-seqs`,
      );
    }
  }

  /**
   * Prefills `tokens` at positions [seq.tokens, seq.tokens + n) in chunks and samples the next
   * token from the last row. `readLogits` also returns that row's logits (tests).
   * `sample: false` only fills the cache (part of a longer prompt): no readback, token -1.
   * A penalised sampler first resets the slot's token counts: `prompt` (default `tokens`) seen,
   * nothing generated.
   */
  prefill(
    seq: SeqCache,
    tokens: number[],
    sampling: SamplingParams,
    opts: {
      chunk?: number;
      readLogits?: boolean;
      sample?: boolean;
      prompt?: readonly number[];
    } = {},
  ): Promise<Sampled & { logits?: Float32Array }> {
    return this.#exclusive(async () => {
      if (tokens.length === 0) throw new RangeError("prefill needs at least one token");
      if (opts.sample !== false && penalised(sampling)) {
        this.#checkCounts(seq, sampling);
        const row = promptCounts(this.config.vocabSize, opts.prompt ?? tokens);
        this.device.queue.writeBuffer(this.#act.counts.buffer, seq.slot * row.byteLength, row);
      }
      const start = seq.tokens;
      this.kv.sync(seq, start + tokens.length);
      const p = this.#programs;
      for (const [c0, n] of this.#chunks(tokens.length, opts.chunk)) {
        const last = c0 + n === tokens.length && opts.sample !== false;
        const shape = this.#stage({
          seqs: [{ seq, tokens: tokens.slice(c0, c0 + n), pos: start + c0 }],
          reach: n,
          logitRows: last ? [n - 1] : [],
          sampling: last ? [sampling] : undefined,
        });
        this.#submit((pass) =>
          this.#record(pass, last ? [p.body.prefill, p.head, p.sample] : [p.body.prefill], shape)
        );
      }
      // A prompt prefilled in parts: only its last part samples (and waits for the GPU).
      if (opts.sample === false) return { token: -1, logprob: 0 };
      const k = sampling.topLogprobs ?? 0;
      const [tok, lp, top] = await this.#read("prefill", [
        { buffer: this.#act.sampled.buffer, bytes: 4 },
        { buffer: this.#act.logprobs.buffer, bytes: 4 },
        ...(k > 0 ? [{ buffer: this.#act.top.buffer, bytes: MAX_TOP_LOGPROBS * 8 }] : []),
      ]);
      const out: Sampled & { logits?: Float32Array } = {
        token: new Uint32Array(tok)[0],
        logprob: new Float32Array(lp)[0],
      };
      if (top) out.top = topOf(new Uint32Array(top), this.opts.maxBatch, 0, 0, k);
      if (opts.readLogits) {
        out.logits = new Float32Array(
          (await this.#read("prefill", [
            { buffer: this.#act.logits.buffer, bytes: this.config.vocabSize * 4 },
          ]))[0],
        );
      }
      return out;
    });
  }

  /**
   * Teacher-forced scoring (calibration, evaluation): prefills `tokens` like `prefill` and
   * returns, for each index in `rows` (positions within `tokens`), the hidden state after the
   * final norm and the logits predicting the next token.
   */
  evaluate(
    seq: SeqCache,
    tokens: number[],
    rows: number[],
    opts: { chunk?: number } = {},
  ): Promise<{ hidden: Float32Array[]; logits: Float32Array[] }> {
    return this.#exclusive(async () => {
      const start = seq.tokens;
      this.kv.sync(seq, start + tokens.length);
      const p = this.#programs;
      const B = this.opts.maxBatch;
      const V = this.config.vocabSize;
      const D = this.config.dim;
      const hidden = new Map<number, Float32Array>();
      const logits = new Map<number, Float32Array>();
      for (const [c0, n] of this.#chunks(tokens.length, opts.chunk)) {
        const chunk = { seq, tokens: tokens.slice(c0, c0 + n), pos: start + c0 };
        const shape = this.#stage({ seqs: [chunk], reach: n, logitRows: [] });
        this.#submit((pass) => this.#record(pass, [p.body.prefill], shape));
        const mine = rows.filter((r) => r >= c0 && r < c0 + n);
        for (let g0 = 0; g0 < mine.length; g0 += B) {
          const group = mine.slice(g0, g0 + B);
          const logitRows = group.map((r) => r - c0);
          const headShape = this.#stage({ seqs: [chunk], reach: n, logitRows });
          this.#submit((pass) => this.#record(pass, [p.head], headShape));
          const [h, l] = await this.#read("evaluate", [
            { buffer: this.#act.xFinal.buffer, bytes: group.length * D * 4 },
            { buffer: this.#act.logits.buffer, bytes: group.length * V * 4 },
          ]);
          const hf = new Float32Array(h);
          const lf = new Float32Array(l);
          group.forEach((r, i) => {
            hidden.set(r, hf.slice(i * D, (i + 1) * D));
            logits.set(r, lf.slice(i * V, (i + 1) * V));
          });
        }
      }
      return { hidden: rows.map((r) => hidden.get(r)!), logits: rows.map((r) => logits.get(r)!) };
    });
  }

  /**
   * Teacher-forced prompt log-probabilities: prefills `tokens` like `evaluate` and, for each
   * position i > 0, returns log p(tokens[i] | tokens[<i]) and (topK > 0) the topK most likely
   * tokens there. Each group of logits rows is reduced as it is read back (gpu/logprobs.ts), so
   * only one group's logits are ever on the host.
   */
  evaluateLogprobs(
    seq: SeqCache,
    tokens: number[],
    topK = 0,
    opts: { chunk?: number } = {},
  ): Promise<PromptLogprobs> {
    return this.#exclusive(async () => {
      const n = tokens.length;
      const k = checkTopK(topK);
      const logprobs = new Float32Array(n).fill(NaN);
      const ranks = new Uint32Array(n);
      const top = k > 0
        ? Array.from({ length: n }, () => ({ ids: [] as number[], logprobs: [] as number[] }))
        : null;
      if (n === 0) return { logprobs, top, ranks };
      const start = seq.tokens;
      this.kv.sync(seq, start + n);
      const p = this.#programs;
      const B = this.opts.maxBatch;
      const V = this.config.vocabSize;
      for (const [c0, len] of this.#chunks(n, opts.chunk)) {
        const chunk = { seq, tokens: tokens.slice(c0, c0 + len), pos: start + c0 };
        const shape = this.#stage({ seqs: [chunk], reach: len, logitRows: [] });
        this.#submit((pass) => this.#record(pass, [p.body.prefill], shape));
        // Row r predicts tokens[r + 1]: the chunk's rows but the prompt's last.
        const last = Math.min(c0 + len, n - 1);
        for (let g0 = c0; g0 < last; g0 += B) {
          const g1 = Math.min(g0 + B, last);
          const logitRows = Array.from({ length: g1 - g0 }, (_, i) => g0 - c0 + i);
          const headShape = this.#stage({ seqs: [chunk], reach: len, logitRows });
          this.#submit((pass) => this.#record(pass, [p.head], headShape));
          const [l] = await this.#read("evaluateLogprobs", [
            { buffer: this.#act.logits.buffer, bytes: (g1 - g0) * V * 4 },
          ]);
          const lf = new Float32Array(l);
          for (let r = g0; r < g1; r++) {
            const red = reduceRow(lf, (r - g0) * V, V, tokens[r + 1], k);
            logprobs[r + 1] = red.logprob;
            ranks[r + 1] = red.rank;
            if (top) top[r + 1] = { ids: red.ids, logprobs: red.logprobs };
          }
        }
      }
      return { logprobs, top, ranks };
    });
  }

  /** Stages `steps` decode steps of a batch (one row per sequence, logits for every row). */
  #stageDecode(batch: DecodeRow[], steps: number): ForwardShape {
    return this.#stage({
      seqs: batch.map((b) => ({ seq: b.seq, tokens: [b.token], pos: b.seq.tokens })),
      reach: steps,
      logitRows: batch.map((_, i) => i),
      sampling: batch.map((b) => b.sampling),
    });
  }

  /**
   * Runs `steps` decode steps for a batch in one submission and reads their tokens back: step s
   * feeds each sequence the token sampled at step s-1 (the given `token` at step 0). Returns
   * tokens[seq][step]. With `readLogits` (tests; steps must be 1) also returns each row's logits.
   * No other decode may be in flight (submitDecode / collectDecode).
   */
  async decode(
    batch: DecodeRow[],
    steps: number,
    opts: { readLogits?: boolean } = {},
  ): Promise<Decoded> {
    if (this.#inFlight.length > 0) {
      throw new Error("decode() with decodes in flight: collect them first (collectDecode)");
    }
    await this.submitDecode(batch, steps);
    const out = await this.collectDecode();
    if (opts.readLogits) {
      const V = this.config.vocabSize;
      const B = batch.length;
      const all = await this.#exclusive(async () =>
        new Float32Array(
          (await this.#read("decode", [{ buffer: this.#act.logits.buffer, bytes: B * V * 4 }]))[0],
        )
      );
      out.logits = batch.map((_, i) => all.slice(i * V, (i + 1) * V));
    }
    return out;
  }

  /**
   * Submits `steps` decode steps of a batch and copies their tokens (log-probs, top log-probs)
   * to a staging buffer of their own, without waiting for them: `collectDecode` reads them back,
   * oldest first. So the engine can queue the next steps before it waits on a readback (Deno's
   * mapAsync costs >= 10 ms, the GPU stays busy meanwhile).
   * `chained`: step 0 feeds each row the token the previous decode sampled last, copied on the
   * GPU (the host does not know it yet; `token` is ignored); that decode must be the last
   * forward submitted and have the same rows in the same order.
   */
  submitDecode(
    batch: DecodeRow[],
    steps: number,
    opts: { chained?: boolean } = {},
  ): Promise<void> {
    return this.#exclusive(() => {
      const B = batch.length;
      if (B === 0 || B > this.opts.maxBatch) throw new RangeError(`decode batch of ${B}`);
      if (steps < 1 || steps > this.opts.maxDecodeSteps) throw new RangeError(`${steps} steps`);
      for (const b of batch) this.#checkCounts(b.seq, b.sampling);
      const from = this.#chainFrom;
      const slots = batch.map((b) => b.seq.slot).join(",");
      if (opts.chained && from?.slots !== slots) {
        throw new Error("a chained decode must follow a decode of the same rows");
      }
      const shape = this.#stageDecode(batch, steps);
      const p = this.#programs;
      const a = this.#act;
      const maxB = this.opts.maxBatch;
      const enc = this.device.createCommandEncoder();
      if (opts.chained) {
        // After the host's placeholder tokens (writeBuffer precedes this submission).
        enc.copyBufferToBuffer(
          a.sampled.buffer,
          (from!.steps - 1) * maxB * 4,
          a.tokens.buffer,
          0,
          B * 4,
        );
      }
      const pass = enc.beginComputePass();
      for (let s = 0; s < steps; s++) {
        this.#record(pass, [p.body.decode, p.head, p.sample, p.advance], shape);
      }
      pass.end();
      const topK = batch.map((b) => b.sampling.topLogprobs ?? 0);
      const parts = [
        { buffer: a.sampled.buffer, bytes: steps * maxB * 4 },
        { buffer: a.logprobs.buffer, bytes: steps * maxB * 4 },
        ...(topK.some((k) => k > 0)
          ? [{ buffer: a.top.buffer, bytes: steps * maxB * MAX_TOP_LOGPROBS * 8 }]
          : []),
      ];
      const read = stageRead(this.device, enc, parts);
      this.device.queue.submit([enc.finish()]);
      this.#inFlight.push({ read, steps, topK });
      this.#chainFrom = { slots, steps };
      return Promise.resolve();
    });
  }

  /** Decodes submitted and not collected yet. */
  get decodesInFlight(): number {
    return this.#inFlight.length;
  }

  /**
   * Waits for the oldest decode in flight and returns its tokens[seq][step] (and log-probs).
   * The map is requested within this call (`readStaged`), so work submitted right after it
   * overlaps the ~10 ms a readback waits.
   */
  collectDecode(): Promise<Decoded> {
    // In call order with submissions; the exclusive part ends once the map is requested.
    const started = this.#exclusive(() => {
      const f = this.#inFlight.shift();
      if (!f) throw new Error("collectDecode() with no decode in flight");
      return Promise.resolve({ f, read: readStaged(f.read) });
    });
    return started.then(({ f, read }) => this.#readDecode(f, read));
  }

  async #readDecode(f: InFlightDecode, read: Promise<ArrayBuffer[]>): Promise<Decoded> {
    const { steps, topK } = f;
    const maxB = this.opts.maxBatch;
    const [tokBuf, lpBuf, topBuf] = await read;
    const tok = new Uint32Array(tokBuf);
    const lp = new Float32Array(lpBuf);
    const out: Decoded = {
      tokens: topK.map((_, i) => Array.from({ length: steps }, (_, s) => tok[s * maxB + i])),
      logprobs: topK.map((_, i) => Array.from({ length: steps }, (_, s) => lp[s * maxB + i])),
    };
    if (topBuf) {
      const top = new Uint32Array(topBuf);
      out.top = topK.map((k, i) =>
        Array.from({ length: steps }, (_, s) => topOf(top, maxB, s, i, k))
      );
    }
    this.gpu.validation.check("decode");
    return out;
  }

  /**
   * Copies ring slot `from` onto `to` in every streaming part (a prefix-cache snapshot taken or
   * restored), in order with the forwards around it; resolves once submitted (no readback).
   */
  copyRing(from: number, to: number): Promise<void> {
    return this.#exclusive(() => {
      const enc = this.device.createCommandEncoder();
      this.kv.copyRing(enc, from, to);
      this.device.queue.submit([enc.finish()]);
      return Promise.resolve();
    });
  }

  /**
   * Stages one decode step of `batch` and hands `use` its dispatches in order (forward, head,
   * sampler; the step chaining excluded), with their workgroup counts, while no other forward can
   * run: the hook bench/profile.ts times kernels with. Whatever `use` records reads the staged
   * inputs; nothing is committed.
   */
  withDecodeStep<T>(batch: DecodeRow[], use: (d: StagedDispatch[]) => Promise<T>): Promise<T> {
    return this.#exclusive(() => {
      const shape = this.#stageDecode(batch, 1);
      const p = this.#programs;
      return use(this.#dispatches([p.body.decode, p.head, p.sample], shape));
    });
  }

  /**
   * Stages one prefill chunk of `seq` (`tokens` at positions from `pos`, whose cache must hold
   * the positions before) and hands `use` its dispatches in order, as withDecodeStep does; the
   * head and sampler are not included. Nothing is committed.
   */
  withPrefillChunk<T>(
    seq: SeqCache,
    tokens: number[],
    pos: number,
    use: (d: StagedDispatch[]) => Promise<T>,
  ): Promise<T> {
    return this.#exclusive(() => {
      if (tokens.length === 0 || tokens.length > this.opts.prefillChunk) {
        throw new RangeError(`a prefill chunk takes 1..${this.opts.prefillChunk} tokens`);
      }
      this.kv.sync(seq, pos + tokens.length);
      const shape = this.#stage({
        seqs: [{ seq, tokens, pos }],
        reach: tokens.length,
        logitRows: [],
      });
      return use(this.#dispatches([this.#programs.body.prefill], shape));
    });
  }

  /** Frees every GPU buffer the runner owns (weights, activations, KV cache). */
  destroy(): void {
    destroyWeights(this.#weights);
    for (const b of Object.values(this.#act) as (GpuTensor | GPUBuffer)[]) {
      (b instanceof GPUBuffer ? b : b.buffer).destroy();
    }
    this.kv.destroy();
  }
}

// ---- helpers -------------------------------------------------------------------------------

/** f32 words of the rows' compensation means: [rows, KV heads, 2, head_dim] when some layer is
 * compensated, else 0. */
function compRowsWords(c: ModelConfig, opts: RunnerOptions): number {
  if (!opts.layout.compensated) return 0;
  return Math.max(opts.prefillChunk, opts.maxBatch) * c.nKvHeads * compRowWords(c.headDim);
}

/**
 * Every weight and activation buffer the runner binds whole, with its size (the KV cache's are
 * checked by KvBuffers, shard by shard): the weight parts uploadWeights creates
 * (weightBuffers, the same plan), and the activations #allocateActivations creates (f32).
 */
export function runnerBuffers(
  c: ModelConfig,
  opts: RunnerOptions,
  limits: GPUSupportedLimits,
  tied = c.tiedEmbeddings,
  /** The checkpoint's tensors, which decide "native" weight formats (none: float). */
  weights?: ModelWeights<AnyTensor>,
): PlannedBuffer[] {
  const qkvDim = (c.nHeads + 2 * c.nKvHeads) * c.headDim;
  const rows = Math.max(opts.prefillChunk, opts.maxBatch);
  const B = opts.maxBatch;
  const out = weightBuffers(
    c,
    opts.precision,
    partLimit(limits, opts.bindingLimit),
    tied,
    opts.weights,
    weights && { weights, layout: opts.layout },
  );
  const splits = runnerSplits(c, opts);
  out.push(
    // Rows are the larger of a prefill chunk and a decode batch: the flags that shrink them.
    {
      name: `activation x (${rows} rows: lower the prefill chunk, --prefill-chunk or --chunk)`,
      bytes: rows * c.dim * 4,
      bound: true,
    },
    {
      name: `activation qkv (${rows} rows: lower the prefill chunk, --prefill-chunk or --chunk)`,
      bytes: rows * qkvDim * 4,
      bound: true,
    },
    {
      name: `activation attn (${rows} rows: lower the prefill chunk, --prefill-chunk or --chunk)`,
      bytes: rows * c.nHeads * c.headDim * 4,
      bound: true,
    },
    {
      name:
        `activation gate_up (${rows} rows: lower the prefill chunk, --prefill-chunk or --chunk)`,
      bytes: rows * 2 * c.hiddenDim * 4,
      bound: true,
    },
    { name: `activation x_final (batch ${B})`, bytes: B * c.dim * 4, bound: true },
    {
      name: `activation logits (batch ${B}: lower --max-batch)`,
      bytes: B * c.vocabSize * 4,
      bound: true,
    },
    {
      name: `attention partials (batch ${B}, ${splits} splits at context ${opts.layout.maxSeqLen})`,
      bytes: B * c.nHeads * splits * (c.headDim + 2) * 4,
      bound: true,
    },
    { name: "attention carry", bytes: rows * c.nHeads * CARRY_FLOATS * 4, bound: true },
    {
      name: `compensation rows (${rows} rows: lower the prefill chunk, --prefill-chunk or --chunk)`,
      bytes: compRowsWords(c, opts) * 4,
      bound: true,
    },
    {
      name: `sampler logits (batch ${B}: lower --max-batch)`,
      bytes: B * c.vocabSize * 4,
      bound: true,
    },
    {
      name: "sampler token counts",
      bytes: countsSlots(c, opts, limits) * c.vocabSize * 4,
      bound: true,
    },
  );
  return out;
}

/**
 * Sequence slots the sampler's token counts (u32 [slot, vocab], for penalties) hold: every slot
 * when one binding holds them, else as many as it does (a penalised request in a later slot is an
 * error naming the buffer).
 */
export function countsSlots(
  c: ModelConfig,
  opts: RunnerOptions,
  limits: GPUSupportedLimits,
): number {
  const limit = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  return Math.max(1, Math.min(opts.layout.maxSeqs, Math.floor(limit / (c.vocabSize * 4))));
}

/** Key splits of the runner's decode partials: capped (longer contexts take more keys per
 * split), so the partials stay small at any context and batch. */
function runnerSplits(c: ModelConfig, opts: RunnerOptions): number {
  return maxSplitsFor(opts.layout.maxSeqLen, opts.maxBatch, c.nHeads, c.headDim);
}

/** Whether the model's LM head is its embedding matrix (uploaded once). */
function tiedHead(model: LoadedModel<AnyTensor>): boolean {
  return model.weights.lmHead === model.weights.tokenEmbedding;
}

function validateModel(c: ModelConfig, layout: CacheLayout): void {
  if (layout.plan.layers.length !== c.nLayers) {
    throw new Error(`plan has ${layout.plan.layers.length} layers but the model has ${c.nLayers}`);
  }
  const maxHeadDim = ATTENTION_GEOMETRY.MAX_HEAD_DIM;
  if (c.headDim > maxHeadDim || c.headDim % 4 !== 0) {
    throw new Error(
      `head_dim ${c.headDim} is not supported (a multiple of 4, at most ${maxHeadDim})`,
    );
  }
  if (c.nHeads % c.nKvHeads !== 0) throw new Error("n_heads must be a multiple of n_kv_heads");
  for (const k of layout.ringKinds) {
    if (k.window!.recent < 1) throw new Error(`recent must be at least 1 (a ${k.name} ring has 0)`);
  }
  layout.layers.forEach((_, l) => {
    const heads = layout.kvHeadOrder(l).sort((a, b) => a - b);
    if (heads.length !== c.nKvHeads || heads.some((h, i) => h !== i)) {
      throw new Error(`plan layer ${l} does not partition the ${c.nKvHeads} KV heads`);
    }
  });
}
