// Random-weight models for tests and benchmarks: deterministic from a seed, shaped like real ones.

import type { HostTensor, LayerWeights, ModelConfig, ModelWeights } from "./types.ts";

/** mulberry32: a small 32-bit PRNG; returns uniform floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A 32-bit seed per tensor from the model seed and the tensor's name (FNV-1a, then mixed). */
function tensorSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ (seed >>> 0);
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

export interface RandomModelOptions {
  /** Multiplies every weight's spread (not the norm weights' offset from 1). Default 1. */
  scale?: number;
  /** Refuses models with more parameters than this on the host (default 4e8). */
  maxParams?: number;
}

/** Parameter count of a model with this config (tied LM head counted once). */
export function paramCount(c: ModelConfig): number {
  const q = c.nHeads * c.headDim;
  const kv = c.nKvHeads * c.headDim;
  const perLayer = 2 * c.dim + 2 * q * c.dim + 2 * kv * c.dim + 3 * c.hiddenDim * c.dim +
    (c.qkvBias ? q + 2 * kv : 0);
  return c.vocabSize * c.dim * (c.tiedEmbeddings ? 1 : 2) + c.nLayers * perLayer + c.dim;
}

/**
 * Random weights for `config`, the same for the same seed. Every tensor is drawn uniformly with
 * its own stream (seeded from `seed` and its name), so adding a tensor never changes the others:
 * - linear weights [out, in]: std scale/sqrt(in), so activations keep their size;
 * - token embedding: std scale; an untied LM head: std scale/sqrt(dim) (logits std ~scale); a tied
 *   one is the embedding object itself (logits std ~scale*sqrt(dim));
 * - norm weights: 1 + U(-0.1, 0.1); q/k/v biases (qkvBias): std 0.1*scale.
 */
export function randomModel(
  config: ModelConfig,
  seed: number,
  opts: RandomModelOptions = {},
): ModelWeights {
  const scale = opts.scale ?? 1;
  const maxParams = opts.maxParams ?? 4e8;
  const n = paramCount(config);
  if (n > maxParams) {
    throw new Error(
      `randomModel: ${n} parameters exceeds maxParams ${maxParams}; generate large weights on the GPU`,
    );
  }
  const { dim, hiddenDim, headDim } = config;
  const q = config.nHeads * headDim;
  const kv = config.nKvHeads * headDim;

  /** uniform with the given standard deviation and mean */
  const tensor = (name: string, shape: number[], std: number, mean = 0): HostTensor => {
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    const rand = mulberry32(tensorSeed(seed, name));
    const halfWidth = std * Math.sqrt(3);
    for (let i = 0; i < size; i++) data[i] = mean + (2 * rand() - 1) * halfWidth;
    return { name, shape, sourceDtype: "f32", data };
  };
  const linear = (name: string, out: number, inp: number) =>
    tensor(name, [out, inp], scale / Math.sqrt(inp));
  const norm = (name: string) => tensor(name, [dim], 0.1 / Math.sqrt(3), 1);

  const tokenEmbedding = tensor("model.embed_tokens.weight", [config.vocabSize, dim], scale);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const p = `model.layers.${l}.`;
    const layer: LayerWeights = {
      attnNorm: norm(p + "input_layernorm.weight"),
      wq: linear(p + "self_attn.q_proj.weight", q, dim),
      wk: linear(p + "self_attn.k_proj.weight", kv, dim),
      wv: linear(p + "self_attn.v_proj.weight", kv, dim),
      wo: linear(p + "self_attn.o_proj.weight", dim, q),
      ffnNorm: norm(p + "post_attention_layernorm.weight"),
      wGate: linear(p + "mlp.gate_proj.weight", hiddenDim, dim),
      wDown: linear(p + "mlp.down_proj.weight", dim, hiddenDim),
      wUp: linear(p + "mlp.up_proj.weight", hiddenDim, dim),
    };
    if (config.qkvBias) {
      layer.bq = tensor(p + "self_attn.q_proj.bias", [q], 0.1 * scale);
      layer.bk = tensor(p + "self_attn.k_proj.bias", [kv], 0.1 * scale);
      layer.bv = tensor(p + "self_attn.v_proj.bias", [kv], 0.1 * scale);
    }
    layers.push(layer);
  }
  const finalNorm = norm("model.norm.weight");
  const lmHead = config.tiedEmbeddings
    ? tokenEmbedding
    : tensor("lm_head.weight", [config.vocabSize, dim], scale / Math.sqrt(dim));
  return { tokenEmbedding, layers, finalNorm, lmHead };
}

/** A small valid config; `headDim` defaults to dim / nHeads when not overridden. */
export function tinyConfig(overrides: Partial<ModelConfig> = {}): ModelConfig {
  const base: ModelConfig = {
    architecture: "LlamaForCausalLM",
    dim: 64,
    hiddenDim: 160,
    nLayers: 2,
    nHeads: 4,
    nKvHeads: 2,
    headDim: 16,
    vocabSize: 128,
    maxSeqLen: 512,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeStyle: "half",
    ropeScaling: null,
    qkvBias: false,
    tiedEmbeddings: true,
    bosId: 1,
    eosIds: [2],
  };
  const c: ModelConfig = { ...base, ...overrides };
  if (overrides.headDim === undefined) c.headDim = c.dim / c.nHeads;
  if (!Number.isInteger(c.headDim) || c.headDim % 2 !== 0) {
    throw new Error(`tinyConfig: headDim ${c.headDim} must be an even integer`);
  }
  if (c.nHeads % c.nKvHeads !== 0) {
    throw new Error(`tinyConfig: nHeads ${c.nHeads} not a multiple of nKvHeads ${c.nKvHeads}`);
  }
  return c;
}

/** Shapes of real checkpoints (from their Hugging Face config.json), for random-weight runs. */
export const PRESETS: Record<string, ModelConfig> = {
  "smollm2-135m": {
    architecture: "LlamaForCausalLM",
    dim: 576,
    hiddenDim: 1536,
    nLayers: 30,
    nHeads: 9,
    nKvHeads: 3,
    headDim: 64,
    vocabSize: 49152,
    maxSeqLen: 8192,
    normEps: 1e-5,
    ropeTheta: 100000,
    ropeStyle: "half",
    ropeScaling: null,
    qkvBias: false,
    tiedEmbeddings: true,
    bosId: 0,
    eosIds: [0],
  },
  "qwen2.5-0.5b": {
    architecture: "Qwen2ForCausalLM",
    dim: 896,
    hiddenDim: 4864,
    nLayers: 24,
    nHeads: 14,
    nKvHeads: 2,
    headDim: 64,
    vocabSize: 151936,
    maxSeqLen: 32768,
    normEps: 1e-6,
    ropeTheta: 1000000,
    ropeStyle: "half",
    ropeScaling: null,
    qkvBias: true,
    tiedEmbeddings: true,
    bosId: 151643,
    eosIds: [151645, 151643],
  },
  "llama-3.2-1b": {
    architecture: "LlamaForCausalLM",
    dim: 2048,
    hiddenDim: 8192,
    nLayers: 16,
    nHeads: 32,
    nKvHeads: 8,
    headDim: 64,
    vocabSize: 128256,
    maxSeqLen: 131072,
    normEps: 1e-5,
    ropeTheta: 500000,
    ropeStyle: "half",
    ropeScaling: {
      factor: 32,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    },
    qkvBias: false,
    tiedEmbeddings: true,
    bosId: 128000,
    eosIds: [128001, 128008, 128009],
  },
  "llama-3-8b": {
    architecture: "LlamaForCausalLM",
    dim: 4096,
    hiddenDim: 14336,
    nLayers: 32,
    nHeads: 32,
    nKvHeads: 8,
    headDim: 128,
    vocabSize: 128256,
    maxSeqLen: 8192,
    normEps: 1e-5,
    ropeTheta: 500000,
    ropeStyle: "half",
    ropeScaling: null,
    qkvBias: false,
    tiedEmbeddings: false,
    bosId: 128000,
    eosIds: [128001, 128009],
  },
};
