// Start-up shared by the CLI, the server and the bench: load a model, open the GPU, resolve the
// plan and build the runner, with progress on a TTY.

import { getGpu, type Gpu, type Precision, resolvePrecision } from "../gpu/device.ts";
import { ModelRunner } from "../gpu/runner.ts";
import { loadModel } from "../model/load.ts";
import type { LoadedModel } from "../model/types.ts";
import { loadPlanArg } from "../plans/resolve.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import { progress } from "./progress.ts";

export interface SetupOptions {
  model: string;
  tokenizer?: string;
  precision?: Precision;
  /** "full", "streaming" or a plan file. */
  plan?: string;
  sink?: number;
  recent?: number;
  kvCacheMb?: number;
  maxBatch?: number;
  prefillChunk?: number;
  decodeSteps?: number;
  maxSeqLen?: number;
  /** Print progress (default: when stderr is a TTY). */
  quiet?: boolean;
}

export interface Session {
  gpu: Gpu;
  model: LoadedModel;
  plan: ResolvedPlan;
  runner: ModelRunner;
}

export async function setup(o: SetupOptions): Promise<Session> {
  const bar = o.quiet ? null : progress("loading model");
  const model = await loadModel(o.model, {
    tokenizerPath: o.tokenizer,
    onProgress: (done, total) => bar?.update(done, total),
  });
  bar?.done();
  const gpu = await getGpu();
  const precision = resolvePrecision(gpu, o.precision);
  const plan = await loadPlanArg(o.plan ?? "full", model.config, {
    sink: o.sink,
    recent: o.recent,
  });
  const runner = await ModelRunner.create(gpu, model, {
    precision,
    plan,
    prefillChunk: o.prefillChunk ?? 128,
    maxBatch: o.maxBatch ?? 8,
    maxDecodeSteps: o.decodeSteps ?? 8,
    kvCacheBytes: (o.kvCacheMb ?? 256) * (1 << 20),
    maxSeqLen: o.maxSeqLen,
  });
  return { gpu, model, plan, runner };
}
