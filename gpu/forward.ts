// The forward program: every dispatch of a forward pass, built once per runner and recorded as
// often as it runs. It reads as llama2.c's `forward` does:
//
//   x = embed(tokens)
//   for each layer:
//     x += Wo · attention(rope(Wqkv · rmsnorm(x)))      over each cache part of the layer
//                                                       (a compensated part's token folded first)
//     x += Wdown · swiglu(Wgate_up · rmsnorm(x))
//   logits = lm_head · rmsnorm(x)                        for the rows that need logits
//   token = sample(logits)
//
// The layers' RMSNorms and the SwiGLU run inside the matmuls that read them (matmul.ts). A layer
// of one kind has one cache part and one attention kernel; a duo layer has a part per kind (a
// part whose cache is split into shards runs its attention and KV store once per shard). Each
// dispatch knows its workgroup counts for a forward's shape (rows, logit rows, key splits), or
// that it does not run at that shape (the GEMV/GEMM pair, the split-K merge).

import type { ModelConfig } from "../model/types.ts";
import type { GpuTensor } from "./buffers.ts";
import type { Precision } from "./device.ts";
import {
  attentionDecode,
  attentionMerge,
  attentionPrefill,
  type DecodeEntry,
  decodeEntry,
  decodeGroups,
  mergeGroups,
  prefillGroups,
  splitsFor,
} from "./kernels/attention.ts";
import { decodeStep, decodeStepGroups } from "./kernels/decode_step.ts";
import { embed, embedGroups } from "./kernels/embed.ts";
import {
  bind,
  type BindingIndices,
  type Bound,
  type BufferSet,
  type Groups,
  type Kernel,
} from "./kernels/kernel.ts";
import { compensationFold, compensationGroups } from "./kernels/compensation.ts";
import { kvStore, kvStoreGroups } from "./kernels/kv_store.ts";
import {
  type GemmEntry,
  matmul,
  type MatmulConstants,
  matmulEntries,
  matmulEntry,
  matmulGroups,
} from "./kernels/matmul.ts";
import { rmsnorm, rmsnormGroups } from "./kernels/rmsnorm.ts";
import { rope, ropeGroups } from "./kernels/rope.ts";
import { MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS, sample, sampleGroups } from "./kernels/sample.ts";
import type { KvBuffers, KvPartBuffers } from "./kv_buffers.ts";
import type { Pipelines } from "./pipelines.ts";
import type { GpuMatrix, ModelTensors } from "./weights.ts";

/** What a forward's dispatches depend on (the values of the `Forward` uniform). */
export interface ForwardShape {
  rows: number;
  logitRows: number;
  splits: number;
  /** Visible keys per split of decode attention. */
  keysPerSplit: number;
}

export interface Dispatch extends Bound {
  /** Workgroup counts at this shape, or null when the dispatch does not run at it. */
  groups: (s: ForwardShape) => Groups | null;
}

/** The runner's activation and per-forward input buffers (gpu/runner.ts allocates them). */
export interface Activations {
  /** uniform Forward. */
  fwd: GPUBuffer;
  tokens: GpuTensor;
  rows: GpuTensor;
  /** Logits row -> token row. */
  gather: GpuTensor;
  sampling: GpuTensor;
  /** [0]: decode step within the submission. */
  step: GpuTensor;
  x: GpuTensor;
  qkv: GpuTensor;
  attn: GpuTensor;
  gateUp: GpuTensor;
  /** Final-norm hidden states of the logits rows. */
  xFinal: GpuTensor;
  logits: GpuTensor;
  /** Decode attention's split-K partials [maxBatch, nHeads, maxSplits, headDim + 2], which also
   * carry a split's softmax state from one cache shard's dispatch to the next. */
  partials: GpuTensor;
  /** Prefill attention's softmax max and sum [maxRows, nHeads, 2] between shard dispatches. */
  carry: GpuTensor;
  /** [decode steps, maxBatch] tokens and their log-probabilities. */
  sampled: GpuTensor;
  logprobs: GpuTensor;
  /** [maxBatch, vocab]: the logits after logit_bias and penalties, which the sampler draws from. */
  work: GpuTensor;
  /** u32 [sequence slot, vocab]: bit 31 = in the prompt, bits 0..30 = times generated. */
  counts: GpuTensor;
  /** [maxBatch, MAX_LOGIT_BIAS] (id, f32 bits) logit_bias entries. */
  bias: GpuTensor;
  /** [decode steps, maxBatch, MAX_TOP_LOGPROBS] (id, f32 bits) top log-probabilities. */
  top: GpuTensor;
  /** [maxRows, nKvHeads, 2, headDim]: each row's compensation means for the attention of a
   * compensated part (compensation.wgsl writes them, comp_mean.wgsl reads them); one word when
   * no layer is compensated. */
  compRows: GpuTensor;
  /** Bound where a kernel declares a binding its variant never reads (bias, norm). */
  unused: GpuTensor;
}

export type Mode = "prefill" | "decode";

export interface Programs {
  /** Embedding and every layer, for a prefill chunk and for a decode batch. */
  body: Record<Mode, Dispatch[]>;
  /** Final norm and LM head of the logits rows. */
  head: Dispatch[];
  sample: Dispatch[];
  /** Chains decode steps: next input = the token just sampled. */
  advance: Dispatch[];
  /** Attention kernel calls each layer's prefill issues, one per cache part (whatever its
   * shards): 1, or 2 for a duo layer. */
  attentionCalls: number[];
}

export interface ForwardSources {
  pipelines: Pipelines;
  precision: Precision;
  config: ModelConfig;
  weights: ModelTensors;
  act: Activations;
  kv: KvBuffers;
  maxBatch: number;
  /** The runner's cap on decode splits (`maxSplitsFor`), which sized the partials. */
  maxSplits: number;
  /** The adapter's prefill GEMM (gpu/kernels/matmul.ts gemmFor). */
  gemm: GemmEntry;
}

export async function buildPrograms(s: ForwardSources): Promise<Programs> {
  const f = new ForwardBuilder(s);
  const prefill = await f.body("prefill");
  return {
    body: { prefill, decode: await f.body("decode") },
    head: await f.head(),
    sample: [await f.sample()],
    advance: [await f.advance()],
    attentionCalls: f.attentionCalls,
  };
}

class ForwardBuilder {
  readonly attentionCalls: number[] = [];
  readonly #c: ModelConfig;
  readonly #a: Activations;

  constructor(readonly s: ForwardSources) {
    this.#c = s.config;
    this.#a = s.act;
  }

  /** Every dispatch of a forward's body, as llama2.c's `forward` orders it. */
  async body(mode: Mode): Promise<Dispatch[]> {
    const d = await this.#embed();
    for (let l = 0; l < this.#c.nLayers; l++) {
      d.push(...await this.#attentionBlock(l, mode), ...await this.#feedForwardBlock(l));
    }
    return d;
  }

  /** x = token embeddings: one gather per row part of the table. */
  #embed(): Promise<Dispatch[]> {
    const a = this.#a;
    const table = this.s.weights.embedding;
    return Promise.all(table.parts.map((part) =>
      this.#dispatch(
        embed({ DIM: this.#c.dim, STRIDE: table.stride, ROW_BASE: part.rowStart, ROWS: part.rows }),
        { fwd: a.fwd, tokens: a.tokens, table: part.tensor, x: a.x },
        (s) => embedGroups(s.rows),
      )
    ));
  }

  /** x += Wo · attention(rope(Wqkv · rmsnorm(x))), over each cache part of the layer. */
  async #attentionBlock(l: number, mode: Mode): Promise<Dispatch[]> {
    const c = this.#c;
    const w = this.s.weights.layers[l];
    const a = this.#a;
    const qkvDim = a.qkv.shape[1];
    const d = await this.#matmul(a.x, w.wqkv, a.qkv, { bias: w.bqkv, norm: w.attnNorm });
    d.push(
      await this.#dispatch(
        rope({
          HEAD_DIM: c.headDim,
          N_HEADS: c.nHeads,
          N_KV_HEADS: c.nKvHeads,
          ROW_STRIDE: qkvDim,
          INTERLEAVED: c.ropeStyle === "interleaved",
        }),
        { fwd: a.fwd, rows: a.rows, invFreq: this.s.weights.invFreq, qkv: a.qkv },
        (s) => ropeGroups(s.rows),
      ),
    );
    const parts = this.s.kv.layers[l];
    let calls = 0;
    for (const part of parts) {
      if (part.kind.compensated) d.push(...await this.#compensationFold(part));
      d.push(...await this.#attention(part, mode));
      calls++;
    }
    if (mode === "prefill") this.attentionCalls[l] = calls;
    // Stored after attention has read the fresh keys, so a ring slot is never overwritten early.
    for (const part of parts) d.push(...await this.#kvStore(part));
    d.push(
      ...await this.#matmul(a.attn, w.wo, a.x, { accumulate: true }),
    );
    return d;
  }

  /** x += Wdown · swiglu(Wgate_up · rmsnorm(x)). */
  async #feedForwardBlock(l: number): Promise<Dispatch[]> {
    const w = this.s.weights.layers[l];
    const a = this.#a;
    return [
      ...await this.#matmul(a.x, w.wGateUp, a.gateUp, { norm: w.ffnNorm }),
      ...await this.#matmul(a.gateUp, w.wDown, a.x, { accumulate: true, swiglu: true }),
    ];
  }

  /** x_final = rmsnorm(x) of the logits rows (gathered); logits = LM head · x_final. */
  async head(): Promise<Dispatch[]> {
    const c = this.#c;
    const a = this.#a;
    const norm = await this.#dispatch(
      rmsnorm({ DIM: c.dim, EPS: c.normEps }),
      { fwd: a.fwd, x: a.x, weight: this.s.weights.finalNorm, gather: a.gather, y: a.xFinal },
      (s) => rmsnormGroups(s.logitRows),
    );
    const lmHead = this.s.weights.lmHead;
    return [
      norm,
      ...await this.#matmul(a.xFinal, lmHead, a.logits, { logitRows: true }),
    ];
  }

  /** One token per logits row, into the step's row of `sampled`. */
  sample(): Promise<Dispatch> {
    const a = this.#a;
    return this.#dispatch(
      sample({
        VOCAB: this.#c.vocabSize,
        MAX_ROWS: this.s.maxBatch,
        MAX_BIAS: MAX_LOGIT_BIAS,
        MAX_TOP: MAX_TOP_LOGPROBS,
      }),
      {
        fwd: a.fwd,
        rows: a.rows,
        gather: a.gather,
        params: a.sampling,
        logits: a.logits,
        sampled: a.sampled,
        logprobs: a.logprobs,
        step: a.step,
        work: a.work,
        counts: a.counts,
        bias: a.bias,
        top: a.top,
      },
      (s) => sampleGroups(s.logitRows),
    );
  }

  advance(): Promise<Dispatch> {
    const a = this.#a;
    return this.#dispatch(
      decodeStep({ MAX_ROWS: this.s.maxBatch }),
      { fwd: a.fwd, rows: a.rows, tokens: a.tokens, sampled: a.sampled, step: a.step },
      () => decodeStepGroups(),
    );
  }

  /** Attention of the part's query heads over its cache: a prefill dispatch, or a split-K decode
   * dispatch, per shard of the part in shard order (the softmax state passes from one to the
   * next), then the decode's merge. */
  async #attention(part: KvPartBuffers, mode: Mode): Promise<Dispatch[]> {
    const c = this.#c;
    const a = this.#a;
    const group = c.nHeads / c.nKvHeads;
    const constants = {
      HEAD_DIM: c.headDim,
      GROUP: group,
      Q_HEAD_BASE: part.kvHeadBase * group,
      N_HEADS: c.nHeads,
      N_KV_HEADS: c.nKvHeads,
      CACHE_HEADS: part.heads,
      SCALE: 1 / Math.sqrt(c.headDim),
    };
    const cache = this.#cachePart(part);
    const buffers = (shard: number) => ({
      ...this.#cacheBuffers(part, shard),
      out: a.attn,
      partials: a.partials,
      carry: a.carry,
      compRows: a.compRows,
    });
    const nq = part.heads * group;
    const shards = part.shards.map((_, s) => s);
    if (mode === "prefill") {
      return await Promise.all(shards.map((s) =>
        this.#dispatch(
          attentionPrefill(constants, cache),
          buffers(s),
          (f) => prefillGroups(f.rows, part.heads, group),
        )
      ));
    }
    // The last shard writes the output itself when there is one split, else partials that
    // merge combines. Splits of one block run `decode`, longer ones (the split cap reached)
    // `decode_long`.
    const decode = (entry: DecodeEntry) =>
      Promise.all(shards.map((s) =>
        this.#dispatch(
          attentionDecode(constants, cache, entry),
          buffers(s),
          (f) =>
            decodeEntry(f.keysPerSplit) === entry
              ? decodeGroups(f.rows, part.heads, group, f.splits)
              : null,
        )
      ));
    const longSplits =
      decodeEntry(splitsFor(this.s.kv.layout.maxSeqLen, this.s.maxSplits).keysPerSplit) !==
        "decode";
    return [
      ...await decode("decode"),
      // Built only where the runner's context can reach the split cap.
      ...longSplits ? await decode("decode_long") : [],
      await this.#dispatch(
        attentionMerge(constants, cache),
        buffers(0),
        (f) => mergeGroups(f.rows, nq, f.splits),
      ),
    ];
  }

  /** Where a part's KV heads sit in the fused q|k|v rows (the KV store's and the fold's
   * constants). */
  #partHeads(part: KvPartBuffers) {
    const c = this.#c;
    return {
      HEAD_DIM: c.headDim,
      N_HEADS: c.nHeads,
      N_KV_HEADS: c.nKvHeads,
      KV_HEAD_BASE: part.kvHeadBase,
      CACHE_HEADS: part.heads,
    };
  }

  /** The cache part's fresh keys and values into its cache: one dispatch per shard. */
  #kvStore(part: KvPartBuffers): Promise<Dispatch[]> {
    const k = kvStore(this.#partHeads(part), this.#cachePart(part));
    return Promise.all(
      part.shards.map((_, s) =>
        this.#dispatch(k, this.#cacheBuffers(part, s), (f) => kvStoreGroups(f.rows, part.heads))
      ),
    );
  }

  /** The compensation token's means for each row of a compensated part, before its attention:
   * one dispatch per shard. */
  #compensationFold(part: KvPartBuffers): Promise<Dispatch[]> {
    const k = compensationFold(this.#partHeads(part), this.#cachePart(part));
    return Promise.all(
      part.shards.map((_, s) =>
        this.#dispatch(
          k,
          { ...this.#cacheBuffers(part, s), compRows: this.#a.compRows, compState: part.state! },
          (f) => compensationGroups(f.rows, part.heads),
        )
      ),
    );
  }

  #cachePart(part: KvPartBuffers) {
    return {
      layout: part.kind.layout,
      constants: this.s.kv.layout.constants(part.kind),
      compensated: part.kind.compensated,
    };
  }

  /** What the attention and KV-store kernels of a part read: the fused rows and one shard of
   * the cache, with its index. */
  #cacheBuffers(part: KvPartBuffers, shard: number) {
    const a = this.#a;
    const s = part.shards[shard];
    return {
      fwd: a.fwd,
      rows: a.rows,
      qkv: a.qkv,
      kCache: s.k,
      vCache: s.v,
      shard: s.index,
      pageTable: this.s.kv.pageTable,
    };
  }

  /**
   * y (+)= in · Wᵀ (+ bias), where `in` is x, rmsnorm(x) * norm (`norm`), or silu(gate) * up of
   * a fused gate|up x (`swiglu`). Per row part of W (gpu/weights.ts), the GEMV and the GEMM
   * dispatch writing that part's output columns; the forward's row count (its logits rows with
   * `logitRows`) picks the one that runs.
   */
  #matmul(
    x: GpuTensor,
    w: GpuMatrix,
    y: GpuTensor,
    o: {
      accumulate?: boolean;
      bias?: GpuTensor | null;
      logitRows?: boolean;
      norm?: GpuTensor;
      swiglu?: boolean;
    } = {},
  ): Promise<Dispatch[]> {
    const a = this.#a;
    const rowsOf = (s: ForwardShape) => o.logitRows ? s.logitRows : s.rows;
    return Promise.all(w.parts.flatMap((part) => {
      const constants: MatmulConstants = {
        N: part.rows,
        N_OFFSET: part.rowStart,
        Y_STRIDE: w.rows,
        K: w.cols,
        // Quantized rows are words, not elements: their padded width is K itself.
        KP: w.format === "float" ? w.stride : w.cols,
        ACCUMULATE: o.accumulate ?? false,
        HAS_BIAS: !!o.bias,
        LOGIT_ROWS: o.logitRows ?? false,
        NORM_INPUT: !!o.norm,
        EPS: this.#c.normEps,
        SWIGLU_INPUT: o.swiglu ?? false,
      };
      const buffers = {
        fwd: a.fwd,
        x,
        w: part.tensor,
        bias: o.bias ?? a.unused,
        y,
        normW: o.norm ?? a.unused,
      };
      const gemm = this.s.gemm;
      return matmulEntries(gemm).map((entry) =>
        this.#dispatch(matmul(entry, constants, w.format), buffers, (s) => {
          const rows = rowsOf(s);
          return matmulEntry(rows, gemm) === entry ? matmulGroups(entry, part.rows, rows) : null;
        })
      );
    }));
  }

  async #dispatch<B extends BindingIndices>(
    k: Kernel<B>,
    buffers: BufferSet<B>,
    groups: Dispatch["groups"],
  ): Promise<Dispatch> {
    const types = { W: this.s.precision, KV: this.s.kv.layout.kvDtype };
    return { ...await bind(this.s.pipelines, k, buffers, types), groups };
  }
}
