// Kernel-level measurements: the bandwidth references (a streaming-read kernel and
// copyBufferToBuffer), the compute roof (a peak-FMA kernel, f32 and f16), the readback floor, GEMV / GEMM throughput of wgsl/matmul.wgsl (float
// weights, or GGUF's Q8_0 / Q4_0 blocks packed as the runner packs them), the split-K decode
// pass of wgsl/attention.wgsl per KV dtype, and its prefill pass (full and streaming).

import { type KvDtype, kvDtypeProblem, kvEntryBytes, kvEntryUnits } from "../cache/layout.ts";
import { readBuffer } from "../gpu/buffers.ts";
import type { Gpu, Precision } from "../gpu/device.ts";
import {
  ATTENTION_GEOMETRY,
  attentionDecode,
  attentionPrefill,
  CARRY_FLOATS,
  decodeEntry,
  decodeGroups,
  maxSplitsFor,
  prefillGroups,
  splitsFor,
} from "../gpu/kernels/attention.ts";
import { RetrievalPages, StreamingRing } from "../cache/kinds.ts";
import {
  CACHE_SHARD_BYTES,
  encodeCacheShard,
  encodeForward,
  encodeRows,
  type ForwardParams,
  type RowParams,
} from "../gpu/kernels/common.ts";
import {
  bindGroup,
  type BindingIndices,
  type Bound,
  type BufferSet,
  type Groups,
  type Kernel,
  pipelineOf,
} from "../gpu/kernels/kernel.ts";
import {
  gemmFor,
  matmul,
  type MatmulConstants,
  type MatmulEntry,
  matmulEntry,
  matmulGroups,
  packQuantRow,
  QUANT_BLOCK,
  quantRowWords,
  type WeightFormat,
} from "../gpu/kernels/matmul.ts";
import { streamRead, streamReadGroups } from "../gpu/kernels/stream_read.ts";
import { peakFma, peakFmaFlops, peakFmaGroups } from "../gpu/kernels/peak_fma.ts";
import { Pipelines } from "../gpu/pipelines.ts";
import { quantizeQ4_0, quantizeQ8_0 } from "../model/gguf_blocks.ts";
import { mulberry32 } from "../model/random.ts";
import { PassTimer, type Stat, stat } from "./stats.ts";

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

export interface Repeats {
  /** Samples per measurement. */
  samples: number;
  /** Repetitions per submission for the wall-clock slope (lo, hi); hi for timestamps. */
  lo: number;
  hi: number;
}

export interface StreamVariant {
  workgroups: number;
  workgroup_size: number;
  chunked: boolean;
  ms: Stat;
  gbps: Stat;
}

export interface StreamReadResult {
  kernel: "wgsl/stream_read.wgsl";
  bytes: number;
  method: "timestamp" | "wall-slope";
  /** The fastest variant (by median); its GB/s is the reference of every bandwidth ratio. */
  best: StreamVariant;
  variants: StreamVariant[];
}

export interface CopyResult {
  bytes: number;
  method: "wall-slope";
  ms: Stat;
  /** Bytes copied per second (each byte is read once and written once). */
  gbps: Stat;
}

export interface MatmulResult {
  kind: "gemv" | "gemm";
  /** The kernel measured, e.g. "matmul.wgsl:gemv". */
  kernel: string;
  label: string;
  /** Output features (weight rows) and input features (weight columns). */
  n: number;
  k: number;
  rows: number;
  /** The pipeline's storage type W: the weights' for "float", the activations' and the
   * shader's `enable f16` otherwise. */
  dtype: Precision;
  /** How the weight is stored (gpu/kernels/matmul.ts WeightFormat; absent in results written
   * before quantized weights: "float"). */
  format?: MatmulFormat;
  /** Bytes of the weight as stored: n x KP x sizeof(W), or n x quantRowWords(format, k) x 4. */
  weight_bytes: number;
  method: "timestamp" | "wall-slope";
  ms: Stat;
  /** Weight bytes per second as stored (GEMV: the whole weight is streamed once per call). */
  gbps: Stat;
  gflops: Stat;
}

function gbpsOf(bytes: number, ms: Stat): Stat {
  return stat(ms.samples.map((m) => (m > 0 ? bytes / (m * 1e6) : 0)));
}

/** Median ms of a 16-byte readback round trip (Deno polls, then sleeps ~10 ms). */
export async function measureReadback(gpu: Gpu, samples: number): Promise<Stat> {
  const buf = gpu.device.createBuffer({ size: 16, usage: USAGE });
  await readBuffer(gpu.device, buf, 16);
  const out: number[] = [];
  for (let i = 0; i < samples; i++) {
    const t = performance.now();
    await readBuffer(gpu.device, buf, 16);
    out.push(performance.now() - t);
  }
  buf.destroy();
  return stat(out);
}

/** Bytes for the reference buffers: as large as the adapter binds, at most `cap`. */
export function referenceBytes(gpu: Gpu, cap: number): number {
  const lim = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize, cap);
  return Math.floor(lim / (1 << 20)) * (1 << 20);
}

export async function measureStreamRead(
  gpu: Gpu,
  pipelines: Pipelines,
  timer: PassTimer,
  bytes: number,
  rep: Repeats,
  workgroupCounts = [256, 1024, 4096, 16384],
): Promise<StreamReadResult> {
  const dev = gpu.device;
  const src = dev.createBuffer({ label: "stream src", size: bytes, usage: USAGE });
  fillRandom(dev, src, bytes, 7);
  const WG = 256;
  const maxWg = Math.max(...workgroupCounts);
  const sink = dev.createBuffer({ label: "stream sink", size: maxWg * WG * 4, usage: USAGE });
  const variants: StreamVariant[] = [];
  let method: "timestamp" | "wall-slope" = "wall-slope";
  for (const chunked of [false, true]) {
    for (const wgs of workgroupCounts) {
      const k = streamRead({ N_VEC4: bytes / 16, WG, CHUNKED: chunked });
      const groups = streamReadGroups(wgs);
      const r = await timeKernel(dev, pipelines, timer, k, "f32", { src, sink }, groups, rep);
      method = r.method;
      variants.push({
        workgroups: groups[0],
        workgroup_size: WG,
        chunked,
        ms: r.ms,
        gbps: gbpsOf(bytes, r.ms),
      });
    }
  }
  src.destroy();
  sink.destroy();
  const best = variants.reduce((a, b) => (b.gbps.median > a.gbps.median ? b : a));
  return { kernel: "wgsl/stream_read.wgsl", bytes, method, best, variants };
}

export interface FmaVariant {
  workgroups: number;
  workgroup_size: number;
  iters: number;
  flops: number;
  ms: Stat;
  gflops: Stat;
}

export interface FmaResult {
  kernel: "wgsl/peak_fma.wgsl";
  /** The arithmetic precision (W); f16 only on adapters with shader-f16. */
  dtype: Precision;
  method: "timestamp" | "wall-slope";
  /** The fastest variant (by median); its GFLOP/s is the compute roof of the GEMM ratios. */
  best: FmaVariant;
  variants: FmaVariant[];
}

/** The compute roof: peak FMA throughput in `dtype`, over a few grid sizes. */
export async function measurePeakFma(
  gpu: Gpu,
  pipelines: Pipelines,
  timer: PassTimer,
  dtype: Precision,
  rep: Repeats,
  workgroupCounts = [256, 1024, 4096],
  iters = 256,
): Promise<FmaResult> {
  const dev = gpu.device;
  const WG = 256;
  const maxWg = Math.max(...workgroupCounts);
  const sink = dev.createBuffer({ label: "fma sink", size: maxWg * WG * 4, usage: USAGE });
  const variants: FmaVariant[] = [];
  let method: "timestamp" | "wall-slope" = "wall-slope";
  for (const wgs of workgroupCounts) {
    const c = { ITERS: iters, WG };
    const groups = peakFmaGroups(wgs);
    const flops = peakFmaFlops(c, groups[0]);
    const r = await timeKernel(dev, pipelines, timer, peakFma(c), dtype, { sink }, groups, rep);
    method = r.method;
    variants.push({
      workgroups: groups[0],
      workgroup_size: WG,
      iters,
      flops,
      ms: r.ms,
      gflops: stat(r.ms.samples.map((m) => (m > 0 ? flops / (m * 1e6) : 0))),
    });
  }
  sink.destroy();
  const best = variants.reduce((a, b) => (b.gflops.median > a.gflops.median ? b : a));
  return { kernel: "wgsl/peak_fma.wgsl", dtype, method, best, variants };
}

/** copyBufferToBuffer of `bytes`, timed by the wall-clock slope (copies are outside passes). */
export async function measureCopy(gpu: Gpu, bytes: number, rep: Repeats): Promise<CopyResult> {
  const dev = gpu.device;
  const src = dev.createBuffer({ label: "copy src", size: bytes, usage: USAGE });
  const dst = dev.createBuffer({ label: "copy dst", size: bytes, usage: USAGE });
  fillRandom(dev, src, bytes, 11);
  const run = async (reps: number) => {
    const enc = dev.createCommandEncoder();
    for (let i = 0; i < reps; i++) enc.copyBufferToBuffer(src, 0, dst, 0, bytes);
    const t = performance.now();
    dev.queue.submit([enc.finish()]);
    await readBuffer(dev, dst, 4);
    return performance.now() - t;
  };
  await run(1);
  await run(1);
  const ms: number[] = [];
  for (let s = 0; s < rep.samples; s++) {
    const lo = await run(rep.lo);
    const hi = await run(rep.hi);
    ms.push(Math.max(1e-6, (hi - lo) / (rep.hi - rep.lo)));
  }
  src.destroy();
  dst.destroy();
  const m = stat(ms);
  return { bytes, method: "wall-slope", ms: m, gbps: gbpsOf(bytes, m) };
}

/** Fills a buffer with uniform values in [-1, 1) as f32 words (read as f16 pairs, the low halves
 * are random mantissa bits, ~1/32 of them infinities or NaNs: caches are filled by fillCache). */
function fillRandom(dev: GPUDevice, buf: GPUBuffer, bytes: number, seed: number): void {
  const rand = mulberry32(seed);
  const chunk = 1 << 22; // floats per write
  const data = new Float32Array(Math.min(chunk, bytes / 4));
  for (let off = 0; off < bytes; off += data.byteLength) {
    const n = Math.min(data.length, (bytes - off) / 4);
    for (let i = 0; i < n; i++) data[i] = 2 * rand() - 1;
    dev.queue.writeBuffer(buf, off, data, 0, n);
  }
}

/** The weight formats measureMatmul builds: float, or the two quantized on load. */
export type MatmulFormat = Extract<WeightFormat, "float" | "q8_0" | "q4_0">;

/** Bytes of an [n, k] weight in `format` as the runner stores it (rows padded to 4 elements, or
 * packed quantized rows of quantRowWords words). */
export function matmulWeightBytes(
  n: number,
  k: number,
  dtype: Precision,
  format: MatmulFormat = "float",
): number {
  return format === "float"
    ? n * Math.ceil(k / 4) * 4 * (dtype === "f16" ? 2 : 4)
    : n * quantRowWords(format, k) * 4;
}

/** Distinct random rows quantized per weight (the rest repeat them: timing does not depend on
 * the values, and quantizing a large LM head on the host would cost seconds). */
const QUANT_DISTINCT_ROWS = 64;

/** An [n, k] weight of uniform values in [-1, 1) / sqrt(k) quantized to `format`'s GGUF blocks
 * (round to nearest, model/gguf_blocks.ts) and packed row by row as the runner packs them
 * (packQuantRow); QUANT_DISTINCT_ROWS distinct rows, repeated. */
function uploadQuantWeights(
  dev: GPUDevice,
  n: number,
  k: number,
  format: "q8_0" | "q4_0",
  seed: number,
) {
  const words = quantRowWords(format, k);
  const bytes = n * words * 4;
  const buf = dev.createBuffer({ label: `w ${n}x${k} ${format}`, size: bytes, usage: USAGE });
  const rand = mulberry32(seed);
  const distinct = Math.min(n, QUANT_DISTINCT_ROWS);
  const tile = new Uint32Array(distinct * words);
  const row = new Float32Array(k);
  const scale = 1 / Math.sqrt(k);
  const quantize = format === "q8_0" ? quantizeQ8_0 : quantizeQ4_0;
  for (let r = 0; r < distinct; r++) {
    for (let i = 0; i < k; i++) row[i] = (2 * rand() - 1) * scale;
    packQuantRow(format, quantize(row), k, tile, r * words);
  }
  // Chunks of whole tiles, ~16 MiB each.
  const tilesPerChunk = Math.max(1, Math.floor((1 << 22) / tile.length));
  const chunk = new Uint32Array(tilesPerChunk * tile.length);
  for (let t = 0; t < tilesPerChunk; t++) chunk.set(tile, t * tile.length);
  const chunkRows = tilesPerChunk * distinct;
  for (let r0 = 0; r0 < n; r0 += chunkRows) {
    const m = Math.min(chunkRows, n - r0);
    dev.queue.writeBuffer(buf, r0 * words * 4, chunk, 0, m * words);
  }
  return { buf, bytes };
}

function uploadWeights(dev: GPUDevice, n: number, kp: number, dtype: Precision, seed: number) {
  const count = n * kp;
  const bytes = count * (dtype === "f16" ? 2 : 4);
  const buf = dev.createBuffer({ label: `w ${n}x${kp}`, size: bytes, usage: USAGE });
  const rand = mulberry32(seed);
  const chunk = 1 << 22;
  for (let off = 0; off < count; off += chunk) {
    const m = Math.min(chunk, count - off);
    const f = new Float32Array(m);
    const scale = 1 / Math.sqrt(kp);
    for (let i = 0; i < m; i++) f[i] = (2 * rand() - 1) * scale;
    const data = dtype === "f16" ? new Float16Array(f) : f;
    dev.queue.writeBuffer(buf, off * data.BYTES_PER_ELEMENT, data);
  }
  return { buf, bytes };
}

/** One dispatch of a bound kernel. */
/** One kernel's dispatch of `groups`, timed as PassTimer.measure does. */
async function timeKernel<B extends BindingIndices>(
  dev: GPUDevice,
  pipelines: Pipelines,
  timer: PassTimer,
  k: Kernel<B>,
  dtype: Precision,
  buffers: BufferSet<B>,
  groups: Groups,
  rep: Repeats,
) {
  const pipeline = await pipelineOf(pipelines, k, dtype);
  const d = { pipeline, bindGroup: bindGroup(dev, pipeline, k, buffers) };
  return await timer.measure((pass) => dispatch(pass, d, groups), rep);
}

function dispatch(
  pass: GPUComputePassEncoder,
  d: Pick<Bound, "pipeline" | "bindGroup">,
  groups: [number, number, number],
): void {
  pass.setPipeline(d.pipeline);
  pass.setBindGroup(0, d.bindGroup);
  pass.dispatchWorkgroups(...groups);
}

/** One matmul measurement: a weight [n, k] in `format` (default "float": values of `dtype`). */
export interface MatmulJob {
  /** gemv: the entry the runner uses for `rows` (gemv1 for one row, else gemv). */
  kind: "gemv" | "gemm";
  label: string;
  n: number;
  k: number;
  rows: number;
  /** The pipeline's storage type W (the weight's type when `format` is "float"). */
  dtype: Precision;
  /** How the weight is stored (default "float"); quantized formats need k a multiple of 32. */
  format?: MatmulFormat;
  /** Variant flags (default a plain y = x · Wᵀ). */
  constants?: Partial<MatmulConstants>;
  /** The entry point (default: the runner's for `kind` and `rows`). */
  entry?: MatmulEntry;
}

/** One matmul dispatch, ready to record; `destroy` frees its buffers. */
interface PreparedMatmul {
  job: MatmulJob & { format: MatmulFormat };
  kernel: string;
  weightBytes: number;
  record: (pass: GPUComputePassEncoder) => void;
  destroy: () => void;
}

async function prepareMatmul(
  gpu: Gpu,
  pipelines: Pipelines,
  o: MatmulJob,
): Promise<PreparedMatmul> {
  const dev = gpu.device;
  const format = o.format ?? "float";
  if (format !== "float" && o.k % QUANT_BLOCK !== 0) {
    throw new Error(`${o.label}: ${format} needs k a multiple of ${QUANT_BLOCK}, got ${o.k}`);
  }
  const kp = Math.ceil(o.k / 4) * 4;
  const wBytes = matmulWeightBytes(o.n, o.k, o.dtype, format);
  if (wBytes > gpu.limits.maxStorageBufferBindingSize) {
    throw new Error(
      `${o.label}: a ${o.n}x${o.k} ${format === "float" ? o.dtype : format} weight ` +
        `(${(wBytes / 2 ** 20).toFixed(0)} MiB) exceeds the adapter's storage binding limit`,
    );
  }
  const seed = o.n * 31 + o.k;
  const { buf: w } = format === "float"
    ? uploadWeights(dev, o.n, kp, o.dtype, seed)
    : uploadQuantWeights(dev, o.n, o.k, format, seed);
  const x = dev.createBuffer({ size: o.rows * o.k * 4, usage: USAGE });
  const xd = new Float32Array(o.rows * o.k);
  const rand = mulberry32(3);
  for (let i = 0; i < xd.length; i++) xd[i] = 2 * rand() - 1;
  dev.queue.writeBuffer(x, 0, xd);
  const y = dev.createBuffer({ size: o.rows * o.n * 4, usage: USAGE });
  const bias = dev.createBuffer({ size: 16, usage: USAGE });
  const fwd = dev.createBuffer({
    size: 16,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  dev.queue.writeBuffer(
    fwd,
    0,
    encodeForward({
      rows: o.rows,
      logitRows: o.rows,
      splits: 1,
      keysPerSplit: ATTENTION_GEOMETRY.SPLIT_KEYS,
    }),
  );
  // The runner's entry for the rows on this adapter (gemm: its prefill GEMM), unless o.entry.
  const gemm = gemmFor(gpu);
  const entry: MatmulEntry = o.entry ?? (o.kind === "gemm" ? gemm : matmulEntry(o.rows, gemm));
  const k = matmul(entry, {
    N: o.n,
    N_OFFSET: 0,
    Y_STRIDE: o.n,
    K: o.k,
    // Quantized rows are words, not elements: their padded width is K itself (gpu/forward.ts).
    KP: format === "float" ? kp : o.k,
    ACCUMULATE: false,
    HAS_BIAS: false,
    LOGIT_ROWS: false,
    NORM_INPUT: false,
    EPS: 1e-5,
    SWIGLU_INPUT: false,
    ...o.constants,
  }, format);
  const pipeline = await pipelineOf(pipelines, k, o.dtype);
  dev.pushErrorScope("validation");
  // bias and normW are read only with HAS_BIAS / NORM_INPUT: any buffer serves.
  const bg = bindGroup(dev, pipeline, k, { fwd, x, w, bias, y, normW: bias });
  const err = await dev.popErrorScope();
  if (err) throw new Error(`${o.label}: ${err.message}`);
  const groups = matmulGroups(entry, o.n, o.rows);
  return {
    job: { ...o, format },
    kernel: k.name,
    weightBytes: wBytes,
    record: (pass) => dispatch(pass, { pipeline, bindGroup: bg }, groups),
    destroy: () => {
      for (const b of [w, x, y, bias, fwd]) b.destroy();
    },
  };
}

function matmulResult(
  p: PreparedMatmul,
  method: "timestamp" | "wall-slope",
  ms: Stat,
): MatmulResult {
  const o = p.job;
  const flops = 2 * o.rows * o.n * o.k;
  return {
    kind: o.kind,
    kernel: p.kernel,
    label: o.label,
    n: o.n,
    k: o.k,
    rows: o.rows,
    dtype: o.dtype,
    format: o.format,
    weight_bytes: p.weightBytes,
    method,
    ms,
    gbps: gbpsOf(p.weightBytes, ms),
    gflops: stat(ms.samples.map((m) => (m > 0 ? flops / (m * 1e6) : 0))),
  };
}

/**
 * GEMV (`rows` <= 8) or GEMM throughput of wgsl/matmul.wgsl for a weight [n, k] in `o.format`,
 * dispatched as the runner does (gpu/kernels/matmul.ts). Throws when the weight does not fit one
 * storage binding.
 */
export async function measureMatmul(
  gpu: Gpu,
  pipelines: Pipelines,
  timer: PassTimer,
  o: MatmulJob,
  rep: Repeats,
): Promise<MatmulResult> {
  const p = await prepareMatmul(gpu, pipelines, o);
  try {
    const r = await timer.measure(p.record, rep);
    return matmulResult(p, r.method, r.ms);
  } finally {
    p.destroy();
  }
}

/**
 * Prepared dispatches timed in the same sitting, interleaved: each of `rep.samples` rounds takes
 * one sample of each (after its own warm-up dispatch), round r starting at dispatch r mod n, so
 * that sample i of every dispatch comes from the same round (the ratios' `paired` figures).
 */
async function sampleInterleaved(
  timer: PassTimer,
  prepared: { record: (pass: GPUComputePassEncoder) => void }[],
  rep: Repeats,
): Promise<{ samples: number[][]; methods: ("timestamp" | "wall-slope")[] }> {
  const samples: number[][] = prepared.map(() => []);
  const methods: ("timestamp" | "wall-slope")[] = prepared.map(() => "wall-slope");
  for (let s = 0; s < rep.samples; s++) {
    for (let i = 0; i < prepared.length; i++) {
      const j = (s + i) % prepared.length;
      const r = await timer.measure(prepared[j].record, { ...rep, samples: 1 });
      samples[j].push(r.ms.samples[0]);
      methods[j] = r.method;
    }
  }
  return { samples, methods };
}

/**
 * Several matmuls (e.g. one shape in each weight format) timed in the same sitting, interleaved
 * (sampleInterleaved): all are built first.
 */
export async function measureMatmulSet(
  gpu: Gpu,
  pipelines: Pipelines,
  timer: PassTimer,
  jobs: MatmulJob[],
  rep: Repeats,
): Promise<MatmulResult[]> {
  const prepared: PreparedMatmul[] = [];
  try {
    for (const o of jobs) prepared.push(await prepareMatmul(gpu, pipelines, o));
    const { samples, methods } = await sampleInterleaved(timer, prepared, rep);
    return prepared.map((p, i) => matmulResult(p, methods[i], stat(samples[i])));
  } finally {
    for (const p of prepared) p.destroy();
  }
}

export { Pipelines };

export interface AttentionResult {
  /** The entry point the runner dispatches at this context and batch (decode, or decode_long
   * once the split cap is reached). */
  kernel: "attention.wgsl:decode" | "attention.wgsl:decode_long";
  heads: number;
  kv_heads: number;
  head_dim: number;
  context: number;
  rows: number;
  /** The pipeline's weight storage type W (attention reads no weights; it decides
   * `enable f16`). */
  dtype: Precision;
  /** How the cache stores K and V (cache/layout.ts KvDtype). */
  kv_dtype: KvDtype;
  /** K and V bytes the dispatch must read, scales included:
   * rows x context x kv_heads x 2 x kvEntryBytes(kv_dtype, head_dim). */
  kv_bytes: number;
  method: "timestamp" | "wall-slope";
  ms: Stat;
  gbps: Stat;
}

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  context: number;
  rows: number;
  /** The pipeline's weight type, and the cache's when `kv` is not given. */
  dtype: Precision;
  /** The cache's KV dtype (default `dtype`). */
  kv?: KvDtype;
}

const ATTENTION_PAGE = 16;

/** Bytes of the K (or V) cache a decode attention measurement allocates: every row's pages of
 * context + 1 positions, kvEntryBytes per (position, KV head). */
export function attentionCacheBytes(o: AttentionShape): number {
  const pages = Math.ceil((o.context + 1) / ATTENTION_PAGE);
  return o.rows * pages * ATTENTION_PAGE * o.kvHeads * kvEntryBytes(o.kv ?? o.dtype, o.headDim);
}

/** `f32` bits of x (an int8 entry's amax word). */
function f32Bits(x: number): number {
  return new Uint32Array(new Float32Array([x]).buffer)[0];
}

/** pack2x16float(lo, hi): an int4 entry's (scale, zero) word, scale in the low half. */
function f16PairBits(lo: number, hi: number): number {
  const h = new Uint16Array(new Float16Array([lo, hi]).buffer);
  return (h[0] | (h[1] << 16)) >>> 0;
}

/**
 * Fills a K or V cache of `entries` (position, head) entries with valid values of `kv`: floats
 * uniform in [-1, 1) as f16 or f32; for int8 random value words (any bytes are valid snorm
 * values) and amax 1.0; for int4 random nibbles and (scale 0.1, zero -0.75), so values span
 * [-0.75, 0.75]. No NaN or infinity: attention's work is that of real data.
 */
function fillCache(
  dev: GPUDevice,
  buf: GPUBuffer,
  kv: KvDtype,
  headDim: number,
  entries: number,
  seed: number,
): void {
  const rand = mulberry32(seed);
  const units = kvEntryUnits(kv, headDim);
  const chunkEntries = Math.max(1, Math.floor((1 << 22) / units));
  for (let e0 = 0; e0 < entries; e0 += chunkEntries) {
    const n = Math.min(chunkEntries, entries - e0) * units;
    let data: Float16Array<ArrayBuffer> | Float32Array<ArrayBuffer> | Uint32Array<ArrayBuffer>;
    if (kv === "f16" || kv === "f32") {
      data = kv === "f16" ? new Float16Array(n) : new Float32Array(n);
      for (let i = 0; i < n; i++) data[i] = 2 * rand() - 1;
    } else {
      const scale = kv === "int8" ? f32Bits(1) : f16PairBits(0.1, -0.75);
      data = new Uint32Array(n);
      for (let i = 0; i < n; i++) {
        data[i] = i % units === units - 1 ? scale : Math.floor(rand() * 2 ** 32) >>> 0;
      }
    }
    dev.queue.writeBuffer(buf, e0 * units * data.BYTES_PER_ELEMENT, data);
  }
}

/** Throws, naming `what`, when attention.wgsl cannot run this KV dtype and head_dim. */
function checkAttentionShape(what: string, kv: KvDtype, headDim: number): void {
  const problem = kvDtypeProblem(kv, headDim);
  if (problem) throw new Error(`${what}: ${problem}`);
  if (headDim > ATTENTION_GEOMETRY.MAX_HEAD_DIM || headDim % 4 !== 0) {
    throw new Error(`${what}: head_dim ${headDim} is not supported`);
  }
}

/** The `Forward` and `CacheShard` uniforms of an attention dispatch (shard 0). */
function attentionUniforms(dev: GPUDevice, f: ForwardParams): { fwd: GPUBuffer; shard: GPUBuffer } {
  const usage = GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST;
  const fwd = dev.createBuffer({ size: 16, usage });
  dev.queue.writeBuffer(fwd, 0, encodeForward(f));
  const shard = dev.createBuffer({ size: CACHE_SHARD_BYTES, usage });
  dev.queue.writeBuffer(shard, 0, encodeCacheShard(0));
  return { fwd, shard };
}

/**
 * What an attention dispatch reads besides its uniforms: K and V caches of `entries`
 * (position, KV head) entries of valid `kv` values (`what` names the measurement when they
 * exceed one binding), the rows' fused q|k|v (uniform in [-1, 1)), a page table mapping each
 * of its `pages` entries to the same page, and the rows.
 */
function attentionInputs(
  gpu: Gpu,
  what: string,
  o: { heads: number; kvHeads: number; headDim: number; kv: KvDtype },
  entries: number,
  pages: number,
  rowSpecs: RowParams[],
  seed: number,
) {
  const dev = gpu.device;
  const cacheBytes = entries * kvEntryBytes(o.kv, o.headDim);
  if (cacheBytes > gpu.limits.maxStorageBufferBindingSize) {
    throw new Error(`${what}: a ${cacheBytes} byte cache exceeds the binding limit`);
  }
  const k = dev.createBuffer({ size: cacheBytes, usage: USAGE });
  const v = dev.createBuffer({ size: cacheBytes, usage: USAGE });
  fillCache(dev, k, o.kv, o.headDim, entries, seed);
  fillCache(dev, v, o.kv, o.headDim, entries, seed + 1);
  const qkvBytes = rowSpecs.length * (o.heads + 2 * o.kvHeads) * o.headDim * 4;
  const qkv = dev.createBuffer({ size: qkvBytes, usage: USAGE });
  fillRandom(dev, qkv, qkvBytes, seed + 2);
  const table = Uint32Array.from({ length: pages }, (_, i) => i);
  const pageTable = dev.createBuffer({ size: table.byteLength, usage: USAGE });
  dev.queue.writeBuffer(pageTable, 0, table);
  const rows = encodeRows(rowSpecs);
  const rowsBuf = dev.createBuffer({ size: rows.byteLength, usage: USAGE });
  dev.queue.writeBuffer(rowsBuf, 0, rows);
  return { k, v, qkv, pageTable, rowsBuf };
}

/** One decode attention dispatch, ready to record; `destroy` frees its buffers. */
interface PreparedAttention {
  shape: AttentionShape & { kv: KvDtype };
  entry: "decode" | "decode_long";
  record: (pass: GPUComputePassEncoder) => void;
  kvBytes: number;
  destroy: () => void;
}

/**
 * The split-K decode pass of wgsl/attention.wgsl over a full paged cache of `context` keys per
 * row, built as the runner builds it (gpu/kernels/attention.ts: the split plan of maxSplitsFor,
 * decodeEntry, decodeGroups; the merge pass is not included). The cache is in `kv`'s storage
 * (kvEntryUnits units per (position, KV head), the paged layout
 * ((page * PAGE_SIZE + j % PAGE_SIZE) * CACHE_HEADS + ch) * kvEntryUnits), one page table row per
 * query row.
 */
async function prepareAttentionDecode(
  gpu: Gpu,
  pipelines: Pipelines,
  o: AttentionShape,
): Promise<PreparedAttention> {
  const dev = gpu.device;
  const kv = o.kv ?? o.dtype;
  checkAttentionShape("attention decode", kv, o.headDim);
  const PAGE = ATTENTION_PAGE;
  const pages = Math.ceil((o.context + 1) / PAGE);
  const entryBytes = kvEntryBytes(kv, o.headDim);
  const entries = o.rows * pages * PAGE * o.kvHeads;
  // Each row its own slot with its own pages, at position `context`.
  const { k, v, qkv, pageTable, rowsBuf } = attentionInputs(
    gpu,
    "attention decode",
    { ...o, kv },
    entries,
    o.rows * pages,
    Array.from(
      { length: o.rows },
      (_, r) => ({ slot: r, pos: o.context, firstRow: r, nSeqRows: 1 }),
    ),
    21,
  );
  // Split as the runner does at this context and batch (capped splits, more keys each).
  const plan = splitsFor(
    o.context + 1,
    maxSplitsFor(o.context + 1, o.rows, o.heads, o.headDim),
  );
  const splits = plan.splits;
  const partials = dev.createBuffer({
    size: o.rows * o.heads * splits * (o.headDim + 2) * 4,
    usage: USAGE,
  });
  const out = dev.createBuffer({ size: o.rows * o.heads * o.headDim * 4, usage: USAGE });
  // One shard: the whole cache is one binding here.
  const { fwd, shard } = attentionUniforms(dev, { rows: o.rows, logitRows: o.rows, ...plan });
  const group = o.heads / o.kvHeads;
  const entry = decodeEntry(plan.keysPerSplit);
  const kernel = attentionDecode({
    HEAD_DIM: o.headDim,
    N_HEADS: o.heads,
    N_KV_HEADS: o.kvHeads,
    CACHE_HEADS: o.kvHeads,
    GROUP: group,
    Q_HEAD_BASE: 0,
    SCALE: 1 / Math.sqrt(o.headDim),
  }, {
    layout: "paged",
    constants: {
      PAGE_SIZE: PAGE,
      MAX_PAGES: pages,
      PAGES_PER_SHARD: o.rows * pages,
      CACHE_SHARDS: 1,
    },
  }, entry);
  const pipeline = await pipelineOf(pipelines, kernel, { W: o.dtype, KV: kv });
  dev.pushErrorScope("validation");
  const bg = bindGroup(dev, pipeline, kernel, {
    fwd,
    rows: rowsBuf,
    qkv,
    kCache: k,
    vCache: v,
    pageTable,
    out,
    partials,
    shard,
  });
  const err = await dev.popErrorScope();
  if (err) throw new Error(`attention decode: ${err.message}`);
  const groups = decodeGroups(o.rows, o.kvHeads, group, splits);
  return {
    shape: { ...o, kv },
    entry,
    record: (pass) => dispatch(pass, { pipeline, bindGroup: bg }, groups),
    kvBytes: o.rows * o.context * o.kvHeads * 2 * entryBytes,
    destroy: () => {
      for (const b of [k, v, qkv, pageTable, rowsBuf, partials, out, fwd, shard]) b.destroy();
    },
  };
}

function attentionResult(
  p: PreparedAttention,
  method: "timestamp" | "wall-slope",
  ms: Stat,
): AttentionResult {
  const o = p.shape;
  return {
    kernel: `attention.wgsl:${p.entry}`,
    heads: o.heads,
    kv_heads: o.kvHeads,
    head_dim: o.headDim,
    context: o.context,
    rows: o.rows,
    dtype: o.dtype,
    kv_dtype: o.kv,
    kv_bytes: p.kvBytes,
    method,
    ms,
    gbps: gbpsOf(p.kvBytes, ms),
  };
}

/**
 * The split-K decode entry of wgsl/attention.wgsl over a full (paged) cache of `context` keys per
 * row, in `o.kv`'s storage (default `o.dtype`), dispatched as the runner does
 * (gpu/kernels/attention.ts decodeGroups; the merge pass is not included).
 */
export async function measureAttentionDecode(
  gpu: Gpu,
  pipelines: Pipelines,
  timer: PassTimer,
  o: AttentionShape,
  rep: Repeats,
): Promise<AttentionResult> {
  return (await measureAttentionDecodeSet(gpu, pipelines, timer, [o], rep))[0];
}

/**
 * Several decode attention shapes (e.g. one per KV dtype) timed in the same sitting, interleaved
 * (sampleInterleaved): all are built first.
 */
export async function measureAttentionDecodeSet(
  gpu: Gpu,
  pipelines: Pipelines,
  timer: PassTimer,
  shapes: AttentionShape[],
  rep: Repeats,
): Promise<AttentionResult[]> {
  const prepared: PreparedAttention[] = [];
  try {
    for (const o of shapes) prepared.push(await prepareAttentionDecode(gpu, pipelines, o));
    const { samples, methods } = await sampleInterleaved(timer, prepared, rep);
    return prepared.map((p, i) => attentionResult(p, methods[i], stat(samples[i])));
  } finally {
    for (const p of prepared) p.destroy();
  }
}

/** A prefill chunk of wgsl/attention.wgsl: `rows` rows of one sequence at positions
 * [context - rows, context), over the context - rows keys already cached. */
export interface PrefillAttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  rows: number;
  context: number;
  /** The pipeline's weight type, and the cache's when `kv` is not given. */
  dtype: Precision;
  kv?: KvDtype;
  /** A streaming ring of sink + recent positions; absent: retrieval pages (full attention). */
  window?: { sink: number; recent: number };
}

export interface PrefillAttentionResult {
  kernel: "attention.wgsl:prefill";
  heads: number;
  kv_heads: number;
  head_dim: number;
  rows: number;
  context: number;
  layout: "paged" | "ring";
  sink?: number;
  recent?: number;
  dtype: Precision;
  kv_dtype: KvDtype;
  /** 4 x head_dim x heads x the keys each row sees, summed over rows: the scores' and the
   * weighted values' multiply-adds (f32 arithmetic whatever the storage). */
  flops: number;
  method: "timestamp" | "wall-slope";
  ms: Stat;
  gflops: Stat;
}

/** Keys a query at position i sees: all of [0, i], or a ring's sink and recent window. */
function visibleKeys(i: number, w?: { sink: number; recent: number }): number {
  if (!w) return i + 1;
  const sink = Math.min(w.sink, i + 1);
  return sink + (i + 1 - Math.max(sink, i + 1 - Math.min(i + 1, w.recent)));
}

interface PreparedPrefill {
  shape: PrefillAttentionShape & { kv: KvDtype };
  record: (pass: GPUComputePassEncoder) => void;
  flops: number;
  destroy: () => void;
}

/**
 * The prefill entry of wgsl/attention.wgsl as the runner dispatches it (gpu/kernels/attention.ts
 * prefillGroups), one shard: the chunk's own keys come from the fused rows, older ones from a
 * paged cache (pages in order) or a ring filled with valid values of `kv`.
 */
async function prepareAttentionPrefill(
  gpu: Gpu,
  pipelines: Pipelines,
  o: PrefillAttentionShape,
): Promise<PreparedPrefill> {
  const dev = gpu.device;
  const kv = o.kv ?? o.dtype;
  checkAttentionShape("attention prefill", kv, o.headDim);
  if (o.rows < 1 || o.rows > o.context) {
    throw new Error(`attention prefill: ${o.rows} rows do not fit a context of ${o.context}`);
  }
  const kind = o.window
    ? new StreamingRing(o.window.sink, o.window.recent)
    : new RetrievalPages(ATTENTION_PAGE);
  const pages = Math.max(1, Math.ceil(o.context / ATTENTION_PAGE));
  const positions = o.window ? kind.unitPositions : pages * ATTENTION_PAGE;
  const pos0 = o.context - o.rows;
  // One sequence (slot 0), its rows the chunk's positions.
  const { k, v, qkv, pageTable, rowsBuf } = attentionInputs(
    gpu,
    "attention prefill",
    { ...o, kv },
    positions * o.kvHeads,
    pages,
    Array.from({ length: o.rows }, (_, r) => ({
      slot: 0,
      pos: pos0 + r,
      firstRow: 0,
      nSeqRows: o.rows,
    })),
    31,
  );
  const out = dev.createBuffer({ size: o.rows * o.heads * o.headDim * 4, usage: USAGE });
  const carry = dev.createBuffer({ size: o.rows * o.heads * CARRY_FLOATS * 4, usage: USAGE });
  const { fwd, shard } = attentionUniforms(dev, {
    rows: o.rows,
    logitRows: 1,
    keysPerSplit: 0,
    splits: 1,
  });
  const group = o.heads / o.kvHeads;
  const kernel = attentionPrefill({
    HEAD_DIM: o.headDim,
    N_HEADS: o.heads,
    N_KV_HEADS: o.kvHeads,
    CACHE_HEADS: o.kvHeads,
    GROUP: group,
    Q_HEAD_BASE: 0,
    SCALE: 1 / Math.sqrt(o.headDim),
  }, {
    layout: kind.layout,
    constants: kind.constants({
      maxPagesPerSeq: pages,
      unitsPerShard: o.window ? 1 : pages,
      shards: 1,
    }),
  });
  const pipeline = await pipelineOf(pipelines, kernel, { W: o.dtype, KV: kv });
  dev.pushErrorScope("validation");
  const bg = bindGroup(dev, pipeline, kernel, {
    fwd,
    rows: rowsBuf,
    qkv,
    kCache: k,
    vCache: v,
    ...(o.window ? {} : { pageTable }),
    out,
    carry,
    shard,
  });
  const err = await dev.popErrorScope();
  if (err) throw new Error(`attention prefill: ${err.message}`);
  const groups = prefillGroups(o.rows, o.kvHeads, group);
  let keys = 0;
  for (let r = 0; r < o.rows; r++) keys += visibleKeys(pos0 + r, o.window);
  return {
    shape: { ...o, kv },
    record: (pass) => dispatch(pass, { pipeline, bindGroup: bg }, groups),
    flops: 4 * o.headDim * o.heads * keys,
    destroy: () => {
      for (const b of [k, v, qkv, pageTable, rowsBuf, out, carry, fwd, shard]) b.destroy();
    },
  };
}

/**
 * Prefill attention shapes (e.g. full and streaming) timed in the same sitting, interleaved
 * (sampleInterleaved): all are built first.
 */
export async function measureAttentionPrefillSet(
  gpu: Gpu,
  pipelines: Pipelines,
  timer: PassTimer,
  shapes: PrefillAttentionShape[],
  rep: Repeats,
): Promise<PrefillAttentionResult[]> {
  const prepared: PreparedPrefill[] = [];
  try {
    for (const o of shapes) prepared.push(await prepareAttentionPrefill(gpu, pipelines, o));
    const { samples, methods } = await sampleInterleaved(timer, prepared, rep);
    return prepared.map((p, i) => {
      const o = p.shape;
      const ms = stat(samples[i]);
      return {
        kernel: "attention.wgsl:prefill" as const,
        heads: o.heads,
        kv_heads: o.kvHeads,
        head_dim: o.headDim,
        rows: o.rows,
        context: o.context,
        layout: o.window ? "ring" as const : "paged" as const,
        ...(o.window ? { sink: o.window.sink, recent: o.window.recent } : {}),
        dtype: o.dtype,
        kv_dtype: o.kv,
        flops: p.flops,
        method: methods[i],
        ms,
        gflops: stat(ms.samples.map((m) => (m > 0 ? p.flops / (m * 1e6) : 0))),
      };
    });
  } finally {
    for (const p of prepared) p.destroy();
  }
}
