// A small harness for testing one WGSL kernel at a time: builds the pipeline and bind group
// through the kernel family modules (gpu/kernels/*.ts) and the `Pipelines` variant mechanism the
// runner uses, makes buffers from typed arrays, records one or more dispatches in a single
// submission and reads buffers back.

import { createTensor, type GpuTensor, readBuffer } from "../gpu/buffers.ts";
import { getGpu, type Gpu, GpuUnavailableError } from "../gpu/device.ts";
import {
  CACHE_SHARD_BYTES,
  encodeCacheShard,
  encodeForward,
  encodeRows,
  FORWARD_BYTES,
  type RowParams,
} from "../gpu/kernels/common.ts";
import {
  bindGroup,
  type BindingIndices,
  type BufferSet,
  type Groups,
  type Kernel,
  pipelineOf,
} from "../gpu/kernels/kernel.ts";
import { Pipelines, type ScalarType, type StorageTypes } from "../gpu/pipelines.ts";
import { mulberry32 } from "../model/random.ts";

/** One token row of a forward (wgsl/common.wgsl `Row`). */
export type RowSpec = RowParams;

/** The `Forward` uniform (wgsl/common.wgsl). */
export interface ForwardSpec {
  nRows: number;
  nLogitRows?: number;
  nSplits?: number;
  /** Visible keys per decode split (default SPLIT_KEYS, 256). */
  nKeysPerSplit?: number;
}

/** One dispatch: a kernel of a family module, a buffer for each of its named bindings, and its
 * workgroup counts. */
export interface DispatchSpec {
  kernel: Kernel;
  buffers: BufferSet<BindingIndices>;
  groups: Groups;
}

/** A DispatchSpec, its buffers checked against the kernel's binding names. */
export function call<B extends BindingIndices>(
  kernel: Kernel<B>,
  buffers: BufferSet<B>,
  groups: Groups,
): DispatchSpec {
  return { kernel, buffers: buffers as BufferSet<BindingIndices>, groups };
}

export class KernelHarness {
  readonly device: GPUDevice;
  readonly pipelines: Pipelines;
  #owned: GPUBuffer[] = [];

  private constructor(readonly gpu: Gpu) {
    this.device = gpu.device;
    this.pipelines = new Pipelines(gpu.device);
  }

  /** The harness on the shared device, or null when this machine has no WebGPU adapter. */
  static async create(): Promise<KernelHarness | null> {
    try {
      return new KernelHarness(await getGpu());
    } catch (e) {
      if (e instanceof GpuUnavailableError) return null;
      throw e;
    }
  }

  /** The storage precisions this device can run: f32, and f16 with shader-f16. */
  get precisions(): ScalarType[] {
    return this.gpu.hasF16 ? ["f32", "f16"] : ["f32"];
  }

  #tensor(shape: number[], dtype: "f32" | "f16" | "u32", label: string): GpuTensor {
    const t = createTensor(this.device, shape, dtype, label);
    this.#owned.push(t.buffer);
    return t;
  }

  /** A storage buffer holding `data` in `dtype` (f16 rounds to nearest even on the host). */
  upload(data: ArrayLike<number>, dtype: "f32" | "f16" | "u32" = "f32", label = "t"): GpuTensor {
    const t = this.#tensor([data.length], dtype, label);
    let bytes: Uint8Array;
    if (dtype === "u32") bytes = new Uint8Array(Uint32Array.from(data).buffer);
    else if (dtype === "f32") bytes = new Uint8Array(Float32Array.from(data).buffer);
    else bytes = new Uint8Array(Float16Array.from(data).buffer);
    // writeBuffer wants a multiple of 4 bytes: pad an odd f16 count with a zero half.
    const padded = new Uint8Array(Math.max(4, Math.ceil(bytes.length / 4) * 4));
    padded.set(bytes);
    this.device.queue.writeBuffer(t.buffer, 0, padded);
    return t;
  }

  /** Makes `t` (created elsewhere, e.g. by uploadMatrix) released with the harness's own. */
  adopt(t: GpuTensor): GpuTensor {
    this.#owned.push(t.buffer);
    return t;
  }

  /** A buffer of `n` elements, every one `fill`. */
  filled(n: number, fill: number, dtype: "f32" | "f16" | "u32" = "f32", label = "t"): GpuTensor {
    const data = dtype === "u32" ? new Uint32Array(n).fill(fill) : new Float32Array(n).fill(fill);
    return this.upload(data, dtype, label);
  }

  /** The `Forward` uniform. */
  forward(f: ForwardSpec): GPUBuffer {
    const buf = this.device.createBuffer({
      label: "forward",
      size: FORWARD_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.#owned.push(buf);
    this.device.queue.writeBuffer(
      buf,
      0,
      encodeForward({
        rows: f.nRows,
        logitRows: f.nLogitRows ?? 0,
        splits: f.nSplits ?? 1,
        keysPerSplit: f.nKeysPerSplit ?? 256,
      }),
    );
    return buf;
  }

  /** The `CacheShard` uniform of shard `index`. */
  shard(index: number): GPUBuffer {
    const buf = this.device.createBuffer({
      label: `shard ${index}`,
      size: CACHE_SHARD_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.#owned.push(buf);
    this.device.queue.writeBuffer(buf, 0, encodeCacheShard(index));
    return buf;
  }

  /** An array<Row> buffer. */
  rows(rows: RowSpec[]): GpuTensor {
    return this.upload(encodeRows(rows), "u32", "rows");
  }

  /** Records the dispatches in one compute pass with storage precision `p` (W and KV alike, or
   * each), submits, and rejects on a validation error. */
  async run(p: ScalarType | StorageTypes, dispatches: DispatchSpec[]): Promise<void> {
    const pipelines = await Promise.all(
      dispatches.map((d) => pipelineOf(this.pipelines, d.kernel, p)),
    );
    this.device.pushErrorScope("validation");
    const enc = this.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    dispatches.forEach((d, i) => {
      pass.setPipeline(pipelines[i]);
      pass.setBindGroup(0, bindGroup(this.device, pipelines[i], d.kernel, d.buffers));
      pass.dispatchWorkgroups(...d.groups);
    });
    pass.end();
    this.device.queue.submit([enc.finish()]);
    const err = await this.device.popErrorScope();
    if (err) throw new Error(`dispatch failed: ${err.message}`);
  }

  /** One dispatch. */
  dispatch<B extends BindingIndices>(
    p: ScalarType | StorageTypes,
    kernel: Kernel<B>,
    buffers: BufferSet<B>,
    groups: Groups,
  ): Promise<void> {
    return this.run(p, [call(kernel, buffers, groups)]);
  }

  async readF32(t: GpuTensor): Promise<Float32Array> {
    const bytes = await readBuffer(this.device, t.buffer, t.bytes);
    if (t.dtype === "f16") return Float32Array.from(new Float16Array(bytes));
    if (t.dtype !== "f32") throw new Error(`readF32 of a ${t.dtype} tensor`);
    return new Float32Array(bytes);
  }

  async readU32(t: GpuTensor): Promise<Uint32Array> {
    if (t.dtype !== "u32") throw new Error(`readU32 of a ${t.dtype} tensor`);
    return new Uint32Array(await readBuffer(this.device, t.buffer, t.bytes));
  }

  /** Destroys every buffer made since the last release (call at the end of each test). */
  release(): void {
    for (const b of this.#owned) b.destroy();
    this.#owned = [];
  }

  /** Runs `fn` once per storage precision as test steps, releasing buffers after each. */
  perPrecision(t: Deno.TestContext, fn: (p: ScalarType) => Promise<void>): Promise<void> {
    return this.perVariant(t, this.precisions, fn);
  }

  /** Runs `fn` once per variant (named by it) as test steps, releasing buffers after each. */
  async perVariant<V extends string>(
    t: Deno.TestContext,
    variants: readonly V[],
    fn: (v: V) => Promise<void>,
  ): Promise<void> {
    for (const p of variants) {
      await t.step({
        name: p,
        sanitizeOps: false,
        sanitizeResources: false,
        fn: async () => {
          try {
            await fn(p);
          } finally {
            this.release();
          }
        },
      });
    }
  }
}

/** Written into output buffers beforehand: elements a kernel must not touch keep it. */
export const SENTINEL = -777.5; // exact in f16 too

/** Values as stored in `dtype` and read back as f32 (f16: round to nearest even). */
export function stored(data: ArrayLike<number>, dtype: ScalarType): Float32Array {
  return dtype === "f16" ? Float32Array.from(Float16Array.from(data)) : Float32Array.from(data);
}

/** A seeded source of test data. */
export class Rng {
  #next: () => number;

  constructor(seed: number) {
    this.#next = mulberry32(seed);
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.#next();
  }

  /** Uniform in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.#next();
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.#next() * n);
  }

  /** `n` f32 values uniform in [lo, hi). */
  array(n: number, lo = -1, hi = 1): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.uniform(lo, hi);
    return out;
  }

  /** A random permutation of 0..n-1. */
  permutation(n: number): number[] {
    const p = [...Array(n).keys()];
    for (let i = n - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [p[i], p[j]] = [p[j], p[i]];
    }
    return p;
  }
}

/** Unit roundoff of f32 (2^-24) and of f16 (2^-11). */
export const U32 = 2 ** -24;
export const U16 = 2 ** -11;

/**
 * Asserts |got[i] - want[i]| <= tol(i) for every i; the message names the worst element.
 * Returns the largest ratio |err| / tol (how close to the tolerance the kernel came).
 */
export function assertClose(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  tol: (i: number) => number,
  what: string,
): number {
  if (got.length !== want.length) {
    throw new Error(`${what}: length ${got.length} != ${want.length}`);
  }
  let worst = -1;
  let worstRatio = 0;
  let bad = 0;
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    const t = tol(i);
    // NaN fails too: !(err <= t).
    if (!(err <= t)) {
      bad++;
      if (worst < 0 || !(err / t <= worstRatio)) {
        worst = i;
        worstRatio = err / t;
      }
    } else if (bad === 0 && err / t > worstRatio) worstRatio = err / t;
  }
  if (bad > 0) {
    throw new Error(
      `${what}: ${bad} of ${got.length} elements out of tolerance; worst [${worst}] got ` +
        `${got[worst]}, want ${want[worst]}, tol ${tol(worst)}`,
    );
  }
  return worstRatio;
}
