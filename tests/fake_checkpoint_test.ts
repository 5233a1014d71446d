// The checkpoint generator: sharded safetensors + index + config as Hugging Face writes them,
// values that regenerate from (seed, name, index), and presets the shipped plans resolve against.

import assert from "node:assert/strict";
import {
  FAKE_PRESETS,
  fakeHfConfig,
  fakeValue,
  PRESET_PLANS,
  writeFakeCheckpoint,
} from "../model/fake_checkpoint.ts";
import { loadHfModel, openHfModel, parseHfConfig } from "../model/hf.ts";
import { readF32 } from "../model/tensors.ts";
import { loadPlanArg } from "../plans/resolve.ts";

const SMALL = {
  hidden_size: 64,
  intermediate_size: 96,
  vocab_size: 500,
  num_attention_heads: 4,
  num_key_value_heads: 2,
};

Deno.test("fake checkpoint: shards, index and config as a Hugging Face repository", async () => {
  const dir = await Deno.makeTempDir({ prefix: "zigzag_fake_" });
  try {
    const shardBytes = 100_000;
    const ck = await writeFakeCheckpoint(dir, {
      preset: "llama3-8b",
      layers: 3,
      dtype: "bf16",
      seed: 7,
      shardBytes,
      overrides: SMALL,
    });
    // Parameter count by hand: embedding and LM head 500x64 each, per layer q 64x64, k and v
    // 32x64 (2 KV heads of 16), o 64x64, gate and up 96x64, down 64x96, two norms of 64; final
    // norm 64. Two bytes each in bf16.
    const perLayer = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 96 * 64 + 2 * 64;
    const params = 2 * 500 * 64 + 3 * perLayer + 64;
    assert.equal(ck.totalBytes, 2 * params);
    const index = JSON.parse(await Deno.readTextFile(`${dir}/model.safetensors.index.json`));
    assert.equal(index.metadata.total_size, 2 * params);
    const names = Object.keys(index.weight_map);
    assert.equal(names.length, 2 + 3 * 9 + 1);
    assert.ok(names.includes("lm_head.weight"));
    assert.ok(names.includes("model.layers.2.mlp.down_proj.weight"));
    // Shards named model-0000i-of-0000n, each at most shardBytes of data (or one tensor alone).
    assert.ok(ck.shards.length > 1, `${ck.shards.length} shards`);
    ck.shards.forEach((f, i) =>
      assert.equal(
        f,
        `model-${String(i + 1).padStart(5, "0")}-of-0000${ck.shards.length}.safetensors`,
      )
    );
    let data = 0;
    for (const f of ck.shards) {
      const bytes = await Deno.readFile(`${dir}/${f}`);
      const hlen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
      const shardData = bytes.length - 8 - hlen;
      assert.ok(shardData <= shardBytes || shardData === 2 * 500 * 64, `${f}: ${shardData} bytes`);
      data += shardData;
    }
    assert.equal(data, 2 * params);
    const cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    assert.equal(cfg.num_hidden_layers, 3);
    assert.equal(cfg.torch_dtype, "bfloat16");

    // The loader reads it back; values equal the generator's function rounded to bf16 (8
    // significant bits: relative error at most 2^-9, so 2^-8 of the value bounds it).
    const m = await loadHfModel(dir, { noTokenizer: true });
    assert.equal(m.config.nLayers, 3);
    assert.equal(m.config.nKvHeads, 2);
    assert.equal(m.config.tiedEmbeddings, false);
    const check = (name: string, data: Float32Array) => {
      for (const i of [0, 1, 17, data.length - 1]) {
        const want = fakeValue(7, name, i);
        assert.ok(
          Math.abs(data[i] - want) <= Math.abs(want) / 256,
          `${name}[${i}] = ${data[i]}, want ${want}`,
        );
      }
    };
    check("model.embed_tokens.weight", m.weights.tokenEmbedding.data);
    check("lm_head.weight", m.weights.lmHead.data);
    check("model.layers.1.self_attn.k_proj.weight", m.weights.layers[1].wk.data);
    check("model.layers.2.post_attention_layernorm.weight", m.weights.layers[2].ffnNorm.data);
    // Norms sit near 1, matrices near 0 (std 0.02), and tensors differ from each other.
    assert.ok(Math.abs(m.weights.finalNorm.data[0] - 1) <= 0.1 + 1e-6);
    assert.ok(Math.abs(m.weights.layers[0].wq.data[0]) <= 0.035 + 1e-6);
    assert.notEqual(m.weights.layers[0].wq.data[5], m.weights.layers[1].wq.data[5]);
    // Another seed, other values.
    assert.notEqual(fakeValue(8, "lm_head.weight", 3), fakeValue(7, "lm_head.weight", 3));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fake checkpoint presets: the shipped plans resolve against their configs", async () => {
  const shipped = (name: string, kind: string) =>
    decodeURIComponent(new URL(`../plans/shipped/${name}.${kind}.json`, import.meta.url).pathname);
  let resolved = 0;
  for (const preset of Object.keys(FAKE_PRESETS)) {
    const config = parseHfConfig(fakeHfConfig({ preset }), `${preset}/config.json`);
    assert.equal(config.nLayers, 32, preset);
    assert.equal(config.headDim, 128, preset);
    for (const plan of PRESET_PLANS[preset]) {
      for (const kind of ["zigzag50", "duo50"]) {
        const p = await loadPlanArg(shipped(plan, kind), config);
        assert.equal(p.layers.length, 32);
        assert.ok(p.layers.every((l) => l.kvHeadKinds.length === config.nKvHeads));
        resolved++;
      }
    }
  }
  assert.equal(resolved, 12); // six models with published gates, two plans each
  // A preset of another shape is refused by a plan (the Llama-2 plan has 32 KV heads).
  const l3 = parseHfConfig(fakeHfConfig({ preset: "llama3-8b" }));
  await assert.rejects(loadPlanArg(shipped("llama-2-7b-32k-instruct", "zigzag50"), l3));
});

Deno.test("openHfModel reads tensor ranges on demand, in the source dtype", async () => {
  const dir = await Deno.makeTempDir({ prefix: "zigzag_fake_" });
  try {
    await writeFakeCheckpoint(dir, {
      preset: "mistral-7b-v0.3",
      layers: 2,
      dtype: "f16",
      seed: 3,
      shardBytes: 50_000,
      overrides: SMALL,
    });
    const m = await openHfModel(dir, { noTokenizer: true });
    try {
      const up = m.weights.layers[1].wUp;
      assert.equal(up.sourceDtype, "f16");
      assert.deepEqual(up.shape, [96, 64]);
      // Rows 10..12 of up_proj: 2 bytes per element, f16 rounding (11 significant bits, so a
      // relative error of at most 2^-11; 2^-10 bounds it).
      const raw = await up.readRaw(10 * 64, 2 * 64);
      assert.equal(raw.byteLength, 2 * 64 * 2);
      const rows = await readF32(up, 10 * 64, 2 * 64);
      rows.forEach((v, j) => {
        const want = fakeValue(3, "model.layers.1.mlp.up_proj.weight", 10 * 64 + j);
        assert.ok(Math.abs(v - want) <= Math.abs(want) / 1024 + 1e-7, `${j}: ${v} vs ${want}`);
      });
      await assert.rejects(up.readRaw(95 * 64, 65), RangeError);
      assert.equal(
        m.weightBytes,
        2 * (2 * 500 * 64 + 2 * (64 * 64 * 2 + 2 * 32 * 64 + 3 * 96 * 64 + 128) + 64),
      );
    } finally {
      m.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
