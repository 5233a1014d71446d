// Per-kernel GPU time of one decode step, from timestamp queries (adapters with
// `timestamp-query`): every dispatch of the step runs in its own timed compute pass. The runner
// stages the step and lends its dispatches (`ModelRunner.withDecodeStep`); nothing is committed.

import type { DecodeRow, ModelRunner, StagedDispatch } from "../gpu/runner.ts";
import type { SeqCache } from "../cache/manager.ts";

/** GPU nanoseconds of one decode step of `batch`, summed per kernel ("file:entry"). */
export function profileDecode(
  runner: ModelRunner,
  batch: DecodeRow[],
): Promise<Map<string, number>> {
  if (!runner.gpu.hasTimestamps) throw new Error("the adapter has no timestamp-query");
  return runner.withDecodeStep(batch, (d) => timeDispatches(runner.device, d));
}

/** GPU nanoseconds of one prefill chunk of `seq` (`tokens` from position `pos`), per kernel. */
export function profilePrefill(
  runner: ModelRunner,
  seq: SeqCache,
  tokens: number[],
  pos: number,
): Promise<Map<string, number>> {
  if (!runner.gpu.hasTimestamps) throw new Error("the adapter has no timestamp-query");
  return runner.withPrefillChunk(seq, tokens, pos, (d) => timeDispatches(runner.device, d));
}

/**
 * The fastest of `n` profiles (`profile` runs one), by total GPU time, and that total: rejects
 * runs slowed by other work sharing the adapter (a CPU adapter's threads being descheduled).
 */
export async function fastestProfile(
  n: number,
  profile: () => Promise<Map<string, number>>,
): Promise<{ kernels: Map<string, number>; totalNs: number }> {
  let best = new Map<string, number>();
  let totalNs = Infinity;
  for (let p = 0; p < n; p++) {
    const prof = await profile();
    const total = [...prof.values()].reduce((a, v) => a + v, 0);
    if (total < totalNs) [best, totalNs] = [prof, total];
  }
  return { kernels: best, totalNs };
}

/** Runs each dispatch in its own pass between two timestamps; ns summed per kernel name. */
export async function timeDispatches(
  device: GPUDevice,
  all: StagedDispatch[],
): Promise<Map<string, number>> {
  const querySet = device.createQuerySet({ type: "timestamp", count: 2 * all.length });
  const resolve = device.createBuffer({
    size: 16 * all.length,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const staging = device.createBuffer({
    size: 16 * all.length,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
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
    pass.dispatchWorkgroups(...d.groups);
    pass.end();
  });
  enc.resolveQuerySet(querySet, 0, 2 * all.length, resolve, 0);
  enc.copyBufferToBuffer(resolve, 0, staging, 0, 16 * all.length);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const times = new BigUint64Array(staging.getMappedRange().slice(0));
  staging.unmap();
  const out = new Map<string, number>();
  all.forEach((d, i) => {
    out.set(d.name, (out.get(d.name) ?? 0) + Number(times[2 * i + 1] - times[2 * i]));
  });
  for (const b of [resolve, staging]) b.destroy();
  querySet.destroy();
  return out;
}
