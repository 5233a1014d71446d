// deno run -A scripts/gpu_adapter.ts [--json FILE]
//
// The WebGPU adapter this process gets (the same request as gpu/device.ts: high-performance, the
// adapter's own buffer limits, shader-f16 and timestamp-query when offered), proven by one compute
// dispatch and its readback. Prints one line per fact; --json writes them all (info, features,
// limits, kind) for scripts/gpu_run.sh and scripts/gpu_summary.ts. Imports only gpu/device.ts's
// request (which imports no package), so it runs whatever state the engine is in.
//
// Exit status: 0 an adapter that ran a compute shader, 3 no adapter, 4 an adapter whose device or
// dispatch failed.

import { deviceRequest } from "../gpu/device.ts";

interface AdapterReport {
  found: boolean;
  description: string;
  vendor: string;
  vendor_hex: string | null;
  architecture: string;
  device: string;
  /** "gpu", or "cpu" for a software rasterizer (llvmpipe / lavapipe / SwiftShader, or a fallback). */
  kind: "gpu" | "cpu" | "none";
  nvidia: boolean;
  is_fallback_adapter: boolean | null;
  features: string[];
  limits: Record<string, number>;
  device_limits: Record<string, number> | null;
  compute_ok: boolean;
  error: string | null;
  env: Record<string, string | null>;
  ms: number;
}

const NVIDIA_VENDOR = 0x10de;
const CPU_NAMES = /llvmpipe|lavapipe|swiftshader|softpipe|software/i;

function limitsOf(l: GPUSupportedLimits): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k in l) {
    const v = (l as unknown as Record<string, unknown>)[k];
    if (typeof v === "number") out[k] = v;
  }
  return out;
}

function env(name: string): string | null {
  try {
    return Deno.env.get(name) ?? null;
  } catch {
    return null;
  }
}

async function probe(): Promise<AdapterReport> {
  const t0 = performance.now();
  const r: AdapterReport = {
    found: false,
    description: "",
    vendor: "",
    vendor_hex: null,
    architecture: "",
    device: "",
    kind: "none",
    nvidia: false,
    is_fallback_adapter: null,
    features: [],
    limits: {},
    device_limits: null,
    compute_ok: false,
    error: null,
    env: Object.fromEntries(
      ["DENO_WEBGPU_BACKEND", "VK_DRIVER_FILES", "VK_ICD_FILENAMES", "LD_LIBRARY_PATH"].map((
        k,
      ) => [k, env(k)]),
    ),
    ms: 0,
  };
  if (!env("XDG_RUNTIME_DIR")) {
    try {
      Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
    } catch { /* harmless */ }
  }
  if (!("gpu" in navigator) || !navigator.gpu) {
    r.error = "this Deno build has no WebGPU (navigator.gpu is missing)";
    return r;
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    r.error = "no WebGPU adapter (no Vulkan driver the loader could use)";
    r.ms = performance.now() - t0;
    return r;
  }
  r.found = true;
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  r.description = info.description || info.device || "unknown adapter";
  r.vendor = info.vendor ?? "";
  r.architecture = info.architecture ?? "";
  r.device = info.device ?? "";
  const vendorNum = /^\d+$/.test(r.vendor)
    ? Number(r.vendor)
    : /^0x[0-9a-f]+$/i.test(r.vendor)
    ? parseInt(r.vendor, 16)
    : NaN;
  r.vendor_hex = Number.isFinite(vendorNum) ? "0x" + vendorNum.toString(16).padStart(4, "0") : null;
  r.is_fallback_adapter = typeof info.isFallbackAdapter === "boolean"
    ? info.isFallbackAdapter
    : null;
  r.nvidia = vendorNum === NVIDIA_VENDOR || /nvidia/i.test(`${r.vendor} ${r.description}`);
  r.kind = r.is_fallback_adapter || CPU_NAMES.test(r.description) ? "cpu" : "gpu";
  r.features = [...adapter.features].map(String).sort();
  r.limits = limitsOf(adapter.limits);

  try {
    const device = await adapter.requestDevice(deviceRequest(adapter));
    r.device_limits = limitsOf(device.limits);
    device.pushErrorScope("validation");
    // One dispatch: out[i] = in[i] * 2 + i over 4096 elements, read back and checked.
    const n = 4096;
    const module = device.createShaderModule({
      code: `@group(0) @binding(0) var<storage, read_write> v: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x < arrayLength(&v)) { v[g.x] = v[g.x] * 2.0 + f32(g.x); }
}`,
    });
    const pipeline = device.createComputePipeline({
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
    const buf = device.createBuffer({
      size: n * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    const read = device.createBuffer({
      size: n * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const input = Float32Array.from({ length: n }, (_, i) => i % 7);
    device.queue.writeBuffer(buf, 0, input);
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(
      0,
      device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: [{ binding: 0, resource: { buffer: buf } }],
      }),
    );
    pass.dispatchWorkgroups(n / 64);
    pass.end();
    enc.copyBufferToBuffer(buf, 0, read, 0, n * 4);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const out = new Float32Array(read.getMappedRange().slice(0));
    read.unmap();
    const err = await device.popErrorScope();
    if (err) throw new Error(`validation: ${err.message}`);
    const bad = out.findIndex((v, i) => v !== input[i] * 2 + i);
    if (bad >= 0) throw new Error(`compute check: element ${bad} is ${out[bad]}`);
    r.compute_ok = true;
    buf.destroy();
    read.destroy();
    device.destroy();
  } catch (e) {
    r.error = `device or dispatch failed: ${e instanceof Error ? e.message : String(e)}`;
  }
  r.ms = performance.now() - t0;
  return r;
}

function mib(n: number | undefined): string {
  return n === undefined ? "?" : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

if (import.meta.main) {
  const i = Deno.args.indexOf("--json");
  const jsonPath = i >= 0 ? Deno.args[i + 1] : undefined;
  const r = await probe();
  if (jsonPath) await Deno.writeTextFile(jsonPath, JSON.stringify(r, null, 2) + "\n");
  if (!r.found) {
    console.log(`adapter: none (${r.error})`);
    Deno.exit(3);
  }
  const l = r.device_limits ?? r.limits;
  console.log(
    `adapter: ${r.description} | vendor ${r.vendor_hex ?? r.vendor}${r.nvidia ? " (NVIDIA)" : ""}` +
      `${r.architecture ? ` | ${r.architecture}` : ""} | kind ${r.kind}`,
  );
  console.log(
    `features: ${r.features.join(", ")}`,
  );
  console.log(
    `limits: maxStorageBufferBindingSize ${mib(l.maxStorageBufferBindingSize)}, maxBufferSize ${
      mib(l.maxBufferSize)
    }, maxComputeWorkgroupStorageSize ${l.maxComputeWorkgroupStorageSize}, ` +
      `maxComputeInvocationsPerWorkgroup ${l.maxComputeInvocationsPerWorkgroup}, ` +
      `maxStorageBuffersPerShaderStage ${l.maxStorageBuffersPerShaderStage}, ` +
      `maxComputeWorkgroupsPerDimension ${l.maxComputeWorkgroupsPerDimension}`,
  );
  console.log(
    r.compute_ok
      ? `compute: ok (one dispatch read back, ${r.ms.toFixed(0)} ms)`
      : `compute: FAILED (${r.error})`,
  );
  Deno.exit(r.compute_ok ? 0 : 4);
}
