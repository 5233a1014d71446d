// Whole models with quantized weights (--weights q8_0 | q4_0): the GPU against the CPU reference
// running the same model with every matmul weight replaced by the CPU decoding of its GGUF
// blocks (model/gguf_blocks.ts), and the passkey model still finding its keys.

import assert from "node:assert/strict";
import { dequantizeRow, type GgmlType, quantizeQ4_0, quantizeQ8_0 } from "../model/gguf_blocks.ts";
import { loadModel } from "../model/load.ts";
import { randomModel, tinyConfig } from "../model/random.ts";
import type { HostTensor, ModelWeights } from "../model/types.ts";
import { cpuGreedy, CpuLlama } from "./reference/cpu_llama.ts";
import { asModel, gpuGreedy, gpuTest, makeRunner, maxAbsDiff, plan } from "./gpu_helpers.ts";

const FORMATS = ["q8_0", "q4_0"] as const;

/** Each row of a [rows, cols] tensor quantized and decoded back (what the GPU multiplies by). */
function roundTrip(t: HostTensor, format: (typeof FORMATS)[number]): HostTensor {
  const cols = t.shape[1];
  const type: GgmlType = format === "q8_0" ? "Q8_0" : "Q4_0";
  const quantize = format === "q8_0" ? quantizeQ8_0 : quantizeQ4_0;
  const data = new Float32Array(t.data.length);
  for (let r = 0; r < t.shape[0]; r++) {
    const row = t.data.subarray(r * cols, (r + 1) * cols);
    data.set(dequantizeRow(type, quantize(row), cols), r * cols);
  }
  return { ...t, data };
}

/** The weights the GPU holds with `--weights format`: the layers' matrices and the LM head
 * quantized (a tied head gets its own copy), the embedding and norms as they are. */
function asQuantized(w: ModelWeights, format: (typeof FORMATS)[number]): ModelWeights {
  return {
    tokenEmbedding: w.tokenEmbedding,
    finalNorm: w.finalNorm,
    lmHead: roundTrip(w.lmHead, format),
    layers: w.layers.map((l) => ({
      ...l,
      wq: roundTrip(l.wq, format),
      wk: roundTrip(l.wk, format),
      wv: roundTrip(l.wv, format),
      wo: roundTrip(l.wo, format),
      wGate: roundTrip(l.wGate, format),
      wUp: roundTrip(l.wUp, format),
      wDown: roundTrip(l.wDown, format),
    })),
  };
}

Deno.test(
  "quantized weights: GPU forward equals the CPU reference on the decoded blocks",
  gpuTest,
  async (t) => {
    // Every matmul dimension a multiple of 32 (dim 64, q 64, kv 32, hidden 160), so every matrix
    // is quantized; one tied and one untied head.
    const variants = {
      "gqa tied": tinyConfig({ nLayers: 2, maxSeqLen: 256 }),
      "untied head_dim 32": tinyConfig({
        nLayers: 2,
        maxSeqLen: 256,
        nHeads: 2,
        nKvHeads: 1,
        headDim: 32,
        tiedEmbeddings: false,
      }),
    };
    for (const [name, config] of Object.entries(variants)) {
      const weights = randomModel(config, 31);
      const prompt = Array.from({ length: 29 }, (_, i) => (i * 17 + 2) % config.vocabSize);
      for (const format of FORMATS) {
        await t.step(`${name} ${format}`, async () => {
          const qw = asQuantized(weights, format);
          const cpu = new CpuLlama(config, qw);
          const { first, tokens } = cpuGreedy(cpu, prompt, 32);
          // How far quantization moves the logits from the f32 model's.
          const exactFirst = cpuGreedy(new CpuLlama(config, weights), prompt, 1).first;

          const runner = await makeRunner(
            asModel(config, weights),
            "f32",
            plan(config, "full", 0, 1),
            {
              chunk: 16,
              weights: format,
            },
          );
          try {
            const g = await gpuGreedy(runner, prompt, 32);
            // The same decoded weights, f32 arithmetic in another order: the f32 tolerance of
            // the unquantized test (1e-3 on logits of magnitude 1-5).
            const d = maxAbsDiff(g.logits, first);
            assert.ok(d <= 1e-3, `prefill logits max |diff| ${d}`);
            assert.deepEqual(g.tokens, tokens);
            const dq = maxAbsDiff(first, exactFirst);
            assert.ok(dq > 10 * Math.max(d, 1e-4), `quantization moved the logits by ${dq} only`);
          } finally {
            runner.destroy();
          }
        });
      }
    }
  },
);

Deno.test(
  "quantized weights under a duo plan: reordered heads move whole blocks",
  gpuTest,
  async (t) => {
    // head_dim 32: a head is one block of each row of wo, so the cache-order reorder of a duo
    // layer (its retrieval head 1 first) moves whole blocks and their scales; the GPU must equal
    // the CPU reference on the original matrices' decoded blocks under the same mask.
    const config = tinyConfig({ nLayers: 2, maxSeqLen: 256, nHeads: 4, nKvHeads: 2, headDim: 32 });
    const weights = randomModel(config, 41);
    const duo = plan(config, "duo", 2, 6, [[1], [0]]);
    const prompt = Array.from({ length: 40 }, (_, i) => (i * 13 + 5) % config.vocabSize);
    for (const format of FORMATS) {
      await t.step(format, async () => {
        const cpu = new CpuLlama(config, asQuantized(weights, format), duo);
        const logits = cpuGreedy(cpu, prompt, 1).first;
        const runner = await makeRunner(asModel(config, weights), "f32", duo, {
          chunk: 16,
          weights: format,
        });
        try {
          assert.deepEqual(runner.layout.kvHeadOrder(0), [1, 0]);
          const g = await gpuGreedy(runner, prompt, 1);
          const d = maxAbsDiff(g.logits, logits);
          assert.ok(d <= 1e-3, `max |diff| ${d}`);
        } finally {
          runner.destroy();
        }
      });
    }
  },
);

Deno.test("passkey-llama finds its keys with q8_0 and q4_0 weights", gpuTest, async (t) => {
  const m = await loadModel("../shared/models/passkey-llama");
  const golden = JSON.parse(
    await Deno.readTextFile("../shared/models/passkey-llama/golden_streaming.json"),
  );
  const entries = golden.prompts.filter((e: { name: string }) => e.name.startsWith("passkey"));
  const dec = (ids: number[]) =>
    new TextDecoder().decode(new Uint8Array(ids.filter((i) => i < 256)));
  for (const format of FORMATS) {
    await t.step(format, async () => {
      const runner = await makeRunner(m, "f32", plan(m.config, "full", 0, 1), {
        chunk: 128,
        maxSeqLen: 2048,
        weights: format,
      });
      try {
        // One prompt: the kernels are checked above, this asks only that the model still works.
        for (const e of entries.slice(0, 1)) {
          const g = await gpuGreedy(runner, e.input_ids, 12);
          const key = e.prompt.match(/pass key is (\d+)/)[1];
          assert.ok(
            dec(g.tokens).startsWith(` ${key}`),
            `${e.name} ${format}: ${JSON.stringify(dec(g.tokens))} (key ${key})`,
          );
        }
      } finally {
        runner.destroy();
      }
    });
  }
});
