// Random-weight checkpoints of real layouts, written as Hugging Face repositories are: config.json,
// generation_config.json, `model-0000i-of-0000n.safetensors` shards of at most `shardBytes` and
// `model.safetensors.index.json` ({metadata: {total_size}, weight_map}).
//
// Tests and the bench cannot use files from outside the project, and no hub is reachable, so the
// 7-8B layouts the shipped plans are for are made here. Writing streams tensor by tensor in chunks:
// host memory stays at one chunk whatever the model's size. Every value is a pure function of
// (seed, tensor name, element index) (`fakeValue`), so a test can regenerate any slice of any
// tensor without reading the file.

import { hfTensorShapes, parseHfConfig } from "./hf.ts";
import { f32ToF16Bits } from "./safetensors.ts";
import type { ModelConfig } from "./types.ts";

export type FakeDtype = "bf16" | "f16" | "f32";

/** What Llama and Mistral 7-8B configs share (32 layers of 4096, 32 query heads of 128). */
const BASE_8B = {
  hidden_act: "silu",
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
};

/** config.json of the architectures the shipped plans are for (plans/shipped/). */
export const FAKE_PRESETS: Record<string, Record<string, unknown>> = {
  // togethercomputer/Llama-2-7B-32K-Instruct (its linear RoPE scaling is left out: zigzag reads
  // llama3 and default scaling only, and the weights are random anyway).
  "llama2-7b-32k": llama({
    hidden_size: 4096,
    intermediate_size: 11008,
    num_key_value_heads: 32,
    vocab_size: 32000,
    max_position_embeddings: 32768,
    rope_theta: 10000,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: "float16",
  }),
  // meta-llama/Meta-Llama-3-8B-Instruct
  "llama3-8b": llama({ max_position_embeddings: 8192, rope_theta: 500000 }),
  // gradientai/Llama-3-8B-Instruct-Gradient-1048k
  "llama3-8b-1048k": llama({ max_position_embeddings: 1048576, rope_theta: 3580165449 }),
  // gradientai/Llama-3-8B-Instruct-Gradient-4194k (RoPE theta 45.2B, the model card's table)
  "llama3-8b-4194k": llama({ max_position_embeddings: 4194304, rope_theta: 45200000000 }),
  // meta-llama/Meta-Llama-3.1-8B-Instruct
  "llama3.1-8b": llama({
    max_position_embeddings: 131072,
    rope_theta: 500000,
    rope_scaling: {
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
      rope_type: "llama3",
    },
    eos_token_id: [128001, 128008, 128009],
  }),
  // mistralai/Mistral-7B-Instruct-v0.2
  "mistral-7b-v0.2": mistral({ vocab_size: 32000 }),
  // mistralai/Mistral-7B-Instruct-v0.3
  "mistral-7b-v0.3": mistral({ vocab_size: 32768 }),
};

/** The shipped plans each preset's config resolves. */
export const PRESET_PLANS: Record<string, string[]> = {
  "llama2-7b-32k": ["llama-2-7b-32k-instruct"],
  "llama3-8b": [],
  "llama3-8b-1048k": ["llama-3-8b-instruct-gradient-1048k"],
  "llama3-8b-4194k": ["llama-3-8b-instruct-gradient-4194k"],
  "llama3.1-8b": ["meta-llama-3.1-8b-instruct"],
  "mistral-7b-v0.2": ["mistral-7b-instruct-v0.2"],
  "mistral-7b-v0.3": ["mistral-7b-instruct-v0.3"],
};

function llama(o: Record<string, unknown>): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    ...BASE_8B,
    vocab_size: 128256,
    rope_scaling: null,
    attention_bias: false,
    bos_token_id: 128000,
    eos_token_id: 128009,
    ...o,
  };
}

function mistral(o: Record<string, unknown>): Record<string, unknown> {
  return {
    architectures: ["MistralForCausalLM"],
    model_type: "mistral",
    ...BASE_8B,
    vocab_size: 32000,
    max_position_embeddings: 32768,
    rope_theta: 1000000,
    sliding_window: null,
    bos_token_id: 1,
    eos_token_id: 2,
    ...o,
  };
}

export interface FakeCheckpointOptions {
  /** A key of FAKE_PRESETS. */
  preset: string;
  /** Layers to keep (default: the preset's). */
  layers?: number;
  dtype?: FakeDtype;
  seed?: number;
  /** Largest shard; Hugging Face's default `max_shard_size` is 5 GB. */
  shardBytes?: number;
  /** Fields of config.json to override (tests shrink a layout with it). */
  overrides?: Record<string, unknown>;
  /** Called as bytes of tensor data are written. */
  onProgress?: (done: number, total: number) => void;
}

export interface FakeCheckpoint {
  dir: string;
  config: ModelConfig;
  /** config.json as written. */
  hfConfig: Record<string, unknown>;
  shards: string[];
  /** Bytes of tensor data (the index's metadata.total_size). */
  totalBytes: number;
}

/** The config.json a preset with these options writes. */
export function fakeHfConfig(o: FakeCheckpointOptions): Record<string, unknown> {
  const base = FAKE_PRESETS[o.preset];
  if (!base) {
    throw new Error(
      `unknown preset "${o.preset}" (presets: ${Object.keys(FAKE_PRESETS).join(", ")})`,
    );
  }
  const cfg = { ...base, ...o.overrides };
  if (o.layers !== undefined) cfg.num_hidden_layers = o.layers;
  cfg.torch_dtype = { bf16: "bfloat16", f16: "float16", f32: "float32" }[o.dtype ?? "bf16"];
  return cfg;
}

const DTYPE_NAME: Record<FakeDtype, string> = { bf16: "BF16", f16: "F16", f32: "F32" };
const DTYPE_BYTES: Record<FakeDtype, number> = { bf16: 2, f16: 2, f32: 4 };

/** 32-bit hash of a string (FNV-1a), to key each tensor's values. */
function nameHash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** A counter-based uniform in [0, 1): murmur3's finaliser over (key, index). */
function uniform(key: number, i: number): number {
  let x = (key ^ Math.imul(i, 0x9e3779b1)) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  x ^= x >>> 16;
  return (x >>> 0) / 4294967296;
}

/** Norm weights are 1 +- 0.1, biases and matrices +- 0.035 (std 0.02, as HF initialises). */
function isNorm(name: string): boolean {
  return name.endsWith("norm.weight");
}

/** Element `i` of tensor `name` in a checkpoint written with `seed` (before rounding to dtype). */
export function fakeValue(seed: number, name: string, i: number): number {
  const u = uniform((nameHash(name) ^ Math.imul(seed, 0x27d4eb2d)) >>> 0, i) * 2 - 1;
  return isNorm(name) ? 1 + 0.1 * u : 0.035 * u;
}

/** Fills `out` with elements [offset, offset + out.length) of tensor `name`. */
export function fakeValues(seed: number, name: string, offset: number, out: Float32Array): void {
  const key = (nameHash(name) ^ Math.imul(seed, 0x27d4eb2d)) >>> 0;
  const [scale, bias] = isNorm(name) ? [0.1, 1] : [0.035, 0];
  for (let j = 0; j < out.length; j++) out[j] = bias + scale * (uniform(key, offset + j) * 2 - 1);
}

const CHUNK = 1 << 21; // elements generated and written at a time

/** Writes a random-weight checkpoint of a preset's layout into `dir` (created if needed). */
export async function writeFakeCheckpoint(
  dir: string,
  o: FakeCheckpointOptions,
): Promise<FakeCheckpoint> {
  const dtype = o.dtype ?? "bf16";
  const seed = o.seed ?? 0;
  const shardBytes = o.shardBytes ?? 5e9;
  const hfConfig = fakeHfConfig(o);
  const config = parseHfConfig(hfConfig, `${dir}/config.json`, null);
  const tensors = [...hfTensorShapes(config)].map(([name, shape]) => ({
    name,
    shape,
    bytes: shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype],
  }));
  // Shards in state-dict order, a new one whenever the next tensor would overflow the current.
  const groups: (typeof tensors)[] = [[]];
  let size = 0;
  for (const t of tensors) {
    if (size > 0 && size + t.bytes > shardBytes) {
      groups.push([]);
      size = 0;
    }
    groups[groups.length - 1].push(t);
    size += t.bytes;
  }
  const total = tensors.reduce((a, t) => a + t.bytes, 0);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(hfConfig, null, 2) + "\n");
  await Deno.writeTextFile(
    `${dir}/generation_config.json`,
    JSON.stringify(
      { bos_token_id: hfConfig.bos_token_id, eos_token_id: hfConfig.eos_token_id },
      null,
      2,
    ) + "\n",
  );
  const n = groups.length;
  const shards: string[] = [];
  const weightMap: Record<string, string> = {};
  const f32 = new Float32Array(CHUNK);
  const bits = new Uint16Array(CHUNK);
  let done = 0;
  o.onProgress?.(0, total);
  for (let s = 0; s < n; s++) {
    const file = `model-${pad5(s + 1)}-of-${pad5(n)}.safetensors`;
    shards.push(file);
    const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
    let off = 0;
    for (const t of groups[s]) {
      header[t.name] = {
        dtype: DTYPE_NAME[dtype],
        shape: t.shape,
        data_offsets: [off, off + t.bytes],
      };
      off += t.bytes;
      weightMap[t.name] = file;
    }
    let json = JSON.stringify(header);
    json += " ".repeat((8 - (json.length % 8)) % 8);
    const h = new TextEncoder().encode(json);
    const f = await Deno.open(`${dir}/${file}`, { write: true, create: true, truncate: true });
    try {
      const len = new Uint8Array(8);
      new DataView(len.buffer).setBigUint64(0, BigInt(h.length), true);
      await writeAll(f, len);
      await writeAll(f, h);
      for (const t of groups[s]) {
        const count = t.bytes / DTYPE_BYTES[dtype];
        for (let i0 = 0; i0 < count; i0 += CHUNK) {
          const m = Math.min(CHUNK, count - i0);
          const vals = f32.subarray(0, m);
          fakeValues(seed, t.name, i0, vals);
          if (dtype === "f32") {
            await writeAll(f, new Uint8Array(vals.buffer, 0, m * 4));
          } else {
            if (dtype === "bf16") toBf16(vals, bits);
            else for (let j = 0; j < m; j++) bits[j] = f32ToF16Bits(vals[j]);
            await writeAll(f, new Uint8Array(bits.buffer, 0, m * 2));
          }
          done += m * DTYPE_BYTES[dtype];
          o.onProgress?.(done, total);
        }
      }
    } finally {
      f.close();
    }
  }
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + "\n",
  );
  return { dir, config, hfConfig, shards, totalBytes: total };
}

/** bf16 bits of finite f32 values, rounded to nearest even (f32ToBf16Bits without a per-value
 * allocation: an 8B checkpoint has 8e9 of them). */
function toBf16(vals: Float32Array, out: Uint16Array): void {
  const u = new Uint32Array(vals.buffer, vals.byteOffset, vals.length);
  for (let j = 0; j < u.length; j++) {
    const x = u[j];
    out[j] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
  }
}

function pad5(i: number): string {
  return String(i).padStart(5, "0");
}

async function writeAll(f: Deno.FsFile, data: Uint8Array): Promise<void> {
  let o = 0;
  while (o < data.length) o += await f.write(data.subarray(o));
}
