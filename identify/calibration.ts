// Calibration documents for `plan identify`, after DuoAttention's recipe: a long haystack of
// ordinary text with several passkeys hidden at depths in [5%, 95%], and the questions with their
// answers appended at the end. Everything is deterministic from a seed.
//
// Formats (both are the ones passkey-llama was trained on):
//   one needle    ... The pass key is 48213. Remember it. ...
//                 \nWhat is the pass key? The pass key is 48213.
//   K > 1         ... The code for river is 93017. ... The code for apple is 20481. ...
//                 \nWhat is the code for apple? The code for apple is 20481.
//                 \nWhat is the code for river? The code for river is 93017.   (shuffled order)
// The answers' value tokens (the digits) are what identification scores: the rows whose logits
// predict them are the "answer rows" (DuoAttention's loss positions).
//
// The haystack is either a user file (`--haystack FILE`: windows of it at seeded offsets) or a
// built-in generator of varied English-like filler with no digits in it, so that the needles are
// the only numbers in a document.

import { mulberry32 } from "../model/random.ts";
import type { Tokenizer } from "../model/types.ts";

export interface Needle {
  /** Name asked for (K > 1), or "" for the single pass key. */
  name: string;
  /** The digits. */
  value: string;
  /** Requested relative depth in the haystack, in [0.05, 0.95]. */
  depth: number;
  /** Token indices [start, end) of the needle sentence. */
  span: [number, number];
  /** Token indices [start, end) of the value inside the needle sentence. */
  valueSpan: [number, number];
}

export interface Answer {
  /** Index into `needles`. */
  needle: number;
  /** Token indices [start, end) of the answer's value tokens (teacher-forced). */
  span: [number, number];
}

export interface CalibrationSample {
  /** Requested length in tokens; `tokens.length` is at most this. */
  length: number;
  text: string;
  /** Token ids, BOS first when the tokenizer adds one. */
  tokens: number[];
  needles: Needle[];
  answers: Answer[];
}

export interface CalibrationOptions {
  /** Document lengths in tokens (each at most the model's context). */
  lengths: number[];
  /** Documents per length. */
  samples: number;
  seed: number;
  /** Needles (passkeys) per document: 1 = the pass-key format, more = the named-code format. */
  needles?: number;
  /** Digits per passkey (default 5). */
  digits?: number;
  /** Plain text to cut haystacks from; default the built-in filler generator. */
  haystack?: string;
}

/** Rows whose logits predict answer tokens, with the token each predicts. */
export function answerRows(s: CalibrationSample): { rows: number[]; targets: number[] } {
  const rows: number[] = [];
  const targets: number[] = [];
  for (const a of s.answers) {
    for (let k = a.span[0]; k < a.span[1]; k++) {
      rows.push(k - 1);
      targets.push(s.tokens[k]);
    }
  }
  return { rows, targets };
}

// ---- filler text ----------------------------------------------------------------------------

const NOUNS = (
  "apple river candle window garden mountain teacher village engine letter bridge forest " +
  "market doctor island kitchen library ocean painter pocket rabbit shadow soldier station " +
  "summer theater tower valley wagon winter basket blanket bottle button castle chimney cloud " +
  "compass cottage desert dragon farmer feather harbor helmet hammer journey kettle ladder " +
  "lantern meadow mirror needle orchard palace pebble pillow puzzle quarry ribbon saddle sailor " +
  "scholar shelter silver spider stable stream sugar tailor thunder ticket tunnel umbrella " +
  "vessel violin walnut whistle willow wizard clock pencil carpet canyon cellar circus copper " +
  "crystal falcon fountain glacier hollow jacket lemon marble monkey museum nephew"
).split(" ");
const ADJECTIVES = (
  "old quiet bright narrow heavy gentle distant golden broken hidden careful sudden ancient " +
  "little yellow crowded empty frozen humble patient rapid rough silent simple smooth steady " +
  "strange tired warm wild wooden busy clever curious dark early famous fresh green honest " +
  "lonely lucky modern muddy noisy polite proud rusty sharp shiny sleepy soft tiny"
).split(" ");
const VERBS = (
  "carried found painted watched opened followed built crossed visited cleaned remembered " +
  "described borrowed noticed repaired counted explored guarded measured ordered passed " +
  "planted pulled pushed reached returned shared studied touched traded washed wrapped"
).split(" ");
const ADVERBS = (
  "slowly quietly early again carefully often later together suddenly happily gently rarely " +
  "nearly almost soon always"
).split(" ");
const PLACES = (
  "near the river|behind the old mill|in the morning|after the storm|before dinner|" +
  "at the edge of town|under the bridge|across the valley|during the winter|by the window|" +
  "on the hill|inside the station|along the coast|beside the fountain"
).split("|");
const NAMES = (
  "Anna Ben Clara David Elena Frank Grace Henry Iris Jack Karen Leo Maria Nora Oscar Paul Rosa " +
  "Sam Tina Victor Walter Yara"
).split(" ");

type Rand = () => number;
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

function sentence(r: Rand): string {
  const a = () =>
    `${pick(r, ["the", "this", "the", "one", "that"])} ${pick(r, ADJECTIVES)} ${pick(r, NOUNS)}`;
  switch (Math.floor(r() * 8)) {
    case 0:
      return `${cap(a())} ${pick(r, VERBS)} ${a()} ${pick(r, PLACES)}.`;
    case 1:
      return `${pick(r, NAMES)} ${pick(r, VERBS)} ${a()} and ${pick(r, ADVERBS)} ${
        pick(r, VERBS)
      } ${a()}.`;
    case 2:
      return `${cap(pick(r, PLACES))}, ${pick(r, NAMES)} ${pick(r, ADVERBS)} ${
        pick(r, VERBS)
      } ${a()}.`;
    case 3:
      return `Nobody knew why ${a()} was so ${pick(r, ADJECTIVES)}.`;
    case 4:
      return `${cap(a())} is ${pick(r, ADJECTIVES)}, and ${a()} is ${pick(r, ADJECTIVES)}.`;
    case 5:
      return `Did ${pick(r, NAMES)} see ${a()} ${pick(r, PLACES)}?`;
    case 6:
      return `"${cap(pick(r, ADVERBS))} we ${pick(r, VERBS)} ${a()}," said ${pick(r, NAMES)}.`;
    default:
      return `There was ${a()} ${pick(r, PLACES)}, ${pick(r, ADJECTIVES)} and ${
        pick(r, ADJECTIVES)
      }.`;
  }
}

/** At least `chars` characters of varied filler text (no digits), deterministic from `seed`. */
export function fillerText(seed: number, chars: number): string {
  const r = mulberry32(seed ^ 0x5eed1234);
  const parts: string[] = [];
  let n = 0;
  let inPara = 0;
  while (n < chars) {
    const s = sentence(r);
    const sep = inPara > 3 && r() < 0.2 ? "\n" : " ";
    if (sep === "\n") inPara = 0;
    parts.push(parts.length === 0 ? s : sep + s);
    n += s.length + 1;
    inPara++;
  }
  return parts.join("");
}

// ---- documents -------------------------------------------------------------------------------

interface Piece {
  text: string;
  /** Needle index this piece's value belongs to, and whether it is the needle or the answer. */
  role?: { needle: number; kind: "needle" | "needle-value" | "answer-value" };
}

function digitsOf(r: Rand, n: number): string {
  let s = String(1 + Math.floor(r() * 9));
  while (s.length < n) s += String(Math.floor(r() * 10));
  return s;
}

/** Cuts `text` to at most `chars` characters at a word boundary. */
function cutWords(text: string, chars: number): string {
  if (text.length <= chars) return text;
  const cut = text.lastIndexOf(" ", chars);
  return text.slice(0, cut > 0 ? cut : chars);
}

/** A word boundary at or after `pos` (the position after a space). */
function boundary(text: string, pos: number): number {
  if (pos <= 0) return 0;
  if (pos >= text.length) return text.length;
  const sp = text.indexOf(" ", pos);
  return sp < 0 ? text.length : sp + 1;
}

/** The sentence start nearest to `pos` (within 300 characters), else a word boundary. */
function sentenceBoundary(text: string, pos: number): number {
  if (pos <= 0) return 0;
  const re = /[.?!]["']?(?:[ \n]|$)/g;
  let best = -1;
  re.lastIndex = Math.max(0, pos - 300);
  for (let m = re.exec(text); m && m.index < pos + 300; m = re.exec(text)) {
    const b = m.index + m[0].length;
    if (best < 0 || Math.abs(b - pos) < Math.abs(best - pos)) best = b;
  }
  return best >= 0 ? best : boundary(text, pos);
}

interface DocSpec {
  needles: { name: string; value: string; depth: number }[];
  /** Order in which the questions are asked. */
  order: number[];
}

function buildPieces(hay: string, spec: DocSpec): Piece[] {
  const single = spec.needles.length === 1;
  const pieces: Piece[] = [];
  // Needles sorted by depth, placed at word boundaries of the haystack.
  const byDepth = spec.needles.map((n, i) => ({ ...n, i })).sort((a, b) => a.depth - b.depth);
  let at = 0;
  for (const n of byDepth) {
    const pos = Math.max(at, sentenceBoundary(hay, Math.round(n.depth * hay.length)));
    pieces.push({ text: hay.slice(at, pos) });
    at = pos;
    const [pre, post] = single
      ? ["The pass key is ", ". Remember it."]
      : [`The code for ${n.name} is `, "."];
    const before = pieces.map((p) => p.text).join("");
    const sep = before !== "" && !/\s$/.test(before) ? " " : "";
    pieces.push({ text: sep + pre, role: { needle: n.i, kind: "needle" } });
    pieces.push({ text: n.value, role: { needle: n.i, kind: "needle-value" } });
    pieces.push({ text: post, role: { needle: n.i, kind: "needle" } });
  }
  pieces.push({ text: hay.slice(at).replace(/\s+$/, "") });
  // a space after each needle sentence unless the haystack goes on with whitespace
  for (let i = 1; i < pieces.length; i++) {
    const prev = pieces[i - 1];
    if (prev.role?.kind === "needle" && !prev.text.endsWith(" ") && !pieces[i].role) {
      const t = pieces[i].text;
      if (t !== "" && !/^\s/.test(t)) pieces[i] = { text: " " + t };
    }
  }
  for (const i of spec.order) {
    const n = spec.needles[i];
    const q = single
      ? "\nWhat is the pass key? The pass key is "
      : `\nWhat is the code for ${n.name}? The code for ${n.name} is `;
    pieces.push({ text: q });
    pieces.push({ text: n.value, role: { needle: i, kind: "answer-value" } });
    pieces.push({ text: "." });
  }
  return pieces;
}

/**
 * Maps character offsets of `text` to indices of `tokens` (its encoding): the token that holds
 * the character. Works for any tokenizer whose decode of the body (after BOS) reproduces the text,
 * possibly with a dummy-prefix space (llama2.c / sentencepiece).
 */
export function charToTokenMapper(
  tokenizer: Tokenizer,
  text: string,
  tokens: number[],
): (charPos: number) => number {
  const body = tokens[0] === tokenizer.bosId ? 1 : 0;
  const full = tokenizer.decode(tokens.slice(body));
  const shift = full.length - text.length;
  if (shift < 0 || shift > 1 || !full.endsWith(text.slice(Math.max(0, text.length - 200)))) {
    throw new Error(
      "the tokenizer does not round-trip the calibration text (decode(encode(text)) differs); " +
        "calibration needs a tokenizer that decodes back to its input",
    );
  }
  const cache = new Map<number, number>();
  const prefixLen = (k: number) => {
    let v = cache.get(k);
    if (v === undefined) {
      v = tokenizer.decode(tokens.slice(body, k)).length;
      cache.set(k, v);
    }
    return v;
  };
  return (charPos: number) => {
    // smallest k in [body, n) with decoded length of tokens[body..k] > charPos + shift
    const target = charPos + shift;
    let lo = body;
    let hi = tokens.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (prefixLen(mid + 1) > target) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  };
}

function materialise(
  tokenizer: Tokenizer,
  pieces: Piece[],
  length: number,
  spec: DocSpec,
): CalibrationSample {
  const text = pieces.map((p) => p.text).join("");
  const tokens = tokenizer.encode(text);
  const toToken = charToTokenMapper(tokenizer, text, tokens);
  const needles: Needle[] = spec.needles.map((n) => ({
    ...n,
    span: [0, 0],
    valueSpan: [0, 0],
  }));
  const answers: Answer[] = [];
  let c = 0;
  const needleChars = new Map<number, [number, number]>();
  for (const p of pieces) {
    const c0 = c;
    c += p.text.length;
    if (!p.role || p.text.length === 0) continue;
    const span: [number, number] = [toToken(c0), toToken(c - 1) + 1];
    const { needle, kind } = p.role;
    if (kind === "answer-value") {
      answers.push({ needle, span });
    } else {
      const cs = needleChars.get(needle);
      needleChars.set(needle, cs ? [Math.min(cs[0], c0), Math.max(cs[1], c)] : [c0, c]);
      if (kind === "needle-value") needles[needle].valueSpan = span;
    }
  }
  for (const [i, [c0, c1]] of needleChars) {
    // the needle sentence without the spaces around it
    let a = c0;
    let b = c1;
    while (a < b && /\s/.test(text[a])) a++;
    while (b > a && /\s/.test(text[b - 1])) b--;
    needles[i].span = [toToken(a), toToken(b - 1) + 1];
  }
  return { length, text, tokens, needles, answers };
}

/** Builds one document of at most `length` tokens (as long as fits) from a haystack source. */
function buildDocument(
  tokenizer: Tokenizer,
  length: number,
  hay: string,
  spec: DocSpec,
): CalibrationSample {
  // Binary search the haystack length (in characters) so that the document fits in `length`.
  const count = (chars: number) =>
    tokenizer.encode(buildPieces(cutWords(hay, chars), spec).map((p) => p.text).join("")).length;
  let lo = 0;
  let hi = hay.length;
  if (count(0) > length) {
    throw new Error(`calibration length ${length} is too short for the needles and questions`);
  }
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (count(mid) <= length) lo = mid;
    else hi = mid - 1;
  }
  return materialise(tokenizer, buildPieces(cutWords(hay, lo), spec), length, spec);
}

/** Haystack text for one document: a window of the user's file or fresh filler. */
function haystackFor(r: Rand, length: number, source: string | undefined, seed: number): string {
  // Generous: a token is at least one character for every tokenizer we load, and at most ~8.
  const chars = length * 8 + 256;
  if (source === undefined) return fillerText(seed, chars);
  const clean = source.replace(/\r\n?/g, "\n");
  if (clean.length <= chars) {
    let s = clean;
    while (s.length < chars) s += " " + clean;
    return s;
  }
  const start = boundary(clean, Math.floor(r() * (clean.length - chars)));
  return clean.slice(start, start + chars);
}

function shuffle<T>(r: Rand, xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}

/** The calibration set: `samples` documents per length, deterministic from `seed`. */
export function calibrationSet(
  tokenizer: Tokenizer,
  opts: CalibrationOptions,
): CalibrationSample[] {
  const k = opts.needles ?? 1;
  const digits = opts.digits ?? 5;
  if (!(k >= 1 && Number.isInteger(k))) throw new Error(`needles must be a positive integer`);
  const out: CalibrationSample[] = [];
  opts.lengths.forEach((length, li) => {
    for (let s = 0; s < opts.samples; s++) {
      const docSeed = (opts.seed * 1000003 + li * 7919 + s * 104729) >>> 0;
      const r = mulberry32(docSeed);
      const names = shuffle(r, [...NOUNS]).slice(0, k);
      // Stratified depths: needle i lands in its own slice of [5%, 95%].
      const needles = names.map((name, i) => ({
        name: k === 1 ? "" : name,
        value: digitsOf(r, digits),
        depth: 0.05 + 0.9 * (i + r()) / k,
      }));
      const order = shuffle(r, needles.map((_, i) => i));
      const hay = haystackFor(r, length, opts.haystack, docSeed);
      out.push(buildDocument(tokenizer, length, hay, { needles, order }));
    }
  });
  return out;
}

export interface PasskeyPrompt {
  tokens: number[];
  /** The expected continuation: " " + digits. */
  answer: string;
  value: string;
  depth: number;
  length: number;
}

/**
 * A pass-key retrieval prompt of at most `length` tokens with the key at relative `depth` of the
 * haystack, ending with `\nWhat is the pass key? The pass key is` (the answer is " " + digits).
 */
export function passkeyPrompt(
  tokenizer: Tokenizer,
  opts: { length: number; depth: number; seed: number; digits?: number; haystack?: string },
): PasskeyPrompt {
  const r = mulberry32((opts.seed ^ 0x9e3779b9) >>> 0);
  const value = digitsOf(r, opts.digits ?? 5);
  const hay = haystackFor(r, opts.length, opts.haystack, opts.seed);
  const spec: DocSpec = { needles: [{ name: "", value, depth: opts.depth }], order: [0] };
  const promptOf = (chars: number) => {
    const pieces = buildPieces(cutWords(hay, chars), spec);
    // drop the answer value and the final "."; the question ends with "is" (no trailing space)
    const text = pieces.slice(0, -2).map((p) => p.text).join("");
    return text.replace(/ $/, "");
  };
  let lo = 0;
  let hi = hay.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (tokenizer.encode(promptOf(mid)).length <= opts.length) lo = mid;
    else hi = mid - 1;
  }
  return {
    tokens: tokenizer.encode(promptOf(lo)),
    answer: " " + value,
    value,
    depth: opts.depth,
    length: opts.length,
  };
}

/** One document with several named codes and a question for each (the multi-key eval task and
 * the prefix-cache bench). */
export interface MultiKeyDocument {
  /** The document text, without any question. */
  document: string;
  /** Its tokens (BOS included). */
  tokens: number;
  /** One per code, in the calibration sample's question order: the prompt is the document
   * followed by `\nWhat is the code for NAME? The code for NAME is`; the answer " " + value. */
  asks: { name: string; value: string; answer: string; prompt: number[] }[];
}

/** The question of the multi-key format, up to where the code follows. */
export const codeQuestion = (name: string) =>
  `\nWhat is the code for ${name}? The code for ${name} is`;

/**
 * A document of at most `documentTokens` tokens (as close as whole words allow) with `keys`
 * named codes at stratified depths (calibrationSet's K > 1 format, the one passkey-llama was
 * trained on) and one prompt per code, deterministic from the seed. Every prompt shares the
 * document's tokens, so a prefix cache computes the document once.
 */
export function multiKeyDocument(
  tokenizer: Tokenizer,
  o: { documentTokens: number; keys: number; seed: number; haystack?: string },
): MultiKeyDocument {
  if (!(o.keys >= 2 && Number.isInteger(o.keys))) {
    throw new Error(`multiKeyDocument: keys must be an integer >= 2, got ${o.keys}`);
  }
  const build = (length: number) => {
    const s = calibrationSet(tokenizer, {
      lengths: [length],
      samples: 1,
      seed: o.seed,
      needles: o.keys,
      haystack: o.haystack,
    })[0];
    const cut = s.text.indexOf("\nWhat is the code for ");
    if (cut < 0) throw new Error("multiKeyDocument: no question in the calibration document");
    const document = s.text.slice(0, cut);
    return { s, document, tokens: tokenizer.encode(document).length };
  };
  // The calibration length counts the questions and answers appended to the document: measure
  // them once, then ask for the document plus them (the needles depend on the seed alone).
  const probe = build(o.documentTokens + 64 * o.keys);
  const tail = probe.s.tokens.length - probe.tokens;
  const { s, document, tokens } = build(o.documentTokens + tail);
  const asks = s.answers.map((a) => {
    const n = s.needles[a.needle];
    return {
      name: n.name,
      value: n.value,
      answer: " " + n.value,
      prompt: tokenizer.encode(document + codeQuestion(n.name)),
    };
  });
  return { document, tokens, asks };
}
