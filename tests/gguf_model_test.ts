// GGUF models (model/gguf_model.ts): stories260K written as GGUF files by the project's own
// writer (tests/gguf_writer.ts), in F32 and with its matrices in Q8_0 and Q4_0, read back with
// the file's own SentencePiece vocabulary. F32 must reproduce llama2.c's golden outputs; the
// quantized files must equal the CPU reference run on the same blocks decoded on the CPU.

import assert from "node:assert/strict";
import { BLOCK_FORMATS, quantizeQ4_0, quantizeQ8_0 } from "../model/gguf_blocks.ts";
import { quantRowWords } from "../gpu/kernels/matmul.ts";
import { weightBuffers } from "../gpu/weights.ts";
import { loadModel } from "../model/load.ts";
import type { HostTensor, LoadedModel, ModelConfig, ModelWeights } from "../model/types.ts";
import {
  type GgufWriteTensor,
  type GgufWriteValue,
  randomBlocks,
  withTempDir,
  writeGguf,
} from "./gguf_writer.ts";
import { Rng } from "./kernel_harness.ts";
import { readGguf } from "../model/gguf.ts";
import { ggufTokenizer } from "../model/gguf_model.ts";
import { HfTokenizer } from "../model/tokenizer_hf.ts";
import { dequantizeRow, type GgmlType } from "../model/gguf_blocks.ts";
import type { QuantFormat } from "../gpu/kernels/matmul.ts";
import { cpuGreedy, CpuLlama, ropeInvFreq as refInvFreq } from "./reference/cpu_llama.ts";
import { randomModel, tinyConfig } from "../model/random.ts";
import { gpuGreedy, gpuTest, makeRunner, maxAbsDiff, plan } from "./gpu_helpers.ts";
import { Llama2cTokenizer } from "../model/tokenizer_llama2c.ts";

const STORIES = "../shared/models/stories260K";

type Quant = "F32" | "Q8_0" | "Q4_0";

/** A tensor in `type` (matrices whose rows are whole blocks; others stay F32). */
function tensorOf(name: string, t: HostTensor, type: Quant): GgufWriteTensor {
  const dims = [...t.shape].reverse();
  const cols = dims[0];
  const q = t.shape.length === 2 && cols % 32 === 0 && type !== "F32" ? type : "F32";
  const data = q === "Q8_0"
    ? quantizeQ8_0(t.data)
    : q === "Q4_0"
    ? quantizeQ4_0(t.data)
    : new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  return { name, dims, type: BLOCK_FORMATS[q].id, data };
}

/** A llama model's tensors as GGUF writes them (norms and embedding F32, matrices in `type`,
 * the LM head when untied), and its `llama.*` metadata. */
function modelGguf(
  c: ModelConfig,
  w: ModelWeights,
  type: Quant,
  arch = "llama",
): { meta: [string, GgufWriteValue][]; tensors: GgufWriteTensor[] } {
  const meta: [string, GgufWriteValue][] = [
    ["general.architecture", { type: "string", value: arch }],
    [`${arch}.context_length`, { type: "u32", value: c.maxSeqLen }],
    [`${arch}.embedding_length`, { type: "u32", value: c.dim }],
    [`${arch}.block_count`, { type: "u32", value: c.nLayers }],
    [`${arch}.feed_forward_length`, { type: "u32", value: c.hiddenDim }],
    [`${arch}.attention.head_count`, { type: "u32", value: c.nHeads }],
    [`${arch}.attention.head_count_kv`, { type: "u32", value: c.nKvHeads }],
    [`${arch}.attention.layer_norm_rms_epsilon`, { type: "f32", value: c.normEps }],
    [`${arch}.rope.freq_base`, { type: "f32", value: c.ropeTheta }],
  ];
  const tensors = [tensorOf("token_embd.weight", w.tokenEmbedding, "F32")];
  w.layers.forEach((l, i) => {
    const p = `blk.${i}.`;
    tensors.push(
      tensorOf(p + "attn_norm.weight", l.attnNorm, type),
      tensorOf(p + "attn_q.weight", l.wq, type),
      tensorOf(p + "attn_k.weight", l.wk, type),
      tensorOf(p + "attn_v.weight", l.wv, type),
      tensorOf(p + "attn_output.weight", l.wo, type),
      tensorOf(p + "ffn_norm.weight", l.ffnNorm, type),
      tensorOf(p + "ffn_gate.weight", l.wGate, type),
      tensorOf(p + "ffn_up.weight", l.wUp, type),
      tensorOf(p + "ffn_down.weight", l.wDown, type),
    );
  });
  tensors.push(tensorOf("output_norm.weight", w.finalNorm, "F32"));
  if (w.lmHead !== w.tokenEmbedding) tensors.push(tensorOf("output.weight", w.lmHead, type));
  return { meta, tensors };
}

/** stories260K as a GGUF of `type`, with tok512 as its SentencePiece vocabulary. */
async function writeStories(path: string, m: LoadedModel, type: Quant, arch = "llama") {
  const tok = m.tokenizer as Llama2cTokenizer;
  const dec = new TextDecoder("utf-8", { fatal: true });
  const tokens = tok.pieces.map((p) => dec.decode(p).replaceAll(" ", "\u2581"));
  const { meta, tensors } = modelGguf(m.config, m.weights, type, arch);
  meta.push(
    ["tokenizer.ggml.model", { type: "string", value: "llama" }],
    ["tokenizer.ggml.tokens", { type: "array", elem: "string", value: tokens }],
    ["tokenizer.ggml.scores", { type: "array", elem: "f32", value: Array.from(tok.scores) }],
    ["tokenizer.ggml.bos_token_id", { type: "u32", value: 1 }],
    ["tokenizer.ggml.eos_token_id", { type: "u32", value: 2 }],
    ["tokenizer.chat_template", {
      type: "string",
      value: "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}",
    }],
  );
  await writeGguf(path, { metadata: meta, tensors });
}

interface StoriesGolden {
  prompt: string;
  prompt_ids: number[];
  next_ids: number[];
}

Deno.test(
  "GGUF: stories260K as F32 GGUF reproduces llama2.c's golden outputs",
  gpuTest,
  async () => {
    const src = await loadModel(STORIES);
    await withTempDir(async (dir) => {
      await writeStories(`${dir}/stories.gguf`, src, "F32");
      const m = await loadModel(`${dir}/stories.gguf`, { lazy: true });
      try {
        // The file stores eps as an f32 and names EOS 2 (llama2.c stops at BOS instead).
        const c = { ...m.config, eosIds: src.config.eosIds };
        assert.deepEqual(c, {
          ...src.config,
          architecture: "LlamaForCausalLM",
          normEps: Math.fround(src.config.normEps),
        });
        const golden: StoriesGolden[] = JSON.parse(
          await Deno.readTextFile(`${STORIES}/golden.json`),
        );
        for (const g of golden) {
          // The file's own vocabulary encodes as llama2.c's run.c does.
          assert.deepEqual(m.tokenizer!.encode(g.prompt), g.prompt_ids, g.prompt);
          assert.equal(
            m.tokenizer!.decode(g.prompt_ids.slice(1)),
            src.tokenizer!.decode(g.prompt_ids.slice(1)),
          );
        }
        assert.deepEqual(m.tokenizer!.eosIds, [2]);
        assert.equal(
          m.tokenizer!.applyChatTemplate!([{ role: "user", content: "hi" }], true),
          "[user] hi\n",
        );
        const runner = await makeRunner(m, "f32", plan(m.config, "full", 0, 1), { chunk: 7 });
        try {
          for (const g of golden.slice(0, 2)) {
            const want = g.next_ids.slice(g.prompt_ids.length - 1);
            const { tokens } = await gpuGreedy(runner, g.prompt_ids, want.length);
            assert.deepEqual(tokens, want, g.prompt);
          }
        } finally {
          runner.destroy();
        }
      } finally {
        m.close?.();
      }
    });
  },
);

Deno.test("GGUF: Q8_0 and Q4_0 files run their own blocks", gpuTest, async (t) => {
  const src = await loadModel(STORIES);
  await withTempDir(async (dir) => {
    for (const type of ["Q8_0", "Q4_0"] as const) {
      await t.step(type, async () => {
        const path = `${dir}/stories-${type}.gguf`;
        await writeStories(path, src, type);
        // The CPU reference: the same file read whole, every block decoded by gguf_blocks.ts.
        const host = await loadModel(path);
        const lazy = await loadModel(path, { lazy: true });
        try {
          // q, k, v, o, gate and up rows are 64 wide (whole blocks); down's 172 are not (F32).
          const format = type === "Q8_0" ? "q8_0" : "q4_0";
          const down = lazy.weights.layers[0].wDown;
          assert.ok(!("blocks" in down) || down.blocks === undefined, "ffn_down stays F32");
          const gate = lazy.weights.layers[0].wGate;
          assert.ok("blocks" in gate && gate.blocks?.type === format, "ffn_gate has its blocks");
          // "native": each matrix in its tensors' own format; the tied F32 head stays the
          // embedding (no copy).
          const pl = plan(lazy.config, "full", 0, 1);
          const runnerOf = (weights: "native" | "float") =>
            makeRunner(lazy, "f32", pl, { chunk: 8, weights });
          const probe = await runnerOf("native");
          const bytes = new Map(
            weightBuffers(lazy.config, "f32", Infinity, true, "native", {
              weights: lazy.weights,
              layout: probe.layout,
            }).map((b) => [b.name.replace(/ \(.*\)$/, ""), b.bytes]),
          );
          probe.destroy();
          const c = lazy.config;
          assert.equal(bytes.get("wqkv L0"), (c.dim + 2 * 4 * 8) * quantRowWords(format, 64) * 4);
          assert.equal(bytes.get("w_gate_up L0"), 2 * 172 * quantRowWords(format, 64) * 4);
          assert.equal(bytes.get("w_down L0"), 64 * 172 * 4);
          assert.equal(bytes.has("lm_head"), false);
          const prompt = host.tokenizer!.encode("Once upon a time, there was a little");
          const cpu = new CpuLlama(host.config, host.weights);
          const { first, tokens } = cpuGreedy(cpu, prompt, 40);
          const runner = await runnerOf("native");
          try {
            const g = await gpuGreedy(runner, prompt, 40);
            // Same decoded weights (d * q is exact in f32), another summation order: 1e-3.
            const d = maxAbsDiff(g.logits, first);
            assert.ok(d <= 1e-3, `${type}: prefill logits max |diff| ${d}`);
            assert.deepEqual(g.tokens, tokens);
          } finally {
            runner.destroy();
          }
          // --weights float: the blocks decoded on the host (the path a Q4_K_M file's mixed
          // q|k|v takes on its way to q8_0).
          const decoded = await runnerOf("float");
          try {
            const g = await gpuGreedy(decoded, prompt, 1);
            const d = maxAbsDiff(g.logits, first);
            assert.ok(d <= 1e-3, `${type} decoded on the host: max |diff| ${d}`);
          } finally {
            decoded.destroy();
          }
        } finally {
          lazy.close?.();
        }
      });
    }
  });
});

Deno.test("GGUF: unsupported architectures and vocabularies are named", async () => {
  const src = await loadModel(STORIES);
  await withTempDir(async (dir) => {
    await writeStories(`${dir}/gpt.gguf`, src, "F32", "gpt2");
    await assert.rejects(
      () => loadModel(`${dir}/gpt.gguf`),
      /unsupported GGUF architecture "gpt2"; supported: llama/,
    );
  });
});

Deno.test(
  "GGUF: a Q4_K_M-style mix runs its K-quant blocks, a mixed q|k|v as q8_0",
  gpuTest,
  async () => {
    // 256-wide rows (whole super-blocks): q, k Q4_K and v Q6_K (so the fused q|k|v mixes and is
    // requantized to q8_0 from its decoded values), o Q5_K, gate and up Q4_K, down Q5_0 (rows of
    // 512), the head Q6_K; embedding and norms F32.
    const dim = 256, hidden = 512, heads = 4, kvHeads = 2, hd = 64, vocab = 96;
    const rng = new Rng(77);
    const f32 = (name: string, dims: number[], lo: number, hi: number): GgufWriteTensor => {
      const x = rng.array(dims.reduce((a, b) => a * b, 1), lo, hi);
      return { name, dims, type: 0, data: new Uint8Array(x.buffer) };
    };
    const quant = (name: string, dims: number[], f: QuantFormat): GgufWriteTensor => ({
      name,
      dims,
      type: BLOCK_FORMATS[f.toUpperCase() as GgmlType].id,
      data: randomBlocks(f, dims[0] * dims[1], rng),
    });
    const tensors = [
      f32("token_embd.weight", [dim, vocab], -1, 1),
      f32("blk.0.attn_norm.weight", [dim], 0.9, 1.1),
      quant("blk.0.attn_q.weight", [dim, heads * hd], "q4_k"),
      quant("blk.0.attn_k.weight", [dim, kvHeads * hd], "q4_k"),
      quant("blk.0.attn_v.weight", [dim, kvHeads * hd], "q6_k"),
      quant("blk.0.attn_output.weight", [heads * hd, dim], "q5_k"),
      f32("blk.0.ffn_norm.weight", [dim], 0.9, 1.1),
      quant("blk.0.ffn_gate.weight", [dim, hidden], "q4_k"),
      quant("blk.0.ffn_up.weight", [dim, hidden], "q4_k"),
      quant("blk.0.ffn_down.weight", [hidden, dim], "q5_0"),
      f32("output_norm.weight", [dim], 0.9, 1.1),
      quant("output.weight", [dim, vocab], "q6_k"),
    ];
    const u32 = (value: number): GgufWriteValue => ({ type: "u32", value });
    await withTempDir(async (dir) => {
      const path = `${dir}/mix.gguf`;
      await writeGguf(path, {
        metadata: [
          ["general.architecture", { type: "string", value: "llama" }],
          ["llama.context_length", u32(128)],
          ["llama.embedding_length", u32(dim)],
          ["llama.block_count", u32(1)],
          ["llama.feed_forward_length", u32(hidden)],
          ["llama.attention.head_count", u32(heads)],
          ["llama.attention.head_count_kv", u32(kvHeads)],
          ["tokenizer.ggml.model", { type: "string", value: "llama" }],
          ["tokenizer.ggml.tokens", {
            type: "array",
            elem: "string",
            value: Array.from({ length: vocab }, (_, i) => `t${i}`),
          }],
        ],
        tensors,
      });
      const host = await loadModel(path);
      const lazy = await loadModel(path, { lazy: true });
      try {
        // The reference: every tensor decoded (gguf_blocks.ts), and q|k|v through Q8_0 as well.
        const requant = (t: typeof host.weights.layers[0]["wq"]) => {
          const blocks = quantizeQ8_0(t.data);
          return { ...t, data: dequantizeRow("Q8_0", blocks, t.data.length) };
        };
        const l0 = host.weights.layers[0];
        const cpu = new CpuLlama(host.config, {
          ...host.weights,
          layers: [{ ...l0, wq: requant(l0.wq), wk: requant(l0.wk), wv: requant(l0.wv) }],
        });
        const prompt = Array.from({ length: 21 }, (_, i) => (i * 7 + 3) % vocab);
        const logits = cpuGreedy(cpu, prompt, 1).first;
        const runner = await makeRunner(lazy, "f32", plan(lazy.config, "full", 0, 1), {
          chunk: 8,
          weights: "native",
        });
        try {
          const formats = new Map(
            weightBuffers(lazy.config, "f32", Infinity, false, "native", {
              weights: lazy.weights,
              layout: runner.layout,
            }).map((b) => [b.name.replace(/ \(.*\)$/, ""), b.bytes]),
          );
          // Bytes say which format each matrix took.
          assert.equal(
            formats.get("wqkv L0"),
            (heads + 2 * kvHeads) * hd * (dim / 4 + dim / 64) * 4,
          );
          assert.equal(formats.get("wo L0"), dim * (heads * hd / 256) * 44 * 4);
          assert.equal(formats.get("w_gate_up L0"), 2 * hidden * (dim / 256) * 36 * 4);
          assert.equal(
            formats.get("w_down L0"),
            dim * (hidden / 8 + hidden / 32 + hidden / 64) * 4,
          );
          assert.equal(formats.get("lm_head"), vocab * (dim / 256) * 53 * 4);
          const g = await gpuGreedy(runner, prompt, 1);
          // Decoded K-quant values are exact in f32 but for the final subtraction (Q4_K/Q5_K:
          // d sc q - dmin m, one rounding, the same on both sides), so the f32 tolerance holds.
          const d = maxAbsDiff(g.logits, logits);
          assert.ok(d <= 1e-3, `max |diff| ${d}`);
        } finally {
          runner.destroy();
        }
      } finally {
        lazy.close?.();
      }
    });
  },
);

Deno.test("GGUF: a byte-level BPE vocabulary (gpt2, pre smollm) encodes as its tokenizer.json", async () => {
  const dir = "../shared/tokenizers/smollm2-135m";
  const tj = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer.json`));
  const ref = await HfTokenizer.load(dir);
  const tokens: string[] = [];
  for (const [t, id] of Object.entries(tj.model.vocab as Record<string, number>)) tokens[id] = t;
  const special = new Set(
    tj.added_tokens.filter((a: { special: boolean }) => a.special).map(
      (a: { id: number }) => a.id,
    ),
  );
  await withTempDir(async (tmp) => {
    const path = `${tmp}/vocab.gguf`;
    const template =
      "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n" +
      "{% endfor %}";
    await writeGguf(path, {
      metadata: [
        ["tokenizer.ggml.model", { type: "string", value: "gpt2" }],
        ["tokenizer.ggml.pre", { type: "string", value: "smollm" }],
        ["tokenizer.ggml.tokens", { type: "array", elem: "string", value: tokens }],
        ["tokenizer.ggml.token_type", {
          type: "array",
          elem: "i32",
          value: tokens.map((_, i) => (special.has(i) ? 3 : 1)),
        }],
        ["tokenizer.ggml.merges", {
          type: "array",
          elem: "string",
          value: tj.model.merges.map((
            m: string | string[],
          ) => (Array.isArray(m) ? m.join(" ") : m)),
        }],
        ["tokenizer.ggml.eos_token_id", { type: "u32", value: 2 }],
        ["tokenizer.chat_template", { type: "string", value: template }],
      ],
    });
    const tok = ggufTokenizer(await readGguf(path), { bosId: -1, eosIds: [2] })!;
    const texts = [
      "Hello, world! The year 2026 has 365 days.",
      "  spaces\tand\nnewlines  \n\n",
      "naïve café — 日本語のテキスト 🙂",
      "<|im_start|>user\nhi<|im_end|>",
      "don't they'll I've 12345678",
    ];
    for (const t of texts) {
      const ids = tok.encode(t);
      assert.deepEqual(ids, ref.encode(t), JSON.stringify(t));
      assert.equal(tok.decode(ids), ref.decode(ids));
    }
    assert.deepEqual(tok.eosIds, [2]);
    assert.equal(
      tok.applyChatTemplate!([{ role: "user", content: "hi" }], false),
      "<|im_start|>user\nhi<|im_end|>\n",
    );
    // Llama 3's pre-tokenizer ("llama-bpe") with add_bos_token: BOS first, then (on text whose
    // words split alike under both regexes) the same pieces.
    await writeGguf(path, {
      metadata: [
        ["tokenizer.ggml.model", { type: "string", value: "gpt2" }],
        ["tokenizer.ggml.pre", { type: "string", value: "llama-bpe" }],
        ["tokenizer.ggml.tokens", { type: "array", elem: "string", value: tokens }],
        ["tokenizer.ggml.merges", {
          type: "array",
          elem: "string",
          value: tj.model.merges.map((
            m: string | string[],
          ) => (Array.isArray(m) ? m.join(" ") : m)),
        }],
        ["tokenizer.ggml.bos_token_id", { type: "u32", value: 1 }],
        ["tokenizer.ggml.add_bos_token", { type: "bool", value: true }],
      ],
    });
    const l3 = ggufTokenizer(await readGguf(path), { bosId: 1, eosIds: [] })!;
    const plain = "The cat sat on the mat, and the dog barked at it.";
    assert.deepEqual(l3.encode(plain), [1, ...ref.encode(plain)]);
    assert.deepEqual(l3.encode(plain, { addSpecialTokens: false }), ref.encode(plain));
    assert.equal(l3.bosId, 1);
    // A pre-tokenizer zigzag does not rebuild is named, with the way out.
    await writeGguf(path, {
      metadata: [
        ["tokenizer.ggml.model", { type: "string", value: "gpt2" }],
        ["tokenizer.ggml.pre", { type: "string", value: "qwen2" }],
        ["tokenizer.ggml.tokens", { type: "array", elem: "string", value: ["a", "b"] }],
      ],
    });
    const f = await readGguf(path);
    assert.throws(() => ggufTokenizer(f, { bosId: -1, eosIds: [] }), /"qwen2" .*--tokenizer/);
  });
});

Deno.test(
  "GGUF: rope_freqs.weight factors run as the Llama-3 RoPE scaling they encode",
  gpuTest,
  async () => {
    // A Llama-3-scaled random model; the file stores its scaling as llama.cpp's converter does,
    // one factor per pair (scaled inv_freq = inv_freq / factor), and no rope_scaling metadata.
    const scaled = tinyConfig({
      nLayers: 2,
      maxSeqLen: 256,
      dim: 128,
      nHeads: 2,
      nKvHeads: 1,
      headDim: 64,
      ropeStyle: "interleaved",
      ropeTheta: 500000,
      tiedEmbeddings: false,
      ropeScaling: {
        factor: 8,
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalMaxPositionEmbeddings: 64,
      },
    });
    const weights = randomModel(scaled, 53);
    const plain = refInvFreq({ ...scaled, ropeScaling: null });
    const withScaling = refInvFreq(scaled);
    const factors = Float32Array.from(plain, (v, i) => v / withScaling[i]);
    assert.ok(factors.some((f) => f > 7) && factors.some((f) => f === 1), "both ends of the ramp");
    const { meta, tensors } = modelGguf(scaled, weights, "F32");
    tensors.push({
      name: "rope_freqs.weight",
      dims: [32],
      type: 0,
      data: new Uint8Array(factors.buffer),
    });
    meta.push(
      ["tokenizer.ggml.model", { type: "string", value: "llama" }],
      ["tokenizer.ggml.tokens", {
        type: "array",
        elem: "string",
        value: Array.from({ length: scaled.vocabSize }, (_, i) => `t${i}`),
      }],
    );
    await withTempDir(async (dir) => {
      await writeGguf(`${dir}/l3.gguf`, { metadata: meta, tensors });
      const m = await loadModel(`${dir}/l3.gguf`, { lazy: true });
      try {
        assert.equal(m.config.ropeScaling, null);
        assert.deepEqual(m.config.ropeFreqFactors, Array.from(factors));
        // The reference runs the config's rope_scaling (Hugging Face's formula), not the factors.
        const cpu = new CpuLlama(scaled, weights);
        const prompt = Array.from({ length: 90 }, (_, i) => (i * 11 + 1) % scaled.vocabSize);
        const logits = cpuGreedy(cpu, prompt, 1).first;
        const runner = await makeRunner(m, "f32", plan(m.config, "full", 0, 1), { chunk: 32 });
        try {
          const g = await gpuGreedy(runner, prompt, 1);
          const d = maxAbsDiff(g.logits, logits);
          assert.ok(d <= 1e-3, `max |diff| ${d}`);
        } finally {
          runner.destroy();
        }
      } finally {
        m.close?.();
      }
    });
  },
);
