// Adapter and device acquisition. Requests the adapter's own buffer limits (Deno otherwise caps
// storage bindings at 128 MiB) and `shader-f16` when the adapter has it.

import { ValidationWatch } from "./limits.ts";

export type Precision = "f16" | "f32";

export interface Gpu {
  device: GPUDevice;
  /** Adapter description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)" or "NVIDIA H100". */
  adapterName: string;
  backend: string;
  hasF16: boolean;
  hasTimestamps: boolean;
  /** A CPU implementation (llvmpipe, lavapipe, SwiftShader): compute runs on the host's cores. */
  isCpu: boolean;
  limits: GPUSupportedLimits;
  /** Validation errors no error scope caught; the runner checks it after every readback. */
  validation: ValidationWatch;
}

export class GpuUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GpuUnavailableError";
  }
}

let shared: Promise<Gpu> | null = null;

/** One device per process: pipelines and weights are shared by everything that runs. */
export function getGpu(): Promise<Gpu> {
  shared ??= createGpu();
  return shared;
}

async function createGpu(): Promise<Gpu> {
  // Mesa's Vulkan and GL drivers print a warning without it.
  if (!Deno.env.get("XDG_RUNTIME_DIR")) {
    try {
      Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
    } catch { /* env access not granted: harmless */ }
  }
  if (!("gpu" in navigator) || !navigator.gpu) {
    throw new GpuUnavailableError("this Deno build has no WebGPU (navigator.gpu is missing)");
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    throw new GpuUnavailableError(
      "no WebGPU adapter found. On a machine without a GPU install Mesa's Vulkan driver " +
        "(Debian/Ubuntu: `apt-get install -y mesa-vulkan-drivers`); on an NVIDIA host install " +
        "the driver with its Vulkan ICD (libnvidia-gl / NVIDIA_DRIVER_CAPABILITIES=graphics).",
    );
  }
  const hasF16 = adapter.features.has("shader-f16");
  const hasTimestamps = adapter.features.has("timestamp-query");
  const device = await adapter.requestDevice(deviceRequest(adapter));
  device.addEventListener("uncapturederror", (e) => {
    console.error("zigzag: WebGPU error:", (e as GPUUncapturedErrorEvent).error.message);
  });
  const validation = new ValidationWatch(device);
  const adapterName = adapter.info.description || adapter.info.device || "unknown adapter";
  return {
    device,
    adapterName,
    backend: Deno.env.get("DENO_WEBGPU_BACKEND") ?? "default",
    hasF16,
    hasTimestamps,
    isCpu: /llvmpipe|lavapipe|swiftshader/i.test(`${adapterName} ${adapter.info.vendor}`),
    limits: device.limits,
    validation,
  };
}

/** What zigzag asks of an adapter: its own buffer and workgroup limits (Deno otherwise caps
 * storage bindings at 128 MiB), and `shader-f16` and `timestamp-query` where it has them. */
export function deviceRequest(adapter: GPUAdapter): GPUDeviceDescriptor {
  const a = adapter.limits;
  const requiredFeatures = (["shader-f16", "timestamp-query"] as GPUFeatureName[])
    .filter((f) => adapter.features.has(f));
  return {
    requiredFeatures,
    requiredLimits: {
      maxBufferSize: a.maxBufferSize,
      maxStorageBufferBindingSize: a.maxStorageBufferBindingSize,
      maxStorageBuffersPerShaderStage: a.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: a.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: a.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: a.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupsPerDimension: a.maxComputeWorkgroupsPerDimension,
    },
  };
}

/** The precision to run at: f16 only when asked for and supported. */
export function resolvePrecision(gpu: Gpu, requested: Precision | undefined): Precision {
  if (requested === "f16" && !gpu.hasF16) {
    console.error(`zigzag: ${gpu.adapterName} has no shader-f16; running in f32`);
    return "f32";
  }
  return requested ?? (gpu.hasF16 ? "f16" : "f32");
}
