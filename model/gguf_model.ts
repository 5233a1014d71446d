// A GGUF file (llama.cpp's and Ollama's format) as a model: config from its metadata, weights as
// tensors read from the file on demand, the tokenizer from its own vocabulary when it is a
// SentencePiece (`llama`) or byte-level BPE (`gpt2`, with a pre-tokenizer zigzag knows) one, and
// the chat template from `tokenizer.chat_template`.
//
// Architecture `llama` (Llama and Mistral; llama.cpp's converter permutes q and k rows for its
// interleaved-pair RoPE, so the weights run with `ropeStyle: "interleaved"` as stored). Tensor
// types F32, F16, BF16 are read as they are. Quantized tensors (Q8_0, Q4_0, Q5_0, Q4_K, Q5_K,
// Q6_K) expose their raw blocks (`WeightTensor.blocks`): with `--weights native` (the default)
// the GPU upload packs them as stored and the matmul dequantizes them in its inner loop
// (wgsl/w_<format>.wgsl); `readRaw` decodes them on the host into f32 rows (model/gguf_blocks.ts)
// for every other case (a float run, a fused matrix of mixed types, requantizing on load).

import { BLOCK_FORMATS, dequantizeRow, type GgmlType } from "./gguf_blocks.ts";
import {
  type GgufFile,
  GgufReader,
  type GgufTensorInfo,
  metaBoolOpt,
  metaNumber,
  metaNumberArrayOpt,
  metaNumberOpt,
  metaString,
  metaStringArrayOpt,
  metaStringOpt,
} from "./gguf.ts";
import { Template } from "@huggingface/jinja";
import { HfTokenizer } from "./tokenizer_hf.ts";
import { Llama2cTokenizer } from "./tokenizer_llama2c.ts";
import {
  type ChatMessage,
  type LayerWeights,
  type LoadedModel,
  type ModelConfig,
  ModelFormatError,
  type ModelWeights,
  type Tokenizer,
  type WeightTensor,
} from "./types.ts";

/** The GGUF architectures zigzag runs. */
export const GGUF_ARCHITECTURES = ["llama"] as const;

/** Tensor types a GGUF model may store its weights in. */
export const GGUF_TENSOR_TYPES: readonly GgmlType[] = [
  "F32",
  "F16",
  "BF16",
  "Q8_0",
  "Q4_0",
  "Q5_0",
  "Q4_K",
  "Q5_K",
  "Q6_K",
];

/** The config a GGUF's llama.* metadata describes. */
export function ggufConfig(f: GgufFile): ModelConfig {
  const arch = metaString(f, "general.architecture");
  if (!(GGUF_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new ModelFormatError(
      `${f.path}: unsupported GGUF architecture "${arch}"; supported: ${
        GGUF_ARCHITECTURES.join(", ")
      } (Llama, Mistral)`,
    );
  }
  const k = (name: string) => `${arch}.${name}`;
  const dim = metaNumber(f, k("embedding_length"));
  const nHeads = metaNumber(f, k("attention.head_count"));
  const nKvHeads = metaNumberOpt(f, k("attention.head_count_kv")) ?? nHeads;
  const embd = f.tensorsByName.get("token_embd.weight");
  if (!embd) throw new ModelFormatError(`${f.path}: no tensor token_embd.weight`);
  const tokens = metaStringArrayOpt(f, "tokenizer.ggml.tokens");
  if (f.tensorsByName.has("blk.0.attn_q.bias")) {
    throw new ModelFormatError(`${f.path}: q/k/v biases are not supported for GGUF llama models`);
  }
  const eos = metaNumberOpt(f, "tokenizer.ggml.eos_token_id");
  return {
    architecture: "LlamaForCausalLM",
    dim,
    hiddenDim: metaNumber(f, k("feed_forward_length")),
    nLayers: metaNumber(f, k("block_count")),
    nHeads,
    nKvHeads,
    headDim: metaNumberOpt(f, k("attention.key_length")) ?? dim / nHeads,
    vocabSize: embd.dims[1] ?? tokens?.length ?? 0,
    maxSeqLen: metaNumber(f, k("context_length")),
    normEps: metaNumberOpt(f, k("attention.layer_norm_rms_epsilon")) ?? 1e-5,
    ropeTheta: metaNumberOpt(f, k("rope.freq_base")) ?? 10000,
    ropeStyle: "interleaved",
    ropeScaling: null,
    qkvBias: false,
    tiedEmbeddings: !f.tensorsByName.has("output.weight"),
    bosId: metaNumberOpt(f, "tokenizer.ggml.bos_token_id") ?? 1,
    eosIds: eos === undefined ? [] : [eos],
  };
}

/** A tensor of the file as a WeightTensor (shape in PyTorch order: ggml's dims reversed). */
function ggufTensor(r: GgufReader, info: GgufTensorInfo): WeightTensor {
  const type = info.typeName;
  if (!GGUF_TENSOR_TYPES.includes(type)) {
    throw new ModelFormatError(
      `${r.file.path}: tensor ${info.name} has type ${type}; supported: ${
        GGUF_TENSOR_TYPES.join(", ")
      }`,
    );
  }
  const shape = [...info.dims].reverse();
  const fmt = BLOCK_FORMATS[type];
  const name = info.name;
  if (type === "F32" || type === "F16" || type === "BF16") {
    const e = fmt.blockBytes;
    return {
      name,
      shape,
      sourceDtype: type === "F32" ? "f32" : type === "F16" ? "f16" : "bf16",
      readRaw: (offset, count) => r.read(info, offset * e, count * e),
    };
  }
  const cols = info.dims[0];
  if (cols % fmt.blockElems !== 0) {
    throw new ModelFormatError(
      `${r.file.path}: tensor ${name}: rows of ${cols} are not whole ${type} blocks`,
    );
  }
  // Element ranges the upload reads are whole rows, so whole blocks.
  const blockRange = (offset: number, count: number) => {
    if (offset % fmt.blockElems !== 0 || count % fmt.blockElems !== 0) {
      throw new RangeError(`${name}: reads must cover whole ${type} blocks`);
    }
    return r.read(
      info,
      (offset / fmt.blockElems) * fmt.blockBytes,
      (count / fmt.blockElems) * fmt.blockBytes,
    );
  };
  const t: WeightTensor = {
    name,
    shape,
    sourceDtype: "f32",
    readRaw: async (offset, count) => {
      const out = dequantizeRow(type, await blockRange(offset, count), count);
      return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    },
  };
  t.blocks = {
    type: type.toLowerCase() as NonNullable<WeightTensor["blocks"]>["type"],
    read: blockRange,
  };
  return t;
}

/** A SentencePiece vocabulary of a GGUF (`tokenizer.ggml.model` "llama"): llama2.c's encoder
 * over the same pieces (▁ as a space, as llama2.c's exporter writes them), the file's EOS, and
 * its chat template. */
class GgufSpmTokenizer extends Llama2cTokenizer {
  override readonly eosIds: number[];
  readonly applyChatTemplate?: (messages: ChatMessage[], addGenerationPrompt: boolean) => string;

  constructor(pieces: Uint8Array[], scores: Float32Array, eosIds: number[], template?: string) {
    super(pieces, scores, Math.max(1, ...pieces.map((p) => p.length)));
    this.eosIds = eosIds;
    if (template !== undefined) {
      const t = new Template(template);
      // The encoder adds BOS itself: the template's bos_token renders as "" (engine/chat.ts).
      this.applyChatTemplate = (messages, gen) =>
        t.render({ messages, add_generation_prompt: gen, bos_token: "", eos_token: "" });
    }
  }
}

/** Pre-tokenizers of the `tokenizer.ggml.pre` values zigzag knows, as tokenizer.json writes
 * them (llama.cpp's names; each checked against the Hugging Face tokenizer it stands for). */
const BPE_PRE_TOKENIZERS: Record<string, Record<string, unknown>> = {
  gpt2: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  // Llama 3 (and 3.1, 3.2): its tokenizer.json's Split, then bytes without GPT-2's regex.
  "llama-bpe": {
    type: "Sequence",
    pretokenizers: [
      {
        type: "Split",
        pattern: {
          Regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?" +
            "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        },
        behavior: "Isolated",
        invert: false,
      },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  },
  smollm: {
    type: "Sequence",
    pretokenizers: [
      { type: "Digits", individual_digits: true },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    ],
  },
};

/**
 * A byte-level BPE vocabulary (`tokenizer.ggml.model` "gpt2") as a Hugging Face tokenizer:
 * tokenizer.json rebuilt from the file's tokens, merges and token types (3 control and 4
 * user-defined tokens become added tokens, special when control), with the pre-tokenizer its
 * `tokenizer.ggml.pre` names.
 */
function ggufBpeTokenizer(
  f: GgufFile,
  config: Pick<ModelConfig, "bosId" | "eosIds">,
  tokens: string[],
): Tokenizer {
  const pre = metaStringOpt(f, "tokenizer.ggml.pre") ?? "gpt2";
  const preTokenizer = BPE_PRE_TOKENIZERS[pre === "default" ? "gpt2" : pre];
  if (!preTokenizer) {
    throw new ModelFormatError(
      `${f.path}: BPE pre-tokenizer "${pre}" is not one zigzag rebuilds (${
        Object.keys(BPE_PRE_TOKENIZERS).join(", ")
      }); pass --tokenizer with the model's tokenizer.json`,
    );
  }
  const merges = metaStringArrayOpt(f, "tokenizer.ggml.merges") ?? [];
  const types = metaNumberArrayOpt(f, "tokenizer.ggml.token_type") ?? [];
  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => (vocab[t] = i));
  const added = tokens.flatMap((t, id) =>
    types[id] === 3 || types[id] === 4
      ? [{
        id,
        content: t,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: types[id] === 3,
      }]
      : []
  );
  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: null as Record<string, unknown> | null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
  const text = (id: number | undefined) => id === undefined ? undefined : tokens[id];
  // `add_bos_token` (Llama 3 sets it): the post-processor puts BOS before every encoding.
  const bos = metaNumberOpt(f, "tokenizer.ggml.bos_token_id");
  if (bos !== undefined && metaBoolOpt(f, "tokenizer.ggml.add_bos_token")) {
    const b = { SpecialToken: { id: tokens[bos], type_id: 0 } };
    tokenizerJson.post_processor = {
      type: "TemplateProcessing",
      single: [b, { Sequence: { id: "A", type_id: 0 } }],
      pair: [b, { Sequence: { id: "A", type_id: 0 } }, b, { Sequence: { id: "B", type_id: 1 } }],
      special_tokens: { [tokens[bos]]: { id: tokens[bos], ids: [bos], tokens: [tokens[bos]] } },
    };
  }
  const tokenizerConfig: Record<string, unknown> = {
    bos_token: text(metaNumberOpt(f, "tokenizer.ggml.bos_token_id")),
    eos_token: text(config.eosIds[0]),
    chat_template: metaStringOpt(f, "tokenizer.chat_template"),
  };
  return new HfTokenizer(tokenizerJson, tokenizerConfig, { eosIds: config.eosIds });
}

/** The GGUF's own tokenizer, or null when its vocabulary is not one zigzag reads. */
export function ggufTokenizer(
  f: GgufFile,
  config: Pick<ModelConfig, "bosId" | "eosIds">,
): Tokenizer | null {
  const model = metaStringOpt(f, "tokenizer.ggml.model");
  const tokens = metaStringArrayOpt(f, "tokenizer.ggml.tokens");
  if (model === "gpt2" && tokens) return ggufBpeTokenizer(f, config, tokens);
  if (model !== "llama" || !tokens) return null;
  if (config.bosId !== 1) {
    throw new ModelFormatError(
      `${f.path}: SentencePiece vocabulary with BOS ${config.bosId}; zigzag's llama encoder ` +
        "expects BOS 1 (pass --tokenizer)",
    );
  }
  const scores = metaNumberArrayOpt(f, "tokenizer.ggml.scores") ?? tokens.map(() => 0);
  const enc = new TextEncoder();
  const pieces = tokens.map((t) => enc.encode(t.replaceAll("\u2581", " ")));
  return new GgufSpmTokenizer(
    pieces,
    Float32Array.from(scores),
    config.eosIds,
    metaStringOpt(f, "tokenizer.chat_template"),
  );
}

/**
 * Opens a GGUF model: header and metadata now, tensor data when the upload reads it. `tokenizer`
 * replaces the file's own (required when its vocabulary is not SentencePiece). `close()` when
 * done.
 */
export async function openGgufModel(
  path: string,
  tokenizer?: Tokenizer | null,
): Promise<LoadedModel<WeightTensor>> {
  const r = await GgufReader.open(path);
  try {
    const f = r.file;
    const config = ggufConfig(f);
    // Llama-3.1's RoPE scaling, as llama.cpp's converter stores it: a factor per pair.
    const freqs = f.tensorsByName.get("rope_freqs.weight");
    if (freqs) {
      const t = ggufTensor(r, freqs);
      if (t.sourceDtype !== "f32" || t.shape.reduce((a, b) => a * b, 1) !== config.headDim / 2) {
        throw new ModelFormatError(
          `${path}: rope_freqs.weight must be ${config.headDim / 2} F32 factors`,
        );
      }
      const raw = await t.readRaw(0, config.headDim / 2);
      config.ropeFreqFactors = Array.from(new Float32Array(raw.slice().buffer));
    }
    const t = (name: string) => {
      const info = f.tensorsByName.get(name);
      if (!info) throw new ModelFormatError(`${path}: no tensor ${name}`);
      return ggufTensor(r, info);
    };
    const layers: LayerWeights<WeightTensor>[] = [];
    for (let l = 0; l < config.nLayers; l++) {
      const p = `blk.${l}.`;
      layers.push({
        attnNorm: t(p + "attn_norm.weight"),
        wq: t(p + "attn_q.weight"),
        wk: t(p + "attn_k.weight"),
        wv: t(p + "attn_v.weight"),
        wo: t(p + "attn_output.weight"),
        ffnNorm: t(p + "ffn_norm.weight"),
        wGate: t(p + "ffn_gate.weight"),
        wUp: t(p + "ffn_up.weight"),
        wDown: t(p + "ffn_down.weight"),
      });
    }
    const tokenEmbedding = t("token_embd.weight");
    const weights: ModelWeights<WeightTensor> = {
      tokenEmbedding,
      layers,
      finalNorm: t("output_norm.weight"),
      lmHead: config.tiedEmbeddings ? tokenEmbedding : t("output.weight"),
    };
    const own = tokenizer === undefined ? ggufTokenizer(f, config) : tokenizer;
    if (own === null && tokenizer === undefined) {
      throw new ModelFormatError(
        `${path}: the GGUF's vocabulary (tokenizer.ggml.model ${
          JSON.stringify(metaStringOpt(f, "tokenizer.ggml.model") ?? "none")
        }) is not one zigzag reads (llama: SentencePiece, gpt2: byte-level BPE); pass --tokenizer`,
      );
    }
    return { source: path, config, weights, tokenizer: own, close: () => r.close() };
  } catch (e) {
    r.close();
    throw e;
  }
}
