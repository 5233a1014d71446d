// A hand-built Llama whose only long-range retrieval lives in one known layer: the ground truth for
// `plan identify` (tests/identify_test.ts).
//
// Tokens are characters (71 ids: BOS, 8 punctuation/space symbols, 10 digits, 52 letters). The
// residual stream (dim 320) is a set of disjoint subspaces, each a one-hot code:
//   E   the current token id (71)          K   the current token's class (27: space, newline,
//   C   a constant 1                           '.', '?', other punctuation, 10 digits, and the
//   P1  the class of the token one back        letters case-folded into 12 groups)
//   P2  the class of the token two back    O   the token the induction head copies (71)
//   P3  the class of the token three back  J   junk written by the local heads (27, weight 0.05)
// Every feed-forward block is zero, every norm weight 1, so a layer is its attention heads.
//
// Positional ("local") heads. RoPE theta is 1e12 with head_dim 128, so pair k rotates by
// w_k = 1e12^(-k/64) per position: pairs 0..15 span 1 .. 1e-3 rad/token, pairs 22..63 turn by less
// than 7.5e-5 rad/token (under 0.08 rad across 1024 tokens: effectively position-free). A local
// head's key is a constant (from C) on pairs 0..15; its query is the same constant rotated back by
// delta * w_k, so its logit for key j is A * sum_k cos(w_k (i - j - delta)): a peak at
// j = i - delta, 0.82*A lower one token away, 2.7*A two away, at least 6.7*A lower eight or more
// tokens away (checked numerically over 4096 positions). With A = 20 per pair the head attends to
// exactly one token, delta back, whatever the content; a streaming mask that keeps the recent
// window therefore changes nothing.
//
// The circuit (an induction head, as in Olsson et al.):
//   layer 0: query heads 0, 1, 2 (deltas 1, 2, 3) copy K into P1, P2, P3; query head 3 (delta 0)
//            writes junk.
//   layer 1: local heads only (deltas 1, 3 / 0, 2) writing junk.
//   layer 2 (the planted layer), KV head 0, both query heads: content attention on the slow
//            pairs with query [K_i, P1_i, P2_i, 0.5*C] against key [P1_j, P2_j, P3_j, digit(E_j)]:
//            a key scores one unit per match of tok(i) ~ tok(j-1), tok(i-1) ~ tok(j-2) and
//            tok(i-2) ~ tok(j-3) (same class) plus half a unit when token j is a digit; 24 logits
//            per unit. The value is E_j, written to O. So the head finds the previous occurrence
//            of the last three tokens and copies the token after it, preferring digits: after
//            "...The pass key is " the context "is " plus the digit bonus singles out the needle's
//            first digit, and each further digit's context is unique in a document whose only
//            digits are the needle (and the answer being produced), repeated digits included.
//            KV head 1: local heads writing junk.
//   layer 3: local heads only.
//   LM head: logit 12 for the token held in O (the final norm's scale accounted for).
// Full attention answers the pass-key question exactly; with layer 2 streaming the needle leaves
// the induction head's window and the answer is lost, while streaming any other layer changes
// nothing. Random token blocks repeated 4 times light up the same head (induction ~1).

import type {
  HostTensor,
  LayerWeights,
  ModelConfig,
  ModelWeights,
  Tokenizer,
} from "../model/types.ts";
import type { LoadedModel } from "../model/types.ts";

export const PLANTED_LAYER = 2;
export const PLANTED_KV_HEAD = 0;

const SYMBOLS = ["\n", " ", ".", "?", ",", '"', "'", "!"];
const DIGITS = "0123456789".split("");
const LOWER = "abcdefghijklmnopqrstuvwxyz".split("");
const UPPER = LOWER.map((c) => c.toUpperCase());
/** id -> character; id 0 is BOS. */
const CHARS = ["", ...SYMBOLS, ...DIGITS, ...LOWER, ...UPPER];
const VOCAB = CHARS.length; // 71
const BOS = 0;

/** Class of a token id: 0 space, 1 newline, 2 '.', 3 '?', 4 other (punctuation, BOS), 5..14
 * digits, 15..26 letters (case folded, letter index mod 12). */
function classOf(id: number): number {
  const ch = CHARS[id];
  if (ch === " ") return 0;
  if (ch === "\n") return 1;
  if (ch === ".") return 2;
  if (ch === "?") return 3;
  const d = DIGITS.indexOf(ch);
  if (d >= 0) return 5 + d;
  const l = LOWER.indexOf(ch.toLowerCase());
  if (l >= 0 && ch !== "") return 15 + (l % LETTER_GROUPS);
  return 4;
}
const LETTER_GROUPS = 12;
const CLASSES = 15 + LETTER_GROUPS;
const isDigit = (id: number) => DIGITS.includes(CHARS[id]);

/** Character-level tokenizer of the planted model (BOS first; unknown characters become " "). */
export class PlantedTokenizer implements Tokenizer {
  readonly vocabSize = VOCAB;
  readonly bosId = BOS;
  readonly eosIds: number[] = [];
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    const ids = opts.addSpecialTokens === false ? [] : [BOS];
    for (const ch of text) {
      const i = CHARS.indexOf(ch);
      ids.push(i > 0 ? i : CHARS.indexOf(" "));
    }
    return ids;
  }
  decode(ids: number[]): string {
    return ids.map((i) => CHARS[i] ?? "").join("");
  }
}

// Residual layout.
const E0 = 0;
const K0 = E0 + VOCAB;
const C0 = K0 + CLASSES;
const P10 = C0 + 1;
const P20 = P10 + CLASSES;
const P30 = P20 + CLASSES;
const O0 = P30 + CLASSES;
const J0 = O0 + VOCAB;
const DIM = 320;
if (J0 + CLASSES > DIM) throw new Error("planted layout does not fit");

const HEAD_DIM = 128;
const N_HEADS = 4;
const N_KV = 2;
const THETA = 1e12;
const POS_PAIRS = 16; // pairs 0..15 carry position
const CONTENT_PAIR0 = 22; // pairs 22..63 are (nearly) position-free
const A = 20; // logit per positional pair
const UNIT = 24; // induction logit per matched feature

export function plantedConfig(): ModelConfig {
  return {
    architecture: "LlamaForCausalLM",
    dim: DIM,
    hiddenDim: 32,
    nLayers: 4,
    nHeads: N_HEADS,
    nKvHeads: N_KV,
    headDim: HEAD_DIM,
    vocabSize: VOCAB,
    maxSeqLen: 1024,
    normEps: 1e-6,
    ropeTheta: THETA,
    ropeStyle: "half",
    ropeScaling: null,
    qkvBias: false,
    tiedEmbeddings: false,
    bosId: BOS,
    eosIds: [],
  };
}

function tensor(name: string, shape: number[]): HostTensor {
  return { name, shape, sourceDtype: "f32", data: new Float32Array(shape[0] * (shape[1] ?? 1)) };
}

/** Dimension of content slot f (0..83) within a head: both halves of pairs 22..63. */
function slot(f: number): number {
  const n = 64 - CONTENT_PAIR0; // 42 pairs
  if (f >= 2 * n) throw new Error(`content slot ${f} does not fit`);
  return f < n ? CONTENT_PAIR0 + f : 64 + CONTENT_PAIR0 + (f - n);
}

export function plantedModel(): LoadedModel {
  const c = plantedConfig();
  const qDim = N_HEADS * HEAD_DIM;
  const kvDim = N_KV * HEAD_DIM;
  // Sum of squares of the residual at each layer's input (sharp attention, junk neglected):
  // E, K, C = 3; + P1, P2, P3 after layer 0; + O after layer 2 (layer 3 and the final norm).
  const ss = [3, 6, 6, 7, 7];
  const gamma = ss.map((s) => Math.sqrt(DIM / s)); // 1 / rms: what the norm multiplies by
  const omega = Array.from({ length: 64 }, (_, k) => Math.pow(THETA, -(2 * k) / HEAD_DIM));
  const scaleSqrt = Math.sqrt(Math.sqrt(HEAD_DIM)); // q.k is divided by sqrt(head_dim)

  const embed = tensor("embed", [VOCAB, DIM]);
  for (let t = 0; t < VOCAB; t++) {
    embed.data[t * DIM + E0 + t] = 1;
    embed.data[t * DIM + K0 + classOf(t)] = 1;
    embed.data[t * DIM + C0] = 1;
  }

  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.nLayers; l++) {
    const g = gamma[l];
    const p = `layers.${l}.`;
    const wq = tensor(p + "wq", [qDim, DIM]);
    const wk = tensor(p + "wk", [kvDim, DIM]);
    const wv = tensor(p + "wv", [kvDim, DIM]);
    const wo = tensor(p + "wo", [DIM, qDim]);
    const norm = (n: string) => {
      const t = tensor(p + n, [DIM]);
      t.data.fill(1);
      return t;
    };
    const setQ = (h: number, d: number, col: number, v: number) =>
      wq.data[(h * HEAD_DIM + d) * DIM + col] = v;
    const setK = (kv: number, d: number, col: number, v: number) =>
      wk.data[(kv * HEAD_DIM + d) * DIM + col] = v;
    // Positional key (shared by the KV head's query heads) and a query looking `delta` back.
    const posKey = (kv: number) => {
      const b = Math.sqrt(A) * scaleSqrt;
      for (let k = 0; k < POS_PAIRS; k++) setK(kv, k, C0, b / g);
    };
    const posQuery = (h: number, delta: number) => {
      const a = Math.sqrt(A) * scaleSqrt;
      for (let k = 0; k < POS_PAIRS; k++) {
        setQ(h, k, C0, (a * Math.cos(omega[k] * delta)) / g);
        setQ(h, k + 64, C0, (-a * Math.sin(omega[k] * delta)) / g);
      }
    };
    // Value of a KV head: a one-hot block (source offset, size) read from the residual.
    const value = (kv: number, src: number, size: number) => {
      for (let i = 0; i < size; i++) wv.data[(kv * HEAD_DIM + i) * DIM + src + i] = 1 / g;
    };
    const output = (h: number, dst: number, size: number, w: number) => {
      for (let i = 0; i < size; i++) wo.data[(dst + i) * qDim + h * HEAD_DIM + i] = w;
    };
    const local = (kv: number, deltas: [number, number]) => {
      posKey(kv);
      value(kv, K0, CLASSES);
      deltas.forEach((d, i) => {
        const h = kv * 2 + i;
        posQuery(h, d);
        output(h, J0, CLASSES, 0.05);
      });
    };

    if (l === 0) {
      for (const kv of [0, 1]) {
        posKey(kv);
        value(kv, K0, CLASSES);
      }
      posQuery(0, 1);
      output(0, P10, CLASSES, 1);
      posQuery(1, 2);
      output(1, P20, CLASSES, 1);
      posQuery(2, 3);
      output(2, P30, CLASSES, 1);
      posQuery(3, 0);
      output(3, J0, CLASSES, 0.05);
    } else if (l === PLANTED_LAYER) {
      // Induction head on KV head 0 (query heads 0 and 1 identical, each writing half).
      const u = Math.sqrt(UNIT) * scaleSqrt;
      for (let cl = 0; cl < CLASSES; cl++) {
        for (const h of [0, 1]) {
          setQ(h, slot(cl), K0 + cl, u / g); // tok(i) ...
          setQ(h, slot(CLASSES + cl), P10 + cl, u / g); // tok(i-1) ...
          setQ(h, slot(2 * CLASSES + cl), P20 + cl, u / g); // tok(i-2) ...
        }
        setK(0, slot(cl), P10 + cl, u / g); // ... ~ tok(j-1)
        setK(0, slot(CLASSES + cl), P20 + cl, u / g); // ... ~ tok(j-2)
        setK(0, slot(2 * CLASSES + cl), P30 + cl, u / g); // ... ~ tok(j-3)
      }
      const digitSlot = slot(3 * CLASSES);
      for (const h of [0, 1]) setQ(h, digitSlot, C0, (0.5 * u) / g);
      for (let t = 0; t < VOCAB; t++) if (isDigit(t)) setK(0, digitSlot, E0 + t, u / g);
      value(0, E0, VOCAB);
      output(0, O0, VOCAB, 0.5);
      output(1, O0, VOCAB, 0.5);
      local(1, [1, 2]);
    } else if (l === 1) {
      local(0, [1, 3]);
      local(1, [0, 2]);
    } else {
      local(0, [2, 1]);
      local(1, [0, 3]);
    }
    layers.push({
      attnNorm: norm("attn_norm"),
      wq,
      wk,
      wv,
      wo,
      ffnNorm: norm("ffn_norm"),
      wGate: tensor(p + "w_gate", [c.hiddenDim, DIM]),
      wDown: tensor(p + "w_down", [DIM, c.hiddenDim]),
      wUp: tensor(p + "w_up", [c.hiddenDim, DIM]),
    });
  }
  const finalNorm = tensor("final_norm", [DIM]);
  finalNorm.data.fill(1);
  const lmHead = tensor("lm_head", [VOCAB, DIM]);
  for (let t = 0; t < VOCAB; t++) lmHead.data[t * DIM + O0 + t] = 12 / gamma[c.nLayers];
  const weights: ModelWeights = { tokenEmbedding: embed, layers, finalNorm, lmHead };
  return { source: "planted", config: c, weights, tokenizer: new PlantedTokenizer() };
}
