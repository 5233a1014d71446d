// Failing loudly: a buffer over the adapter's binding limit is refused before anything is built,
// naming the tensor and the limit (weight matrices are split into parts instead); GPU validation errors become exceptions; the CLI exits non-zero
// with one line instead of printing tokens.

import assert from "node:assert/strict";
import {
  checkBufferPlan,
  GpuLimitError,
  GpuValidationError,
  withValidation,
} from "../gpu/limits.ts";
import { runnerBuffers } from "../gpu/runner.ts";
import { runnerShape } from "../engine/runners.ts";
import { writeFakeCheckpoint } from "../model/fake_checkpoint.ts";
import { randomModel, tinyConfig } from "../model/random.ts";
import { argmax, CpuLlama } from "./reference/cpu_llama.ts";
import { asModel, gpu, gpuTest, makeRunner, maxAbsDiff, plan } from "./gpu_helpers.ts";

const LIMITS = {
  maxBufferSize: 1 << 30,
  maxStorageBufferBindingSize: 128 << 20,
} as GPUSupportedLimits;

Deno.test("checkBufferPlan names every buffer over a limit", () => {
  checkBufferPlan(LIMITS, [{ name: "x", bytes: 128 << 20, bound: true }]); // exactly the limit
  assert.throws(
    () =>
      checkBufferPlan(LIMITS, [
        { name: "small", bytes: 1 << 20, bound: true },
        { name: "embed", bytes: (128 << 20) + 4, bound: true },
        { name: "windowed", bytes: 512 << 20, bound: false },
        { name: "huge", bytes: (1 << 30) + 4, bound: false },
      ]),
    (e: Error) =>
      e instanceof GpuLimitError && /2 buffer\(s\)/.test(e.message) &&
      /embed needs one 128\.0 MiB binding, over maxStorageBufferBindingSize \(128\.0 MiB\)/.test(
        e.message,
      ) && /huge needs 1024\.0 MiB, over maxBufferSize/.test(e.message) &&
      !/small|windowed/.test(e.message),
  );
});

Deno.test("validation errors become exceptions", gpuTest, async () => {
  const bad = () =>
    gpu.device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE });
  await assert.rejects(
    withValidation(gpu.device, "making a bad buffer", bad),
    (e: Error) => e instanceof GpuValidationError && /making a bad buffer/.test(e.message),
  );
  // Outside any scope: recorded, then thrown by the next check (the runner's readbacks).
  bad();
  await gpu.device.queue.onSubmittedWorkDone();
  await new Promise((r) => setTimeout(r, 20));
  assert.throws(() => gpu.validation.check("decode"), GpuValidationError);
  gpu.validation.check("decode"); // once reported, cleared
});

/** Runs `deno task generate`'s entry point with these flags; its exit code and output. */
async function generateCli(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "cli/generate.ts", ...args],
    cwd: new URL("..", import.meta.url),
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr).trim() };
}

// vocab 16,500 x dim 4096 in f16 is 135,168,000 bytes: just over llvmpipe's 128 MiB binding.
const BIG = { vocabSize: 16500, dim: 4096, nHeads: 32, nKvHeads: 8, headDim: 128, hiddenDim: 64 };

Deno.test(
  "an embedding and LM head larger than one binding are split, and match the CPU reference",
  gpuTest,
  async () => {
    if (!gpu.hasF16) return;
    const config = tinyConfig({ ...BIG, nLayers: 1, tiedEmbeddings: true, maxSeqLen: 64 });
    const weights = randomModel(config, 1, { scale: 0.02 });
    const model = asModel(config, weights);
    const runner = await makeRunner(model, "f16", plan(config, "full", 4, 16), { maxSeqLen: 64 });
    const prompt = [1, 16499, 8300, 5, 16000];
    const seq = runner.cache.open()!;
    const got = await runner.prefill(seq, prompt, { temperature: 0 }, { readLogits: true });
    runner.cache.close(seq);
    runner.destroy();
    const cpu = new CpuLlama(config, weights);
    let want: Float32Array = new Float32Array();
    prompt.forEach((tok, i) => (want = cpu.forward(tok, i)));
    // Token 16499 and 16000 live in the table's second part on an adapter that binds 128 MiB;
    // logits past row ~16384 come from the LM head's second part. f16 weights (relative 2^-11)
    // through one layer and dot products of length 4096: measured ~2e-3 on logits of ~0.3; the
    // bound of 5e-2 is the random-model test's.
    const d = maxAbsDiff(got.logits!, want);
    assert.ok(d <= 5e-2, `max |diff| ${d}`);
    assert.equal(argmax(got.logits!), argmax(want));
  },
);

Deno.test("generate exits 1 with one line when a buffer does not fit", gpuTest, async () => {
  // A prefill chunk of 8192 rows makes the q|k|v activation 8192 x 6144 x 4 = 192 MiB.
  if (8192 * 6144 * 4 <= gpu.limits.maxStorageBufferBindingSize) return;
  const dir = await Deno.makeTempDir({ prefix: "zigzag_big_" });
  try {
    await writeFakeCheckpoint(dir, {
      preset: "llama3-8b",
      layers: 1,
      overrides: {
        vocab_size: 512,
        intermediate_size: 64,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
      },
    });
    const out = await generateCli([
      "--model",
      dir,
      "--prompt-ids",
      "1,2,3",
      "--max-tokens",
      "2",
      "--chunk",
      "8192",
      "--json",
    ]);
    assert.equal(out.code, 1, out.stderr);
    assert.equal(out.stdout, "", "no output on failure");
    const lines = out.stderr.split("\n").filter((l) => l.startsWith("error:"));
    assert.equal(lines.length, 1, out.stderr);
    assert.match(lines[0], /activation qkv \(8192 rows.*--chunk\).*maxStorageBufferBindingSize/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("generate refuses a --max-model-len the KV cache cannot hold", gpuTest, async () => {
  const stories = decodeURIComponent(
    new URL("../../shared/models/stories260K", import.meta.url).pathname,
  );
  const out = await generateCli([
    "--model",
    stories,
    "--prompt-ids",
    "1,2",
    "--max-tokens",
    "2",
    "--precision",
    "f32",
    "--kv-cache-mb",
    "1",
    "--max-model-len",
    "4096",
  ]);
  assert.equal(out.code, 1, out.stderr);
  // stories260K: 5 layers x 4 KV heads x head_dim 8, K and V in f32: a 16-token page is
  // 16 * 2 * 160 * 4 = 20,480 bytes, so 1 MiB holds 51 pages = 816 tokens.
  assert.match(
    out.stderr,
    /--max-model-len 4096: .* holds at most 816 tokens .*--max-model-len 816/,
  );
});

Deno.test("runnerBuffers lists every activation the runner binds whole", () => {
  // attn [rows, nHeads * headDim] and x_final [batch, dim] besides x, qkv, gate_up and logits.
  const c = tinyConfig({ nLayers: 1, dim: 64, nHeads: 4, nKvHeads: 2, headDim: 16 });
  const p = plan(c, "full", 0, 1);
  const shape = runnerShape(c, p, { precision: "f32", prefillChunk: 48, maxBatch: 3 }, LIMITS);
  const bytes = new Map(
    runnerBuffers(c, { precision: "f32", ...shape }, LIMITS).map((
      b,
    ) => [b.name.replace(/ \(.*$/, ""), b.bytes]),
  );
  assert.equal(bytes.get("activation attn"), 48 * 4 * 16 * 4);
  assert.equal(bytes.get("activation x_final"), 3 * 64 * 4);
  assert.equal(bytes.get("activation x"), 48 * 64 * 4);
  assert.equal(bytes.get("activation logits"), 3 * c.vocabSize * 4);
});
