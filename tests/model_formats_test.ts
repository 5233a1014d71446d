// Model formats: llama2.c checkpoints (stories260K), safetensors (F32/F16/BF16, sharded, broken
// files), Hugging Face directories (Llama, Mistral, Qwen2; tied/untied; real passkey-llama).

import assert from "node:assert/strict";
import { loadModel } from "../model/load.ts";
import { loadHfModel, parseHfConfig } from "../model/hf.ts";
import { loadLlama2c } from "../model/llama2c.ts";
import {
  encodeSafetensors,
  SafetensorsFile,
  SafetensorsSet,
  type TensorToWrite,
} from "../model/safetensors.ts";
import { ModelFormatError } from "../model/types.ts";

const shared = (p: string) =>
  decodeURIComponent(new URL(`../../shared/${p}`, import.meta.url).pathname);
const STORIES_BIN = shared("models/stories260K/stories260K.bin");
const PASSKEY = shared("models/passkey-llama");

async function withTempDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "zigzag_model_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Asserts that `p` rejects with a ModelFormatError whose message contains every needle. */
async function rejectsNaming(p: Promise<unknown>, ...needles: string[]) {
  let err: unknown = null;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ModelFormatError, `expected ModelFormatError, got ${err}`);
  for (const n of needles) {
    assert.ok(err.message.includes(n), `message ${JSON.stringify(err.message)} lacks ${n}`);
  }
}

/** A safetensors file from a raw header object and raw data bytes (no help from our encoder). */
function rawSafetensors(header: Record<string, unknown>, data: Uint8Array): Uint8Array {
  const h = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

Deno.test("llama2.c checkpoint: stories260K", async (t) => {
  const bytes = await Deno.readFile(STORIES_BIN);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const f32At = (floatIndex: number) => dv.getFloat32(28 + 4 * floatIndex, true);

  await t.step("config, layout and spot-checked weights", async () => {
    const m = await loadModel(STORIES_BIN);
    const c = m.config;
    assert.equal(c.architecture, "llama2.c");
    assert.deepEqual(
      [c.dim, c.hiddenDim, c.nLayers, c.nHeads, c.nKvHeads, c.headDim, c.vocabSize, c.maxSeqLen],
      [64, 172, 5, 8, 4, 8, 512, 512],
    );
    assert.equal(c.tiedEmbeddings, true);
    assert.equal(c.ropeStyle, "interleaved");
    assert.equal(c.ropeTheta, 10000);
    assert.equal(c.normEps, 1e-5);
    assert.equal(c.bosId, 1);
    assert.deepEqual(c.eosIds, [1]);
    assert.equal(m.weights.lmHead, m.weights.tokenEmbedding);
    assert.ok(m.tokenizer, "tok512.bin next to the checkpoint is picked up");
    assert.equal(m.tokenizer.vocabSize, 512);

    // Independent offsets (floats after the 28-byte header), from run.c's memory_map_weights.
    const V = 512, D = 64, H = 172, L = 5, KV = 32;
    const emb = V * D, att = L * D, wq = L * D * D, wk = L * D * KV, wv = wk, wo = wq;
    const ffn = L * D, w1 = L * D * H, w2 = w1, w3 = w1, fin = D, freq = 512 * 8 / 2;
    assert.equal(
      bytes.byteLength,
      28 + 4 * (emb + att + wq + wk + wv + wo + ffn + w1 + w2 + w3 + fin + 2 * freq),
    );
    const w = m.weights;
    assert.equal(w.tokenEmbedding.data[403 * D + 17], f32At(403 * D + 17));
    assert.equal(w.layers[4].attnNorm.data[9], f32At(emb + 4 * D + 9));
    // wk layer 3, row 5, col 7: [KV, D] row-major.
    assert.deepEqual(w.layers[3].wk.shape, [KV, D]);
    assert.equal(w.layers[3].wk.data[5 * D + 7], f32At(emb + att + wq + 3 * KV * D + 5 * D + 7));
    // wo layer 1 row 60 col 3: [D, D].
    assert.equal(
      w.layers[1].wo.data[60 * D + 3],
      f32At(emb + att + wq + wk + wv + 1 * D * D + 60 * D + 3),
    );
    // w2 (down) layer 2, row 10, col 100: [D, H].
    assert.deepEqual(w.layers[2].wDown.shape, [D, H]);
    const w2Base = emb + att + wq + wk + wv + wo + ffn + w1;
    assert.equal(w.layers[2].wDown.data[10 * H + 100], f32At(w2Base + 2 * D * H + 10 * H + 100));
    // w3 (up) layer 0 last element, w1 (gate) layer 4 first element.
    assert.equal(w.layers[0].wUp.data[H * D - 1], f32At(w2Base + w2 + H * D - 1));
    assert.equal(w.layers[4].wGate.data[0], f32At(emb + att + wq + wk + wv + wo + ffn + 4 * H * D));
    assert.equal(w.finalNorm.data[13], f32At(w2Base + w2 + w3 + 13));
    assert.equal(w.layers.length, 5);
  });

  await t.step("truncated and missing checkpoints", async () => {
    await withTempDir(async (dir) => {
      const p = `${dir}/cut.bin`;
      // 500000 bytes hold (500000-28)/4 = 124993 floats: the embedding .. rms_ffn (94848 floats)
      // fit, w1 (55040 more) does not.
      await Deno.writeFile(p, bytes.slice(0, 500000));
      await rejectsNaming(loadLlama2c(p), p, `"w1"`, "truncated");
      await Deno.writeFile(p, bytes.slice(0, 20));
      await rejectsNaming(loadModel(p), p, "header");
      const noTok = `${dir}/m.bin`;
      await Deno.writeFile(noTok, bytes);
      assert.equal((await loadModel(noTok)).tokenizer, null);
      const withTok = await loadModel(noTok, {
        tokenizerPath: shared("models/stories260K/tok512.bin"),
      });
      assert.deepEqual(withTok.tokenizer!.encode("Once upon a time"), [1, 403, 407, 261, 378]);
    });
    await rejectsNaming(
      loadModel("/nonexistent/zigzag/model.bin"),
      "/nonexistent/zigzag/model.bin",
    );
    await rejectsNaming(loadModel("/nonexistent/zigzag/dir"), "/nonexistent/zigzag/dir");
  });
});

Deno.test("safetensors reader", async (t) => {
  await t.step("F32, F16, BF16 from hand-written bytes", async () => {
    await withTempDir(async (dir) => {
      const f32 = new Float32Array([1.5, -2.25, 3e-8, 1e6, 0, -0]);
      const f16 = new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x3555, 0x8000]);
      const bf16 = new Uint16Array([0x3f80, 0xc049, 0x4780, 0x0000]);
      const data = new Uint8Array(24 + 12 + 8);
      data.set(new Uint8Array(f32.buffer), 0);
      data.set(new Uint8Array(f16.buffer), 24);
      data.set(new Uint8Array(bf16.buffer), 36);
      const p = `${dir}/a.safetensors`;
      await Deno.writeFile(
        p,
        rawSafetensors({
          __metadata__: { format: "pt" },
          a: { dtype: "F32", shape: [2, 3], data_offsets: [0, 24] },
          b: { dtype: "F16", shape: [6], data_offsets: [24, 36] },
          c: { dtype: "BF16", shape: [2, 2], data_offsets: [36, 44] },
        }, data),
      );
      const f = await SafetensorsFile.open(p);
      try {
        const a = await f.read("a", [2, 3]);
        assert.deepEqual(a.shape, [2, 3]);
        assert.equal(a.sourceDtype, "f32");
        assert.deepEqual([...a.data], [...f32]);
        const b = await f.read("b");
        assert.equal(b.sourceDtype, "f16");
        assert.deepEqual([...b.data].slice(0, 4), [1, -2, 65504, 2 ** -24]);
        assert.ok(Math.abs(b.data[4] - 1 / 3) < 1e-3);
        assert.ok(Object.is(b.data[5], -0));
        const c = await f.read("c");
        assert.equal(c.sourceDtype, "bf16");
        assert.deepEqual([...c.data], [1, -3.140625, 65536, 0]);
        assert.deepEqual(f.metadata, { format: "pt" });
        await rejectsNaming(f.read("a", [3, 2]), p, `"a"`, "[3, 2]", "[2, 3]");
        await rejectsNaming(f.read("zzz"), p, `"zzz"`, "missing");
      } finally {
        f.close();
      }
    });
  });

  await t.step("our encoder round trips all three dtypes", async () => {
    await withTempDir(async (dir) => {
      const vals = [0, 1, -1, 0.5, -0.125, 3.75, 1024, -7.5];
      const p = `${dir}/e.safetensors`;
      await Deno.writeFile(
        p,
        encodeSafetensors([
          { name: "x32", dtype: "F32", shape: [8], data: vals },
          { name: "x16", dtype: "F16", shape: [2, 4], data: vals },
          { name: "xb", dtype: "BF16", shape: [4, 2], data: vals },
        ]),
      );
      const f = await SafetensorsFile.open(p);
      try {
        for (const n of ["x32", "x16", "xb"]) assert.deepEqual([...(await f.read(n)).data], vals);
      } finally {
        f.close();
      }
    });
  });

  await t.step("sharded index", async () => {
    await withTempDir(async (dir) => {
      await Deno.writeFile(
        `${dir}/model-00001-of-00002.safetensors`,
        encodeSafetensors([{ name: "p", dtype: "F32", shape: [2], data: [1, 2] }]),
      );
      await Deno.writeFile(
        `${dir}/model-00002-of-00002.safetensors`,
        encodeSafetensors([{ name: "q", dtype: "BF16", shape: [1, 3], data: [3, 4, 5] }]),
      );
      await Deno.writeTextFile(
        `${dir}/model.safetensors.index.json`,
        JSON.stringify({
          metadata: { total_size: 14 },
          weight_map: {
            p: "model-00001-of-00002.safetensors",
            q: "model-00002-of-00002.safetensors",
            r: "model-00001-of-00002.safetensors",
          },
        }),
      );
      const s = await SafetensorsSet.openDir(dir);
      try {
        assert.deepEqual(s.names().sort(), ["p", "q", "r"]);
        assert.deepEqual([...(await s.read("p")).data], [1, 2]);
        assert.deepEqual([...(await s.read("q", [1, 3])).data], [3, 4, 5]);
        await rejectsNaming(s.read("r"), "model-00001-of-00002.safetensors", `"r"`, "missing");
        await rejectsNaming(s.read("nope"), "model.safetensors.index.json", `"nope"`);
      } finally {
        s.close();
      }
    });
  });

  await t.step("truncated file, unsupported dtype, missing file", async () => {
    await withTempDir(async (dir) => {
      const full = encodeSafetensors([
        { name: "first", dtype: "F32", shape: [4], data: [1, 2, 3, 4] },
        { name: "second", dtype: "F32", shape: [4], data: [5, 6, 7, 8] },
      ]);
      const p = `${dir}/cut.safetensors`;
      await Deno.writeFile(p, full.slice(0, full.length - 6));
      await rejectsNaming(SafetensorsFile.open(p), p, `"second"`, "truncated");
      await Deno.writeFile(p, full.slice(0, 5));
      await rejectsNaming(SafetensorsFile.open(p), p, "truncated");

      const q = `${dir}/int.safetensors`;
      await Deno.writeFile(
        q,
        rawSafetensors(
          { ids: { dtype: "I32", shape: [2], data_offsets: [0, 8] } },
          new Uint8Array(8),
        ),
      );
      const f = await SafetensorsFile.open(q);
      await rejectsNaming(f.read("ids"), q, `"ids"`, "unsupported dtype I32");
      f.close();
      await Deno.writeFile(
        q,
        rawSafetensors(
          { w: { dtype: "F32", shape: [3], data_offsets: [0, 8] } },
          new Uint8Array(8),
        ),
      );
      await rejectsNaming(SafetensorsFile.open(q), q, `"w"`, "[3]");
      await rejectsNaming(SafetensorsFile.open(`${dir}/none.safetensors`), "none.safetensors");
    });
  });
});

// ---- synthetic Hugging Face directories -------------------------------------------------------

interface Dims {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kv: number;
  headDim: number;
  vocab: number;
}

/** A value for element i of the k-th tensor: multiples of 1/8 in [-1, 1], exact in f16/bf16. */
const val = (k: number, i: number) => (((k * 31 + i * 7) % 17) - 8) / 8;

/** Tensors of an HF Llama-family checkpoint, shapes spelled out independently of model/hf.ts. */
function hfTensors(
  d: Dims,
  dtype: TensorToWrite["dtype"],
  opts: { bias?: boolean; lmHead?: boolean } = {},
): TensorToWrite[] {
  const q = d.heads * d.headDim, kv = d.kv * d.headDim;
  const specs: [string, number[]][] = [["model.embed_tokens.weight", [d.vocab, d.dim]]];
  for (let l = 0; l < d.layers; l++) {
    const p = `model.layers.${l}.`;
    specs.push(
      [p + "input_layernorm.weight", [d.dim]],
      [p + "self_attn.q_proj.weight", [q, d.dim]],
      [p + "self_attn.k_proj.weight", [kv, d.dim]],
      [p + "self_attn.v_proj.weight", [kv, d.dim]],
      [p + "self_attn.o_proj.weight", [d.dim, q]],
      [p + "post_attention_layernorm.weight", [d.dim]],
      [p + "mlp.gate_proj.weight", [d.hidden, d.dim]],
      [p + "mlp.up_proj.weight", [d.hidden, d.dim]],
      [p + "mlp.down_proj.weight", [d.dim, d.hidden]],
    );
    if (opts.bias) {
      specs.push(
        [p + "self_attn.q_proj.bias", [q]],
        [p + "self_attn.k_proj.bias", [kv]],
        [p + "self_attn.v_proj.bias", [kv]],
      );
    }
  }
  specs.push(["model.norm.weight", [d.dim]]);
  if (opts.lmHead) specs.push(["lm_head.weight", [d.vocab, d.dim]]);
  return specs.map(([name, shape], k) => ({
    name,
    shape,
    dtype,
    data: Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => val(k, i)),
  }));
}

function hfConfig(arch: string, d: Dims, extra: Record<string, unknown> = {}) {
  return {
    architectures: [arch],
    hidden_size: d.dim,
    intermediate_size: d.hidden,
    num_hidden_layers: d.layers,
    num_attention_heads: d.heads,
    num_key_value_heads: d.kv,
    vocab_size: d.vocab,
    max_position_embeddings: 256,
    rms_norm_eps: 1e-6,
    hidden_act: "silu",
    ...extra,
  };
}

async function writeHfDir(
  dir: string,
  config: Record<string, unknown>,
  tensors: TensorToWrite[],
  shards = 1,
) {
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  if (shards === 1) {
    await Deno.writeFile(`${dir}/model.safetensors`, encodeSafetensors(tensors));
    return;
  }
  const weightMap: Record<string, string> = {};
  const per = Math.ceil(tensors.length / shards);
  for (let s = 0; s < shards; s++) {
    const name = `model-${s + 1}-of-${shards}.safetensors`;
    const part = tensors.slice(s * per, (s + 1) * per);
    for (const t of part) weightMap[t.name] = name;
    await Deno.writeFile(`${dir}/${name}`, encodeSafetensors(part));
  }
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
}

const D: Dims = { dim: 16, hidden: 24, layers: 2, heads: 4, kv: 2, headDim: 4, vocab: 10 };

Deno.test("Hugging Face directories", async (t) => {
  await t.step("Qwen2: q/k/v biases, tied embeddings (tie_word_embeddings)", async () => {
    await withTempDir(async (dir) => {
      const tensors = hfTensors(D, "BF16", { bias: true });
      await writeHfDir(
        dir,
        hfConfig("Qwen2ForCausalLM", D, {
          tie_word_embeddings: true,
          rope_theta: 1e6,
          bos_token_id: 5,
          eos_token_id: [7, 8],
          sliding_window: 64,
          use_sliding_window: false,
        }),
        tensors,
      );
      const m = await loadModel(dir);
      const c = m.config;
      assert.equal(c.architecture, "Qwen2ForCausalLM");
      assert.equal(c.qkvBias, true);
      assert.equal(c.tiedEmbeddings, true);
      assert.equal(c.headDim, 4);
      assert.equal(c.ropeTheta, 1e6);
      assert.equal(c.ropeStyle, "half");
      assert.equal(c.normEps, 1e-6);
      assert.equal(c.maxSeqLen, 256);
      assert.equal(c.bosId, 5);
      assert.deepEqual(c.eosIds, [7, 8]);
      assert.equal(m.tokenizer, null);
      const w = m.weights;
      assert.equal(w.lmHead, w.tokenEmbedding);
      const byName = new Map(tensors.map((t) => [t.name, t]));
      const l1 = w.layers[1];
      assert.deepEqual(l1.bq!.shape, [16]);
      assert.deepEqual(l1.bk!.shape, [8]);
      assert.deepEqual([...l1.bq!.data], byName.get("model.layers.1.self_attn.q_proj.bias")!.data);
      assert.deepEqual([...l1.bv!.data], byName.get("model.layers.1.self_attn.v_proj.bias")!.data);
      assert.deepEqual([...l1.wk.data], byName.get("model.layers.1.self_attn.k_proj.weight")!.data);
      assert.equal(l1.wk.sourceDtype, "bf16");

      // A Qwen2 checkpoint without its biases is an error naming file and tensor.
      await writeHfDir(
        dir,
        hfConfig("Qwen2ForCausalLM", D),
        hfTensors(D, "F32", { bias: false, lmHead: true }),
      );
      await rejectsNaming(loadModel(dir), "model.safetensors", "self_attn.q_proj.bias", "missing");
    });
  });

  await t.step("Llama untied, sharded BF16, head_dim, llama3 rope scaling, eos lists", async () => {
    await withTempDir(async (dir) => {
      const d = { ...D, headDim: 8 }; // q = 32 != dim = 16
      const tensors = hfTensors(d, "BF16", { lmHead: true });
      await writeHfDir(
        dir,
        hfConfig("LlamaForCausalLM", d, {
          head_dim: 8,
          rope_theta: 500000,
          rope_scaling: {
            rope_type: "llama3",
            factor: 8,
            low_freq_factor: 1,
            high_freq_factor: 4,
            original_max_position_embeddings: 8192,
          },
          bos_token_id: 1,
          eos_token_id: 2,
          tie_word_embeddings: false,
        }),
        tensors,
        3,
      );
      await Deno.writeTextFile(
        `${dir}/generation_config.json`,
        JSON.stringify({ eos_token_id: [2, 9] }),
      );
      const progress: [number, number][] = [];
      const m = await loadModel(`${dir}/config.json`, {
        onProgress: (a, b) => progress.push([a, b]),
      });
      const c = m.config;
      assert.equal(c.headDim, 8);
      assert.equal(c.tiedEmbeddings, false);
      assert.deepEqual(c.ropeScaling, {
        factor: 8,
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalMaxPositionEmbeddings: 8192,
      });
      assert.deepEqual(c.eosIds, [2, 9]);
      assert.equal(c.qkvBias, false);
      const w = m.weights;
      assert.notEqual(w.lmHead, w.tokenEmbedding);
      assert.deepEqual(w.layers[0].wq.shape, [32, 16]);
      assert.deepEqual(w.layers[0].wo.shape, [16, 32]);
      assert.equal(w.layers[0].bq, undefined);
      const byName = new Map(tensors.map((t) => [t.name, t]));
      assert.deepEqual([...w.lmHead.data], byName.get("lm_head.weight")!.data);
      assert.deepEqual(
        [...w.layers[1].wDown.data],
        byName.get("model.layers.1.mlp.down_proj.weight")!.data,
      );
      assert.deepEqual([...w.finalNorm.data], byName.get("model.norm.weight")!.data);
      const last = progress.at(-1)!;
      assert.equal(last[0], last[1]);
      assert.ok(last[1] > 0);
    });
  });

  await t.step("Mistral F16 without lm_head.weight is tied", async () => {
    await withTempDir(async (dir) => {
      await writeHfDir(
        dir,
        hfConfig("MistralForCausalLM", D, { sliding_window: 128, eos_token_id: 2 }),
        hfTensors(D, "F16"),
      );
      const m = await loadHfModel(dir);
      assert.equal(m.config.tiedEmbeddings, true);
      assert.equal(m.weights.lmHead, m.weights.tokenEmbedding);
      assert.equal(m.config.maxSeqLen, 128); // sliding_window caps the usable context
      assert.equal(m.weights.tokenEmbedding.sourceDtype, "f16");
    });
  });

  await t.step("errors: wrong shape, unsupported dtype/arch, missing files", async () => {
    await withTempDir(async (dir) => {
      const tensors = hfTensors(D, "F32", { lmHead: true });
      const bad = tensors.find((t) => t.name === "model.layers.1.self_attn.k_proj.weight")!;
      bad.shape = [16, 8]; // expected [8, 16]
      await writeHfDir(dir, hfConfig("LlamaForCausalLM", D), tensors);
      await rejectsNaming(
        loadModel(dir),
        `${dir}/model.safetensors`,
        "model.layers.1.self_attn.k_proj.weight",
        "expected [8, 16]",
        "got [16, 8]",
      );

      // Unsupported dtype in a model tensor.
      await Deno.writeTextFile(
        `${dir}/config.json`,
        JSON.stringify(hfConfig("LlamaForCausalLM", D)),
      );
      await Deno.writeFile(
        `${dir}/model.safetensors`,
        rawSafetensors(
          {
            "model.embed_tokens.weight": { dtype: "F64", shape: [10, 16], data_offsets: [0, 1280] },
          },
          new Uint8Array(1280),
        ),
      );
      await rejectsNaming(loadModel(dir), "model.safetensors", "model.embed_tokens.weight", "F64");

      // Missing tensor.
      await writeHfDir(
        dir,
        hfConfig("LlamaForCausalLM", D),
        hfTensors(D, "F32").filter((t) => t.name !== "model.layers.0.mlp.up_proj.weight"),
      );
      await rejectsNaming(loadModel(dir), "model.safetensors", "model.layers.0.mlp.up_proj.weight");

      // Truncated weights through the loader.
      const full = encodeSafetensors(hfTensors(D, "F32"));
      await Deno.writeFile(`${dir}/model.safetensors`, full.slice(0, full.length - 10));
      await rejectsNaming(loadModel(dir), "model.safetensors", "model.norm.weight", "truncated");

      // Unsupported architecture.
      await Deno.writeTextFile(
        `${dir}/config.json`,
        JSON.stringify(hfConfig("GPT2LMHeadModel", D)),
      );
      await rejectsNaming(
        loadModel(dir),
        `${dir}/config.json`,
        "GPT2LMHeadModel",
        "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM",
      );

      // No weights, no config.
      await Deno.writeTextFile(
        `${dir}/config.json`,
        JSON.stringify(hfConfig("LlamaForCausalLM", D)),
      );
      await Deno.remove(`${dir}/model.safetensors`);
      await rejectsNaming(loadModel(dir), dir, "model.safetensors");
      await Deno.remove(`${dir}/config.json`);
      await rejectsNaming(loadModel(dir), `${dir}/config.json`);
    });

    const cfg = (extra: Record<string, unknown>) => hfConfig("LlamaForCausalLM", D, extra);
    assert.throws(
      () => parseHfConfig(cfg({ rope_scaling: { rope_type: "yarn", factor: 4 } }), "x/config.json"),
      (e: Error) => e instanceof ModelFormatError && /x\/config\.json.*yarn/.test(e.message),
    );
    assert.throws(() => parseHfConfig(cfg({ attention_bias: true })), ModelFormatError);
    assert.throws(() => parseHfConfig(cfg({ hidden_act: "gelu" })), ModelFormatError);
    assert.equal(parseHfConfig(cfg({ rope_scaling: { rope_type: "default" } })).ropeScaling, null);
    assert.equal(parseHfConfig(cfg({ head_dim: null })).headDim, 4);
  });

  await t.step("real passkey-llama", async () => {
    const m = await loadModel(PASSKEY);
    const c = m.config;
    assert.deepEqual(
      [c.architecture, c.dim, c.hiddenDim, c.nLayers, c.nHeads, c.nKvHeads, c.headDim],
      ["LlamaForCausalLM", 128, 384, 8, 4, 2, 32],
    );
    assert.deepEqual([c.vocabSize, c.maxSeqLen, c.bosId, c.eosIds], [259, 2048, 256, [257]]);
    assert.equal(c.tiedEmbeddings, false);
    assert.equal(c.ropeStyle, "half");
    assert.equal(c.ropeScaling, null);
    assert.ok(m.tokenizer);
    assert.deepEqual(m.tokenizer.encode("Hi"), [256, 72, 105]);

    // Spot-check against the file, read with an independent header parse.
    const bytes = await Deno.readFile(`${PASSKEY}/model.safetensors`);
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const hlen = Number(dv.getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + hlen)));
    const at = (name: string, i: number) =>
      dv.getFloat32(8 + hlen + header[name].data_offsets[0] + 4 * i, true);
    assert.equal(m.weights.lmHead.data[3 * 128 + 5], at("lm_head.weight", 3 * 128 + 5));
    assert.equal(
      m.weights.layers[7].wDown.data[100 * 384 + 383],
      at("model.layers.7.mlp.down_proj.weight", 100 * 384 + 383),
    );
    assert.equal(
      m.weights.layers[2].wk.data[63 * 128 + 1],
      at("model.layers.2.self_attn.k_proj.weight", 63 * 128 + 1),
    );
  });
});
