// Whole models over quantized KV caches (--kv-dtype int8 | int4): the GPU against the CPU
// reference holding its cache through the same quantizer (tests/kv_quant_reference.ts), and the
// passkey model still finding every key that full attention finds.

import assert from "node:assert/strict";
import { loadModel } from "../model/load.ts";
import { randomModel, tinyConfig } from "../model/random.ts";
import { cpuGreedy, CpuLlama } from "./reference/cpu_llama.ts";
import {
  asModel,
  gpuGreedy,
  gpuTest,
  GREEDY,
  makeRunner,
  maxAbsDiff,
  plan,
} from "./gpu_helpers.ts";

const QUANTIZED = ["int8", "int4"] as const;

Deno.test(
  "quantized KV: GPU forward equals the CPU reference with the same quantizer",
  gpuTest,
  async (t) => {
    const variants = {
      "gqa head_dim 16": tinyConfig({ nLayers: 2, maxSeqLen: 256 }),
      "head_dim 64": tinyConfig({
        nLayers: 2,
        maxSeqLen: 256,
        dim: 128,
        nHeads: 2,
        nKvHeads: 1,
        headDim: 64,
      }),
    };
    const CHUNK = 5;
    for (const [name, config] of Object.entries(variants)) {
      const weights = randomModel(config, 21);
      const model = asModel(config, weights);
      const prompt = Array.from({ length: 37 }, (_, i) => (i * 29 + 3) % config.vocabSize);
      for (const kv of QUANTIZED) {
        await t.step(`${name} ${kv}`, async () => {
          // Reference: prompt rows read keys of their own chunk of 5 as computed, earlier ones as
          // the cache stores them; each decode step reads every earlier key from the cache.
          const cpu = new CpuLlama(config, weights);
          cpu.kvDtype = kv;
          const { first: cpuFirst, tokens: cpuTokens } = cpuGreedy(cpu, prompt, 24, CHUNK);
          // One decode step after a prefill of the prompt and 9 tokens in chunks of 5, over a
          // quantized cache and over a full-precision one (how far quantization moves logits).
          const longer = [...prompt, ...cpuTokens.slice(0, 9)];
          const stepOf = (ref: CpuLlama) => {
            longer.forEach((tok, i) => ref.forward(tok, i, Math.floor(i / CHUNK) * CHUNK));
            return ref.forward(cpuTokens[9], longer.length);
          };
          const quantStep = stepOf(cpu);
          const exactStep = stepOf(new CpuLlama(config, weights));

          const runner = await makeRunner(model, "f32", plan(config, "full", 0, 1), {
            chunk: CHUNK,
            steps: 8,
            kvDtype: kv,
          });
          try {
            const { logits: first, tokens } = await gpuGreedy(runner, prompt, 24);
            // Same quantized entries, f32 arithmetic in another order: the f32 tolerance of the
            // full-precision test (1e-3 on logits of magnitude 1-5). A value whose f32 key lands
            // within an ULP of a rounding boundary could quantize one step apart; these seeds have
            // none, and the test would say so.
            const d = maxAbsDiff(first, cpuFirst);
            assert.ok(d <= 1e-3, `prefill in chunks of ${CHUNK}: max |diff| ${d}`);
            assert.deepEqual(tokens, cpuTokens);
            const seq = runner.cache.open()!;
            await runner.prefill(seq, [...prompt, ...cpuTokens.slice(0, 9)], GREEDY);
            const dec = await runner.decode([{ seq, token: cpuTokens[9], sampling: GREEDY }], 1, {
              readLogits: true,
            });
            const dd = maxAbsDiff(dec.logits![0], quantStep);
            assert.ok(dd <= 1e-3, `decode logits max |diff| ${dd}`);
            // ... while the quantization itself moves them far more than that tolerance.
            const dq = maxAbsDiff(quantStep, exactStep);
            assert.ok(dq > 10 * Math.max(dd, 1e-4), `quantization moved the logits by ${dq} only`);
            runner.cache.close(seq);
          } finally {
            runner.destroy();
          }
        });
      }
    }
  },
);

Deno.test("passkey-llama finds every key with int8 and int4 KV caches", gpuTest, async (t) => {
  const m = await loadModel("../shared/models/passkey-llama");
  const golden = JSON.parse(
    await Deno.readTextFile("../shared/models/passkey-llama/golden_streaming.json"),
  );
  const entries = golden.prompts.filter((e: { name: string }) => e.name.startsWith("passkey"));
  assert.ok(entries.length >= 2);
  const dec = (ids: number[]) =>
    new TextDecoder().decode(new Uint8Array(ids.filter((i) => i < 256)));
  for (const kv of QUANTIZED) {
    await t.step(kv, async () => {
      for (const mode of ["full", "zigzag"] as const) {
        // zigzag: every other layer streaming (sink 16 + recent 64), the rest retrieval.
        const layers = Array.from(
          { length: m.config.nLayers },
          (_, l) =>
            (mode === "zigzag" && l % 2 === 1 ? "streaming" : "retrieval") as
              | "streaming"
              | "retrieval",
        );
        const runner = await makeRunner(m, "f32", plan(m.config, mode, 16, 64, layers), {
          chunk: 128,
          maxSeqLen: 2048,
          kvDtype: kv,
        });
        try {
          for (const e of entries) {
            const g = await gpuGreedy(runner, e.input_ids, 16);
            const key = e.prompt.match(/pass key is (\d+)/)[1];
            assert.ok(
              dec(g.tokens).startsWith(` ${key}.`),
              `${e.name} ${mode} ${kv}: ${JSON.stringify(dec(g.tokens))} (key ${key})`,
            );
            // Full attention over an int8 cache: the very tokens of the f32 golden.
            if (mode === "full" && kv === "int8") {
              assert.deepEqual(g.tokens, e.greedy_32_ids.slice(0, 16), `${e.name}`);
            }
          }
        } finally {
          runner.destroy();
        }
      }
    });
  }
});
