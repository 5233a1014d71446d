// Weight tensors on the host and on disk behind one reader interface (model/types.ts
// `WeightTensor`), and the conversions between them.
//
// The GPU upload streams every tensor through `readRaw` in chunks; what needs host f32 (the CPU
// reference, the retrieval-score probe, small random models) asks for it per tensor.

import { toFloat32 } from "./safetensors.ts";
import type { HostTensor, LayerWeights, ModelWeights, WeightTensor } from "./types.ts";

const RAW_DTYPE = { f32: "F32", f16: "F16", bf16: "BF16" } as const;
const ITEM_BYTES = { f32: 4, f16: 2, bf16: 2 } as const;

/** Bytes per element of a tensor's source dtype. */
export function itemBytes(t: WeightTensor): number {
  return ITEM_BYTES[t.sourceDtype];
}

export function numel(t: { shape: number[] }): number {
  return t.shape.reduce((a, b) => a * b, 1);
}

/** A host tensor seen as a WeightTensor: its f32 data are the raw bytes. */
export function hostAsWeight(h: HostTensor): WeightTensor {
  return {
    name: h.name,
    shape: h.shape,
    sourceDtype: "f32",
    readRaw: (offset, count) =>
      Promise.resolve(new Uint8Array(h.data.buffer, h.data.byteOffset + offset * 4, count * 4)),
  };
}

/** Elements [offset, offset + count) as f32. */
export async function readF32(
  t: WeightTensor,
  offset: number,
  count: number,
): Promise<Float32Array> {
  return toFloat32(await t.readRaw(offset, count), RAW_DTYPE[t.sourceDtype]);
}

/** The whole tensor on the host (small models and the CPU reference only). */
export async function toHost(t: WeightTensor): Promise<HostTensor> {
  return {
    name: t.name,
    shape: t.shape,
    sourceDtype: t.sourceDtype,
    data: await readF32(t, 0, numel(t)),
  };
}

/** Maps every tensor of a model's weights, keeping a tied LM head tied (one object). */
export function mapWeights<A, B>(w: ModelWeights<A>, f: (t: A) => B): ModelWeights<B> {
  const layers = w.layers.map((l) => {
    const out = {} as LayerWeights<B>;
    for (const [k, v] of Object.entries(l) as [keyof LayerWeights<A>, A | undefined][]) {
      if (v !== undefined) out[k] = f(v);
    }
    return out;
  });
  const tokenEmbedding = f(w.tokenEmbedding);
  return {
    tokenEmbedding,
    layers,
    finalNorm: f(w.finalNorm),
    lmHead: w.lmHead === w.tokenEmbedding ? tokenEmbedding : f(w.lmHead),
  };
}

/** Host weights seen as WeightTensors. */
export function weightView(w: ModelWeights<HostTensor>): ModelWeights<WeightTensor> {
  return mapWeights(w, hostAsWeight);
}

/** Every tensor read onto the host, one after another (small models only); `onBytes` hears
 * the source bytes of each tensor read. */
export async function hostWeights(
  w: ModelWeights<WeightTensor>,
  onBytes?: (bytes: number) => void,
): Promise<ModelWeights<HostTensor>> {
  const read = new Map<WeightTensor, HostTensor>();
  mapWeights(w, (t) => read.set(t, undefined as unknown as HostTensor));
  for (const t of read.keys()) {
    read.set(t, await toHost(t));
    onBytes?.(numel(t) * itemBytes(t));
  }
  return mapWeights(w, (t) => read.get(t)!);
}

/** Bytes the checkpoint stores for every distinct tensor (host tensors count as f32). */
export function weightBytes(w: ModelWeights<HostTensor | WeightTensor>): number {
  const seen = new Set<HostTensor | WeightTensor>();
  mapWeights(w, (t) => seen.add(t));
  let total = 0;
  for (const t of seen) total += numel(t) * ("readRaw" in t ? itemBytes(t) : 4);
  return total;
}
