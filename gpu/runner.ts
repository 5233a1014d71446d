// The model runner: uploads weights and runs forward passes with the WGSL kernels.
//
// A forward takes rows of tokens: either a prefill chunk of one sequence or a decode batch with
// one row per sequence. It reads top to bottom as llama2.c's `forward` does:
//   embed -> per layer { attention block, feed-forward block } -> final norm -> LM head -> sample.
// Every buffer and bind group is made once at start-up; a forward only writes a few small
// per-row buffers and records dispatches, so several decode steps fit in one submission and
// tokens come back in one readback.

import type { LoadedModel, ModelConfig, ModelWeights } from "../model/types.ts";
import type { LayerAttentionPlan, ResolvedPlan } from "../plans/types.ts";
import { createTensor, GpuTensor, readBuffer, readBuffers, uploadMatrix } from "./buffers.ts";
import type { Gpu, Precision } from "./device.ts";
import { type CachePart, KvCacheManager, type SeqCache } from "./kv_cache.ts";
import { type KernelSpec, Pipelines } from "./pipelines.ts";

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  topK?: number;
  topP?: number;
  minP?: number;
  seed?: number;
}

export const GREEDY: SamplingParams = { temperature: 0 };

export interface RunnerOptions {
  precision: Precision;
  plan: ResolvedPlan;
  /** Largest prefill chunk (rows of one forward). */
  prefillChunk: number;
  /** Most sequences decoded together (<= 64). */
  maxBatch: number;
  /** Most decode steps recorded in one submission. */
  maxDecodeSteps: number;
  /** KV-cache byte budget. */
  kvCacheBytes: number;
  /** Longest sequence served; defaults to the model's context. */
  maxSeqLen?: number;
  pageSize?: number;
  /** Sequences that may hold cache at once (default maxBatch + 1). */
  maxSeqs?: number;
}

export interface Sampled {
  token: number;
  logprob: number;
}

interface Dispatch {
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  /** Workgroup counts for a forward of `rows` rows with `splits` attention splits. */
  size: (rows: number, logitRows: number, splits: number) => [number, number, number];
}

type Mode = "prefill" | "decode";

const SAMPLING_BYTES = 32;
const SPLIT_KEYS = 256; // keys per split-K workgroup in attention.wgsl
const GEMV_MAX_ROWS = 8; // matmul.wgsl: rows a GEMV workgroup handles
/** Outputs one GEMV workgroup computes (matmul.wgsl GEMV_COLS). */
export const GEMV_OUTPUTS = 8;
const MAX_WORKGROUPS = 65535;

/** Splits a 1-D workgroup count into x, y (kernels index wg.y * nwg.x + wg.x). */
function grid(n: number): [number, number, number] {
  if (n <= MAX_WORKGROUPS) return [Math.max(1, n), 1, 1];
  return [MAX_WORKGROUPS, Math.ceil(n / MAX_WORKGROUPS), 1];
}

/** Model weights on the GPU: q|k|v and gate|up fused, heads reordered for duo layers. */
interface LayerTensors {
  attnNorm: GpuTensor;
  wqkv: GpuTensor;
  bqkv: GpuTensor | null;
  wo: GpuTensor;
  ffnNorm: GpuTensor;
  wGateUp: GpuTensor;
  wDown: GpuTensor;
}

export class ModelRunner {
  readonly config: ModelConfig;
  readonly cache: KvCacheManager;
  readonly maxSeqLen: number;
  readonly maxRows: number;
  readonly maxSplits: number;
  readonly device: GPUDevice;
  readonly pipelines: Pipelines;

  #layers: LayerTensors[] = [];
  #embedding!: GpuTensor;
  #finalNorm!: GpuTensor;
  #lmHead!: GpuTensor;
  #invFreq!: GpuTensor;
  #dummy!: GpuTensor;

  // Per-forward inputs.
  #fwd!: GPUBuffer; // uniform Forward
  #tokens!: GpuTensor;
  #rows!: GpuTensor;
  #gather!: GpuTensor;
  #sampling!: GpuTensor;
  #step!: GpuTensor;
  // Activations.
  #x!: GpuTensor;
  #qkv!: GpuTensor;
  #attn!: GpuTensor;
  #gu!: GpuTensor;
  #xf!: GpuTensor;
  #logits!: GpuTensor;
  #partials!: GpuTensor;
  #sampled!: GpuTensor;
  #logprobs!: GpuTensor;

  #programs = new Map<string, Dispatch[]>();
  /** Prefill attention dispatches recorded per layer (counted while building the program). */
  #attentionCalls: number[] = [];
  #busy: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly gpu: Gpu,
    readonly model: LoadedModel,
    readonly opts: RunnerOptions,
  ) {
    this.device = gpu.device;
    this.config = model.config;
    this.pipelines = Pipelines.forDevice(gpu.device);
    this.maxSeqLen = opts.maxSeqLen ?? model.config.maxSeqLen;
    if (opts.maxBatch > 64) throw new Error("--max-batch is at most 64");
    this.maxRows = Math.max(opts.prefillChunk, opts.maxBatch);
    this.maxSplits = Math.ceil(this.maxSeqLen / SPLIT_KEYS);
    this.cache = new KvCacheManager(gpu.device, model.config, opts.plan, {
      budgetBytes: opts.kvCacheBytes,
      maxSeqs: opts.maxSeqs ?? opts.maxBatch + 1,
      maxSeqLen: this.maxSeqLen,
      kvDtype: opts.precision,
      pageSize: opts.pageSize,
    });
  }

  static async create(gpu: Gpu, model: LoadedModel, opts: RunnerOptions): Promise<ModelRunner> {
    validatePlan(model.config, opts.plan);
    const r = new ModelRunner(gpu, model, opts);
    r.#uploadWeights(model.weights);
    r.#allocateActivations();
    for (const mode of ["prefill", "decode"] as Mode[]) {
      r.#programs.set(mode, await r.#buildProgram(mode));
    }
    r.#programs.set("sample", await r.#buildSampling());
    // Chains decode steps in one submission: next input = the token just sampled.
    r.#programs.set("advance", [
      await r.#kernel(
        { file: "decode_step.wgsl", constants: { MAX_ROWS: opts.maxBatch } },
        [r.#fwd, r.#rows, r.#tokens, r.#sampled, r.#step],
        () => [1, 1, 1],
      ),
    ]);
    return r;
  }

  /** Attention kernel calls (dispatch sequences) each layer issues: 1, or 2 for a duo layer. */
  attentionCallsPerLayer(): number[] {
    return [...this.#attentionCalls];
  }

  get precision(): Precision {
    return this.opts.precision;
  }

  // ---- weights --------------------------------------------------------------------------

  #uploadWeights(w: ModelWeights): void {
    const c = this.config;
    const dt = this.opts.precision;
    const dev = this.device;
    const vec = (t: Float32Array, label: string) => uploadMatrix(dev, t, 1, t.length, dt, label);
    this.#embedding = uploadMatrix(dev, w.tokenEmbedding.data, c.vocabSize, c.dim, dt, "embed");
    // Tied heads are uploaded twice: the gather reads unpadded rows, the GEMV padded ones.
    this.#lmHead = uploadMatrix(dev, w.lmHead.data, c.vocabSize, c.dim, dt, "lm_head", 4);
    this.#finalNorm = vec(w.finalNorm.data, "final_norm");
    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    this.#layers = w.layers.map((lw, l) => {
      const order = kvHeadOrder(this.opts.plan.layers[l]);
      const group = c.nHeads / c.nKvHeads;
      const qOrder = order.flatMap((kv) => Array.from({ length: group }, (_, g) => kv * group + g));
      const wq = permuteRows(lw.wq.data, qOrder, c.headDim * c.dim);
      const wk = permuteRows(lw.wk.data, order, c.headDim * c.dim);
      const wv = permuteRows(lw.wv.data, order, c.headDim * c.dim);
      const wqkv = concat([wq, wk, wv]);
      let bqkv: GpuTensor | null = null;
      if (lw.bq && lw.bk && lw.bv) {
        const b = concat([
          permuteRows(lw.bq.data, qOrder, c.headDim),
          permuteRows(lw.bk.data, order, c.headDim),
          permuteRows(lw.bv.data, order, c.headDim),
        ]);
        bqkv = createTensor(dev, [b.length], "f32", `bqkv ${l}`);
        dev.queue.writeBuffer(bqkv.buffer, 0, b);
      }
      const wo = permuteColumns(lw.wo.data, c.dim, qOrder, c.headDim);
      return {
        attnNorm: vec(lw.attnNorm.data, `attn_norm ${l}`),
        wqkv: uploadMatrix(dev, wqkv, qDim + 2 * kvDim, c.dim, dt, `wqkv ${l}`, 4),
        bqkv,
        wo: uploadMatrix(dev, wo, c.dim, qDim, dt, `wo ${l}`, 4),
        ffnNorm: vec(lw.ffnNorm.data, `ffn_norm ${l}`),
        wGateUp: uploadMatrix(
          dev,
          concat([lw.wGate.data, lw.wUp.data]),
          2 * c.hiddenDim,
          c.dim,
          dt,
          `w_gate_up ${l}`,
          4,
        ),
        wDown: uploadMatrix(dev, lw.wDown.data, c.dim, c.hiddenDim, dt, `w_down ${l}`, 4),
      };
    });
    const invFreq = ropeInvFreq(c);
    this.#invFreq = createTensor(dev, [invFreq.length], "f32", "inv_freq");
    dev.queue.writeBuffer(this.#invFreq.buffer, 0, invFreq);
    this.#dummy = createTensor(dev, [4], "f32", "unused binding");
  }

  #allocateActivations(): void {
    const c = this.config;
    const dev = this.device;
    const R = this.maxRows;
    const B = this.opts.maxBatch;
    const qkvDim = (c.nHeads + 2 * c.nKvHeads) * c.headDim;
    const t = (shape: number[], label: string, dtype: "f32" | "u32" = "f32") =>
      createTensor(dev, shape, dtype, label);
    this.#fwd = dev.createBuffer({
      label: "forward",
      size: 16,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.#tokens = t([R], "tokens", "u32");
    this.#rows = t([R, 4], "rows", "u32");
    this.#gather = t([B], "logit rows", "u32");
    this.#sampling = t([B, SAMPLING_BYTES / 4], "sampling", "u32");
    this.#step = t([1], "step", "u32");
    this.#x = t([R, c.dim], "x");
    this.#qkv = t([R, qkvDim], "qkv");
    this.#attn = t([R, c.nHeads * c.headDim], "attn");
    this.#gu = t([R, 2 * c.hiddenDim], "gate_up");
    this.#xf = t([B, c.dim], "x_final");
    this.#logits = t([B, c.vocabSize], "logits");
    this.#partials = t([B, c.nHeads, this.maxSplits, c.headDim + 2], "attn partials");
    this.#sampled = t([this.opts.maxDecodeSteps, B], "sampled", "u32");
    this.#logprobs = t([this.opts.maxDecodeSteps, B], "logprobs");
  }

  // ---- programs: every dispatch of a forward, built once ----------------------------------

  async #kernel(
    spec: KernelSpec,
    bindings: (GPUBuffer | GpuTensor | null)[],
    size: Dispatch["size"],
  ): Promise<Dispatch> {
    const pipeline = await this.pipelines.get({
      W: this.opts.precision,
      KV: this.opts.precision,
      ...spec,
    });
    const bindGroup = this.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      // null: a binding this entry point does not use (auto layouts leave it out).
      entries: bindings.flatMap((b, i) =>
        b === null
          ? []
          : [{ binding: i, resource: { buffer: b instanceof GpuTensor ? b.buffer : b } }]
      ),
    });
    return { pipeline, bindGroup, size };
  }

  /**
   * y (+)= in · Wᵀ (+ bias), where `in` is x, rmsnorm(x) * norm (`norm`), or silu(gate) * up of
   * a fused gate|up x (`swiglu`): the input transforms run inside the matmul, no dispatch of their
   * own. Returns the GEMV and the GEMM dispatch; the forward's row count picks one.
   */
  async #matmul(
    x: GpuTensor,
    w: GpuTensor,
    y: GpuTensor,
    n: number,
    k: number,
    opts: {
      accumulate?: boolean;
      bias?: GpuTensor | null;
      logitRows?: boolean;
      norm?: GpuTensor;
      swiglu?: boolean;
    } = {},
  ): Promise<Dispatch[]> {
    const constants = {
      N: n,
      K: k,
      KP: w.shape[1],
      ACCUMULATE: opts.accumulate ?? false,
      HAS_BIAS: !!opts.bias,
      LOGIT_ROWS: opts.logitRows ?? false,
      NORM_INPUT: !!opts.norm,
      EPS: this.config.normEps,
      SWIGLU_INPUT: opts.swiglu ?? false,
    };
    const b = [this.#fwd, x, w, opts.bias ?? this.#dummy, y, opts.norm ?? this.#dummy];
    const rowsOf = (rows: number, logitRows: number) => opts.logitRows ? logitRows : rows;
    const gemv = await this.#kernel(
      { file: "matmul.wgsl", entry: "gemv", constants },
      b,
      () => grid(Math.ceil(n / GEMV_OUTPUTS)),
    );
    const gemm = await this.#kernel(
      { file: "matmul.wgsl", entry: "gemm", constants },
      b,
      (rows, lr) => [Math.ceil(n / 64), Math.ceil(rowsOf(rows, lr) / 64), 1],
    );
    // One of the two runs, chosen by the forward's row count.
    return [
      {
        ...gemv,
        size: (r, lr, s) => rowsOf(r, lr) <= GEMV_MAX_ROWS ? gemv.size(r, lr, s) : [0, 0, 0],
      },
      {
        ...gemm,
        size: (r, lr, s) => rowsOf(r, lr) > GEMV_MAX_ROWS ? gemm.size(r, lr, s) : [0, 0, 0],
      },
    ];
  }

  /** Every dispatch of a forward's body, as llama2.c's `forward` orders it. */
  async #buildProgram(mode: Mode): Promise<Dispatch[]> {
    const d = [await this.#embedTokens()];
    for (let l = 0; l < this.config.nLayers; l++) {
      d.push(...await this.#attentionBlock(l, mode), ...await this.#feedForwardBlock(l));
    }
    return d;
  }

  /** x = token embeddings. */
  #embedTokens(): Promise<Dispatch> {
    return this.#kernel(
      { file: "embed.wgsl", constants: { DIM: this.config.dim } },
      [this.#fwd, this.#tokens, this.#embedding, this.#x],
      (rows) => [rows, 1, 1],
    );
  }

  /** x += Wo · attention(rope(Wqkv · rmsnorm(x))), over each cache part of the layer; the
   * RMSNorm runs inside the q|k|v matmul. */
  async #attentionBlock(l: number, mode: Mode): Promise<Dispatch[]> {
    const c = this.config;
    const w = this.#layers[l];
    const group = c.nHeads / c.nKvHeads;
    const d: Dispatch[] = await this.#matmul(
      this.#x,
      w.wqkv,
      this.#qkv,
      this.#qkv.shape[1],
      c.dim,
      {
        bias: w.bqkv,
        norm: w.attnNorm,
      },
    );
    d.push(
      await this.#kernel(
        {
          file: "rope.wgsl",
          constants: {
            HEAD_DIM: c.headDim,
            N_HEADS: c.nHeads,
            N_KV_HEADS: c.nKvHeads,
            ROW_STRIDE: this.#qkv.shape[1],
            INTERLEAVED: c.ropeStyle === "interleaved",
          },
        },
        [this.#fwd, this.#rows, this.#invFreq, this.#qkv],
        (rows) => [rows, 1, 1],
      ),
    );
    // A zigzag layer has one part (one attention kernel); a duo layer both.
    const cache = this.cache.layers[l];
    const parts = [cache.retrieval, cache.streaming].filter((p): p is CachePart => p !== null);
    let calls = 0;
    for (const part of parts) {
      const a = await this.#attention(part, mode, group);
      d.push(...a);
      calls += a.length;
    }
    if (mode === "prefill") this.#attentionCalls[l] = calls;
    // Stored after attention has read the fresh keys, so a ring slot is never overwritten early.
    for (const part of parts) d.push(await this.#kvStore(part));
    d.push(
      ...await this.#matmul(this.#attn, w.wo, this.#x, c.dim, c.nHeads * c.headDim, {
        accumulate: true,
      }),
    );
    return d;
  }

  /** x += Wdown · swiglu(Wgate_up · rmsnorm(x)); RMSNorm and SwiGLU run inside the matmuls. */
  async #feedForwardBlock(l: number): Promise<Dispatch[]> {
    const c = this.config;
    const w = this.#layers[l];
    return [
      ...await this.#matmul(this.#x, w.wGateUp, this.#gu, 2 * c.hiddenDim, c.dim, {
        norm: w.ffnNorm,
      }),
      ...await this.#matmul(this.#gu, w.wDown, this.#x, c.dim, c.hiddenDim, {
        accumulate: true,
        swiglu: true,
      }),
    ];
  }

  /** Final norm of the rows that need logits, the LM head and the sampler. */
  async #buildSampling(): Promise<Dispatch[]> {
    const c = this.config;
    const B = this.opts.maxBatch;
    return [
      await this.#finalRmsnorm(),
      ...await this.#matmul(this.#xf, this.#lmHead, this.#logits, c.vocabSize, c.dim, {
        logitRows: true,
      }),
      await this.#kernel(
        { file: "sample.wgsl", constants: { VOCAB: c.vocabSize, MAX_ROWS: B } },
        [
          this.#fwd,
          this.#rows,
          this.#gather,
          this.#sampling,
          this.#logits,
          this.#sampled,
          this.#logprobs,
          this.#step,
        ],
        (_r, lr) => [lr, 1, 1],
      ),
    ];
  }

  /** x_final = rmsnorm(x) of the rows that need logits (gathered). */
  #finalRmsnorm(): Promise<Dispatch> {
    return this.#kernel(
      { file: "rmsnorm.wgsl", constants: { DIM: this.config.dim, EPS: this.config.normEps } },
      [this.#fwd, this.#x, this.#finalNorm, this.#gather, this.#xf],
      (_rows, lr) => [lr, 1, 1],
    );
  }

  #cacheConstants(part: CachePart) {
    const plan = this.opts.plan;
    return {
      HEAD_DIM: this.config.headDim,
      N_HEADS: this.config.nHeads,
      N_KV_HEADS: this.config.nKvHeads,
      CACHE_HEADS: part.heads,
      STREAMING: part.kind === "streaming",
      SINK: plan.sink,
      RECENT: plan.recent,
      PAGE_SIZE: this.cache.pageSize,
      MAX_PAGES: this.cache.maxPagesPerSeq,
    };
  }

  async #attention(part: CachePart, mode: Mode, group: number): Promise<Dispatch[]> {
    const c = this.config;
    const constants = {
      ...this.#cacheConstants(part),
      GROUP: group,
      Q_HEAD_BASE: part.kvHeadBase * group,
      SCALE: 1 / Math.sqrt(c.headDim),
    };
    const nq = part.heads * group;
    const common = [this.#fwd, this.#rows, this.#qkv, part.k, part.v, this.cache.pageTable];
    if (mode === "prefill") {
      return [
        await this.#kernel(
          { file: "attention.wgsl", entry: "prefill", constants },
          [...common, this.#attn],
          (rows) => [Math.ceil(rows / 16), nq, 1],
        ),
      ];
    }
    // decode writes `out` itself when there is one split, else partials that merge combines.
    const decode = await this.#kernel(
      { file: "attention.wgsl", entry: "decode", constants },
      [...common, this.#attn, this.#partials],
      // One workgroup per KV head and chunk of up to 8 of its query heads.
      (rows, _lr, splits) => [rows, part.heads * Math.ceil(group / 8), splits],
    );
    const merge = await this.#kernel(
      { file: "attention.wgsl", entry: "merge", constants },
      [this.#fwd, null, null, null, null, null, this.#attn, this.#partials],
      (rows, _lr, splits) => splits > 1 ? [rows, nq, 1] : [0, 0, 0],
    );
    return [decode, merge];
  }

  #kvStore(part: CachePart): Promise<Dispatch> {
    return this.#kernel(
      {
        file: "kv_store.wgsl",
        constants: { ...this.#cacheConstants(part), KV_HEAD_BASE: part.kvHeadBase },
      },
      [this.#fwd, this.#rows, this.#qkv, part.k, part.v, this.cache.pageTable],
      (rows) => [rows, 1, 1],
    );
  }

  // ---- running ------------------------------------------------------------------------------

  /** Serialises GPU work: forwards share the activation buffers. */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#busy.then(fn, fn);
    this.#busy = run.catch(() => {});
    return run;
  }

  #writeForward(rows: number, logitRows: number, splits: number): void {
    this.device.queue.writeBuffer(this.#fwd, 0, new Uint32Array([rows, logitRows, 0, splits]));
  }

  /** Token ids and row metadata of a prefill chunk: one sequence at positions pos0... */
  #writeChunk(seq: SeqCache, tokens: number[], pos0: number): void {
    const n = tokens.length;
    const rows = new Uint32Array(n * 4);
    for (let i = 0; i < n; i++) rows.set([seq.slot, pos0 + i, 0, n], i * 4);
    this.device.queue.writeBuffer(this.#tokens.buffer, 0, new Uint32Array(tokens));
    this.device.queue.writeBuffer(this.#rows.buffer, 0, rows);
  }

  #writeSampling(params: SamplingParams[]): void {
    const buf = new ArrayBuffer(params.length * SAMPLING_BYTES);
    const f = new Float32Array(buf);
    const u = new Uint32Array(buf);
    params.forEach((p, i) => {
      const o = i * (SAMPLING_BYTES / 4);
      f[o] = p.temperature;
      f[o + 1] = p.topP ?? 1;
      f[o + 2] = p.minP ?? 0;
      u[o + 3] = p.topK ?? 0;
      u[o + 4] = (p.seed ?? 0) >>> 0;
    });
    this.device.queue.writeBuffer(this.#sampling.buffer, 0, buf);
  }

  #record(pass: GPUComputePassEncoder, program: Dispatch[], rows: number, lr: number, s: number) {
    for (const d of program) {
      const [x, y, z] = d.size(rows, lr, s);
      if (x === 0 || y === 0 || z === 0) continue;
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(x, y, z);
    }
  }

  #reserve(seq: SeqCache, positions: number): void {
    if (positions > this.maxSeqLen) {
      throw new RangeError(
        `sequence of ${positions} tokens exceeds the context of ${this.maxSeqLen}`,
      );
    }
    if (!this.cache.ensure(seq, positions)) {
      throw new RangeError(`the KV cache has no free pages for ${positions} tokens`);
    }
  }

  /**
   * Prefills `tokens` at positions [seq.tokens, seq.tokens + n) in chunks and samples the next
   * token from the last row. `readLogits` also returns that row's logits (tests).
   * `sample: false` only fills the cache (part of a longer prompt): no readback, token -1.
   */
  prefill(
    seq: SeqCache,
    tokens: number[],
    sampling: SamplingParams,
    opts: { chunk?: number; readLogits?: boolean; sample?: boolean } = {},
  ): Promise<Sampled & { logits?: Float32Array }> {
    return this.#exclusive(async () => {
      if (tokens.length === 0) throw new RangeError("prefill needs at least one token");
      const start = seq.tokens;
      this.#reserve(seq, start + tokens.length);
      const chunk = Math.min(opts.chunk ?? this.opts.prefillChunk, this.opts.prefillChunk);
      const prog = this.#programs.get("prefill")!;
      for (let c0 = 0; c0 < tokens.length; c0 += chunk) {
        const n = Math.min(chunk, tokens.length - c0);
        const last = c0 + n === tokens.length && opts.sample !== false;
        this.#writeChunk(seq, tokens.slice(c0, c0 + n), start + c0);
        this.#writeForward(n, last ? 1 : 0, 1);
        const enc = this.device.createCommandEncoder();
        const pass = enc.beginComputePass();
        this.#record(pass, prog, n, 0, 1);
        if (last) {
          this.device.queue.writeBuffer(this.#gather.buffer, 0, new Uint32Array([n - 1]));
          this.device.queue.writeBuffer(this.#step.buffer, 0, new Uint32Array([0]));
          this.#writeSampling([sampling]);
          this.#record(pass, this.#programs.get("sample")!, n, 1, 1);
        }
        pass.end();
        this.device.queue.submit([enc.finish()]);
        this.cache.commit(seq, start + c0 + n);
      }
      // A prompt prefilled in parts: only its last part samples (and waits for the GPU).
      if (opts.sample === false) return { token: -1, logprob: 0 };
      const [tok, lp] = await readBuffers(this.device, [
        { buffer: this.#sampled.buffer, bytes: 4 },
        { buffer: this.#logprobs.buffer, bytes: 4 },
      ]);
      const out: Sampled & { logits?: Float32Array } = {
        token: new Uint32Array(tok)[0],
        logprob: new Float32Array(lp)[0],
      };
      if (opts.readLogits) {
        out.logits = new Float32Array(
          await readBuffer(this.device, this.#logits.buffer, this.config.vocabSize * 4),
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
      this.#reserve(seq, start + tokens.length);
      const chunk = Math.min(opts.chunk ?? this.opts.prefillChunk, this.opts.prefillChunk);
      const prog = this.#programs.get("prefill")!;
      const head = this.#programs.get("sample")!.slice(0, -1); // final norm + LM head
      const B = this.opts.maxBatch;
      const V = this.config.vocabSize;
      const D = this.config.dim;
      const hidden = new Map<number, Float32Array>();
      const logits = new Map<number, Float32Array>();
      for (let c0 = 0; c0 < tokens.length; c0 += chunk) {
        const n = Math.min(chunk, tokens.length - c0);
        this.#writeChunk(seq, tokens.slice(c0, c0 + n), start + c0);
        this.#writeForward(n, 0, 1);
        const enc = this.device.createCommandEncoder();
        const pass = enc.beginComputePass();
        this.#record(pass, prog, n, 0, 1);
        pass.end();
        this.device.queue.submit([enc.finish()]);
        this.cache.commit(seq, start + c0 + n);
        const mine = rows.filter((r) => r >= c0 && r < c0 + n);
        for (let g0 = 0; g0 < mine.length; g0 += B) {
          const group = mine.slice(g0, g0 + B);
          this.device.queue.writeBuffer(
            this.#gather.buffer,
            0,
            new Uint32Array(group.map((r) => r - c0)),
          );
          this.#writeForward(n, group.length, 1);
          const e2 = this.device.createCommandEncoder();
          const p2 = e2.beginComputePass();
          this.#record(p2, head, n, group.length, 1);
          p2.end();
          this.device.queue.submit([e2.finish()]);
          const [h, l] = await readBuffers(this.device, [
            { buffer: this.#xf.buffer, bytes: group.length * D * 4 },
            { buffer: this.#logits.buffer, bytes: group.length * V * 4 },
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
   * Runs `steps` decode steps for a batch in one submission: step s feeds each sequence the
   * token sampled at step s-1 (the given `token` at step 0). Returns tokens[seq][step].
   * With `readLogits` (tests; steps must be 1) also returns each row's logits.
   */
  decode(
    batch: { seq: SeqCache; token: number; sampling: SamplingParams }[],
    steps: number,
    opts: { readLogits?: boolean } = {},
  ): Promise<{ tokens: number[][]; logprobs: number[][]; logits?: Float32Array[] }> {
    return this.#exclusive(async () => {
      const B = batch.length;
      if (B === 0 || B > this.opts.maxBatch) throw new RangeError(`decode batch of ${B}`);
      if (steps < 1 || steps > this.opts.maxDecodeSteps) throw new RangeError(`${steps} steps`);
      let maxPos = 0;
      for (const b of batch) {
        this.#reserve(b.seq, b.seq.tokens + steps);
        maxPos = Math.max(maxPos, b.seq.tokens + steps);
      }
      const rows = new Uint32Array(B * 4);
      batch.forEach((b, i) => rows.set([b.seq.slot, b.seq.tokens, i, 1], i * 4));
      this.device.queue.writeBuffer(
        this.#tokens.buffer,
        0,
        new Uint32Array(batch.map((b) => b.token)),
      );
      this.device.queue.writeBuffer(this.#rows.buffer, 0, rows);
      this.device.queue.writeBuffer(
        this.#gather.buffer,
        0,
        new Uint32Array(batch.map((_, i) => i)),
      );
      this.device.queue.writeBuffer(this.#step.buffer, 0, new Uint32Array([0]));
      this.#writeSampling(batch.map((b) => b.sampling));
      const splits = Math.ceil(maxPos / SPLIT_KEYS);
      this.#writeForward(B, B, splits);
      const enc = this.device.createCommandEncoder();
      const pass = enc.beginComputePass();
      const prog = this.#programs.get("decode")!;
      const sample = this.#programs.get("sample")!;
      const advance = this.#programs.get("advance")!;
      for (let s = 0; s < steps; s++) {
        this.#record(pass, prog, B, B, splits);
        this.#record(pass, sample, B, B, splits);
        this.#record(pass, advance, B, B, splits);
      }
      pass.end();
      this.device.queue.submit([enc.finish()]);
      for (const b of batch) this.cache.commit(b.seq, b.seq.tokens + steps);
      const maxB = this.opts.maxBatch;
      const [tokBuf, lpBuf] = await readBuffers(this.device, [
        { buffer: this.#sampled.buffer, bytes: steps * maxB * 4 },
        { buffer: this.#logprobs.buffer, bytes: steps * maxB * 4 },
      ]);
      const tok = new Uint32Array(tokBuf);
      const lp = new Float32Array(lpBuf);
      const out: { tokens: number[][]; logprobs: number[][]; logits?: Float32Array[] } = {
        tokens: batch.map((_, i) => Array.from({ length: steps }, (_, s) => tok[s * maxB + i])),
        logprobs: batch.map((_, i) => Array.from({ length: steps }, (_, s) => lp[s * maxB + i])),
      };
      if (opts.readLogits) {
        const all = new Float32Array(
          await readBuffer(this.device, this.#logits.buffer, B * this.config.vocabSize * 4),
        );
        const V = this.config.vocabSize;
        out.logits = batch.map((_, i) => all.slice(i * V, (i + 1) * V));
      }
      return out;
    });
  }

  /**
   * GPU time of each kernel in one decode step of `batch` (adapters with `timestamp-query`):
   * every dispatch runs in its own timed pass. Returns nanoseconds summed per kernel
   * ("file:entry"). The step's tokens are not kept: the cache is not committed.
   */
  profileDecode(
    batch: { seq: SeqCache; token: number; sampling: SamplingParams }[],
  ): Promise<Map<string, number>> {
    return this.#exclusive(async () => {
      if (!this.gpu.hasTimestamps) throw new Error("the adapter has no timestamp-query");
      const B = batch.length;
      let maxPos = 0;
      for (const b of batch) {
        this.#reserve(b.seq, b.seq.tokens + 1);
        maxPos = Math.max(maxPos, b.seq.tokens + 1);
      }
      const rows = new Uint32Array(B * 4);
      batch.forEach((b, i) => rows.set([b.seq.slot, b.seq.tokens, i, 1], i * 4));
      const q = this.device.queue;
      q.writeBuffer(this.#tokens.buffer, 0, new Uint32Array(batch.map((b) => b.token)));
      q.writeBuffer(this.#rows.buffer, 0, rows);
      q.writeBuffer(this.#gather.buffer, 0, new Uint32Array(batch.map((_, i) => i)));
      q.writeBuffer(this.#step.buffer, 0, new Uint32Array([0]));
      this.#writeSampling(batch.map((b) => b.sampling));
      const splits = Math.ceil(maxPos / SPLIT_KEYS);
      this.#writeForward(B, B, splits);
      const all = [...this.#programs.get("decode")!, ...this.#programs.get("sample")!]
        .filter((d) => d.size(B, B, splits).every((v) => v > 0));
      const querySet = this.device.createQuerySet({ type: "timestamp", count: 2 * all.length });
      const resolve = this.device.createBuffer({
        size: 16 * all.length,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
      const enc = this.device.createCommandEncoder();
      all.forEach((d, i) => {
        const pass = enc.beginComputePass({
          timestampWrites: {
            querySet,
            beginningOfPassWriteIndex: 2 * i,
            endOfPassWriteIndex: 2 * i + 1,
          },
        });
        pass.setPipeline(d.pipeline);
        pass.setBindGroup(0, d.bindGroup);
        pass.dispatchWorkgroups(...d.size(B, B, splits));
        pass.end();
      });
      enc.resolveQuerySet(querySet, 0, 2 * all.length, resolve, 0);
      q.submit([enc.finish()]);
      const times = new BigUint64Array(await readBuffer(this.device, resolve, 16 * all.length));
      const out = new Map<string, number>();
      all.forEach((d, i) => {
        const key = d.pipeline.label.split("|").filter((_, k) => k === 0 || k === 3).join(":");
        out.set(key, (out.get(key) ?? 0) + Number(times[2 * i + 1] - times[2 * i]));
      });
      querySet.destroy();
      resolve.destroy();
      return out;
    });
  }

  /** Frees every GPU buffer the runner owns (weights, activations, KV cache). */
  destroy(): void {
    const tensors: (GpuTensor | null)[] = [
      this.#embedding,
      this.#finalNorm,
      this.#lmHead,
      this.#invFreq,
      this.#dummy,
      this.#tokens,
      this.#rows,
      this.#gather,
      this.#sampling,
      this.#step,
      this.#x,
      this.#qkv,
      this.#attn,
      this.#gu,
      this.#xf,
      this.#logits,
      this.#partials,
      this.#sampled,
      this.#logprobs,
      ...this.#layers.flatMap((l) => Object.values(l) as (GpuTensor | null)[]),
    ];
    for (const t of tensors) t?.buffer.destroy();
    this.#fwd.destroy();
    this.#programs.clear();
    this.cache.destroy();
  }
}

// ---- helpers -------------------------------------------------------------------------------

/** KV heads in cache order: a layer's retrieval heads first, then its streaming heads. */
export function kvHeadOrder(lp: LayerAttentionPlan): number[] {
  return [...lp.retrievalKvHeads, ...lp.streamingKvHeads];
}

function validatePlan(c: ModelConfig, plan: ResolvedPlan): void {
  if (plan.layers.length !== c.nLayers) {
    throw new Error(`plan has ${plan.layers.length} layers but the model has ${c.nLayers}`);
  }
  if (c.headDim > 128 || c.headDim % 4 !== 0) {
    throw new Error(`head_dim ${c.headDim} is not supported (a multiple of 4, at most 128)`);
  }
  if (c.nHeads % c.nKvHeads !== 0) throw new Error("n_heads must be a multiple of n_kv_heads");
  if (plan.recent < 1) throw new Error("recent must be at least 1");
  plan.layers.forEach((lp, l) => {
    const heads = kvHeadOrder(lp).sort((a, b) => a - b);
    if (heads.length !== c.nKvHeads || heads.some((h, i) => h !== i)) {
      throw new Error(`plan layer ${l} does not partition the ${c.nKvHeads} KV heads`);
    }
  });
}

function concat(parts: Float32Array[]): Float32Array<ArrayBuffer> {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Reorders blocks of `block` values: output block i is input block order[i]. */
function permuteRows(data: Float32Array, order: number[], block: number): Float32Array {
  if (order.every((v, i) => v === i)) return data;
  const out = new Float32Array(data.length);
  order.forEach((src, i) => out.set(data.subarray(src * block, (src + 1) * block), i * block));
  return out;
}

/** Reorders head blocks of columns of a [rows, heads*headDim] matrix. */
function permuteColumns(
  data: Float32Array,
  rows: number,
  order: number[],
  headDim: number,
): Float32Array {
  if (order.every((v, i) => v === i)) return data;
  const cols = order.length * headDim;
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    order.forEach((src, i) =>
      out.set(
        data.subarray(r * cols + src * headDim, r * cols + (src + 1) * headDim),
        r * cols + i * headDim,
      )
    );
  }
  return out;
}

/** RoPE inverse frequencies per pair, with Llama-3 scaling applied (computed in f32 as
 * llama2.c and PyTorch do). */
export function ropeInvFreq(c: ModelConfig): Float32Array<ArrayBuffer> {
  const half = c.headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    out[i] = Math.fround(1 / Math.fround(Math.pow(c.ropeTheta, Math.fround((2 * i) / c.headDim))));
  }
  const s = c.ropeScaling;
  if (s) {
    const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / out[i];
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        out[i] = out[i] / s.factor;
      } else {
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) /
          (s.highFreqFactor - s.lowFreqFactor);
        out[i] = (1 - smooth) * out[i] / s.factor + smooth * out[i];
      }
    }
  }
  return out;
}
