// Kernel-level measurements: the bandwidth references (a streaming-read kernel and
// copyBufferToBuffer), the readback floor, and GEMV / GEMM throughput of wgsl/matmul.wgsl.

import { readBuffer } from "../gpu/buffers.ts";
import { GEMV_OUTPUTS } from "../gpu/runner.ts";
import type { Gpu, Precision } from "../gpu/device.ts";
import { Pipelines } from "../gpu/pipelines.ts";
import { mulberry32 } from "../model/random.ts";
import { PassTimer, type Stat, stat } from "./stats.ts";

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const MAX_WG = 65535;

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
      const n = Math.min(wgs, MAX_WG);
      const pipe = await pipelines.get({
        file: "stream_read.wgsl",
        constants: { N_VEC4: bytes / 16, WG, CHUNKED: chunked },
      });
      const bg = dev.createBindGroup({
        layout: pipe.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer: src } },
          { binding: 1, resource: { buffer: sink } },
        ],
      });
      const r = await timer.measure((pass) => {
        pass.setPipeline(pipe);
        pass.setBindGroup(0, bg);
        pass.dispatchWorkgroups(n);
      }, rep);
      method = r.method;
      variants.push({
        workgroups: n,
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

/**
 * GEMV (`rows` <= 8) or GEMM throughput of wgsl/matmul.wgsl for a weight [n, k], dispatched as
 * gpu/runner.ts does. Throws when the weight does not fit one storage binding.
 */
export async function measureMatmul(
  gpu: Gpu,
  pipelines: Pipelines,
  timer: PassTimer,
  o: {
    kind: "gemv" | "gemm";
    label: string;
    n: number;
    k: number;
    rows: number;
    dtype: Precision;
    /** Another file with matmul.wgsl's bindings (default matmul.wgsl) and its outputs per GEMV
     * workgroup (default 4). */
    file?: string;
    entry?: string;
    outputsPerWorkgroup?: number;
    constants?: Record<string, number>;
  },
  rep: Repeats,
): Promise<MatmulResult> {
  const file = o.file ?? "matmul.wgsl";
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
  dev.queue.writeBuffer(fwd, 0, new Uint32Array([o.rows, o.rows, 0, 1]));
  const entry = o.entry ?? o.kind;
  const pipe = await pipelines.get({
    file,
    entry,
    W: o.dtype,
    KV: o.dtype,
    constants: {
      N: o.n,
      K: o.k,
      KP: kp,
      ACCUMULATE: false,
      HAS_BIAS: false,
      LOGIT_ROWS: false,
      ...o.constants,
    },
  });
  dev.pushErrorScope("validation");
  const bg = dev.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    // Binding 5 (norm_w) is read only with NORM_INPUT: any buffer serves.
    entries: [fwd, x, w, bias, y, bias].map((b, i) => ({ binding: i, resource: { buffer: b } })),
  });
  const err = await dev.popErrorScope();
  if (err) throw new Error(`${o.label}: ${err.message}`);
  // Same sizes as gpu/runner.ts: GEMV_OUTPUTS per workgroup; GEMM 64x64 tiles.
  let size: [number, number, number];
  if (o.kind === "gemv") {
    const wgs = Math.ceil(o.n / (o.outputsPerWorkgroup ?? GEMV_OUTPUTS));
    size = wgs <= MAX_WG ? [wgs, 1, 1] : [MAX_WG, Math.ceil(wgs / MAX_WG), 1];
  } else {
    size = [Math.ceil(o.n / 64), Math.ceil(o.rows / 64), 1];
  }
  const r = await timer.measure((pass) => {
    pass.setPipeline(pipe);
    pass.setBindGroup(0, bg);
    pass.dispatchWorkgroups(...size);
  }, rep);
  for (const b of [w, x, y, bias, fwd]) b.destroy();
  const flops = 2 * o.rows * o.n * o.k;
  return {
    kind: o.kind,
    kernel: `${file}:${entry}`,
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
 * row, dispatched as gpu/runner.ts does ([rows, heads, ceil(context / 256)]; the merge pass is
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
  const SPLIT = 256;
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
  const rows = new Uint32Array(o.rows * 4);
  for (let r = 0; r < o.rows; r++) rows.set([r, o.context, r, 1], r * 4);
  const rowsBuf = dev.createBuffer({ size: rows.byteLength, usage: USAGE });
  dev.queue.writeBuffer(rowsBuf, 0, rows);
  const splits = Math.ceil((o.context + 1) / SPLIT);
  const partials = dev.createBuffer({
    size: o.rows * o.heads * splits * (o.headDim + 2) * 4,
    usage: USAGE,
  });
  const out = dev.createBuffer({ size: o.rows * o.heads * o.headDim * 4, usage: USAGE });
  const fwd = dev.createBuffer({
    size: 16,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  dev.queue.writeBuffer(fwd, 0, new Uint32Array([o.rows, o.rows, 0, splits]));
  const pipe = await pipelines.get({
    file: "attention.wgsl",
    entry: "decode",
    W: o.dtype,
    KV: o.dtype,
    constants: {
      HEAD_DIM: o.headDim,
      N_HEADS: o.heads,
      N_KV_HEADS: o.kvHeads,
      CACHE_HEADS: o.kvHeads,
      STREAMING: false,
      SINK: 0,
      RECENT: 1,
      PAGE_SIZE: PAGE,
      MAX_PAGES: pages,
      GROUP: o.heads / o.kvHeads,
      Q_HEAD_BASE: 0,
      SCALE: 1 / Math.sqrt(o.headDim),
    },
  });
  dev.pushErrorScope("validation");
  const bg = dev.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: [
      [0, fwd],
      [1, rowsBuf],
      [2, qkv],
      [3, k],
      [4, v],
      [5, pageTable],
      [6, out],
      [7, partials],
    ].map(([binding, buffer]) => ({
      binding: binding as number,
      resource: { buffer: buffer as GPUBuffer },
    })),
  });
  const err = await dev.popErrorScope();
  if (err) throw new Error(`attention decode: ${err.message}`);
  const r = await timer.measure((pass) => {
    pass.setPipeline(pipe);
    pass.setBindGroup(0, bg);
    pass.dispatchWorkgroups(o.rows, o.heads, splits);
  }, rep);
  for (const b of [k, v, qkv, pageTable, rowsBuf, partials, out, fwd]) b.destroy();
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
