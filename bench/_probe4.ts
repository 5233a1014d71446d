import { getGpu } from "../gpu/device.ts";
import { Pipelines } from "../gpu/pipelines.ts";
import { measureCopy, measureMatmul, measureReadback, measureStreamRead } from "./kernels.ts";
import { PassTimer } from "./stats.ts";
const gpu = await getGpu();
const P = new Pipelines(gpu.device);
const T = new PassTimer(gpu);
const rep = { samples: 3, lo: 1, hi: 3 };
console.log("readback", (await measureReadback(gpu, 5)).median);
let t = performance.now();
const s = await measureStreamRead(gpu, P, T, 64 << 20, rep);
for (const v of s.variants) {
  console.log(v.workgroups, v.chunked, v.gbps.median.toFixed(2), v.gbps.spread.toFixed(2));
}
console.log("stream took", performance.now() - t);
t = performance.now();
const c = await measureCopy(gpu, 64 << 20, { samples: 3, lo: 1, hi: 5 });
console.log("copy", c.gbps, performance.now() - t);
for (const dtype of ["f16", "f32"] as const) {
  for (const [n, k] of [[1536, 576], [576, 1536], [8192, 2048], [2048, 8192]]) {
    t = performance.now();
    const r = await measureMatmul(
      gpu,
      P,
      T,
      { kind: "gemv", label: "x", n, k, rows: 1, dtype },
      rep,
    );
    console.log(
      "gemv",
      dtype,
      n,
      k,
      r.gbps.median.toFixed(3),
      r.ms.median.toFixed(2),
      performance.now() - t,
    );
  }
}
for (const [n, k] of [[1536, 576], [8192, 2048]]) {
  t = performance.now();
  const r = await measureMatmul(gpu, P, T, {
    kind: "gemm",
    label: "x",
    n,
    k,
    rows: 128,
    dtype: "f16",
  }, { samples: 2, lo: 1, hi: 2 });
  console.log(
    "gemm",
    n,
    k,
    r.gflops.median.toFixed(2),
    r.ms.median.toFixed(2),
    performance.now() - t,
  );
}
