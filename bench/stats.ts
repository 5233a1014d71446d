// Summary statistics and GPU timing helpers of the bench.
//
// Two ways to time GPU work, both stated in the JSON's `method`:
//  - GPU timestamps (adapters with `timestamp-query`): a compute pass with `timestampWrites`
//    around R identical dispatches; time per dispatch = (end - begin) / R.
//  - Wall-clock slope: Deno's readback (mapAsync) costs ~11 ms however little is read, so time
//    the same work at two repetition counts, each up to a dependent readback, and take
//    (T(hi) - T(lo)) / (hi - lo): the readback and submission overheads cancel.

import type { Gpu } from "../gpu/device.ts";

export interface Stat {
  median: number;
  min: number;
  max: number;
  mean: number;
  /** (max - min) / median: the relative spread of the samples. */
  spread: number;
  samples: number[];
}

export function stat(samples: number[]): Stat {
  if (samples.length === 0) throw new Error("stat of no samples");
  const s = [...samples].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  const min = s[0];
  const max = s[s.length - 1];
  const mean = s.reduce((a, b) => a + b, 0) / s.length;
  return { median, min, max, mean, spread: median !== 0 ? (max - min) / median : 0, samples };
}

/** Times `record` (dispatches into a compute pass) per repetition. */
export class PassTimer {
  readonly timestamps: boolean;
  #query: GPUQuerySet | null = null;
  #resolve: GPUBuffer | null = null;

  constructor(readonly gpu: Gpu) {
    this.timestamps = gpu.hasTimestamps;
    if (this.timestamps) {
      this.#query = gpu.device.createQuerySet({ type: "timestamp", count: 2 });
      this.#resolve = gpu.device.createBuffer({
        size: 16,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
    }
  }

  /** One submission of `reps` repetitions; returns wall ms up to the readback, and GPU ms. */
  async once(
    record: (pass: GPUComputePassEncoder) => void,
    reps: number,
  ): Promise<{ wallMs: number; gpuMs: number | null }> {
    const dev = this.gpu.device;
    const enc = dev.createCommandEncoder();
    const pass = enc.beginComputePass(
      this.#query
        ? {
          timestampWrites: {
            querySet: this.#query,
            beginningOfPassWriteIndex: 0,
            endOfPassWriteIndex: 1,
          },
        }
        : {},
    );
    for (let i = 0; i < reps; i++) record(pass);
    pass.end();
    const staging = dev.createBuffer({
      size: 16,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    if (this.#query) {
      enc.resolveQuerySet(this.#query, 0, 2, this.#resolve!, 0);
      enc.copyBufferToBuffer(this.#resolve!, 0, staging, 0, 16);
    }
    const t0 = performance.now();
    dev.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const wallMs = performance.now() - t0;
    let gpuMs: number | null = null;
    if (this.#query) {
      const ts = new BigInt64Array(staging.getMappedRange().slice(0));
      gpuMs = Number(ts[1] - ts[0]) / 1e6;
    }
    staging.unmap();
    staging.destroy();
    return { wallMs, gpuMs };
  }

  /**
   * Milliseconds per repetition: `samples` values, each from GPU timestamps over `hi`
   * repetitions when the adapter has them, else from the wall-clock slope between `lo` and `hi`
   * repetitions. `wall` always holds the slope samples too (a cross-check).
   */
  async measure(
    record: (pass: GPUComputePassEncoder) => void,
    opts: { samples: number; lo: number; hi: number },
  ): Promise<{ ms: Stat; wallSlopeMs: Stat; method: "timestamp" | "wall-slope" }> {
    await this.once(record, 1); // warm-up
    const ts: number[] = [];
    const wall: number[] = [];
    for (let s = 0; s < opts.samples; s++) {
      const lo = await this.once(record, opts.lo);
      const hi = await this.once(record, opts.hi);
      wall.push(Math.max(0, (hi.wallMs - lo.wallMs) / (opts.hi - opts.lo)));
      if (hi.gpuMs !== null) ts.push(hi.gpuMs / opts.hi);
    }
    const wallSlopeMs = stat(wall);
    if (ts.length > 0) return { ms: stat(ts), wallSlopeMs, method: "timestamp" };
    return { ms: wallSlopeMs, wallSlopeMs, method: "wall-slope" };
  }

  destroy(): void {
    this.#query?.destroy();
    this.#resolve?.destroy();
  }
}
