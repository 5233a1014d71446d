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

import { CacheGeometry, CacheLayout } from "../cache/layout.ts";
import { KvCacheManager, type SeqCache } from "../cache/manager.ts";
import type { Gpu, Precision } from "../gpu/device.ts";
import { GREEDY, ModelRunner } from "../gpu/runner.ts";
import { mulberry32, randomModel } from "../model/random.ts";
import type { LoadedModel, ModelConfig, ModelWeights } from "../model/types.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import type { BenchPlanName } from "./plans.ts";
import { profileDecode } from "./profile.ts";
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
  context: number;
  /** null when the context is above the prefill limit of the run. */
  prefill_ms: Stat | null;
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

/** Weight bytes a decode step streams (GEMV reads each weight once for the whole batch). */
export function weightBytes(c: ModelConfig, precision: Precision): number {
  const pad = (n: number) => Math.ceil(n / 4) * 4;
  const bpe = precision === "f16" ? 2 : 4;
  const q = c.nHeads * c.headDim;
  const kv = c.nKvHeads * c.headDim;
  const perLayer = (q + 2 * kv) * pad(c.dim) + c.dim * pad(q) + 2 * c.hiddenDim * pad(c.dim) +
    c.dim * pad(c.hiddenDim);
  return bpe * (c.nLayers * perLayer + c.vocabSize * pad(c.dim));
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

/** A plan's runner and the cache manager that hands out its sequences' pages. */
interface PlanRunner {
  runner: ModelRunner;
  cache: KvCacheManager;
}

export class ModelBench {
  readonly runners = new Map<BenchPlanName, PlanRunner>();
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
    for (const [name, plan] of Object.entries(o.plans) as [BenchPlanName, ResolvedPlan][]) {
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
        });
        b.runners.set(name, { runner, cache: new KvCacheManager(layout) });
      } catch (e) {
        throw new Error(
          `plan ${name}: ${
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

  /** Every cell: prefill (where asked) and decode at each batch, plans interleaved. */
  async run(): Promise<Cell[]> {
    const o = this.o;
    const names = [...this.runners.keys()];
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
          (o.contexts.length ? o.batches.length : 0));
    let done = 0;
    const tick = (note: string) => o.onProgress?.(++done, total, note);

    // Warm-up: every plan once per phase and batch size.
    for (const name of names) {
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
          for (const name of rotate(names, rep)) {
            const r = this.runners.get(name)!;
            const tLo = await this.#timeDecode(r, b, ctx, lo);
            const tHi = await this.#timeDecode(r, b, ctx, hi);
            const key = `${name}|${ctx}|${b}`;
            const d: DecodeSamples = decode.get(key) ??
              { slope: [], amort: [], gpu: [], kernels: new Map(), kv: tHi.kvBytes };
            d.slope.push(Math.max(1e-6, (tHi.ms - tLo.ms) / (hi - lo)));
            d.amort.push(tHi.ms / hi);
            if (timestamps) {
              // The fastest of `profiles` profiled steps: rejects steps slowed by other work
              // sharing the adapter (a CPU adapter's threads being descheduled).
              let best: Map<string, number> | null = null;
              let bestTotal = Infinity;
              for (let p = 0; p < (o.profiles ?? 3); p++) {
                const prof = await this.#profileDecode(r, b, ctx);
                const total = [...prof.values()].reduce((a, v) => a + v, 0);
                if (total < bestTotal) [best, bestTotal] = [prof, total];
              }
              for (const [k, ns] of best!) {
                d.kernels.set(k, [...(d.kernels.get(k) ?? []), ns / 1e6]);
              }
              d.gpu.push(bestTotal / 1e6);
            }
            decode.set(key, d);
            tick(`decode ${name} ${ctx} b${b}`);
          }
        }
      }
    }

    const cells: Cell[] = [];
    const wBytes = weightBytes(o.config, o.precision);
    for (const name of names) {
      const r = this.runners.get(name)!;
      const g = r.cache.layout;
      const ctxs = [
        ...new Set([
          ...o.contexts,
          ...o.prefillContexts,
          ...(name === "streaming" ? extra : []),
        ]),
      ].sort((a, b) => a - b);
      for (const ctx of ctxs) {
        const p = prefill.get(`${name}|${ctx}`);
        const seqs = this.#openAt(r, 1, ctx);
        const st = r.cache.stats();
        for (const s of seqs) r.cache.close(s);
        const used = g.usedBytes([ctx]);
        cells.push({
          plan: name,
          context: ctx,
          prefill_ms: p ? stat(p) : null,
          decode: o.batches.flatMap((b) => {
            const d = decode.get(`${name}|${ctx}|${b}`);
            if (!d) return [];
            const wall = stat(d.slope);
            const gpu = d.gpu.length ? stat(d.gpu) : null;
            const ms = gpu ?? wall;
            const bytes = wBytes + b * kvReadBytes(g, ctx);
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
          }),
          kv: {
            bytes: st.total.bytes_used,
            full_attention_bytes: st.full_attention_bytes,
            ratio_to_full: st.ratio_to_full,
            closed_form_bytes: used.retrieval + used.streaming,
          },
        });
      }
    }
    return cells;
  }

  destroy(): void {
    for (const r of this.runners.values()) r.runner.destroy();
  }
}
