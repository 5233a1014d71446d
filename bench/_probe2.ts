import { getGpu } from "../gpu/device.ts";
import { Pipelines } from "../gpu/pipelines.ts";
const gpu = await getGpu();
const dev = gpu.device;
const P = new Pipelines(dev);
const bytes = 64 << 20;
const src = dev.createBuffer({
  size: bytes,
  usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
});
const dst = dev.createBuffer({
  size: bytes,
  usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
});
const sink = dev.createBuffer({ size: 65535 * 256 * 4, usage: GPUBufferUsage.STORAGE });
const qs = dev.createQuerySet({ type: "timestamp", count: 2 });
const qb = dev.createBuffer({
  size: 16,
  usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
});
const rb = dev.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
async function run(pipe: GPUComputePipeline, bg: GPUBindGroup, wgs: number, reps: number) {
  const enc = dev.createCommandEncoder();
  const pass = enc.beginComputePass({
    timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
  });
  pass.setPipeline(pipe);
  pass.setBindGroup(0, bg);
  for (let i = 0; i < reps; i++) pass.dispatchWorkgroups(wgs);
  pass.end();
  enc.resolveQuerySet(qs, 0, 2, qb, 0);
  enc.copyBufferToBuffer(qb, 0, rb, 0, 16);
  const t = performance.now();
  dev.queue.submit([enc.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const w = performance.now() - t;
  const ts = new BigUint64Array(rb.getMappedRange().slice(0));
  rb.unmap();
  return { wall: w, gpu: Number(ts[1] - ts[0]) / 1e6 };
}
for (const chunked of [false, true]) {
  for (const wgs of [64, 1024, 16384]) {
    const pipe = await P.get({
      file: "stream_read.wgsl",
      constants: { N_VEC4: bytes / 16, WG: 256, CHUNKED: chunked },
    });
    const bg = dev.createBindGroup({
      layout: pipe.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: src } }, {
        binding: 1,
        resource: { buffer: sink },
      }],
    });
    await run(pipe, bg, wgs, 1);
    for (const reps of [1, 4]) {
      const r = await run(pipe, bg, wgs, reps);
      console.log(
        "stream",
        chunked,
        wgs,
        reps,
        r,
        "GB/s gpu",
        (bytes * reps / r.gpu / 1e6).toFixed(2),
        "wall",
        (bytes * reps / r.wall / 1e6).toFixed(2),
      );
    }
  }
}
for (const reps of [1, 8]) {
  const enc = dev.createCommandEncoder();
  for (let i = 0; i < reps; i++) enc.copyBufferToBuffer(src, 0, dst, 0, bytes);
  enc.copyBufferToBuffer(dst, 0, rb, 0, 16);
  const t = performance.now();
  dev.queue.submit([enc.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const w = performance.now() - t;
  rb.unmap();
  console.log("copy", reps, w, (bytes * reps / w / 1e6).toFixed(2));
}
