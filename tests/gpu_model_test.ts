// Whole-model correctness on the GPU against independent references: llama2.c's own outputs
// (stories260K), the passkey model's PyTorch outputs, and the plain-TypeScript CPU reference
// on random-weight models of every supported variant.

import assert from "node:assert/strict";
import { loadModel } from "../model/load.ts";
import { randomModel, tinyConfig } from "../model/random.ts";
import type { ModelConfig } from "../model/types.ts";
import { argmax, CpuLlama } from "./reference/cpu_llama.ts";
import {
  asModel,
  gpuGreedy,
  gpuTest,
  GREEDY,
  makeRunner,
  maxAbsDiff,
  plan,
  precisions,
} from "./gpu_helpers.ts";

const STORIES = "../shared/models/stories260K";
const PASSKEY = "../shared/models/passkey-llama";

interface StoriesGolden {
  prompt: string;
  prompt_ids: number[];
  steps: number;
  next_ids: number[];
}

Deno.test("stories260K reproduces llama2.c's golden greedy outputs", gpuTest, async (t) => {
  const model = await loadModel(STORIES);
  const golden: StoriesGolden[] = JSON.parse(await Deno.readTextFile(`${STORIES}/golden.json`));
  for (const precision of precisions) {
    const runner = await makeRunner(model, precision, plan(model.config, "full", 0, 1), {
      chunk: 7,
      steps: 16,
    });
    await t.step(precision, async () => {
      let f16Whole = 0;
      for (const g of golden) {
        // next_ids[i] is the token at position i+1; prompt tokens are forced, then argmax.
        const want = g.next_ids.slice(g.prompt_ids.length - 1);
        const { tokens } = await gpuGreedy(runner, g.prompt_ids, want.length);
        let agree = 0;
        while (agree < want.length && tokens[agree] === want[agree]) agree++;
        if (Deno.env.get("ZIGZAG_TEST_VERBOSE")) {
          console.log(precision, g.prompt, agree, want.length);
        }
        if (precision === "f32") {
          // f32 must be exact: every token, including the final BOS (1) when run.c stopped on it.
          assert.deepEqual(tokens, want, `prompt "${g.prompt}"`);
        } else {
          // f16 weights and KV (activations and accumulation in f32). Measured on llvmpipe:
          // three prompts agree for their whole run (256, 252, 145 tokens) and "Tom and Lily"
          // for 122 of 242, where a near-tie in the argmax flips. Require the first 100 tokens
          // of every prompt (or all of a shorter run) and a whole-run match for two of four.
          assert.ok(agree >= Math.min(100, want.length), `"${g.prompt}": ${agree} agree`);
          if (agree === want.length) f16Whole++;
        }
      }
      if (precision === "f16") assert.ok(f16Whole >= 2, `${f16Whole} whole-run matches`);
    });
    runner.destroy();
  }
});

Deno.test("passkey-llama reproduces its PyTorch golden outputs", gpuTest, async (t) => {
  const model = await loadModel(PASSKEY);
  const golden = JSON.parse(await Deno.readTextFile(`${PASSKEY}/golden.json`));
  const entries = Array.isArray(golden) ? golden : golden.prompts ?? golden.entries;
  for (const precision of precisions) {
    const runner = await makeRunner(model, precision, plan(model.config, "full", 0, 1), {
      chunk: 128,
      steps: 16,
    });
    await t.step(precision, async () => {
      for (const g of entries) {
        const { logits, tokens } = await gpuGreedy(runner, g.prompt_ids, g.greedy_ids.length);
        const top: { id: number; logit: number }[] = g.first_step_top10.map(
          (e: { id?: number; token_id?: number; logit: number } | [number, number]) =>
            Array.isArray(e)
              ? { id: e[0], logit: e[1] }
              : { id: e.id ?? e.token_id!, logit: e.logit },
        );
        // f32: the golden logits are PyTorch f32 with a different summation order: 1e-3 absolute.
        // f16: weights and cache rounded to 11-bit mantissas: logits move by ~1e-2 (measured
        // 0.02 at most on these prompts); 0.05 bounds that with margin.
        const tol = precision === "f32" ? 1e-3 : 5e-2;
        for (const e of top) {
          assert.ok(
            Math.abs(logits[e.id] - e.logit) <= tol,
            `token ${e.id}: ${logits[e.id]} vs ${e.logit}`,
          );
        }
        if (precision === "f32") assert.deepEqual(tokens, g.greedy_ids);
        else assert.equal(tokens[0], g.greedy_ids[0]);
      }
    });
    runner.destroy();
  }
});

// Random-weight variants: MHA and GQA, both RoPE conventions, Qwen2 biases, tied and untied
// heads, Llama-3 frequency scaling.
const VARIANTS: Record<string, Partial<ModelConfig>> = {
  "mha interleaved untied": {
    nHeads: 4,
    nKvHeads: 4,
    ropeStyle: "interleaved",
    tiedEmbeddings: false,
  },
  "gqa half tied": { nHeads: 4, nKvHeads: 2, ropeStyle: "half", tiedEmbeddings: true },
  "qwen2 biases gqa": {
    architecture: "Qwen2ForCausalLM",
    nHeads: 6,
    nKvHeads: 2,
    dim: 48,
    hiddenDim: 100,
    qkvBias: true,
  },
  "llama3 scaling head_dim 64": {
    dim: 128,
    nHeads: 2,
    nKvHeads: 1,
    hiddenDim: 200,
    vocabSize: 300,
    ropeTheta: 500000,
    ropeScaling: {
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 64,
    },
  },
};

Deno.test("GPU forward equals the CPU reference on random models", gpuTest, async (t) => {
  for (const [name, overrides] of Object.entries(VARIANTS)) {
    const config = tinyConfig({ nLayers: 2, maxSeqLen: 256, ...overrides });
    const weights = randomModel(config, 7);
    const model = asModel(config, weights);
    const prompt = Array.from({ length: 37 }, (_, i) => (i * 31 + 5) % config.vocabSize);
    // CPU reference: prefill logits and 64 greedy tokens.
    const cpu = new CpuLlama(config, weights);
    let logits: Float32Array = new Float32Array();
    prompt.forEach((tok, i) => (logits = cpu.forward(tok, i)));
    const cpuFirst: Float32Array = logits;
    const cpuTokens = [argmax(logits)];
    const cpuStepLogits: Float32Array[] = [];
    while (cpuTokens.length < 64) {
      logits = cpu.forward(cpuTokens[cpuTokens.length - 1], prompt.length + cpuTokens.length - 1);
      cpuStepLogits.push(logits);
      cpuTokens.push(argmax(logits));
    }
    for (const precision of precisions) {
      await t.step(`${name} ${precision}`, async () => {
        // f32: same math, different summation order: 1e-3 absolute on logits of magnitude ~1-5.
        // f16: weights and KV stored with 11-bit mantissas (relative error 2^-11 each) through
        // 2 layers of dot products of length <= 200: measured <= 1.5e-2; bound 5e-2.
        const tol = precision === "f32" ? 1e-3 : 5e-2;
        for (const chunk of [64, 5]) {
          const runner = await makeRunner(model, precision, plan(config, "full", 0, 1), {
            chunk,
            steps: 8,
          });
          const { logits: first, tokens } = await gpuGreedy(runner, prompt, 64);
          const d = maxAbsDiff(first, cpuFirst);
          assert.ok(d <= tol, `prefill chunk ${chunk}: max |diff| ${d}`);
          if (precision === "f32") assert.deepEqual(tokens, cpuTokens, `chunk ${chunk}`);
          else assert.equal(tokens[0], cpuTokens[0]);
          // Decode logits too, at one step, fed the CPU's tokens.
          const seq = runner.cache.open()!;
          await runner.prefill(seq, [...prompt, ...cpuTokens.slice(0, 9)], GREEDY);
          const dec = await runner.decode([{ seq, token: cpuTokens[9], sampling: GREEDY }], 1, {
            readLogits: true,
          });
          const dd = maxAbsDiff(dec.logits![0], cpuStepLogits[9]);
          assert.ok(dd <= tol, `decode logits max |diff| ${dd}`);
          runner.cache.close(seq);
          runner.destroy();
        }
      });
    }
  }
});

Deno.test("batched decode equals each sequence decoded alone", gpuTest, async () => {
  const config = tinyConfig({ nLayers: 2, maxSeqLen: 256 });
  const model = asModel(config, randomModel(config, 11));
  const runner = await makeRunner(model, "f32", plan(config, "full", 0, 1), { maxBatch: 4 });
  const prompts = [3, 17, 40, 9].map((n, k) =>
    Array.from({ length: n }, (_, i) => (i * 7 + k * 13 + 1) % config.vocabSize)
  );
  const alone = [];
  for (const p of prompts) alone.push((await gpuGreedy(runner, p, 24)).tokens);
  const seqs = prompts.map(() => runner.cache.open()!);
  const out: number[][] = [];
  for (let i = 0; i < prompts.length; i++) {
    out.push([(await runner.prefill(seqs[i], prompts[i], GREEDY)).token]);
  }
  while (out[0].length < 24) {
    const d = await runner.decode(
      seqs.map((seq, i) => ({ seq, token: out[i][out[i].length - 1], sampling: GREEDY })),
      Math.min(8, 24 - out[0].length),
    );
    d.tokens.forEach((t, i) => out[i].push(...t));
  }
  assert.deepEqual(out, alone);
  for (const s of seqs) runner.cache.close(s);
  runner.destroy();
});

Deno.test(
  "evaluate returns final-norm hidden states and logits of chosen rows",
  gpuTest,
  async () => {
    const config = tinyConfig({ nLayers: 2, maxSeqLen: 256 });
    const weights = randomModel(config, 5);
    const runner = await makeRunner(asModel(config, weights), "f32", plan(config, "full", 0, 1), {
      chunk: 16,
      maxBatch: 2,
    });
    const toks = Array.from({ length: 40 }, (_, i) => (i * 11 + 3) % config.vocabSize);
    const rows = [0, 15, 16, 17, 39];
    const seq = runner.cache.open()!;
    const got = await runner.evaluate(seq, toks, rows);
    runner.cache.close(seq);
    const cpu = new CpuLlama(config, weights);
    for (let i = 0; i < toks.length; i++) {
      const logits = cpu.forward(toks[i], i);
      const k = rows.indexOf(i);
      if (k < 0) continue;
      assert.ok(maxAbsDiff(got.logits[k], logits) <= 1e-3, `row ${i} logits`);
      assert.ok(maxAbsDiff(got.hidden[k], cpu.hiddenAfterFinalNorm()) <= 1e-4, `row ${i} hidden`);
    }
    runner.destroy();
  },
);
