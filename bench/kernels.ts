// Kernel-level measurements: the bandwidth references (a streaming-read kernel and
// copyBufferToBuffer), the readback floor, and GEMV / GEMM throughput of wgsl/matmul.wgsl.

import { readBuffer } from "../gpu/buffers.ts";
import type { Gpu, Precision } from "../gpu/device.ts";
import {
  ATTENTION_GEOMETRY,
  attentionDecode,
  decodeGroups,
  maxSplitsFor,
  splitsFor,
} from "../gpu/kernels/attention.ts";
import {
  CACHE_SHARD_BYTES,
  encodeCacheShard,
  encodeForward,
  encodeRows,
} from "../gpu/kernels/common.ts";
import { bindGroup, type Bound, pipelineOf } from "../gpu/kernels/kernel.ts";
import {
  matmul,
  type MatmulConstants,
  type MatmulEntry,
  matmulGroups,
} from "../gpu/kernels/matmul.ts";
import { streamRead, streamReadGroups } from "../gpu/kernels/stream_read.ts";
import { Pipelines } from "../gpu/pipelines.ts";
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
  dtype: Precision;
  weight_bytes: number;
  method: "timestamp" | "wall-slope";
  ms: Stat;
  /** Weight bytes per second (GEMV: the whole weight is streamed once per call). */
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
      const pipeline = await pipelineOf(pipelines, k, "f32");
      const d = { pipeline, bindGroup: bindGroup(dev, pipeline, k, { src, sink }) };
      const groups = streamReadGroups(wgs);
      const r = await timer.measure((pass) => dispatch(pass, d, groups), rep);
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

/** Fills a buffer with uniform values in [-1, 1) (f32 words; also valid f16 pairs' bits). */
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
function dispatch(
  pass: GPUComputePassEncoder,
  d: Pick<Bound, "pipeline" | "bindGroup">,
  groups: [number, number, number],
): void {
  pass.setPipeline(d.pipeline);
  pass.setBindGroup(0, d.bindGroup);
  pass.dispatchWorkgroups(...groups);
}

/**
 * GEMV (`rows` <= 8) or GEMM throughput of wgsl/matmul.wgsl for a weight [n, k], dispatched as
 * the runner does (gpu/kernels/matmul.ts). Throws when the weight does not fit one storage
 * binding.
 */
export async function measureMatmul(
  gpu: Gpu,
  pipelines: Pipelines,
  timer: PassTimer,
  o: {
    kind: MatmulEntry;
    label: string;
    n: number;
    k: number;
    rows: number;
    dtype: Precision;
    /** Variant flags (default a plain y = x · Wᵀ). */
    constants?: Partial<MatmulConstants>;
  },
  rep: Repeats,
): Promise<MatmulResult> {
  const dev = gpu.device;
  const kp = Math.ceil(o.k / 4) * 4;
  const wBytes = o.n * kp * (o.dtype === "f16" ? 2 : 4);
  if (wBytes > gpu.limits.maxStorageBufferBindingSize) {
    throw new Error(
      `${o.label}: a ${o.n}x${o.k} ${o.dtype} weight (${(wBytes / 2 ** 20).toFixed(0)} MiB) ` +
        `exceeds the adapter's storage binding limit`,
    );
  }
  const { buf: w } = uploadWeights(dev, o.n, kp, o.dtype, o.n * 31 + o.k);
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
  const k = matmul(o.kind, {
    N: o.n,
    N_OFFSET: 0,
    Y_STRIDE: o.n,
    K: o.k,
    KP: kp,
    ACCUMULATE: false,
    HAS_BIAS: false,
    LOGIT_ROWS: false,
    NORM_INPUT: false,
    EPS: 1e-5,
    SWIGLU_INPUT: false,
    ...o.constants,
  });
  const pipeline = await pipelineOf(pipelines, k, o.dtype);
  dev.pushErrorScope("validation");
  // bias and normW are read only with HAS_BIAS / NORM_INPUT: any buffer serves.
  const bg = bindGroup(dev, pipeline, k, { fwd, x, w, bias, y, normW: bias });
  const err = await dev.popErrorScope();
  if (err) throw new Error(`${o.label}: ${err.message}`);
  const groups = matmulGroups(o.kind, o.n, o.rows);
  const r = await timer.measure((pass) => dispatch(pass, { pipeline, bindGroup: bg }, groups), rep);
  for (const b of [w, x, y, bias, fwd]) b.destroy();
  const flops = 2 * o.rows * o.n * o.k;
  return {
    kind: o.kind,
    kernel: k.name,
    label: o.label,
    n: o.n,
    k: o.k,
    rows: o.rows,
    dtype: o.dtype,
    weight_bytes: wBytes,
    method: r.method,
    ms: r.ms,
    gbps: gbpsOf(wBytes, r.ms),
    gflops: stat(r.ms.samples.map((m) => (m > 0 ? flops / (m * 1e6) : 0))),
  };
}

export { Pipelines };

export interface AttentionResult {
  kernel: "attention.wgsl:decode";
  heads: number;
  kv_heads: number;
  head_dim: number;
  context: number;
  rows: number;
  dtype: Precision;
  /** K and V bytes the dispatch must read: rows x context x kv_heads x head_dim x 2. */
  kv_bytes: number;
  method: "timestamp" | "wall-slope";
  ms: Stat;
  gbps: Stat;
}

/**
 * The split-K decode entry of wgsl/attention.wgsl over a full (paged) cache of `context` keys per
 * row, dispatched as the runner does (gpu/kernels/attention.ts decodeGroups; the merge pass is
 * not included).
 */
export async function measureAttentionDecode(
  gpu: Gpu,
  pipelines: Pipelines,
  timer: PassTimer,
  o: {
    heads: number;
    kvHeads: number;
    headDim: number;
    context: number;
    rows: number;
    dtype: Precision;
  },
  rep: Repeats,
): Promise<AttentionResult> {
  const dev = gpu.device;
  const PAGE = 16;
  const pages = Math.ceil((o.context + 1) / PAGE);
  const bpe = o.dtype === "f16" ? 2 : 4;
  const cacheBytes = o.rows * pages * PAGE * o.kvHeads * o.headDim * bpe;
  if (cacheBytes > gpu.limits.maxStorageBufferBindingSize) {
    throw new Error(`attention decode: a ${cacheBytes} byte cache exceeds the binding limit`);
  }
  const k = dev.createBuffer({ size: cacheBytes, usage: USAGE });
  const v = dev.createBuffer({ size: cacheBytes, usage: USAGE });
  fillRandom(dev, k, Math.floor(cacheBytes / 4) * 4, 21);
  fillRandom(dev, v, Math.floor(cacheBytes / 4) * 4, 22);
  const stride = (o.heads + 2 * o.kvHeads) * o.headDim;
  const qkv = dev.createBuffer({ size: o.rows * stride * 4, usage: USAGE });
  fillRandom(dev, qkv, o.rows * stride * 4, 23);
  const table = new Uint32Array(o.rows * pages).map((_, i) => i);
  const pageTable = dev.createBuffer({ size: table.byteLength, usage: USAGE });
  dev.queue.writeBuffer(pageTable, 0, table);
  const rows = encodeRows(
    Array.from({ length: o.rows }, (_, r) => ({
      slot: r,
      pos: o.context,
      firstRow: r,
      nSeqRows: 1,
    })),
  );
  const rowsBuf = dev.createBuffer({ size: rows.byteLength, usage: USAGE });
  dev.queue.writeBuffer(rowsBuf, 0, rows);
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
  const fwd = dev.createBuffer({
    size: 16,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  dev.queue.writeBuffer(fwd, 0, encodeForward({ rows: o.rows, logitRows: o.rows, ...plan }));
  // One shard: the whole cache is one binding here.
  const shard = dev.createBuffer({
    size: CACHE_SHARD_BYTES,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  dev.queue.writeBuffer(shard, 0, encodeCacheShard(0));
  const group = o.heads / o.kvHeads;
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
  });
  if (o.headDim > ATTENTION_GEOMETRY.MAX_HEAD_DIM) {
    throw new Error(`attention decode: head_dim ${o.headDim} is not supported`);
  }
  const pipeline = await pipelineOf(pipelines, kernel, o.dtype);
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
  const r = await timer.measure((pass) => dispatch(pass, { pipeline, bindGroup: bg }, groups), rep);
  for (const b of [k, v, qkv, pageTable, rowsBuf, partials, out, fwd, shard]) b.destroy();
  const kvBytes = o.rows * o.context * o.kvHeads * o.headDim * 2 * bpe;
  return {
    kernel: "attention.wgsl:decode",
    heads: o.heads,
    kv_heads: o.kvHeads,
    head_dim: o.headDim,
    context: o.context,
    rows: o.rows,
    dtype: o.dtype,
    kv_bytes: kvBytes,
    method: r.method,
    ms: r.ms,
    gbps: gbpsOf(kvBytes, r.ms),
  };
}
