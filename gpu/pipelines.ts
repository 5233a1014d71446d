// Compute pipelines, built once per variant and cached.
//
// The one variant mechanism: every kernel in wgsl/ is compiled with a generated header that
// declares the storage types `W` (weights, f16 or f32) and `KV` (cache units: f16 or f32, or
// u32 words for the quantized KV dtypes), and `enable f16;` when either is f16, followed by
// wgsl/common.wgsl, then, for kernels that read or write the cache (`kvCodec`), the KV dtype's
// codec (`kv_float.wgsl`, `kv_int8.wgsl` or `kv_int4.wgsl`, which define the same functions),
// then the spec's includes (whole files of wgsl/, in order: e.g. the KV-cache layout's
// addressing, `cache_paged.wgsl` or `cache_ring.wgsl`, which define the same functions), then
// the kernel's file. Sizes, flags and masks are WGSL `override` constants supplied as pipeline
// constants. No other text is ever spliced into a shader.

import type { KvDtype } from "../cache/layout.ts";

export type ScalarType = "f16" | "f32";

/** The storage types of one build: the weights' and the KV cache's. */
export interface StorageTypes {
  W: ScalarType;
  KV: KvDtype;
}

/** `p` for both, or each as given. */
export function storageTypes(p: ScalarType | StorageTypes): StorageTypes {
  return typeof p === "string" ? { W: p, KV: p } : p;
}

/** The codec include of a KV dtype (what `kvCodec` kernels compile with). */
export function kvCodecFile(kv: KvDtype): string {
  return kv === "int8" || kv === "int4" ? `kv_${kv}.wgsl` : "kv_float.wgsl";
}

/** Values of a kernel's `override` constants by WGSL name; booleans become 0/1. */
export type Overrides<C> = { readonly [K in keyof C]: number | boolean };

export interface KernelSpec<C extends Overrides<C> = Record<string, number | boolean>> {
  /** File in wgsl/, e.g. "matmul.wgsl". */
  file: string;
  /** Entry point; defaults to "main". */
  entry?: string;
  /** Files of wgsl/ compiled between common.wgsl and `file` (default none). */
  includes?: readonly string[];
  /** Weight storage type (default f32). */
  W?: ScalarType;
  /** KV-cache storage type (default f32). */
  KV?: KvDtype;
  /** The kernel reads or writes the KV cache: compile it with the KV dtype's codec. */
  kvCodec?: boolean;
  /** Values of the kernel's `override` constants. */
  constants?: C;
}

const WGSL_DIR = new URL("../wgsl/", import.meta.url);
const sources = new Map<string, string>();
const compileErrors = new Map<string, Promise<GPUError | null>>();

function readKernel(file: string): string {
  let src = sources.get(file);
  if (src === undefined) {
    src = Deno.readTextFileSync(new URL(file, WGSL_DIR));
    sources.set(file, src);
  }
  return src;
}

/** The files of wgsl/ a spec compiles after common.wgsl, in order: the KV codec (`kvCodec`),
 * the includes, the kernel's own file. */
function specFiles<C extends Overrides<C>>(spec: KernelSpec<C>): string[] {
  const codec = spec.kvCodec ? [kvCodecFile(spec.KV ?? "f32")] : [];
  return [...codec, ...spec.includes ?? [], spec.file];
}

/** The full source a spec compiles to (exported for tests and debugging). */
export function kernelSource<C extends Overrides<C>>(spec: KernelSpec<C>): string {
  const w = spec.W ?? "f32";
  const kv = spec.KV ?? "f32";
  const unit = kv === "int8" || kv === "int4" ? "u32" : kv;
  const header = (w === "f16" || kv === "f16" ? "enable f16;\n" : "") +
    `alias W = ${w};\nalias KV = ${unit};\n`;
  return header + ["common.wgsl", ...specFiles(spec)].map(readKernel).join("\n");
}

/** The text of one file of wgsl/ (kernel tests compare its constants with TypeScript's). */
export function wgslFile(file: string): string {
  return readKernel(file);
}

export class Pipelines {
  #modules = new Map<string, GPUShaderModule>();
  #pipelines = new Map<string, Promise<GPUComputePipeline>>();

  constructor(readonly device: GPUDevice) {}

  static #perDevice = new WeakMap<GPUDevice, Pipelines>();

  /** The cache shared by every runner on a device (runners differ only in constants). */
  static forDevice(device: GPUDevice): Pipelines {
    let p = Pipelines.#perDevice.get(device);
    if (!p) {
      p = new Pipelines(device);
      Pipelines.#perDevice.set(device, p);
    }
    return p;
  }

  /** Compiles (once) and returns the pipeline for a spec; rejects with the compiler's message. */
  get<C extends Overrides<C>>(spec: KernelSpec<C>): Promise<GPUComputePipeline> {
    const constants: Record<string, number> = {};
    const given = Object.entries(spec.constants ?? {}) as [string, number | boolean][];
    for (const [k, v] of given.sort(([a], [b]) => a < b ? -1 : 1)) {
      constants[k] = typeof v === "boolean" ? (v ? 1 : 0) : v;
    }
    const files = specFiles(spec).join("+");
    const moduleKey = `${files}|${spec.W ?? "f32"}|${spec.KV ?? "f32"}`;
    const key = `${moduleKey}|${spec.entry ?? "main"}|${JSON.stringify(constants)}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      let module = this.#modules.get(moduleKey);
      if (!module) {
        this.device.pushErrorScope("validation");
        module = this.device.createShaderModule({ label: moduleKey, code: kernelSource(spec) });
        this.#modules.set(moduleKey, module);
        compileErrors.set(moduleKey, this.device.popErrorScope());
      }
      const compiled = compileErrors.get(moduleKey)!;
      p = this.device.createComputePipelineAsync({
        label: key,
        layout: "auto",
        compute: { module, entryPoint: spec.entry ?? "main", constants },
      }).catch(async (e) => {
        const err = await compiled;
        throw new Error(
          `kernel ${spec.file}:${spec.entry ?? "main"} failed to build: ${
            err?.message ?? e.message
          }`,
        );
      });
      this.#pipelines.set(key, p);
    }
    return p;
  }

  get size(): number {
    return this.#pipelines.size;
  }
}
