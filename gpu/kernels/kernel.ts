// What every kernel family module (gpu/kernels/*.ts) is made of, and the one place where a
// kernel's named bindings become binding indices.
//
// A family module declares, next to its `.wgsl` file: a typed interface of the `override`
// constants (WGSL names), its bindings as an object of name -> @binding index (exactly the
// bindings its entry point uses, so that "auto" pipeline layouts accept the bind group), and its
// workgroup geometry (the workgroup counts of a dispatch, from constants TypeScript and WGSL
// share; tests/kernels_test.ts asserts each against the WGSL source). The runner
// (gpu/forward.ts), the bench (bench/kernels.ts) and the kernel tests build every dispatch
// through these modules.

import { GpuTensor } from "../buffers.ts";
import {
  type KernelSpec,
  type Overrides,
  type Pipelines,
  type ScalarType,
  type StorageTypes,
  storageTypes,
} from "../pipelines.ts";

/** Workgroup counts of one dispatch. */
export type Groups = [number, number, number];

export type Buffer = GPUBuffer | GpuTensor;

/** An entry point's bindings: name -> @binding index, as its WGSL declares them (an optional
 * name: a binding only some variants have, e.g. the paged layout's page table). */
export type BindingIndices = { readonly [name: string]: number | undefined };

/** A buffer for each binding name of `B` (optional names: bindings a variant may lack). */
export type BufferSet<B> = { readonly [K in keyof B]: Buffer };

/** One entry point of a kernel family with its constants: what a pipeline and a bind group are
 * made from. `W` and `KV` (the storage types) are the caller's precision. */
export interface Kernel<B extends BindingIndices = BindingIndices> {
  spec: Omit<KernelSpec, "W" | "KV">;
  bindings: B;
  /** "file:entry": the kernel's name in profiles. */
  name: string;
}

/** A family's entry point with these constants (and layout includes; `kvCodec` for kernels that
 * read or write the KV cache). */
export function kernel<C extends Overrides<C>, B extends BindingIndices>(
  file: string,
  entry: string,
  constants: C,
  bindings: B,
  includes: readonly string[] = [],
  kvCodec = false,
): Kernel<B> {
  return {
    spec: {
      file,
      entry,
      constants,
      ...(includes.length ? { includes } : {}),
      ...(kvCodec ? { kvCodec } : {}),
    },
    bindings,
    name: `${file}:${entry}`,
  };
}

/** The kernel's pipeline in storage types `p` (one precision for W and KV alike, or each). */
export function pipelineOf(
  pipelines: Pipelines,
  k: Kernel,
  p: ScalarType | StorageTypes,
): Promise<GPUComputePipeline> {
  return pipelines.get({ ...k.spec, ...storageTypes(p) });
}

/** The bind group of `k`'s bindings, each named buffer at its index. */
export function bindGroup<B extends BindingIndices>(
  device: GPUDevice,
  pipeline: GPUComputePipeline,
  k: Kernel<B>,
  buffers: BufferSet<B>,
): GPUBindGroup {
  return device.createBindGroup({
    label: k.name,
    layout: pipeline.getBindGroupLayout(0),
    entries: Object.entries(k.bindings).flatMap(([name, binding]) => {
      if (binding === undefined) return [];
      const b = (buffers as Record<string, Buffer | undefined>)[name];
      if (!b) throw new Error(`${k.name}: no buffer for binding "${name}"`);
      return [{ binding, resource: { buffer: b instanceof GpuTensor ? b.buffer : b } }];
    }),
  });
}

/** A pipeline with its bind group: ready to dispatch. */
export interface Bound {
  name: string;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
}

export async function bind<B extends BindingIndices>(
  pipelines: Pipelines,
  k: Kernel<B>,
  buffers: BufferSet<B>,
  p: ScalarType | StorageTypes,
): Promise<Bound> {
  const pipeline = await pipelineOf(pipelines, k, p);
  return { name: k.name, pipeline, bindGroup: bindGroup(pipelines.device, pipeline, k, buffers) };
}

export const MAX_WORKGROUPS = 65535;

/** Splits a 1-D workgroup count into x, y (kernels index wg.y * nwg.x + wg.x). */
export function grid(n: number): Groups {
  if (n <= MAX_WORKGROUPS) return [Math.max(1, n), 1, 1];
  return [MAX_WORKGROUPS, Math.ceil(n / MAX_WORKGROUPS), 1];
}
