// The model description every loader produces and every consumer (GPU runner, CPU reference,
// plans, cache manager) reads. Weights are host f32 tensors (small models) or WeightTensors still
// on disk, which the runner streams to the GPU in the precision it runs at.

/** How RoPE pairs the dimensions of a head: llama2.c rotates interleaved pairs (2i, 2i+1); Hugging
 * Face Llama checkpoints rotate the two halves (i, i + headDim/2). */
export type RopeStyle = "interleaved" | "half";

/** Llama-3 style frequency scaling (`rope_scaling.rope_type == "llama3"`). */
export interface Llama3RopeScaling {
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface ModelConfig {
  /** e.g. "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "llama2.c". */
  architecture: string;
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  vocabSize: number;
  /** Longest context the model was trained for. */
  maxSeqLen: number;
  normEps: number;
  ropeTheta: number;
  ropeStyle: RopeStyle;
  ropeScaling: Llama3RopeScaling | null;
  /** Per-pair frequency factors (a GGUF's `rope_freqs.weight`, Llama-3.1's scaling as
   * llama.cpp stores it): inv_freq[i] is divided by factor[i]. */
  ropeFreqFactors?: number[];
  /** Qwen2: q/k/v projections carry biases. */
  qkvBias: boolean;
  /** LM head shares the token embedding matrix. */
  tiedEmbeddings: boolean;
  bosId: number;
  eosIds: number[];
}

export type SourceDtype = "f32" | "f16" | "bf16";

/**
 * A weight tensor that may still be on disk: its shape, the dtype the file stores, and a reader
 * of any element range in that dtype's raw little-endian bytes. The GPU upload streams tensors
 * through it chunk by chunk, so no whole model is ever held on the host.
 */
export interface WeightTensor {
  name: string;
  shape: number[];
  sourceDtype: SourceDtype;
  /** Raw bytes of elements [offset, offset + count) (row-major), in `sourceDtype`. */
  readRaw(offset: number, count: number): Promise<Uint8Array>;
  /** A GGUF quantized tensor's own blocks (`readRaw` decodes them to f32): the bytes of the
   * blocks of elements [offset, offset + count), whole blocks. */
  blocks?: {
    type: "q8_0" | "q4_0" | "q5_0" | "q4_k" | "q5_k" | "q6_k";
    read(offset: number, count: number): Promise<Uint8Array>;
  };
}

/** A dense row-major tensor on the host; `sourceDtype` is what the file stored. */
export interface HostTensor {
  name: string;
  shape: number[];
  sourceDtype: SourceDtype;
  data: Float32Array;
}

/** A weight tensor on the host or still on disk. */
export type AnyTensor = HostTensor | WeightTensor;

/** Linear weights are stored as [out, in] row-major (Hugging Face and llama2.c layout). `T` is
 * HostTensor for weights on the host, WeightTensor for weights that may still be on disk. */
export interface LayerWeights<T = HostTensor> {
  attnNorm: T; // [dim]
  wq: T; // [nHeads*headDim, dim]
  wk: T; // [nKvHeads*headDim, dim]
  wv: T; // [nKvHeads*headDim, dim]
  wo: T; // [dim, nHeads*headDim]
  bq?: T; // [nHeads*headDim] (Qwen2)
  bk?: T; // [nKvHeads*headDim]
  bv?: T; // [nKvHeads*headDim]
  ffnNorm: T; // [dim]
  wGate: T; // [hiddenDim, dim]  (llama2.c w1)
  wDown: T; // [dim, hiddenDim]  (llama2.c w2)
  wUp: T; // [hiddenDim, dim]    (llama2.c w3)
}

export interface ModelWeights<T = HostTensor> {
  tokenEmbedding: T; // [vocab, dim]
  layers: LayerWeights<T>[];
  finalNorm: T; // [dim]
  /** [vocab, dim]; the same object as tokenEmbedding when tied. */
  lmHead: T;
}

export interface ChatMessage {
  role: string;
  content: string;
}

/** What a worker thread needs to build the same tokenizer: plain, structured-cloneable data. */
export type PortableTokenizer =
  | { kind: "llama2c"; pieces: Uint8Array[]; scores: Float32Array; maxTokenLength: number }
  | {
    kind: "hf";
    tokenizerJson: Record<string, unknown>;
    tokenizerConfig: Record<string, unknown>;
    options: { bosId?: number; eosIds?: number[]; chatTemplate?: string };
  };

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosIds: number[];
  /** No token covers more than this many UTF-8 bytes of input text, so a text of B bytes is at
   * least B / maxBytesPerToken tokens. Undefined where the pipeline may drop text (a normalizer
   * that strips, a pre-tokenizer that removes whitespace, a whole-word unknown token). */
  readonly maxBytesPerToken?: number;
  /** The same tokenizer as data, for a worker thread (absent: encode on this thread only). */
  readonly portable?: PortableTokenizer;
  /** Encodes as the model's reference implementation does (BOS included when it adds one).
   * `addSpecialTokens: false` leaves BOS (and other post-processor tokens) out, e.g. for a
   * rendered chat template that already starts with the BOS text. Default true. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  decode(ids: number[]): string;
  /** Renders a chat with the model's template; undefined when the model has none. */
  applyChatTemplate?(messages: ChatMessage[], addGenerationPrompt: boolean): string;
}

/** A model ready to run. `T` is HostTensor when every weight is on the host (small models, the
 * CPU reference), WeightTensor when they stay on disk until the GPU upload streams them. */
export interface LoadedModel<T extends AnyTensor = HostTensor> {
  /** Directory or file the model came from. */
  source: string;
  config: ModelConfig;
  weights: ModelWeights<T>;
  tokenizer: Tokenizer | null;
  /** Releases the files a lazily loaded model reads from. */
  close?(): void;
}

/** An error a user can act on: names the file (and tensor) involved. */
export class ModelFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ModelFormatError";
  }
}
