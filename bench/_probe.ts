import { getGpu } from "../gpu/device.ts";
import { GREEDY, ModelRunner } from "../gpu/runner.ts";
import { PRESETS, randomModel } from "../model/random.ts";
import { builtinPlan, resolvePlan } from "../plans/resolve.ts";
const gpu = await getGpu();
console.log(
  gpu.adapterName,
  gpu.hasF16,
  gpu.hasTimestamps,
  gpu.limits.maxStorageBufferBindingSize,
  gpu.limits.maxBufferSize,
);
const config = { ...PRESETS["smollm2-135m"], nLayers: 4, vocabSize: 8192 };
let t = performance.now();
const weights = randomModel(config, 1);
console.log("rand", performance.now() - t);
for (const pname of ["full", "streaming"] as const) {
  const plan = resolvePlan(builtinPlan(pname, config), config);
  t = performance.now();
  const r = await ModelRunner.create(gpu, { source: "random", config, weights, tokenizer: null }, {
    precision: "f16",
    plan,
    prefillChunk: 256,
    maxBatch: 8,
    maxDecodeSteps: 16,
    kvCacheBytes: 256 << 20,
    maxSeqLen: 4096,
  });
  console.log("create", performance.now() - t);
  const seq = r.cache.open()!;
  const toks = Array.from({ length: 2048 }, (_, i) => i % 8000);
  t = performance.now();
  const s = await r.prefill(seq, toks, GREEDY);
  console.log(pname, "prefill 2048", performance.now() - t);
  for (const steps of [1, 4, 16]) {
    t = performance.now();
    await r.decode([{ seq, token: s.token, sampling: GREEDY }], steps);
    console.log(pname, "decode steps", steps, performance.now() - t);
  }
  r.destroy();
}
