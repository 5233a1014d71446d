// The streaming weight upload (gpu/weights.ts) against a host-side construction of what every
// buffer must hold, and lazily loaded checkpoints end to end against the CPU reference.

import assert from "node:assert/strict";
import { CacheLayout } from "../cache/layout.ts";
import { readBuffer } from "../gpu/buffers.ts";
import { Pipelines } from "../gpu/pipelines.ts";
import { type GpuMatrix, rowParts, uploadWeights } from "../gpu/weights.ts";
import { writeFakeCheckpoint } from "../model/fake_checkpoint.ts";
import { loadModel } from "../model/load.ts";
import { randomModel, tinyConfig } from "../model/random.ts";
import { toFloat32 } from "../model/safetensors.ts";
import { hostWeights, mapWeights } from "../model/tensors.ts";
import type { ModelConfig, SourceDtype, WeightTensor } from "../model/types.ts";
import { CpuLlama } from "./reference/cpu_llama.ts";
import { gpu, gpuTest, makeRunner, maxAbsDiff, plan, precisions } from "./gpu_helpers.ts";

const RAW = { f32: "F32", f16: "F16", bf16: "BF16" } as const;

/** `data` stored in `dtype` (bf16 by truncation), as a WeightTensor reading those raw bytes. */
function rawTensor(name: string, shape: number[], data: Float32Array, dtype: SourceDtype) {
  let raw: Uint8Array;
  if (dtype === "f32") raw = new Uint8Array(new Float32Array(data).buffer);
  else if (dtype === "f16") raw = new Uint8Array(new Float16Array(data).buffer);
  else {
    const u = new Uint32Array(new Float32Array(data).buffer);
    raw = new Uint8Array(Uint16Array.from(u, (x) => x >>> 16).buffer);
  }
  const e = dtype === "f32" ? 4 : 2;
  const t: WeightTensor = {
    name,
    shape,
    sourceDtype: dtype,
    readRaw: (offset, count) => Promise.resolve(raw.slice(offset * e, (offset + count) * e)),
  };
  return { t, values: toFloat32(raw, RAW[dtype]) };
}

/** The matrix's parts read back and concatenated: [rows, stride] as f32. */
async function readMatrix(m: GpuMatrix, dt: "f16" | "f32"): Promise<Float32Array> {
  const out = new Float32Array(m.rows * m.stride);
  for (const p of m.parts) {
    const bytes = await readBuffer(gpu.device, p.tensor.buffer, p.tensor.bytes);
    const v = dt === "f16" ? Float32Array.from(new Float16Array(bytes)) : new Float32Array(bytes);
    out.set(v, p.rowStart * m.stride);
  }
  return out;
}

/** Rows of `cols` values padded with zeros to `stride`. */
function padded(rows: number[][], stride: number): Float32Array {
  const out = new Float32Array(rows.length * stride);
  rows.forEach((r, i) => out.set(r, i * stride));
  return out;
}

function rowsOf(v: Float32Array, cols: number): number[][] {
  return Array.from(
    { length: v.length / cols },
    (_, r) => [...v.subarray(r * cols, (r + 1) * cols)],
  );
}

/** One f16 unit in the last place at |x| (normal range). */
function ulp16(x: number): number {
  const e = Math.floor(Math.log2(Math.max(Math.abs(x), 2 ** -14)));
  return 2 ** (e - 10);
}

Deno.test(
  "uploadWeights streams every source dtype into fused, head-reordered, padded, row-split buffers",
  gpuTest,
  async (t) => {
    // dim 10 and hidden 6: rows padded to 12 and 8 columns; 2 KV heads of 4 dims, 2 query heads
    // each; layer 0 is a duo layer whose retrieval KV head is head 1, so its cache order is [1, 0]
    // and the q/k/v rows and wo columns move by head blocks.
    const c: ModelConfig = tinyConfig({
      dim: 10,
      hiddenDim: 6,
      nHeads: 4,
      nKvHeads: 2,
      headDim: 4,
      vocabSize: 30,
      nLayers: 2,
      qkvBias: true,
      tiedEmbeddings: false,
    });
    const host = randomModel(c, 3);
    const dtypes: SourceDtype[] = ["bf16", "f16", "f32"];
    let k = 0;
    const values = new Map<WeightTensor, Float32Array>();
    // Each tensor in the next source dtype, so every matrix mixes them.
    const w = mapWeights(host, (h) => {
      const { t, values: v } = rawTensor(h.name, h.shape, h.data, dtypes[k++ % 3]);
      values.set(t, v);
      return t;
    });
    const p = plan(c, "duo", 2, 4, [[1], "retrieval"]);
    const order = [1, 0];
    const qOrder = [2, 3, 0, 1];
    for (const dt of precisions) {
      for (const [limit, convertOn] of [[undefined, "gpu"], [100, "gpu"], [100, "host"]] as const) {
        await t.step(
          `${dt}, binding limit ${limit ?? "adapter"}, convert on ${convertOn}`,
          async () => {
            const layout = new CacheLayout(c, p, {
              budgetBytes: 1 << 20,
              maxSeqs: 2,
              maxSeqLen: 64,
              kvDtype: dt,
            });
            assert.deepEqual(layout.kvHeadOrder(0), order);
            const up = await uploadWeights(
              gpu.device,
              Pipelines.forDevice(gpu.device),
              c,
              w,
              layout,
              dt,
              { bindingLimit: limit, convertOn },
            );
            const v = (x: WeightTensor) => values.get(x)!;
            const blocks = (x: Float32Array, ord: number[], block: number) =>
              ord.flatMap((b) => rowsOf(x, c.dim).slice(b * block, (b + 1) * block));
            const l0 = w.layers[0];
            const want: [GpuMatrix, number[][], WeightTensor[]][] = [
              [up.embedding, rowsOf(v(w.tokenEmbedding), c.dim), [w.tokenEmbedding]],
              [up.lmHead, rowsOf(v(w.lmHead), c.dim), [w.lmHead]],
              [
                up.layers[0].wqkv,
                [
                  ...blocks(v(l0.wq), qOrder, 4),
                  ...blocks(v(l0.wk), order, 4),
                  ...blocks(v(l0.wv), order, 4),
                ],
                [l0.wq, l0.wk, l0.wv],
              ],
              [
                up.layers[0].wo,
                rowsOf(v(l0.wo), 16).map((r) => qOrder.flatMap((b) => r.slice(b * 4, (b + 1) * 4))),
                [l0.wo],
              ],
              [up.layers[1].wGateUp, [
                ...rowsOf(v(w.layers[1].wGate), 10),
                ...rowsOf(v(w.layers[1].wUp), 10),
              ], [
                w.layers[1].wGate,
                w.layers[1].wUp,
              ]],
              [up.layers[1].wDown, rowsOf(v(w.layers[1].wDown), 6), [w.layers[1].wDown]],
            ];
            for (const [m, rows, sources] of want) {
              const got = await readMatrix(m, dt);
              const expect = padded(rows, m.stride);
              assert.equal(m.stride, Math.ceil(m.cols / 4) * 4, m.name);
              // f32 storage, and f16 storage of bf16/f16 sources (exactly representable here):
              // exact. f32 sources into f16: WGSL rounds to either neighbour, within one ULP.
              const exact = dt === "f32" || sources.every((s) => s.sourceDtype !== "f32");
              for (let i = 0; i < got.length; i++) {
                const tol = exact ? 0 : ulp16(expect[i]);
                assert.ok(
                  Math.abs(got[i] - expect[i]) <= tol,
                  `${m.name} ${dt} [${i}]: ${got[i]} vs ${expect[i]}`,
                );
              }
              // Parts: consecutive, each within the binding limit.
              const e = dt === "f16" ? 2 : 4;
              let next = 0;
              for (const part of m.parts) {
                assert.equal(part.rowStart, next);
                next += part.rows;
                if (limit) {
                  assert.ok(
                    part.rows * m.stride * e <= limit,
                    `${m.name} part of ${part.rows} rows`,
                  );
                }
              }
              assert.equal(next, m.rows);
              if (limit) assert.ok(m.parts.length > 1, `${m.name} split under a ${limit} B limit`);
            }
            // Biases (f32) permuted like their rows; norms in the storage precision.
            const bias = new Float32Array(
              await readBuffer(gpu.device, up.layers[0].bqkv!.buffer, 32 * 4),
            );
            const bq = v(l0.bq!), bk = v(l0.bk!), bv = v(l0.bv!);
            const wantBias = [
              ...qOrder.flatMap((b) => [...bq.subarray(b * 4, b * 4 + 4)]),
              ...order.flatMap((b) => [...bk.subarray(b * 4, b * 4 + 4)]),
              ...order.flatMap((b) => [...bv.subarray(b * 4, b * 4 + 4)]),
            ];
            assert.deepEqual([...bias], wantBias);
            for (
              const part of [
                up.embedding,
                up.lmHead,
                ...up.layers.flatMap((l) => [l.wqkv, l.wo, l.wGateUp, l.wDown]),
              ]
            ) {
              for (const x of part.parts) x.tensor.buffer.destroy();
            }
          },
        );
      }
    }
  },
);

Deno.test("rowParts: fewest equal parts within the limit", () => {
  assert.deepEqual(rowParts(10, 4, 2, 1000), [{ rowStart: 0, rows: 10 }]);
  // 8 bytes a row, at most 3 rows a part: 4 parts of 3, 3, 3, 1.
  assert.deepEqual(rowParts(10, 4, 2, 24).map((p) => p.rows), [3, 3, 3, 1]);
  // Llama-3-8B's LM head in f16 under 128 MiB: 128256 rows of 8 KiB, 16384 rows a part at most.
  const head = rowParts(128256, 4096, 2, 128 << 20);
  assert.equal(head.length, 8);
  assert.ok(head.every((p) => p.rows <= 16384));
  assert.equal(head.reduce((a, p) => a + p.rows, 0), 128256);
});

Deno.test(
  "a lazily loaded bf16 checkpoint with split matrices equals the CPU reference",
  gpuTest,
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "zigzag_lazy_" });
    try {
      await writeFakeCheckpoint(dir, {
        preset: "llama3-8b",
        layers: 2,
        dtype: "bf16",
        seed: 5,
        overrides: {
          hidden_size: 64,
          num_attention_heads: 4,
          num_key_value_heads: 2,
          intermediate_size: 96,
          vocab_size: 300,
          max_position_embeddings: 128,
        },
      });
      const lazy = await loadModel(dir, { lazy: true });
      assert.ok("readRaw" in lazy.weights.tokenEmbedding, "weights stay on disk");
      // The CPU reference reads the same checkpoint onto the host (bf16 -> f32 is exact).
      const cpu = new CpuLlama(lazy.config, await hostWeights(lazy.weights as never));
      const prompt = [1, 17, 250, 3, 99, 4, 42];
      let want: Float32Array = new Float32Array();
      prompt.forEach((tok, i) => (want = cpu.forward(tok, i)));
      for (const precision of precisions) {
        // 16 KiB parts: the embedding and LM head (300 x 64) and gate|up split in 2 to 5 parts.
        const runner = await makeRunner(lazy, precision, plan(lazy.config, "full", 0, 1), {
          bindingLimit: 16384,
        });
        const seq = runner.cache.open()!;
        const got = await runner.prefill(seq, prompt, { temperature: 0 }, { readLogits: true });
        runner.cache.close(seq);
        runner.destroy();
        // As the random-model test in gpu_model_test.ts: 1e-3 in f32 (summation order), 5e-2
        // in f16 (weights and KV with 11-bit mantissas through 2 layers).
        const d = maxAbsDiff(got.logits!, want);
        assert.ok(d <= (precision === "f32" ? 1e-3 : 5e-2), `${precision}: max |diff| ${d}`);
      }
      lazy.close?.();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
