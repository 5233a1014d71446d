// Failing loudly: a buffer over the adapter's binding limit is refused before anything is built,
// naming the tensor and the limit; GPU validation errors become exceptions; the CLI exits non-zero
// with one line instead of printing tokens.

import assert from "node:assert/strict";
import {
  checkBufferPlan,
  GpuLimitError,
  GpuValidationError,
  withValidation,
} from "../gpu/limits.ts";
import { writeFakeCheckpoint } from "../model/fake_checkpoint.ts";
import { randomModel, tinyConfig } from "../model/random.ts";
import { asModel, gpu, gpuTest, makeRunner, plan } from "./gpu_helpers.ts";

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
  "a runner whose embedding exceeds one binding is refused, naming it",
  gpuTest,
  async () => {
    if (!gpu.hasF16) return;
    const config = tinyConfig({ ...BIG, nLayers: 1, tiedEmbeddings: true, maxSeqLen: 64 });
    const model = asModel(config, randomModel(config, 1, { scale: 0.02 }));
    const bytes = BIG.vocabSize * BIG.dim * 2;
    const p = makeRunner(model, "f16", plan(config, "full", 4, 16), { maxSeqLen: 64 });
    if (bytes > gpu.limits.maxStorageBufferBindingSize) {
      await assert.rejects(
        p,
        (e: Error) =>
          e instanceof GpuLimitError &&
          /embed \(token embedding\) needs one 128\.9 MiB/.test(e.message) &&
          /maxStorageBufferBindingSize/.test(e.message),
      );
    } else {
      (await p).destroy(); // an adapter that binds it builds it
    }
  },
);

Deno.test("generate exits 1 with one line when a tensor does not fit", gpuTest, async () => {
  if (!gpu.hasF16 || BIG.vocabSize * BIG.dim * 2 <= gpu.limits.maxStorageBufferBindingSize) return;
  const dir = await Deno.makeTempDir({ prefix: "zigzag_big_" });
  try {
    await writeFakeCheckpoint(dir, {
      preset: "llama3-8b",
      layers: 1,
      overrides: {
        vocab_size: BIG.vocabSize,
        intermediate_size: BIG.hiddenDim,
        max_position_embeddings: 64,
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
      "--precision",
      "f16",
      "--json",
    ]);
    assert.equal(out.code, 1, out.stderr);
    assert.equal(out.stdout, "", "no output on failure");
    const lines = out.stderr.split("\n").filter((l) => l.startsWith("error:"));
    assert.equal(lines.length, 1, out.stderr);
    assert.match(lines[0], /embed \(token embedding\).*maxStorageBufferBindingSize/);
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
