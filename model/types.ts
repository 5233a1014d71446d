// The model description every loader produces and every consumer (GPU runner, CPU reference,
// plans, cache manager) reads. Weights live on the host as f32 until the runner uploads them in
// the precision it runs at.

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
  /** Qwen2: q/k/v projections carry biases. */
  qkvBias: boolean;
  /** LM head shares the token embedding matrix. */
  tiedEmbeddings: boolean;
  bosId: number;
  eosIds: number[];
}

/** A dense row-major tensor on the host; `sourceDtype` is what the file stored. */
export interface HostTensor {
  name: string;
  shape: number[];
  sourceDtype: "f32" | "f16" | "bf16";
  data: Float32Array;
}

/** Linear weights are stored as [out, in] row-major (Hugging Face and llama2.c layout). */
export interface LayerWeights {
  attnNorm: HostTensor; // [dim]
  wq: HostTensor; // [nHeads*headDim, dim]
  wk: HostTensor; // [nKvHeads*headDim, dim]
  wv: HostTensor; // [nKvHeads*headDim, dim]
  wo: HostTensor; // [dim, nHeads*headDim]
  bq?: HostTensor; // [nHeads*headDim] (Qwen2)
  bk?: HostTensor; // [nKvHeads*headDim]
  bv?: HostTensor; // [nKvHeads*headDim]
  ffnNorm: HostTensor; // [dim]
  wGate: HostTensor; // [hiddenDim, dim]  (llama2.c w1)
  wDown: HostTensor; // [dim, hiddenDim]  (llama2.c w2)
  wUp: HostTensor; // [hiddenDim, dim]    (llama2.c w3)
}

export interface ModelWeights {
  tokenEmbedding: HostTensor; // [vocab, dim]
  layers: LayerWeights[];
  finalNorm: HostTensor; // [dim]
  /** [vocab, dim]; the same object as tokenEmbedding when tied. */
  lmHead: HostTensor;
}

export interface ChatMessage {
  role: string;
  content: string;
}

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosIds: number[];
  /** Encodes as the model's reference implementation does (BOS included when it adds one).
   * `addSpecialTokens: false` leaves BOS (and other post-processor tokens) out, e.g. for a
   * rendered chat template that already starts with the BOS text. Default true. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  decode(ids: number[]): string;
  /** Renders a chat with the model's template; undefined when the model has none. */
  applyChatTemplate?(messages: ChatMessage[], addGenerationPrompt: boolean): string;
}

export interface LoadedModel {
  /** Directory or file the model came from. */
  source: string;
  config: ModelConfig;
  weights: ModelWeights;
  tokenizer: Tokenizer | null;
}

/** An error a user can act on: names the file (and tensor) involved. */
export class ModelFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ModelFormatError";
  }
}
