// Model-level measurements: one ModelRunner per plan over the same random weights, measured in
// interleaved order (repetition r runs the plans rotated by r), so slow drift of a shared CPU
// adapter lands on every plan alike.
//
// Decode: each sample opens `batch` sequences whose caches are marked as holding `context`
// positions without computing them (the manager hands out pages; the cache memory is whatever the
// GPU zero-initialised: decode time does not depend on the values), then times
// `decode(batch, lo)` and `decode(batch, hi)` from that same context, each up to its readback.
// One sample of the steady time per token is (T(hi) - T(lo)) / (hi - lo): the ~11 ms readback
// and the submission cost cancel. Prefill: wall time of `prefill(seq, context tokens)` in chunks,
// up to its single final readback (included; it adds at most one ~11 ms poll interval).
//
// Quantized weights (`weightVariants`): more runners of one plan over the same random weights,
// quantized on load (RunnerOptions.weights: q8_0, q4_0), decode-measured at one context in the
// same rotation as the plans, so each of their samples pairs with the float runner's of that
// round.

import { CacheGeometry, CacheLayout } from "../cache/layout.ts";
import { KvCacheManager, type SeqCache } from "../cache/manager.ts";
import type { Gpu, Precision } from "../gpu/device.ts";
import { quantRowWords, type WeightFormat } from "../gpu/kernels/matmul.ts";
import { GREEDY, ModelRunner } from "../gpu/runner.ts";
import { weightBuffers } from "../gpu/weights.ts";
import { mulberry32, randomModel } from "../model/random.ts";
import type { LoadedModel, ModelConfig, ModelWeights } from "../model/types.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import type { BenchPlanName } from "./plans.ts";
import { fastestProfile, profileDecode, profilePrefill } from "./profile.ts";
import type { WeightBytesRow } from "./report.ts";
import { type Stat, stat } from "./stats.ts";

export interface ModelBenchOptions {
  config: ModelConfig;
  precision: Precision;
  plans: Partial<Record<BenchPlanName, ResolvedPlan>>;
  contexts: number[];
  prefillContexts: number[];
  /** Extra prefill lengths measured for the streaming plan only (its growth with length). */
  streamingPrefillContexts?: number[];
  batches: number[];
  reps: number;
  /** Repetitions of each prefill cell (default `reps`). */
  prefillReps?: number;
  steps: { lo: number; hi: number };
  prefillChunk: number;
  /** Profiled decode steps per sample with timestamp-query; the fastest is kept (default 3). */
  profiles?: number;
  seed: number;
  /** Runners of `plan` with quantized matmul weights (RunnerOptions.weights), decode-measured
   * at `context` only, at every batch, in the same rotation as the plans (whose float runner of
   * `plan` is the reference). `plan` must be one of `plans`; `context` one of `contexts`. */
  weightVariants?: { plan: BenchPlanName; formats: WeightFormat[]; context: number };
  onProgress?: (done: number, total: number, note: string) => void;
}

export interface DecodeMeasurement {
  batch: number;
  /** Decode time per step (one token per sequence): `gpu_ms_per_token` where the adapter has
   * timestamp-query, else `wall_ms_per_token`. Every ratio uses this figure. */
  ms_per_token: Stat;
  method: "timestamp" | "wall-slope";
  /** Steady wall time per step from the two-count slope. */
  wall_ms_per_token: Stat;
  /** GPU time of one step: profileDecode's (bench/profile.ts) per-dispatch timestamps, summed;
   * each sample is the fastest of a few profiled steps. */
  gpu_ms_per_token: Stat | null;
  /** Median GPU ms per step of each kernel ("file:entry"), from profileDecode. */
  gpu_kernels_ms: Record<string, number> | null;
  /** T(hi) / hi: per step with the readback amortised over `hi` steps (what a server sees). */
  ms_per_token_amortised: Stat;
  /** Unique bytes a step reads: every weight once + each row's visible KV entries. */
  bytes_per_step: number;
  /** bytes_per_step / median ms_per_token. */
  gbps: number;
  /** The manager's bytes in use for `batch` sequences at this context. */
  kv_bytes: number;
}

export interface Cell {
  plan: BenchPlanName;
  /** How the runner's matmul weights are stored; absent: "float" (the precision). */
  weights?: WeightFormat;
  context: number;
  /** null when the context is above the prefill limit of the run. */
  prefill_ms: Stat | null;
  /** GPU ms per kernel ("file:entry") of the prompt's last chunk (rows [context - chunk,
   * context) over the keys before), from timestamps: the fastest of `profiles` profiled chunks.
   * Absent without timestamp-query or a prefill at this context. */
  prefill_kernels_ms?: Record<string, number>;
  decode: DecodeMeasurement[];
  kv: {
    /** The manager's statistics for one sequence of `context` tokens. */
    bytes: number;
    full_attention_bytes: number;
    ratio_to_full: number;
    /** CacheGeometry.usedBytes([context]) summed: must equal `bytes`. */
    closed_form_bytes: number;
  };
}

/** One matrix a decode step's GEMVs read, as the runner stores it. */
export interface GemvMatrix {
  /** gpu/weights.ts's name of the matrix, e.g. "wqkv L0 (q|k|v projections)" or "lm_head". */
  name: string;
  format: WeightFormat;
  /** Weights (rows x columns, no padding). */
  params: number;
  bytes: number;
}

/** Bytes per row part that weightBuffers may plan: large enough that no matrix is split (the
 * figure is the sum over parts either way). */
const NO_SPLIT = 2 ** 52;

/**
 * Every matrix a decode step's GEMVs read, as the runner uploads it (gpu/weights.ts
 * weightBuffers, the runner's own buffer plan): the layers' wqkv, wo, w_gate_up, w_down and the
 * LM head, in `format` where its rows are whole blocks (else float), float matrices in `dt` with
 * rows padded to 4 elements. Not the embedding, which is gathered (one row per token): the plan
 * is asked for an untied head, which is what a tied model reads too (the embedding itself when
 * float, a quantized copy otherwise).
 */
export function gemvMatrices(
  c: ModelConfig,
  dt: Precision,
  format: WeightFormat = "float",
): GemvMatrix[] {
  const shapes = new Map(decodeMatrices(c).map((m) => [m.label, [m.n, m.k] as const]));
  const out: GemvMatrix[] = [];
  for (const b of weightBuffers(c, dt, NO_SPLIT, false, format)) {
    if (b.name.startsWith("embed")) continue;
    const key = b.name.split(" ")[0];
    const shape = shapes.get(key);
    if (!shape) throw new Error(`gemvMatrices: unexpected weight buffer ${b.name}`);
    const [n, k] = shape;
    // The stored format, from the bytes: weightBuffers keeps float where rows are not whole
    // blocks.
    const floatBytes = n * Math.ceil(k / 4) * 4 * (dt === "f16" ? 2 : 4);
    const quantBytes = format === "float" ? null : n * quantRowWords(format, k) * 4;
    const stored = b.bytes === quantBytes ? format : b.bytes === floatBytes ? "float" : null;
    if (!stored) {
      throw new Error(`gemvMatrices: ${b.name} has ${b.bytes} bytes, neither float nor ${format}`);
    }
    out.push({ name: b.name, format: stored, params: n * k, bytes: b.bytes });
  }
  return out;
}

/** Weight bytes a decode step streams (GEMV reads each weight once for the whole batch): every
 * matrix of gemvMatrices. */
export function weightBytes(
  c: ModelConfig,
  precision: Precision,
  format: WeightFormat = "float",
): number {
  return gemvMatrices(c, precision, format).reduce((s, m) => s + m.bytes, 0);
}

/** The GEMV bytes of one decode step of `c` in `format` (float matrices in f16, the figures'
 * reference), summed per matrix kind over the layers. */
export function weightBytesRow(
  model: string,
  label: string,
  c: ModelConfig,
  format: WeightFormat,
): WeightBytesRow {
  const mats = gemvMatrices(c, "f16", format);
  const byMatrix: Record<string, number> = {};
  for (const m of mats) {
    const kind = m.name.split(" ")[0];
    byMatrix[kind] = (byMatrix[kind] ?? 0) + m.bytes;
  }
  const bytes = mats.reduce((s, m) => s + m.bytes, 0);
  const params = mats.reduce((s, m) => s + m.params, 0);
  return {
    model,
    label,
    format,
    float_dtype: "f16",
    params,
    bytes,
    bits_per_weight: (8 * bytes) / params,
    by_matrix: byMatrix,
    quantized_matrices: mats.filter((m) => m.format !== "float").length,
    matrices: mats.length,
  };
}

/** The matrices of a decode step, [rows n, columns k], for the GEMV bandwidth figure. */
export function decodeMatrices(c: ModelConfig): { label: string; n: number; k: number }[] {
  const q = c.nHeads * c.headDim;
  const kv = c.nKvHeads * c.headDim;
  return [
    { label: "wqkv", n: q + 2 * kv, k: c.dim },
    { label: "wo", n: c.dim, k: q },
    { label: "w_gate_up", n: 2 * c.hiddenDim, k: c.dim },
    { label: "w_down", n: c.dim, k: c.hiddenDim },
    { label: "lm_head", n: c.vocabSize, k: c.dim },
  ];
}

/** KV bytes one decode row at `context` reads (K and V of every visible cached position). */
export function kvReadBytes(g: CacheGeometry, context: number): number {
  return g.tokenBytes(g.retrievalHeads) * context +
    g.tokenBytes(g.streamingHeads) * Math.min(context, g.ringLength);
}

/**
 * Random weights whose layers all share one layer's tensors on the host (uploaded per layer by
 * the runner): host memory stays at one layer plus the embeddings, and timing does not depend on
 * the values.
 */
export function benchWeights(config: ModelConfig, seed: number): ModelWeights {
  const one = randomModel({ ...config, nLayers: 1 }, seed, { maxParams: Infinity });
  return { ...one, layers: Array.from({ length: config.nLayers }, () => one.layers[0]) };
}

function rotate<T>(xs: T[], r: number): T[] {
  const k = r % xs.length;
  return [...xs.slice(k), ...xs.slice(0, k)];
}

/** A plan's runner (float or quantized weights) and the cache manager that hands out its
 * sequences' pages. */
interface PlanRunner {
  plan: BenchPlanName;
  weights: WeightFormat;
  runner: ModelRunner;
  cache: KvCacheManager;
}

/** A runner's key: its plan, and the weight format when not float ("zigzag+q4_0"). */
export function runnerKey(plan: BenchPlanName, weights: WeightFormat = "float"): string {
  return weights === "float" ? plan : `${plan}+${weights}`;
}

/** What ModelBench.run measures: the plans' cells, and the weight variants' (one context). */
export interface ModelBenchCells {
  cells: Cell[];
  /** One cell per weight variant (`weights` set), at `weightVariants.context`, decode only. */
  weightCells: Cell[];
}

export class ModelBench {
  /** By runnerKey: the plans' float runners, then the weight variants. */
  readonly runners = new Map<string, PlanRunner>();
  readonly maxContext: number;
  #rand: () => number;

  private constructor(readonly gpu: Gpu, readonly o: ModelBenchOptions) {
    this.maxContext = Math.max(
      ...o.contexts,
      ...o.prefillContexts,
      ...(o.streamingPrefillContexts ?? []),
    );
    this.#rand = mulberry32(o.seed ^ 0x5eed);
  }

  static async create(gpu: Gpu, o: ModelBenchOptions): Promise<ModelBench> {
    const b = new ModelBench(gpu, o);
    const model: LoadedModel = {
      source: "random",
      config: o.config,
      weights: benchWeights(o.config, o.seed),
      tokenizer: null,
    };
    const maxBatch = Math.max(...o.batches);
    const builds: { name: BenchPlanName; plan: ResolvedPlan; weights: WeightFormat }[] = (
      Object.entries(o.plans) as [BenchPlanName, ResolvedPlan][]
    ).map(([name, plan]) => ({ name, plan, weights: "float" }));
    const wv = o.weightVariants;
    if (wv) {
      const plan = o.plans[wv.plan];
      if (!plan) throw new Error(`weight variants of plan ${wv.plan}, which is not measured`);
      if (!o.contexts.includes(wv.context)) {
        throw new Error(`weight variants at ${wv.context} tokens, not a decode context`);
      }
      for (const f of wv.formats.filter((f) => f !== "float")) {
        builds.push({ name: wv.plan, plan, weights: f });
      }
    }
    for (const { name, plan, weights } of builds) {
      const g = new CacheGeometry(o.config, plan, o.precision);
      const perSeq = b.maxContext + o.steps.hi + 1;
      const maxSeqs = maxBatch + 1;
      const budget = maxSeqs * g.ringBytes +
        maxBatch * Math.ceil(perSeq / g.pageSize) * g.pageBytes +
        g.pageBytes;
      try {
        const layout = new CacheLayout(o.config, plan, {
          budgetBytes: budget,
          maxSeqs,
          maxSeqLen: perSeq + g.pageSize,
          kvDtype: o.precision,
          limits: gpu.limits,
        });
        const runner = await ModelRunner.create(gpu, model, {
          precision: o.precision,
          layout,
          prefillChunk: o.prefillChunk,
          maxBatch,
          maxDecodeSteps: o.steps.hi,
          weights,
        });
        b.runners.set(runnerKey(name, weights), {
          plan: name,
          weights,
          runner,
          cache: new KvCacheManager(layout),
        });
      } catch (e) {
        throw new Error(
          `plan ${runnerKey(name, weights)}: ${
            (e as Error).message
          } (try a smaller --max-context, --layers or --vocab)`,
        );
      }
    }
    return b;
  }

  #tokens(n: number): number[] {
    const v = this.o.config.vocabSize;
    return Array.from({ length: n }, () => Math.floor(this.#rand() * v));
  }

  /** Opens `n` sequences marked as holding `context` positions (no compute). */
  #openAt({ cache }: PlanRunner, n: number, context: number): SeqCache[] {
    const seqs: SeqCache[] = [];
    for (let i = 0; i < n; i++) {
      const s = cache.open();
      if (!s) throw new Error("no free sequence slot");
      if (!cache.ensure(s, context)) throw new Error(`no pages for ${context} tokens`);
      cache.commit(s, context);
      seqs.push(s);
    }
    return seqs;
  }

  async #timeDecode(r: PlanRunner, batch: number, context: number, steps: number) {
    const seqs = this.#openAt(r, batch, context);
    const kvBytes = r.cache.stats().total.bytes_used;
    for (const s of seqs) r.cache.reserve(s, context + steps);
    const toks = this.#tokens(batch);
    const t0 = performance.now();
    await r.runner.decode(
      seqs.map((seq, i) => ({ seq, token: toks[i], sampling: GREEDY })),
      steps,
    );
    const ms = performance.now() - t0;
    for (const s of seqs) r.cache.close(s);
    return { ms, kvBytes };
  }

  /** Per-kernel GPU ns of one decode step of `batch` sequences at `context` (not committed). */
  async #profileDecode(r: PlanRunner, batch: number, context: number) {
    const seqs = this.#openAt(r, batch, context);
    for (const s of seqs) r.cache.reserve(s, context + 1);
    const toks = this.#tokens(batch);
    const prof = await profileDecode(
      r.runner,
      seqs.map((seq, i) => ({ seq, token: toks[i], sampling: GREEDY })),
    );
    for (const s of seqs) r.cache.close(s);
    return prof;
  }

  /** Per-kernel GPU ns of the last prefill chunk of a `context`-token prompt (not committed):
   * the positions before it assigned, not computed (values do not change the work). */
  async #profilePrefill(r: PlanRunner, context: number) {
    const n = Math.min(this.o.prefillChunk, context);
    const [seq] = this.#openAt(r, 1, context - n);
    r.cache.reserve(seq, context);
    const prof = await profilePrefill(r.runner, seq, this.#tokens(n), context - n);
    r.cache.close(seq);
    return prof;
  }

  async #timePrefill(r: PlanRunner, n: number): Promise<number> {
    const seq = r.cache.open()!;
    r.cache.reserve(seq, n);
    const toks = this.#tokens(n);
    const t0 = performance.now();
    await r.runner.prefill(seq, toks, GREEDY);
    const ms = performance.now() - t0;
    r.cache.close(seq);
    return ms;
  }

  /** Every cell: prefill (where asked) and decode at each batch, plans interleaved; the weight
   * variants' decode at their context, in the same rotation. */
  async run(): Promise<ModelBenchCells> {
    const o = this.o;
    const all = [...this.runners.values()];
    const names = all.filter((r) => r.weights === "float").map((r) => r.plan);
    const variants = all.filter((r) => r.weights !== "float").map((r) =>
      runnerKey(r.plan, r.weights)
    );
    const wCtx = o.weightVariants?.context;
    /** The runners decode-measured at `ctx`, in their rotation order. */
    const decodeKeys = (ctx: number): string[] => ctx === wCtx ? [...names, ...variants] : names;
    const { lo, hi } = o.steps;
    const preps = o.prefillReps ?? o.reps;
    // Prefill lengths and the plans measured at each.
    const extra = names.includes("streaming") ? o.streamingPrefillContexts ?? [] : [];
    const prefillJobs = [...new Set([...o.prefillContexts, ...extra])].sort((a, b) => a - b).map(
      (ctx) => ({
        ctx,
        plans: o.prefillContexts.includes(ctx) ? names : ["streaming" as BenchPlanName],
      }),
    );
    const total = prefillJobs.reduce((s, j) => s + j.plans.length * preps, 0) +
      (prefillJobs.length ? names.length : 0) +
      names.length * (o.contexts.length * o.batches.length * o.reps +
          (o.contexts.length ? o.batches.length : 0)) +
      variants.length * o.batches.length * (o.reps + 1);
    let done = 0;
    const tick = (note: string) => o.onProgress?.(++done, total, note);

    // Warm-up: every runner once per phase and batch size.
    for (const name of [...names, ...variants]) {
      const r = this.runners.get(name)!;
      for (const b of o.contexts.length ? o.batches : []) {
        await this.#timeDecode(r, b, Math.min(...o.contexts), lo);
        tick(`warm-up ${name} b${b}`);
      }
    }
    const prefill = new Map<string, number[]>();
    if (prefillJobs.length) {
      for (const name of names) {
        await this.#timePrefill(this.runners.get(name)!, Math.min(64, o.prefillChunk));
        tick(`prefill warm-up ${name}`);
      }
    }
    for (const { ctx, plans } of prefillJobs) {
      for (let rep = 0; rep < preps; rep++) {
        for (const name of rotate(plans, rep)) {
          const ms = await this.#timePrefill(this.runners.get(name)!, ctx);
          const key = `${name}|${ctx}`;
          prefill.set(key, [...(prefill.get(key) ?? []), ms]);
          tick(`prefill ${name} ${ctx}`);
        }
      }
    }
    const prefillKernels = new Map<string, Record<string, number>>();
    if (this.gpu.hasTimestamps) {
      for (const { ctx, plans } of prefillJobs) {
        for (const name of plans) {
          const { kernels } = await fastestProfile(
            o.profiles ?? 3,
            () => this.#profilePrefill(this.runners.get(name)!, ctx),
          );
          prefillKernels.set(
            `${name}|${ctx}`,
            Object.fromEntries([...kernels].map(([k, ns]) => [k, ns / 1e6])),
          );
        }
      }
    }
    interface DecodeSamples {
      slope: number[];
      amort: number[];
      gpu: number[];
      kernels: Map<string, number[]>;
      kv: number;
    }
    const decode = new Map<string, DecodeSamples>();
    const timestamps = this.gpu.hasTimestamps;
    for (const ctx of o.contexts) {
      for (const b of o.batches) {
        for (let rep = 0; rep < o.reps; rep++) {
          for (const name of rotate(decodeKeys(ctx), rep)) {
            const r = this.runners.get(name)!;
            const tLo = await this.#timeDecode(r, b, ctx, lo);
            const tHi = await this.#timeDecode(r, b, ctx, hi);
            const key = `${name}|${ctx}|${b}`;
            const d: DecodeSamples = decode.get(key) ??
              { slope: [], amort: [], gpu: [], kernels: new Map(), kv: tHi.kvBytes };
            d.slope.push(Math.max(1e-6, (tHi.ms - tLo.ms) / (hi - lo)));
            d.amort.push(tHi.ms / hi);
            if (timestamps) {
              // The fastest of `profiles` profiled steps.
              const { kernels, totalNs } = await fastestProfile(
                o.profiles ?? 3,
                () => this.#profileDecode(r, b, ctx),
              );
              for (const [k, ns] of kernels) {
                d.kernels.set(k, [...(d.kernels.get(k) ?? []), ns / 1e6]);
              }
              d.gpu.push(totalNs / 1e6);
            }
            decode.set(key, d);
            tick(`decode ${name} ${ctx} b${b}`);
          }
        }
      }
    }

    /** The decode measurements of runner `key` at `ctx`, one per batch measured. */
    const decodeOf = (key: string, ctx: number): DecodeMeasurement[] => {
      const r = this.runners.get(key)!;
      const wBytes = weightBytes(o.config, o.precision, r.weights);
      return o.batches.flatMap((b) => {
        const d = decode.get(`${key}|${ctx}|${b}`);
        if (!d) return [];
        const wall = stat(d.slope);
        const gpu = d.gpu.length ? stat(d.gpu) : null;
        const ms = gpu ?? wall;
        const bytes = wBytes + b * kvReadBytes(r.cache.layout, ctx);
        return [{
          batch: b,
          ms_per_token: ms,
          method: gpu ? "timestamp" as const : "wall-slope" as const,
          wall_ms_per_token: wall,
          gpu_ms_per_token: gpu,
          gpu_kernels_ms: gpu
            ? Object.fromEntries([...d.kernels].map(([k, v]) => [k, stat(v).median]))
            : null,
          ms_per_token_amortised: stat(d.amort),
          bytes_per_step: bytes,
          gbps: bytes / (ms.median * 1e6),
          kv_bytes: d.kv,
        }];
      });
    };
    /** The cache manager's figures for one sequence of `ctx` tokens. */
    const kvOf = (key: string, ctx: number): Cell["kv"] => {
      const r = this.runners.get(key)!;
      const seqs = this.#openAt(r, 1, ctx);
      const st = r.cache.stats();
      for (const s of seqs) r.cache.close(s);
      const used = r.cache.layout.usedBytes([ctx]);
      return {
        bytes: st.total.bytes_used,
        full_attention_bytes: st.full_attention_bytes,
        ratio_to_full: st.ratio_to_full,
        closed_form_bytes: used.retrieval + used.streaming,
      };
    };

    const cells: Cell[] = [];
    for (const name of names) {
      const ctxs = [
        ...new Set([
          ...o.contexts,
          ...o.prefillContexts,
          ...(name === "streaming" ? extra : []),
        ]),
      ].sort((a, b) => a - b);
      for (const ctx of ctxs) {
        const p = prefill.get(`${name}|${ctx}`);
        cells.push({
          plan: name,
          context: ctx,
          prefill_ms: p ? stat(p) : null,
          ...(prefillKernels.has(`${name}|${ctx}`)
            ? { prefill_kernels_ms: prefillKernels.get(`${name}|${ctx}`) }
            : {}),
          decode: decodeOf(name, ctx),
          kv: kvOf(name, ctx),
        });
      }
    }
    const weightCells: Cell[] = wCtx === undefined ? [] : variants.map((key) => {
      const r = this.runners.get(key)!;
      return {
        plan: r.plan,
        weights: r.weights,
        context: wCtx,
        prefill_ms: null,
        decode: decodeOf(key, wCtx),
        kv: kvOf(key, wCtx),
      };
    });
    return { cells, weightCells };
  }

  destroy(): void {
    for (const r of this.runners.values()) r.runner.destroy();
  }
}
