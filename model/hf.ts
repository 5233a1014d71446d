// Hugging Face checkpoint directories: `config.json` + safetensors weights (single or sharded),
// optionally `generation_config.json` (extra EOS ids) and `tokenizer.json` /
// `tokenizer_config.json` (the tokenizer, see tokenizer_hf.ts).
//
// Supported architectures: Llama (incl. Llama-3 rope scaling), Mistral, Qwen2 (q/k/v biases).
// Every tensor's shape is checked against the config before it is used.

import { SafetensorsSet } from "./safetensors.ts";
import { hostWeights, weightBytes } from "./tensors.ts";
import { HfTokenizer } from "./tokenizer_hf.ts";
import {
  type LayerWeights,
  type LoadedModel,
  type ModelConfig,
  ModelFormatError,
  type ModelWeights,
  type Tokenizer,
  type WeightTensor,
} from "./types.ts";

export const SUPPORTED_HF_ARCHITECTURES = [
  "LlamaForCausalLM",
  "MistralForCausalLM",
  "Qwen2ForCausalLM",
] as const;

const MODEL_TYPE_TO_ARCH: Record<string, string> = {
  llama: "LlamaForCausalLM",
  mistral: "MistralForCausalLM",
  qwen2: "Qwen2ForCausalLM",
};

function join(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

async function readJsonIfExists(path: string): Promise<Record<string, unknown> | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new ModelFormatError(`${path}: cannot read: ${(e as Error).message}`);
  }
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
      throw new Error("not a JSON object");
    }
    return v as Record<string, unknown>;
  } catch (e) {
    throw new ModelFormatError(`${path}: bad JSON: ${(e as Error).message}`);
  }
}

function idList(v: unknown): number[] {
  if (typeof v === "number") return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === "number");
  return [];
}

/**
 * A ModelConfig from a parsed `config.json` (`configPath` only names it in errors) and optionally
 * a parsed `generation_config.json` (its eos ids are added). `tiedEmbeddings` reflects
 * `tie_word_embeddings` only; {@link loadHfModel} also ties when `lm_head.weight` is absent.
 *
 * Notes: Mistral's `sliding_window` (when smaller than `max_position_embeddings`) caps `maxSeqLen`,
 * since we attend to the full context; `bosId` is -1 when neither file names one.
 */
export function parseHfConfig(
  cfg: Record<string, unknown>,
  configPath = "config.json",
  generationConfig: Record<string, unknown> | null = null,
): ModelConfig {
  const fail = (why: string) => new ModelFormatError(`${configPath}: ${why}`);
  const archs = Array.isArray(cfg.architectures) ? cfg.architectures as unknown[] : [];
  let arch: string | undefined;
  if (archs.length > 0) {
    arch = archs.find((a) => (SUPPORTED_HF_ARCHITECTURES as readonly unknown[]).includes(a)) as
      | string
      | undefined;
    if (!arch) {
      throw fail(
        `unsupported architecture ${archs.map((a) => JSON.stringify(a)).join(", ")}; ` +
          `supported: ${SUPPORTED_HF_ARCHITECTURES.join(", ")}`,
      );
    }
  } else if (typeof cfg.model_type === "string" && MODEL_TYPE_TO_ARCH[cfg.model_type]) {
    arch = MODEL_TYPE_TO_ARCH[cfg.model_type];
  } else {
    throw fail(
      `unsupported architecture (no "architectures", model_type ${
        JSON.stringify(cfg.model_type)
      }); supported: ${SUPPORTED_HF_ARCHITECTURES.join(", ")}`,
    );
  }

  const int = (key: string, dflt?: number): number => {
    const v = cfg[key] ?? dflt;
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      throw fail(`"${key}" must be a positive integer (got ${JSON.stringify(cfg[key])})`);
    }
    return v;
  };
  const num = (key: string, dflt: number): number => {
    const v = cfg[key] ?? dflt;
    if (typeof v !== "number" || !(v > 0)) {
      throw fail(`"${key}" must be a positive number (got ${JSON.stringify(cfg[key])})`);
    }
    return v;
  };

  const dim = int("hidden_size");
  const nHeads = int("num_attention_heads");
  const nKvHeads = int("num_key_value_heads", nHeads);
  if (nHeads % nKvHeads !== 0) {
    throw fail(
      `num_attention_heads ${nHeads} is not a multiple of num_key_value_heads ${nKvHeads}`,
    );
  }
  let headDim: number;
  if (cfg.head_dim === undefined || cfg.head_dim === null) {
    if (dim % nHeads !== 0) {
      throw fail(`hidden_size ${dim} is not divisible by num_attention_heads ${nHeads}`);
    }
    headDim = dim / nHeads;
  } else {
    headDim = int("head_dim");
  }

  const act = cfg.hidden_act ?? "silu";
  if (act !== "silu") throw fail(`unsupported hidden_act ${JSON.stringify(act)} (only "silu")`);
  if (cfg.mlp_bias === true) throw fail(`mlp_bias is not supported`);
  const qkvBias = arch === "Qwen2ForCausalLM";
  if (!qkvBias && cfg.attention_bias === true) {
    throw fail(`attention_bias (q/k/v/o biases) is not supported for ${arch}`);
  }
  if (arch === "Qwen2ForCausalLM" && cfg.use_sliding_window === true) {
    throw fail(`use_sliding_window is not supported`);
  }

  let maxSeqLen = int("max_position_embeddings", 2048);
  if (
    arch === "MistralForCausalLM" && typeof cfg.sliding_window === "number" &&
    cfg.sliding_window > 0 && cfg.sliding_window < maxSeqLen
  ) maxSeqLen = cfg.sliding_window;

  let ropeScaling: ModelConfig["ropeScaling"] = null;
  const rs = cfg.rope_scaling;
  if (rs !== undefined && rs !== null) {
    if (typeof rs !== "object") throw fail(`rope_scaling must be an object or null`);
    const r = rs as Record<string, unknown>;
    const type = r.rope_type ?? r.type;
    if (type === "llama3") {
      const f = (k: string): number => {
        const v = r[k];
        if (typeof v !== "number" || !(v > 0)) {
          throw fail(`rope_scaling.${k} must be a positive number (got ${JSON.stringify(v)})`);
        }
        return v;
      };
      ropeScaling = {
        factor: f("factor"),
        lowFreqFactor: f("low_freq_factor"),
        highFreqFactor: f("high_freq_factor"),
        originalMaxPositionEmbeddings: f("original_max_position_embeddings"),
      };
    } else if (type !== "default") {
      throw fail(
        `unsupported rope_scaling type ${JSON.stringify(type)} (supported: "llama3", "default")`,
      );
    }
  }

  const eos: number[] = [];
  for (const id of [...idList(cfg.eos_token_id), ...idList(generationConfig?.eos_token_id)]) {
    if (!eos.includes(id)) eos.push(id);
  }
  const bos = typeof cfg.bos_token_id === "number"
    ? cfg.bos_token_id
    : typeof generationConfig?.bos_token_id === "number"
    ? generationConfig.bos_token_id
    : -1;

  return {
    architecture: arch,
    dim,
    hiddenDim: int("intermediate_size"),
    nLayers: int("num_hidden_layers"),
    nHeads,
    nKvHeads,
    headDim,
    vocabSize: int("vocab_size"),
    maxSeqLen,
    normEps: num("rms_norm_eps", 1e-6),
    ropeTheta: num("rope_theta", 10000),
    ropeStyle: "half",
    ropeScaling,
    qkvBias,
    tiedEmbeddings: cfg.tie_word_embeddings === true,
    bosId: bos,
    eosIds: eos,
  };
}

/** Reads and parses `dir/config.json` (+ `generation_config.json`). */
export async function readHfConfig(dir: string): Promise<ModelConfig> {
  const configPath = join(dir, "config.json");
  const cfg = await readJsonIfExists(configPath);
  if (!cfg) throw new ModelFormatError(`${configPath}: not found (not a Hugging Face model dir?)`);
  const gen = await readJsonIfExists(join(dir, "generation_config.json"));
  return parseHfConfig(cfg, configPath, gen);
}

/** Tensor names and expected shapes of a model; `lm_head.weight` only when untied. */
export function hfTensorShapes(c: ModelConfig): Map<string, number[]> {
  const q = c.nHeads * c.headDim;
  const kv = c.nKvHeads * c.headDim;
  const m = new Map<string, number[]>();
  m.set("model.embed_tokens.weight", [c.vocabSize, c.dim]);
  for (let l = 0; l < c.nLayers; l++) {
    const p = `model.layers.${l}.`;
    m.set(p + "input_layernorm.weight", [c.dim]);
    m.set(p + "self_attn.q_proj.weight", [q, c.dim]);
    m.set(p + "self_attn.k_proj.weight", [kv, c.dim]);
    m.set(p + "self_attn.v_proj.weight", [kv, c.dim]);
    m.set(p + "self_attn.o_proj.weight", [c.dim, q]);
    if (c.qkvBias) {
      m.set(p + "self_attn.q_proj.bias", [q]);
      m.set(p + "self_attn.k_proj.bias", [kv]);
      m.set(p + "self_attn.v_proj.bias", [kv]);
    }
    m.set(p + "post_attention_layernorm.weight", [c.dim]);
    m.set(p + "mlp.gate_proj.weight", [c.hiddenDim, c.dim]);
    m.set(p + "mlp.up_proj.weight", [c.hiddenDim, c.dim]);
    m.set(p + "mlp.down_proj.weight", [c.dim, c.hiddenDim]);
  }
  m.set("model.norm.weight", [c.dim]);
  if (!c.tiedEmbeddings) m.set("lm_head.weight", [c.vocabSize, c.dim]);
  return m;
}

export interface HfLoadOptions {
  /** tokenizer.json (or a directory holding it) to use instead of the model dir's. */
  tokenizerPath?: string;
  /** Called with bytes of tensor data read so far and the total. */
  onProgress?: (done: number, total: number) => void;
  /** Skip the tokenizer (default: load it when tokenizer.json exists). */
  noTokenizer?: boolean;
}

/** Loads a Hugging Face model directory with every weight on the host as f32 (small models). */
export async function loadHfModel(dir: string, opts: HfLoadOptions = {}): Promise<LoadedModel> {
  const m = await openHfModel(dir, opts);
  try {
    const total = m.weightBytes;
    let done = 0;
    opts.onProgress?.(0, total);
    const weights = await hostWeights(m.weights, (bytes) => {
      done += bytes;
      opts.onProgress?.(done, total);
    });
    return { source: dir, config: m.config, weights, tokenizer: m.tokenizer };
  } finally {
    m.close();
  }
}

/** A Hugging Face model whose weights stay on disk until read (`close` when done with them). */
export interface OpenModel {
  source: string;
  config: ModelConfig;
  weights: ModelWeights<WeightTensor>;
  tokenizer: Tokenizer | null;
  /** Bytes of tensor data in the files. */
  weightBytes: number;
  close(): void;
}

/**
 * Opens a Hugging Face model directory: config, every tensor's header entry (presence, dtype and
 * shape checked before any data is read) and the tokenizer. No weight data is read.
 */
export async function openHfModel(dir: string, opts: HfLoadOptions = {}): Promise<OpenModel> {
  const config = await readHfConfig(dir);
  const st = await SafetensorsSet.openDir(dir);
  let weights: ModelWeights<WeightTensor>;
  try {
    if (!config.tiedEmbeddings && !st.has("lm_head.weight")) config.tiedEmbeddings = true;
    const t = new Map<string, WeightTensor>();
    for (const [name, shape] of hfTensorShapes(config)) {
      const w = await st.lazy(name, shape);
      t.set(name, w);
    }
    const get = (n: string) => t.get(n)!;
    const layers: LayerWeights<WeightTensor>[] = [];
    for (let l = 0; l < config.nLayers; l++) {
      const p = `model.layers.${l}.`;
      const lw: LayerWeights<WeightTensor> = {
        attnNorm: get(p + "input_layernorm.weight"),
        wq: get(p + "self_attn.q_proj.weight"),
        wk: get(p + "self_attn.k_proj.weight"),
        wv: get(p + "self_attn.v_proj.weight"),
        wo: get(p + "self_attn.o_proj.weight"),
        ffnNorm: get(p + "post_attention_layernorm.weight"),
        wGate: get(p + "mlp.gate_proj.weight"),
        wDown: get(p + "mlp.down_proj.weight"),
        wUp: get(p + "mlp.up_proj.weight"),
      };
      if (config.qkvBias) {
        lw.bq = get(p + "self_attn.q_proj.bias");
        lw.bk = get(p + "self_attn.k_proj.bias");
        lw.bv = get(p + "self_attn.v_proj.bias");
      }
      layers.push(lw);
    }
    const tokenEmbedding = get("model.embed_tokens.weight");
    weights = {
      tokenEmbedding,
      layers,
      finalNorm: get("model.norm.weight"),
      lmHead: config.tiedEmbeddings ? tokenEmbedding : get("lm_head.weight"),
    };
  } catch (e) {
    st.close();
    throw e;
  }
  let tokenizer: Tokenizer | null;
  try {
    tokenizer = await loadHfTokenizer(dir, config, opts);
  } catch (e) {
    st.close();
    throw e;
  }
  return {
    source: dir,
    config,
    weights,
    tokenizer,
    weightBytes: weightBytes(weights),
    close: () => st.close(),
  };
}

async function loadHfTokenizer(
  dir: string,
  config: ModelConfig,
  opts: HfLoadOptions,
): Promise<Tokenizer | null> {
  let tokenizer: Tokenizer | null = null;
  if (!opts.noTokenizer) {
    const tokPath = opts.tokenizerPath ?? dir;
    const tokFile = tokPath.endsWith(".json") ? tokPath : join(tokPath, "tokenizer.json");
    let present = true;
    try {
      await Deno.stat(tokFile);
    } catch {
      present = false;
    }
    if (present) {
      tokenizer = await HfTokenizer.load(tokPath, {
        bosId: config.bosId >= 0 ? config.bosId : undefined,
        eosIds: config.eosIds,
      });
    } else if (opts.tokenizerPath !== undefined) {
      throw new ModelFormatError(`${tokFile}: tokenizer not found`);
    }
  }
  return tokenizer;
}
