// Model weights on the GPU: streamed from the checkpoint into GPU buffers once per runner, in the
// storage precision, in the shapes the forward's kernels read. No whole model is ever held on
// the host, in any dtype: each tensor is read in chunks (`WeightTensor.readRaw`), the host only
// moves bytes (row selection, column blocks, padding) and the dtype conversion runs on the GPU
// (wgsl/convert.wgsl) unless the checkpoint already stores the run precision.
//
//  - q|k|v and gate|up are fused into one matrix each (one matmul instead of three and two),
//    each source written straight into its rows of the fused buffer;
//  - each layer's heads are reordered into its cache order (`CacheLayout.kvHeadOrder`: the heads
//    of one cache part next to each other), so a duo layer's retrieval and streaming heads are
//    contiguous ranges of the fused rows: rows of wq/wk/wv (and their biases) and columns of wo
//    are permuted alike, which leaves the layer's output unchanged;
//  - matmul weights have their rows zero-padded to a multiple of 4 columns (vec4 loads); the
//    embedding table is stored the same way, so a tied LM head is the same buffers;
//  - a matrix larger than one storage binding (an 8B model's embedding and LM head, its gate|up
//    on some adapters) is split into row parts, one buffer each: the matmul runs one dispatch
//    per part writing its range of output columns, the embedding gather one per part;
//  - with `--weights q8_0|q4_0` every matrix a matmul reads whose rows are whole blocks of 32
//    (the layers' four and the LM head; not the embedding, which is gathered) is quantized on
//    the host as its rows stream through, round to nearest in GGUF's block layouts
//    (model/gguf_blocks.ts), and packed in the kernels' row layout (matmul.ts packQuantRow):
//    quants, then the row's f16 scales, so a row reorder moves each row's scales with it. A tied
//    LM head then gets a quantized copy of its own; the embedding stays in the storage precision.

import type { CacheLayout } from "../cache/layout.ts";
import { ropeInvFreq } from "../model/rope.ts";
import { hostAsWeight, itemBytes, mapWeights, numel, readF32 } from "../model/tensors.ts";
import type {
  AnyTensor,
  ModelConfig,
  ModelWeights,
  SourceDtype,
  WeightTensor,
} from "../model/types.ts";
import { createTensor, type GpuTensor, uploadMatrix } from "./buffers.ts";
import type { Precision } from "./device.ts";
import { quantizeQ4_0, quantizeQ8_0 } from "../model/gguf_blocks.ts";
import { convert, CONVERT_PARAMS_BYTES, convertGroups, encodeConvert } from "./kernels/convert.ts";
import { bind } from "./kernels/kernel.ts";
import {
  packQuantRow,
  QUANT_BLOCKS,
  type QuantFormat,
  quantRowWords,
  type WeightFormat,
} from "./kernels/matmul.ts";
import type { PlannedBuffer } from "./limits.ts";
import type { Pipelines } from "./pipelines.ts";

/** Rows [rowStart, rowStart + rows) of a matrix, in a buffer of their own. */
export interface MatrixPart {
  rowStart: number;
  rows: number;
  tensor: GpuTensor;
}

/** A [rows, cols] weight matrix on the GPU, rows padded to `stride`, in row parts. */
export interface GpuMatrix {
  name: string;
  rows: number;
  cols: number;
  /** Storage units per row: elements (float, cols padded to 4) or u32 words (quantized). */
  stride: number;
  format: WeightFormat;
  parts: MatrixPart[];
}

export interface LayerTensors {
  attnNorm: GpuTensor;
  /** [(nHeads + 2 nKvHeads) headDim, dim]: q, k, v rows, heads in cache order. */
  wqkv: GpuMatrix;
  bqkv: GpuTensor | null;
  /** [dim, nHeads headDim], columns in cache order. */
  wo: GpuMatrix;
  ffnNorm: GpuTensor;
  /** [2 hiddenDim, dim]: gate rows then up rows. */
  wGateUp: GpuMatrix;
  wDown: GpuMatrix;
}

export interface ModelTensors {
  /** [vocab, dim], rows padded to a multiple of 4. */
  embedding: GpuMatrix;
  layers: LayerTensors[];
  finalNorm: GpuTensor;
  /** The embedding itself when tied. */
  lmHead: GpuMatrix;
  /** RoPE inverse frequency per pair (f32). */
  invFreq: GpuTensor;
}

const pad4 = (k: number) => Math.ceil(k / 4) * 4;

/** What a matrix is: its name in errors and labels, and its shape. */
interface MatrixShape {
  name: string;
  rows: number;
  cols: number;
  /** Read by the embedding gather, which reads float tables only. */
  gathered?: boolean;
}

/** What a run asks of matmul weights: one format for every matrix that can take it, or
 * "native": each matrix in the format its checkpoint tensors already have (a GGUF's blocks;
 * float for anything else). */
export type WeightChoice = WeightFormat | "native";

/** What `--weights` accepts: "native" (the default), "float", or a format quantized on load. */
export const WEIGHT_CHOICES: readonly WeightChoice[] = ["native", "float", "q8_0", "q4_0"];

/** The checkpoint tensors each matrix is made of, and where its columns are reordered. */
interface MatrixSources {
  tensors: AnyTensor[];
  /** Columns move in blocks of this many (wo of a layer whose heads are reordered). */
  columnBlock?: number;
}

/**
 * The format matrix `m` is stored in. A format is used only where each row is whole blocks and
 * a column reorder moves whole blocks. "native": the sources' common quantized format; sources
 * that differ (a Q4_K_M file's q|k|v with v in Q6_K), or a K-quant whose blocks a head reorder
 * would split, are requantized to q8_0 from their decoded values (8.5 bits, the closest the
 * on-load quantizers offer).
 */
function formatOf(m: MatrixShape, choice: WeightChoice, src?: MatrixSources): WeightFormat {
  if (choice === "float" || m.gathered) return "float";
  const fits = (f: WeightFormat) =>
    f === "float" ||
    (m.cols % QUANT_BLOCKS[f].elems === 0 &&
      (src?.columnBlock === undefined || src.columnBlock % QUANT_BLOCKS[f].elems === 0));
  if (choice !== "native") return fits(choice) ? choice : "float";
  const types = (src?.tensors ?? []).map((t) => ("blocks" in t ? t.blocks?.type : undefined));
  if (types.length === 0 || types.every((t) => t === undefined)) return "float";
  if (types.every((t) => t === types[0]) && fits(types[0]!)) return types[0]!;
  return fits("q8_0") ? "q8_0" : "float";
}

/** Storage units per row and bytes per unit of matrix `m` in format `f`. */
function rowUnits(
  m: MatrixShape,
  f: WeightFormat,
  dt: Precision,
): { stride: number; unit: number } {
  if (f === "float") return { stride: pad4(m.cols), unit: dt === "f16" ? 2 : 4 };
  return { stride: quantRowWords(f, m.cols), unit: 4 };
}

/** One matrix the upload creates, with its format. */
interface PlannedMatrix {
  key: "embed" | "lm_head" | LayerMatrix;
  layer: number;
  shape: MatrixShape;
  format: WeightFormat;
}

/**
 * Every matrix the upload creates, in upload order, and the format of each: the buffer plan and
 * the upload both ask here. `w` (the checkpoint's tensors) and `layout` (the head order) decide
 * "native" formats; without them every matrix is float under "native". The LM head is a matrix
 * of its own when untied, or when tied but quantized (a copy: the gather reads float tables).
 */
function planMatrices(
  c: ModelConfig,
  tied: boolean,
  choice: WeightChoice,
  w?: ModelWeights<AnyTensor>,
  layout?: CacheLayout,
): PlannedMatrix[] {
  const plan = (
    key: PlannedMatrix["key"],
    layer: number,
    src?: MatrixSources,
  ): PlannedMatrix => {
    const shape = matrixShape(c, key, layer);
    return { key, layer, shape, format: formatOf(shape, choice, src) };
  };
  const out = [plan("embed", 0)];
  for (let l = 0; l < c.nLayers; l++) {
    const lw = w?.layers[l];
    const order = layout?.kvHeadOrder(l);
    const reordered = order !== undefined && order.some((v, i) => v !== i);
    out.push(
      plan("wqkv", l, lw && { tensors: [lw.wq, lw.wk, lw.wv] }),
      plan("wo", l, lw && { tensors: [lw.wo], columnBlock: reordered ? c.headDim : undefined }),
      plan("w_gate_up", l, lw && { tensors: [lw.wGate, lw.wUp] }),
      plan("w_down", l, lw && { tensors: [lw.wDown] }),
    );
  }
  const head = plan("lm_head", 0, w && { tensors: [w.lmHead] });
  if (!tied || head.format !== "float") out.splice(1, 0, head);
  return out;
}

type LayerMatrix = "wqkv" | "wo" | "w_gate_up" | "w_down";

/** The shape of one matrix the upload creates: the buffer plan and the upload both ask here. */
function matrixShape(c: ModelConfig, m: "embed" | "lm_head" | LayerMatrix, l = 0): MatrixShape {
  const qDim = c.nHeads * c.headDim;
  switch (m) {
    case "embed":
      return { name: "embed (token embedding)", rows: c.vocabSize, cols: c.dim, gathered: true };
    case "lm_head":
      return { name: "lm_head", rows: c.vocabSize, cols: c.dim };
    case "wqkv":
      return {
        name: `wqkv L${l} (q|k|v projections)`,
        rows: qDim + 2 * c.nKvHeads * c.headDim,
        cols: c.dim,
      };
    case "wo":
      return { name: `wo L${l}`, rows: c.dim, cols: qDim };
    case "w_gate_up":
      return { name: `w_gate_up L${l}`, rows: 2 * c.hiddenDim, cols: c.dim };
    case "w_down":
      return { name: `w_down L${l}`, rows: c.dim, cols: c.hiddenDim };
  }
}

/**
 * Row parts of a [rows, stride] matrix of `bytesPerElement` (a storage unit: an element or a
 * quantized row's word) so that each part fits one binding
 * (`bindingLimit`) and one buffer: as few parts as possible, of equal size but the last.
 */
export function rowParts(
  rows: number,
  stride: number,
  bytesPerElement: number,
  bindingLimit: number,
): { rowStart: number; rows: number }[] {
  const maxRows = Math.max(1, Math.floor(bindingLimit / (stride * bytesPerElement)));
  const n = Math.ceil(rows / maxRows);
  const per = Math.ceil(rows / n);
  const out = [];
  for (let r = 0; r < rows; r += per) out.push({ rowStart: r, rows: Math.min(per, rows - r) });
  return out;
}

/** The largest buffer one matrix part may be: what one binding and one buffer allow. */
export function partLimit(limits: GPUSupportedLimits, bindingLimit?: number): number {
  return Math.min(
    limits.maxStorageBufferBindingSize,
    limits.maxBufferSize,
    bindingLimit ?? Infinity,
  );
}

/**
 * Every weight buffer uploadWeights creates, with its size: one entry per matrix part (a part of
 * one row that still exceeds the limits is what checkBufferPlan then names).
 */
export function weightBuffers(
  c: ModelConfig,
  dt: Precision,
  limit: number,
  tied = c.tiedEmbeddings,
  weights: WeightChoice = "float",
  sources?: { weights: ModelWeights<AnyTensor>; layout: CacheLayout },
): PlannedBuffer[] {
  return planMatrices(c, tied, weights, sources?.weights, sources?.layout).flatMap((pm) => {
    const m = pm.shape;
    const { stride, unit: e } = rowUnits(m, pm.format, dt);
    const parts = rowParts(m.rows, stride, e, limit);
    return parts.map((p) => ({
      name: parts.length > 1 ? `${m.name} rows ${p.rowStart}..${p.rowStart + p.rows - 1}` : m.name,
      bytes: p.rows * stride * e,
      bound: true,
    }));
  });
}

/** Where a checkpoint's dtype becomes the run precision: in a compute pass (a GPU converts at
 * memory speed, and the host moves only the checkpoint's bytes), or on the host (a CPU adapter
 * such as llvmpipe runs the compute pass as a slower loop on the same cores). */
export type ConvertOn = "gpu" | "host";

export interface UploadOptions {
  /** Default "gpu". */
  convertOn?: ConvertOn;
  /** Largest matrix part in bytes (default: what the adapter binds). */
  bindingLimit?: number;
  /** Source bytes read so far. */
  onBytes?: (bytes: number) => void;
  /** How matmul weights are stored (default "float": the storage precision). */
  weights?: WeightChoice;
}

/** Streams a model's weights into GPU buffers (see the file comment). */
export async function uploadWeights(
  device: GPUDevice,
  pipelines: Pipelines,
  c: ModelConfig,
  weights: ModelWeights<AnyTensor>,
  layout: CacheLayout,
  dt: Precision,
  opts: UploadOptions = {},
): Promise<ModelTensors> {
  const up = new WeightUploader(
    device,
    pipelines,
    dt,
    partLimit(device.limits, opts.bindingLimit),
    opts.convertOn ?? "gpu",
    opts.weights ?? "float",
  );
  up.onBytes = opts.onBytes;
  try {
    return await uploadAll(up, c, weights, layout);
  } finally {
    up.destroy();
  }
}

async function uploadAll(
  up: WeightUploader,
  c: ModelConfig,
  weights: ModelWeights<AnyTensor>,
  layout: CacheLayout,
): Promise<ModelTensors> {
  const w = asWeights(weights);
  const hd = c.headDim;
  const planned = planMatrices(c, w.lmHead === w.tokenEmbedding, up.weights, weights, layout);
  const format = (key: PlannedMatrix["key"], l = 0) =>
    planned.find((p) => p.key === key && p.layer === l)!.format;
  const embedding = up.matrix(matrixShape(c, "embed"), "float");
  await up.rows(embedding, 0, w.tokenEmbedding);
  const layers = [];
  for (let l = 0; l < c.nLayers; l++) {
    const lw = w.layers[l];
    const order = layout.kvHeadOrder(l);
    const group = c.nHeads / c.nKvHeads;
    const qOrder = order.flatMap((kv) => Array.from({ length: group }, (_, g) => kv * group + g));
    const qDim = c.nHeads * hd;
    const kvDim = c.nKvHeads * hd;
    const wqkv = up.matrix(matrixShape(c, "wqkv", l), format("wqkv", l));
    await up.rows(wqkv, 0, lw.wq, { order: qOrder, block: hd });
    await up.rows(wqkv, qDim, lw.wk, { order, block: hd });
    await up.rows(wqkv, qDim + kvDim, lw.wv, { order, block: hd });
    const wo = up.matrix(matrixShape(c, "wo", l), format("wo", l));
    await up.rows(wo, 0, lw.wo, { columnOrder: qOrder, block: hd });
    const wGateUp = up.matrix(matrixShape(c, "w_gate_up", l), format("w_gate_up", l));
    await up.rows(wGateUp, 0, lw.wGate);
    await up.rows(wGateUp, c.hiddenDim, lw.wUp);
    const wDown = up.matrix(matrixShape(c, "w_down", l), format("w_down", l));
    await up.rows(wDown, 0, lw.wDown);
    let bqkv: GpuTensor | null = null;
    if (lw.bq && lw.bk && lw.bv) {
      bqkv = up.f32(
        concat([
          permuteBlocks(await readAll(lw.bq), qOrder, hd),
          permuteBlocks(await readAll(lw.bk), order, hd),
          permuteBlocks(await readAll(lw.bv), order, hd),
        ]),
        `bqkv L${l}`,
      );
    }
    layers.push({
      attnNorm: await up.vector(lw.attnNorm, `attn_norm L${l}`),
      wqkv,
      bqkv,
      wo,
      ffnNorm: await up.vector(lw.ffnNorm, `ffn_norm L${l}`),
      wGateUp,
      wDown,
    });
  }
  let lmHead = embedding;
  if (planned.some((p) => p.key === "lm_head")) {
    lmHead = up.matrix(matrixShape(c, "lm_head"), format("lm_head"));
    await up.rows(lmHead, 0, w.lmHead);
  }
  const finalNorm = await up.vector(w.finalNorm, "final_norm");
  await up.flush();
  return { embedding, layers, finalNorm, lmHead, invFreq: up.f32(ropeInvFreq(c), "inv_freq") };
}

export function destroyWeights(t: ModelTensors): void {
  const matrices = [
    t.embedding,
    t.lmHead,
    ...t.layers.flatMap((l) => [l.wqkv, l.wo, l.wGateUp, l.wDown]),
  ];
  for (const m of matrices) for (const p of m.parts) p.tensor.buffer.destroy();
  const vectors = [
    t.finalNorm,
    t.invFreq,
    ...t.layers.flatMap((l) => [l.attnNorm, l.ffnNorm, l.bqkv]),
  ];
  for (const v of vectors) v?.buffer.destroy();
}

// ---- streaming ------------------------------------------------------------------------------

/** Source elements read per chunk (16 Mi: 32 MiB of bf16). */
const CHUNK_ELEMENTS = 1 << 24;
/** Bytes written between waits for the GPU, which bound the queue's staging memory. */
const FLUSH_BYTES = 256 << 20;

/** How a source tensor's rows land in a matrix. */
interface Placement {
  /** Row blocks of `block` rows: destination block i is source block order[i]. */
  order?: number[];
  /** Column blocks of `block` columns: destination block i is source block columnOrder[i]. */
  columnOrder?: number[];
  block?: number;
}

/** One read of consecutive source rows into consecutive destination rows. */
interface RowRead {
  srcRow: number;
  dstRow: number;
  rows: number;
}

class WeightUploader {
  onBytes?: (bytes: number) => void;
  readonly #bytesPerElement: number;
  #staging: GPUBuffer | null = null;
  #params: GPUBuffer;
  #unflushed = 0;

  constructor(
    readonly device: GPUDevice,
    readonly pipelines: Pipelines,
    readonly dt: Precision,
    readonly partLimit: number,
    readonly convertOn: ConvertOn,
    readonly weights: WeightChoice,
  ) {
    this.#bytesPerElement = dt === "f16" ? 2 : 4;
    this.#params = device.createBuffer({
      label: "convert params",
      size: CONVERT_PARAMS_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
  }

  /** Allocates a [rows, cols] matrix, rows padded to 4 columns (or quantized rows), in parts
   * that fit a binding. */
  matrix(shape: MatrixShape, format: WeightFormat): GpuMatrix {
    const { name, rows, cols } = shape;
    const { stride, unit } = rowUnits(shape, format, this.dt);
    const parts = rowParts(rows, stride, unit, this.partLimit).map((
      p,
      i,
      all,
    ) => ({
      ...p,
      tensor: createTensor(
        this.device,
        [p.rows, stride],
        format === "float" ? this.dt : "u32",
        all.length > 1 ? `${name} part ${i}` : name,
      ),
    }));
    return { name, rows, cols, stride, format, parts };
  }

  /** A small vector (norm weights) in the storage precision. */
  async vector(t: WeightTensor, label: string): Promise<GpuTensor> {
    const data = await readAll(t);
    this.onBytes?.(numel(t) * itemBytes(t));
    return uploadMatrix(this.device, data, 1, data.length, this.dt, label);
  }

  f32(data: Float32Array<ArrayBuffer>, label: string): GpuTensor {
    const t = createTensor(this.device, [data.length], "f32", label);
    this.device.queue.writeBuffer(t.buffer, 0, data);
    return t;
  }

  /**
   * Writes source tensor `t` ([n, m.cols] row-major) into rows [dstRow, dstRow + n) of `m`,
   * placed as `p` says, chunk by chunk; the next chunk is read while one is written.
   */
  async rows(m: GpuMatrix, dstRow: number, t: WeightTensor, p: Placement = {}): Promise<void> {
    // An identity column order moves nothing (and so splits no block).
    if (p.columnOrder?.every((v, i) => v === i)) p = { ...p, columnOrder: undefined };
    const n = t.shape[0];
    const cols = numel(t) / n;
    if (cols !== m.cols || dstRow + n > m.rows) {
      throw new Error(`${t.name}: shape [${t.shape}] does not fit ${m.name} at row ${dstRow}`);
    }
    const perChunk = Math.max(1, Math.floor(CHUNK_ELEMENTS / cols));
    const reads: RowRead[] = [];
    for (const run of rowRuns(n, p)) {
      for (let r = 0; r < run.rows; r += perChunk) {
        const rows = Math.min(perChunk, run.rows - r);
        reads.push({ srcRow: run.srcRow + r, dstRow: dstRow + run.dstRow + r, rows });
      }
    }
    // A GGUF tensor already in the matrix's format: its blocks are packed as they are (a column
    // reorder of whole heads moves whole blocks), never decoded and requantized.
    const blocks = m.format !== "float" && t.blocks?.type === m.format &&
        (!p.columnOrder || p.block! % QUANT_BLOCKS[m.format].elems === 0)
      ? t.blocks
      : undefined;
    if (blocks) return await this.#rowsFromBlocks(m, blocks, cols, reads, p);
    const fetch = (r: RowRead) => t.readRaw(r.srcRow * cols, r.rows * cols);
    let next = reads.length > 0 ? fetch(reads[0]) : null;
    for (let i = 0; i < reads.length; i++) {
      const raw = await next!;
      next = i + 1 < reads.length ? fetch(reads[i + 1]) : null;
      const e = itemBytes(t);
      let bytes = raw;
      if (p.columnOrder) {
        bytes = permuteColumnBlocks(bytes, reads[i].rows, cols, p.columnOrder, p.block! * e, e);
      }
      if (m.format !== "float") {
        if (m.format !== "q8_0" && m.format !== "q4_0") {
          throw new Error(`${t.name}: ${m.format} weights come only from a GGUF's own blocks`);
        }
        const words = quantizeRows(m.format, bytes, reads[i].rows, cols, t.sourceDtype);
        await this.#write(m, reads[i].dstRow, reads[i].rows, new Uint8Array(words.buffer));
        this.onBytes?.(raw.byteLength);
        continue;
      }
      if (m.stride !== cols) bytes = padRows(bytes, reads[i].rows, cols * e, m.stride * e);
      await this.#write(m, reads[i].dstRow, reads[i].rows, bytes, t.sourceDtype);
      this.onBytes?.(raw.byteLength);
    }
  }

  /** Rows [row, row + n) of `m` from `bytes`: rows of m.stride elements in `src` dtype,
   * converted to the storage precision, or (no `src`) rows as `m` stores them (quantized). */
  async #write(m: GpuMatrix, row: number, n: number, bytes: Uint8Array, src?: SourceDtype) {
    const srcRowBytes = bytes.byteLength / n;
    const unitBytes = m.format === "float" ? this.#bytesPerElement : 4;
    const asStored = src === undefined || src === this.dt;
    for (const part of m.parts) {
      const r0 = Math.max(row, part.rowStart);
      const r1 = Math.min(row + n, part.rowStart + part.rows);
      if (r0 >= r1) continue;
      const piece = bytes.subarray(
        (r0 - row) * srcRowBytes,
        (r1 - row) * srcRowBytes,
      ) as Uint8Array<ArrayBuffer>;
      const dstElement = (r0 - part.rowStart) * m.stride;
      if (asStored || this.convertOn === "host") {
        this.device.queue.writeBuffer(
          part.tensor.buffer,
          dstElement * unitBytes,
          asStored ? piece : convertOnHost(piece, src, this.dt),
        );
      } else {
        await this.#convert(part.tensor, dstElement, piece, src);
      }
      this.#unflushed += piece.byteLength;
      if (this.#unflushed >= FLUSH_BYTES) await this.flush();
    }
  }

  /** Rows of a quantized `m` from a tensor's own blocks of the same format. */
  async #rowsFromBlocks(
    m: GpuMatrix,
    blocks: NonNullable<WeightTensor["blocks"]>,
    cols: number,
    reads: RowRead[],
    p: Placement,
  ): Promise<void> {
    const format = m.format as QuantFormat;
    const { elems, bytes: bb } = QUANT_BLOCKS[format];
    const rowBlocks = cols / elems;
    const words = quantRowWords(format, cols);
    for (const r of reads) {
      let raw = await blocks.read(r.srcRow * cols, r.rows * cols);
      if (p.columnOrder) {
        raw = permuteColumnBlocks(
          raw,
          r.rows,
          rowBlocks,
          p.columnOrder,
          (p.block! / elems) * bb,
          bb,
        );
      }
      const out = new Uint32Array(r.rows * words);
      for (let i = 0; i < r.rows; i++) {
        packQuantRow(
          format,
          raw.subarray(i * rowBlocks * bb, (i + 1) * rowBlocks * bb),
          cols,
          out,
          i * words,
        );
      }
      await this.#write(m, r.dstRow, r.rows, new Uint8Array(out.buffer));
      this.onBytes?.(raw.byteLength);
    }
  }

  /** Stages raw `src`-dtype values and converts them on the GPU into `dst` from `dstElement`. */
  async #convert(
    dst: GpuTensor,
    dstElement: number,
    piece: Uint8Array<ArrayBuffer>,
    src: SourceDtype,
  ) {
    const count = piece.byteLength / (src === "f32" ? 4 : 2);
    if (count % 2 !== 0 || dstElement % 2 !== 0) {
      throw new Error("weight chunks hold an even number of elements (rows padded to 4)");
    }
    if (!this.#staging || this.#staging.size < piece.byteLength) {
      this.#staging?.destroy();
      this.#staging = this.device.createBuffer({
        label: "weight staging",
        size: Math.max(piece.byteLength, Math.min(CHUNK_ELEMENTS * 4, 64 << 20)),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
    }
    const q = this.device.queue;
    q.writeBuffer(this.#staging, 0, piece);
    q.writeBuffer(this.#params, 0, encodeConvert(dstElement, count));
    const k = await bind(
      this.pipelines,
      convert(src),
      { params: this.#params, src: this.#staging, dst },
      this.dt,
    );
    const enc = this.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(k.pipeline);
    pass.setBindGroup(0, k.bindGroup);
    pass.dispatchWorkgroups(...convertGroups(count));
    pass.end();
    // Submitted now: the staging buffer and params are rewritten for the next chunk.
    q.submit([enc.finish()]);
  }

  /** Waits for the GPU to take what was written, so the queue's staging memory is released. */
  async flush(): Promise<void> {
    this.device.queue.submit([]);
    await this.device.queue.onSubmittedWorkDone();
    this.#unflushed = 0;
  }

  destroy(): void {
    this.#staging?.destroy();
    this.#params.destroy();
  }
}

/** bf16 -> f16 of every 16-bit pattern, rounded to nearest even (built on first use). */
let bf16ToF16: Uint16Array | null = null;

/** Raw `src` values as `dt` bytes, converted on the host into a new buffer (`raw` is read
 * through views: its chunks start at whole elements). */
function convertOnHost(raw: Uint8Array, src: SourceDtype, dt: Precision): Uint8Array<ArrayBuffer> {
  const n = raw.byteLength / (src === "f32" ? 4 : 2);
  const halves = () => new Uint16Array(raw.buffer, raw.byteOffset, n);
  const f32 = (): Float32Array => {
    if (src === "f32") return new Float32Array(raw.buffer, raw.byteOffset, n);
    if (src === "f16") return Float32Array.from(new Float16Array(raw.buffer, raw.byteOffset, n));
    // bf16 is the top half of an f32.
    const h = halves();
    const u = new Uint32Array(n);
    for (let i = 0; i < n; i++) u[i] = h[i] << 16;
    return new Float32Array(u.buffer);
  };
  // f32 output only from f16/bf16 sources (f32 -> f32 is written raw), so f32() is a new array.
  if (dt === "f32") return new Uint8Array(f32().buffer as ArrayBuffer);
  if (src === "bf16") {
    // One table lookup per value: ~2.5x faster than through f32 and Float16Array.
    if (!bf16ToF16) {
      const u = new Uint32Array(65536);
      for (let i = 0; i < 65536; i++) u[i] = i << 16;
      bf16ToF16 = new Uint16Array(new Float16Array(new Float32Array(u.buffer)).buffer);
    }
    const table = bf16ToF16;
    const h = halves();
    const out = new Uint16Array(n);
    for (let i = 0; i < n; i++) out[i] = table[h[i]];
    return new Uint8Array(out.buffer);
  }
  return new Uint8Array(new Float16Array(f32()).buffer);
}

/** `rows` rows of `cols` raw `src` values, each quantized to GGUF blocks (round to nearest, as
 * ggml's reference quantizers) and packed in the kernels' row layout. */
function quantizeRows(
  format: Exclude<WeightFormat, "float">,
  raw: Uint8Array,
  rows: number,
  cols: number,
  src: SourceDtype,
): Uint32Array<ArrayBuffer> {
  const values = src !== "f32"
    ? new Float32Array(convertOnHost(raw, src, "f32").buffer)
    : raw.byteOffset % 4 === 0
    ? new Float32Array(raw.buffer, raw.byteOffset, rows * cols)
    : new Float32Array(raw.slice().buffer);
  const words = quantRowWords(format, cols);
  const out = new Uint32Array(rows * words);
  const quantize = format === "q8_0" ? quantizeQ8_0 : quantizeQ4_0;
  for (let r = 0; r < rows; r++) {
    const blocks = quantize(values.subarray(r * cols, (r + 1) * cols));
    packQuantRow(format, blocks, cols, out, r * words);
  }
  return out;
}

/** Runs of consecutive rows a placement reads: identity, or row blocks in `order`. */
function rowRuns(n: number, p: Placement): RowRead[] {
  if (!p.order || p.order.every((v, i) => v === i)) return [{ srcRow: 0, dstRow: 0, rows: n }];
  const b = p.block!;
  const runs: RowRead[] = [];
  p.order.forEach((src, i) => {
    const last = runs[runs.length - 1];
    if (last && last.srcRow + last.rows === src * b) last.rows += b;
    else runs.push({ srcRow: src * b, dstRow: i * b, rows: b });
  });
  return runs;
}

/** Column blocks of `blockBytes` of each row reordered: output block i is input block order[i]. */
function permuteColumnBlocks(
  raw: Uint8Array,
  rows: number,
  cols: number,
  order: number[],
  blockBytes: number,
  e: number,
): Uint8Array {
  if (order.every((v, i) => v === i)) return raw;
  const rowBytes = cols * e;
  const out = new Uint8Array(raw.byteLength);
  for (let r = 0; r < rows; r++) {
    const o = r * rowBytes;
    order.forEach((src, i) =>
      out.set(raw.subarray(o + src * blockBytes, o + (src + 1) * blockBytes), o + i * blockBytes)
    );
  }
  return out;
}

/** Rows of `rowBytes` zero-padded to `strideBytes` (zero bits are 0.0 in every dtype). */
function padRows(raw: Uint8Array, rows: number, rowBytes: number, strideBytes: number): Uint8Array {
  const out = new Uint8Array(rows * strideBytes);
  for (let r = 0; r < rows; r++) {
    out.set(raw.subarray(r * rowBytes, (r + 1) * rowBytes), r * strideBytes);
  }
  return out;
}

/** Every tensor as a WeightTensor (host tensors read as their f32 bytes), ties kept. */
function asWeights(w: ModelWeights<AnyTensor>): ModelWeights<WeightTensor> {
  return mapWeights(w, (t) => "readRaw" in t ? t : hostAsWeight(t));
}

function readAll(t: WeightTensor): Promise<Float32Array> {
  return readF32(t, 0, numel(t));
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
function permuteBlocks(data: Float32Array, order: number[], block: number): Float32Array {
  if (order.every((v, i) => v === i)) return data;
  const out = new Float32Array(data.length);
  order.forEach((src, i) => out.set(data.subarray(src * block, (src + 1) * block), i * block));
  return out;
}
