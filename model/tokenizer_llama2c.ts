// llama2.c's sentencepiece-style BPE tokenizer (`tokenizer.bin`, `tok512.bin`, ...), matching
// run.c's `encode` and `decode` exactly.
//
// File: int32 max_token_length, then per token: f32 score, int32 byte length, the bytes.
// encode: BOS (1), a dummy-prefix " " token when the text is non-empty, one token per UTF-8
// codepoint (byte fallback: byte + 3 when the codepoint is not in the vocab), then repeatedly merge
// the adjacent pair whose concatenation is the best-scoring vocab entry (leftmost on ties).
// decode: the piece after BOS loses its leading space, `<0xXX>` pieces are raw bytes; we then
// UTF-8-decode the joined bytes, so byte-fallback tokens compose multi-byte characters (run.c's
// safe_printf instead drops single non-printable bytes).

import { ModelFormatError, type PortableTokenizer, type Tokenizer } from "./types.ts";

const BOS = 1;
const EOS = 2;

export interface Llama2cEncodeOptions {
  /** Prepend BOS (run.c: bos=1). Default true. The dummy-prefix space is added either way. */
  addSpecialTokens?: boolean;
}

function latin1(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

/** Min-heap on (−score, index): pops the best score, leftmost first. */
class PairHeap {
  private score: number[] = [];
  private left: number[] = [];
  private right: number[] = [];
  private tl: number[] = [];
  private tr: number[] = [];
  private id: number[] = [];

  get size(): number {
    return this.score.length;
  }

  private less(a: number, b: number): boolean {
    return this.score[a] > this.score[b] ||
      (this.score[a] === this.score[b] && this.left[a] < this.left[b]);
  }

  private swap(a: number, b: number) {
    for (const arr of [this.score, this.left, this.right, this.tl, this.tr, this.id]) {
      const t = arr[a];
      arr[a] = arr[b];
      arr[b] = t;
    }
  }

  push(score: number, left: number, right: number, tl: number, tr: number, id: number) {
    let i = this.score.length;
    this.score.push(score);
    this.left.push(left);
    this.right.push(right);
    this.tl.push(tl);
    this.tr.push(tr);
    this.id.push(id);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  /** Removes the top entry and returns [left, right, tl, tr, id]. */
  pop(): [number, number, number, number, number] {
    const top: [number, number, number, number, number] = [
      this.left[0],
      this.right[0],
      this.tl[0],
      this.tr[0],
      this.id[0],
    ];
    const last = this.score.length - 1;
    this.swap(0, last);
    for (const arr of [this.score, this.left, this.right, this.tl, this.tr, this.id]) arr.pop();
    let i = 0;
    const n = this.score.length;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < n && this.less(l, m)) m = l;
      if (r < n && this.less(r, m)) m = r;
      if (m === i) break;
      this.swap(i, m);
      i = m;
    }
    return top;
  }
}

export class Llama2cTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId = BOS;
  /** run.c stops at BOS; see llama2c.ts. */
  readonly eosIds = [BOS];
  /** Each token's bytes. */
  readonly pieces: Uint8Array[];
  readonly scores: Float32Array;
  readonly maxTokenLength: number;
  /** Every token stands for its piece's bytes of input (byte fallback for one byte, the dummy
   * prefix for none), so the longest piece bounds them. */
  readonly maxBytesPerToken: number;
  private keys: string[];
  private lookup = new Map<string, number>();

  constructor(pieces: Uint8Array[], scores: Float32Array, maxTokenLength: number) {
    this.pieces = pieces;
    this.scores = scores;
    this.maxTokenLength = maxTokenLength;
    this.vocabSize = pieces.length;
    this.maxBytesPerToken = Math.max(1, ...pieces.map((p) => p.length));
    this.keys = pieces.map(latin1);
    // run.c bsearches a sorted copy, so among duplicate pieces any may win; we take the lowest id.
    this.keys.forEach((k, i) => {
      if (!this.lookup.has(k)) this.lookup.set(k, i);
    });
  }

  /** Parses a tokenizer file. Without `vocabSize` (run.c takes it from the checkpoint), tokens are
   * read to the end of the file. */
  static parse(bytes: Uint8Array, path: string, vocabSize?: number): Llama2cTokenizer {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.byteLength < 4) {
      throw new ModelFormatError(`${path}: truncated llama2.c tokenizer (no header)`);
    }
    const maxLen = dv.getInt32(0, true);
    const pieces: Uint8Array[] = [];
    const scores: number[] = [];
    let off = 4;
    while (vocabSize === undefined ? off < bytes.byteLength : pieces.length < vocabSize) {
      const i = pieces.length;
      if (off + 8 > bytes.byteLength) {
        throw new ModelFormatError(
          `${path}: truncated llama2.c tokenizer at token ${i}` +
            (vocabSize === undefined ? "" : ` of ${vocabSize}`),
        );
      }
      const score = dv.getFloat32(off, true);
      const len = dv.getInt32(off + 4, true);
      off += 8;
      if (len < 0 || off + len > bytes.byteLength) {
        throw new ModelFormatError(
          `${path}: truncated or corrupt llama2.c tokenizer at token ${i} (length ${len})`,
        );
      }
      pieces.push(bytes.slice(off, off + len));
      scores.push(score);
      off += len;
    }
    return new Llama2cTokenizer(pieces, new Float32Array(scores), maxLen);
  }

  static async load(path: string, vocabSize?: number): Promise<Llama2cTokenizer> {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new ModelFormatError(`${path}: llama2.c tokenizer not found`);
      }
      throw new ModelFormatError(`${path}: cannot read: ${(e as Error).message}`);
    }
    return Llama2cTokenizer.parse(bytes, path, vocabSize);
  }

  get portable(): PortableTokenizer {
    return {
      kind: "llama2c",
      pieces: this.pieces,
      scores: this.scores,
      maxTokenLength: this.maxTokenLength,
    };
  }

  /** Id of a piece given as a string of bytes (latin1), or -1 (run.c's str_lookup). */
  private find(key: string): number {
    return this.lookup.get(key) ?? -1;
  }

  encode(text: string, opts: Llama2cEncodeOptions = {}): number[] {
    const b = new TextEncoder().encode(text);
    const tokens: number[] = [];
    if (opts.addSpecialTokens ?? true) tokens.push(BOS);
    if (b.length > 0) {
      const dummy = this.find(" ");
      if (dummy >= 0) tokens.push(dummy);
    }
    // One token per UTF-8 codepoint (at most 4 bytes), byte fallback otherwise; exactly run.c's
    // loop, including its handling of malformed continuation runs.
    let buf: number[] = [];
    for (let c = 0; c < b.length; c++) {
      if ((b[c] & 0xc0) !== 0x80) buf = [];
      buf.push(b[c]);
      const next = c + 1 < b.length ? b[c + 1] : 0;
      if ((next & 0xc0) === 0x80 && buf.length < 4) continue;
      const id = this.find(String.fromCharCode(...buf));
      if (id !== -1) tokens.push(id);
      else for (const x of buf) tokens.push(x + 3);
      buf = [];
    }
    return this.merge(tokens);
  }

  /** run.c's merge loop (best score first, leftmost on ties), in O(n log n) with a heap. */
  private merge(tokens: number[]): number[] {
    const n = tokens.length;
    const tok = tokens.slice();
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new PairHeap();
    const consider = (l: number) => {
      const r = next[l];
      if (l < 0 || r < 0) return;
      const id = this.find(this.keys[tok[l]] + this.keys[tok[r]]);
      if (id === -1) return;
      const s = this.scores[id];
      if (!(s > -1e10)) return; // run.c starts best_score at -1e10 and needs strictly more
      heap.push(s, l, r, tok[l], tok[r], id);
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    while (heap.size > 0) {
      const [l, r, tl, tr, id] = heap.pop();
      if (!alive[l] || !alive[r] || next[l] !== r || tok[l] !== tl || tok[r] !== tr) continue;
      tok[l] = id;
      alive[r] = 0;
      next[l] = next[r];
      if (next[r] >= 0) prev[next[r]] = l;
      consider(prev[l]);
      consider(l);
    }
    // Node 0 is never the right side of a merge, so the list always starts there.
    const out: number[] = [];
    if (n > 0) { for (let i = 0; i >= 0; i = next[i]) out.push(tok[i]); }
    return out;
  }

  /** The bytes run.c's `decode(prev_token, token)` returns. */
  decodePiece(prevToken: number, token: number): Uint8Array {
    if (!(token >= 0 && token < this.vocabSize)) {
      throw new RangeError(`token id ${token} out of range [0, ${this.vocabSize})`);
    }
    let piece = this.pieces[token];
    if (prevToken === BOS && piece[0] === 0x20) piece = piece.subarray(1);
    // sscanf(piece, "<0x%02hhX>", &byte_val)
    if (piece.length >= 4 && piece[0] === 0x3c && piece[1] === 0x30 && piece[2] === 0x78) {
      const m = /^<0x([0-9A-Fa-f]{1,2})/.exec(latin1(piece.subarray(0, 5)));
      if (m) return new Uint8Array([parseInt(m[1], 16)]);
    }
    return piece;
  }

  /** Bytes of `ids`, BOS/EOS left out; `prevId` is the token before ids[0] (for the leading-space
   * rule after BOS). */
  decodeBytes(ids: number[], prevId = -1): Uint8Array {
    const parts: Uint8Array[] = [];
    let len = 0;
    let prev = prevId;
    for (const id of ids) {
      if (id !== BOS && id !== EOS) {
        const p = this.decodePiece(prev, id);
        parts.push(p);
        len += p.length;
      }
      prev = id;
    }
    const out = new Uint8Array(len);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  /** Text of `ids` (normally starting with BOS, so the dummy-prefix space is dropped). Invalid
   * UTF-8 becomes U+FFFD. */
  decode(ids: number[], prevId = -1): string {
    return new TextDecoder().decode(this.decodeBytes(ids, prevId));
  }
}
