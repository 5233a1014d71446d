// Model weights on the GPU: uploaded once per runner, in the storage precision, in the shapes the
// forward's kernels read.
//
//  - q|k|v and gate|up are fused into one matrix each (one matmul instead of three and two);
//  - each layer's heads are reordered into its cache order (`CacheLayout.kvHeadOrder`: the heads
//    of one cache part next to each other), so a duo layer's retrieval and streaming heads are
//    contiguous ranges of the fused rows: rows of wq/wk/wv (and their biases) and columns of wo
//    are permuted alike, which leaves the layer's output unchanged;
//  - matmul weights have their rows zero-padded to a multiple of 4 columns (vec4 loads);
//  - a tied LM head is uploaded a second time: the embedding gather reads unpadded rows.

import type { CacheLayout } from "../cache/layout.ts";
import { ropeInvFreq } from "../model/rope.ts";
import type { ModelConfig, ModelWeights } from "../model/types.ts";
import { createTensor, type GpuTensor, uploadMatrix } from "./buffers.ts";
import type { Precision } from "./device.ts";

export interface LayerTensors {
  attnNorm: GpuTensor;
  /** [(nHeads + 2 nKvHeads) headDim, dim]: q, k, v rows, heads in cache order. */
  wqkv: GpuTensor;
  bqkv: GpuTensor | null;
  /** [dim, nHeads headDim], columns in cache order. */
  wo: GpuTensor;
  ffnNorm: GpuTensor;
  /** [2 hiddenDim, dim]: gate rows then up rows. */
  wGateUp: GpuTensor;
  wDown: GpuTensor;
}

export interface ModelTensors {
  embedding: GpuTensor;
  layers: LayerTensors[];
  finalNorm: GpuTensor;
  lmHead: GpuTensor;
  /** RoPE inverse frequency per pair (f32). */
  invFreq: GpuTensor;
}

export function uploadWeights(
  device: GPUDevice,
  c: ModelConfig,
  w: ModelWeights,
  layout: CacheLayout,
  dt: Precision,
): ModelTensors {
  const vec = (t: Float32Array, label: string) => uploadMatrix(device, t, 1, t.length, dt, label);
  const f32 = (data: Float32Array<ArrayBuffer>, label: string) => {
    const t = createTensor(device, [data.length], "f32", label);
    device.queue.writeBuffer(t.buffer, 0, data);
    return t;
  };
  const embedding = uploadMatrix(device, w.tokenEmbedding.data, c.vocabSize, c.dim, dt, "embed");
  const lmHead = uploadMatrix(device, w.lmHead.data, c.vocabSize, c.dim, dt, "lm_head", 4);
  const finalNorm = vec(w.finalNorm.data, "final_norm");
  const qDim = c.nHeads * c.headDim;
  const kvDim = c.nKvHeads * c.headDim;
  const group = c.nHeads / c.nKvHeads;
  const layers = w.layers.map((lw, l): LayerTensors => {
    const order = layout.kvHeadOrder(l);
    const qOrder = order.flatMap((kv) => Array.from({ length: group }, (_, g) => kv * group + g));
    const wqkv = concat([
      permuteRows(lw.wq.data, qOrder, c.headDim * c.dim),
      permuteRows(lw.wk.data, order, c.headDim * c.dim),
      permuteRows(lw.wv.data, order, c.headDim * c.dim),
    ]);
    const bqkv = lw.bq && lw.bk && lw.bv
      ? f32(
        concat([
          permuteRows(lw.bq.data, qOrder, c.headDim),
          permuteRows(lw.bk.data, order, c.headDim),
          permuteRows(lw.bv.data, order, c.headDim),
        ]),
        `bqkv ${l}`,
      )
      : null;
    const wo = permuteColumns(lw.wo.data, c.dim, qOrder, c.headDim);
    const gateUp = concat([lw.wGate.data, lw.wUp.data]);
    return {
      attnNorm: vec(lw.attnNorm.data, `attn_norm ${l}`),
      wqkv: uploadMatrix(device, wqkv, qDim + 2 * kvDim, c.dim, dt, `wqkv ${l}`, 4),
      bqkv,
      wo: uploadMatrix(device, wo, c.dim, qDim, dt, `wo ${l}`, 4),
      ffnNorm: vec(lw.ffnNorm.data, `ffn_norm ${l}`),
      wGateUp: uploadMatrix(device, gateUp, 2 * c.hiddenDim, c.dim, dt, `w_gate_up ${l}`, 4),
      wDown: uploadMatrix(device, lw.wDown.data, c.dim, c.hiddenDim, dt, `w_down ${l}`, 4),
    };
  });
  return { embedding, layers, finalNorm, lmHead, invFreq: f32(ropeInvFreq(c), "inv_freq") };
}

export function destroyWeights(t: ModelTensors): void {
  const all: (GpuTensor | null)[] = [
    t.embedding,
    t.finalNorm,
    t.lmHead,
    t.invFreq,
    ...t.layers.flatMap((l) => Object.values(l) as (GpuTensor | null)[]),
  ];
  for (const x of all) x?.buffer.destroy();
}

function concat(parts: Float32Array[]): Float32Array<ArrayBuffer> {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Reorders blocks of `block` values: output block i is input block order[i]. */
function permuteRows(data: Float32Array, order: number[], block: number): Float32Array {
  if (order.every((v, i) => v === i)) return data;
  const out = new Float32Array(data.length);
  order.forEach((src, i) => out.set(data.subarray(src * block, (src + 1) * block), i * block));
  return out;
}

/** Reorders head blocks of columns of a [rows, heads*headDim] matrix. */
function permuteColumns(
  data: Float32Array,
  rows: number,
  order: number[],
  headDim: number,
): Float32Array {
  if (order.every((v, i) => v === i)) return data;
  const cols = order.length * headDim;
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    order.forEach((src, i) =>
      out.set(
        data.subarray(r * cols + src * headDim, r * cols + (src + 1) * headDim),
        r * cols + i * headDim,
      )
    );
  }
  return out;
}
