// The attention kernel tests' shared parts (tests/kernels_test.ts, tests/kv_shards_test.ts): a
// test case's shapes, a host-side image of a KV-cache part laid out as the GPU holds it (pages
// shuffled over a pool, or rings per slot; split into shards when asked), and the reference
// attention output of a row with its error bound.

import { RetrievalPages, StreamingRing } from "../cache/kinds.ts";
import type { AttentionConstants } from "../gpu/kernels/attention.ts";
import type { CachePartKernel } from "../gpu/kernels/cache_layout.ts";
import { Rng, type RowSpec, U32 } from "./kernel_harness.ts";

export interface AttnConfig {
  name: string;
  headDim: number;
  nHeads: number;
  nKvHeads: number;
  /** First KV head held by the cache (Q_HEAD_BASE = kvHeadBase * group) and how many. */
  kvHeadBase: number;
  cacheHeads: number;
  streaming?: { sink: number; recent: number };
  pageSize?: number;
  /** One prefill chunk of one sequence: positions [pos0, pos0 + n). */
  prefill: { slot: number; pos0: number; n: number }[];
  /** One decode batch: a row per sequence, at position pos. */
  decode: { slot: number; pos: number }[];
}

/** Host-side KV cache of one config: logical keys/values per slot and the GPU layout of them,
 * in shard buffers of `unitsPerShard` units each (pages of the pool, or slots' rings). */
export class CacheImage {
  readonly stride: number; // floats per position: cacheHeads * headDim
  readonly k: Map<number, Float32Array> = new Map(); // slot -> [pos][cacheHeads][headDim]
  readonly v: Map<number, Float32Array> = new Map();
  readonly maxPages: number;
  readonly pageTable: Uint32Array;
  /** Positions per shard unit: a page, or a slot's ring. */
  readonly unitPositions: number;
  readonly units: number;
  readonly unitsPerShard: number;
  readonly kShards: Float32Array[] = [];
  readonly vShards: Float32Array[] = [];

  /**
   * `lengths`: cached positions per slot (the keys before each row's forward). `o.slots`: ring
   * slots (default: one more than the largest slot used); `o.shards`: at least this many shards
   * (default one).
   */
  constructor(
    readonly c: AttnConfig,
    lengths: Map<number, number>,
    rng: Rng,
    o: { shards?: number; slots?: number } = {},
  ) {
    this.stride = c.cacheHeads * c.headDim;
    const slots = o.slots ?? Math.max(...lengths.keys()) + 1;
    for (const [slot, len] of lengths) {
      this.k.set(slot, rng.array(len * this.stride));
      this.v.set(slot, rng.array(len * this.stride));
    }
    let order: number[] = [];
    if (c.streaming) {
      this.unitPositions = c.streaming.sink + c.streaming.recent;
      this.units = slots;
      this.maxPages = 1;
      this.pageTable = new Uint32Array(1);
    } else {
      const ps = c.pageSize!;
      this.unitPositions = ps;
      this.maxPages = Math.ceil((Math.max(...lengths.values()) + 64) / ps);
      // Physical pages shuffled over all slots, plus a NaN page for every unmapped entry.
      this.units = slots * this.maxPages + 1;
      order = rng.permutation(this.units);
      this.pageTable = new Uint32Array(slots * this.maxPages).fill(order[this.units - 1]);
    }
    this.unitsPerShard = Math.max(1, Math.floor(this.units / (o.shards ?? 1)));
    // Everything the kernels must never read is NaN: it would poison any output it reaches.
    for (let s = 0; s * this.unitsPerShard < this.units; s++) {
      const n = Math.min(this.unitsPerShard, this.units - s * this.unitsPerShard);
      this.kShards.push(new Float32Array(n * this.unitPositions * this.stride).fill(NaN));
      this.vShards.push(new Float32Array(n * this.unitPositions * this.stride).fill(NaN));
    }
    if (c.streaming) {
      const ring = this.unitPositions;
      // Write positions in order, as decoding would: later ones overwrite the ring.
      for (const [slot, len] of lengths) {
        for (let j = 0; j < len; j++) this.#put(slot, j, slot * ring + this.ringIndex(j));
      }
    } else {
      const ps = c.pageSize!;
      for (const [slot, len] of lengths) {
        for (let pg = 0; pg * ps < len; pg++) {
          this.pageTable[slot * this.maxPages + pg] = order[slot * this.maxPages + pg];
        }
        for (let j = 0; j < len; j++) {
          const page = this.pageTable[slot * this.maxPages + Math.floor(j / ps)];
          this.#put(slot, j, page * ps + (j % ps));
        }
      }
    }
  }

  get shards(): number {
    return this.kShards.length;
  }

  /** The one buffer of an unsharded image. */
  get kBuf(): Float32Array {
    if (this.shards !== 1) throw new Error("kBuf of a sharded cache image");
    return this.kShards[0];
  }

  get vBuf(): Float32Array {
    if (this.shards !== 1) throw new Error("vBuf of a sharded cache image");
    return this.vShards[0];
  }

  /** The shard of each of `slot`'s first `len` positions' pages, in position order. */
  pageShards(slot: number, len: number): number[] {
    const ps = this.c.pageSize!;
    return Array.from(
      { length: Math.ceil(len / ps) },
      (_, pg) => Math.floor(this.pageTable[slot * this.maxPages + pg] / this.unitsPerShard),
    );
  }

  ringIndex(j: number): number {
    const { sink, recent } = this.c.streaming!;
    return j < sink ? j : sink + ((j - sink) % recent);
  }

  /** Position j of `slot` at global entry `entry` (unit * unitPositions + offset). */
  #put(slot: number, j: number, entry: number): void {
    const s = this.stride;
    const perShard = this.unitsPerShard * this.unitPositions;
    const shard = Math.floor(entry / perShard);
    const local = entry % perShard;
    this.kShards[shard].set(this.k.get(slot)!.subarray(j * s, (j + 1) * s), local * s);
    this.vShards[shard].set(this.v.get(slot)!.subarray(j * s, (j + 1) * s), local * s);
  }

  constants(): AttentionConstants {
    const c = this.c;
    return {
      HEAD_DIM: c.headDim,
      GROUP: c.nHeads / c.nKvHeads,
      Q_HEAD_BASE: c.kvHeadBase * (c.nHeads / c.nKvHeads),
      N_HEADS: c.nHeads,
      N_KV_HEADS: c.nKvHeads,
      CACHE_HEADS: c.cacheHeads,
      SCALE: 1 / Math.sqrt(c.headDim),
    };
  }

  /** The cache part's layout and its constants, as the cache kind gives them. */
  part(): CachePartKernel {
    const c = this.c;
    const kind = c.streaming
      ? new StreamingRing(c.streaming.sink, c.streaming.recent)
      : new RetrievalPages(c.pageSize ?? 16);
    return {
      layout: kind.layout,
      constants: kind.constants({
        maxPagesPerSeq: this.maxPages,
        unitsPerShard: this.unitsPerShard,
        shards: this.shards,
      }),
    };
  }
}

/**
 * Reference attention output of one row and query head. Keys at positions >= pos0 (this
 * forward's) come from the fused rows, older ones from the cache as stored (KV-rounded).
 * `extraRescales`: online-softmax rescales beyond one per 16-key tile (+3), e.g. a tile visited
 * by two shards' dispatches, or a state carried from one shard to the next.
 */
export function attentionRef(
  c: AttnConfig,
  qkv: Float32Array,
  r: number,
  row: RowSpec,
  head: number,
  cacheK: Float32Array,
  cacheV: Float32Array,
  extraRescales = 0,
): { out: Float64Array; tol: number } {
  const hd = c.headDim;
  const stride = (c.nHeads + 2 * c.nKvHeads) * hd;
  const kvh = Math.floor(head / (c.nHeads / c.nKvHeads));
  const ch = kvh - c.kvHeadBase;
  const pos0 = row.pos - (r - row.firstRow);
  const i = row.pos;
  const scale = 1 / Math.sqrt(hd);
  const q = qkv.subarray(r * stride + head * hd, r * stride + (head + 1) * hd);
  const keys: { k: ArrayLike<number>; v: ArrayLike<number> }[] = [];
  for (let j = 0; j <= i; j++) {
    if (c.streaming && !(j < c.streaming.sink || i - j < c.streaming.recent)) continue;
    if (j >= pos0) {
      const fr = row.firstRow + (j - pos0);
      const kOff = fr * stride + (c.nHeads + kvh) * hd;
      const vOff = fr * stride + (c.nHeads + c.nKvHeads + kvh) * hd;
      keys.push({ k: qkv.subarray(kOff, kOff + hd), v: qkv.subarray(vOff, vOff + hd) });
    } else {
      const off = (j * c.cacheHeads + ch) * hd;
      keys.push({ k: cacheK.subarray(off, off + hd), v: cacheV.subarray(off, off + hd) });
    }
  }
  let mx = -Infinity, sMag = 0, vMax = 0;
  const scores = keys.map(({ k, v }) => {
    let s = 0, m = 0;
    for (let d = 0; d < hd; d++) {
      s += q[d] * k[d];
      m += Math.abs(q[d] * k[d]);
      vMax = Math.max(vMax, Math.abs(v[d]));
    }
    mx = Math.max(mx, s * scale);
    sMag = Math.max(sMag, m * scale);
    return s * scale;
  });
  const out = new Float64Array(hd);
  let l = 0;
  keys.forEach(({ v }, n) => {
    const p = Math.exp(scores[n] - mx);
    l += p;
    for (let d = 0; d < hd; d++) out[d] += p * v[d];
  });
  for (let d = 0; d < hd; d++) out[d] /= l;
  // Error budget, relative to max|v| over the visible keys:
  //  - each score is off by <= delta = gamma_(hd+2) * sum|q k| * scale (q is scaled in f32 first,
  //    then a dot product of hd terms); a score error moves its softmax weight by delta relative;
  //  - exp is within (3 + 2|x|) ULP (WGSL). Scores lie in [-sMag, sMag], so every exp(s - max)
  //    has |x| <= 2 sMag; the running max of the online softmax (prefill: per 16-key tile;
  //    decode: per block of 256 keys, then merge) rises by <= 2 sMag in all, so the rescale
  //    factors applied to a weight contribute <= 3 ULP each plus 2 * 2 sMag ULP together;
  //  - weights perturbed by eps relative move the normalised output by <= 2 eps max|v|, and the
  //    numerator and denominator sums of n terms add gamma_n max|v| each.
  const n = keys.length;
  const delta = (hd + 2) * U32 * sMag;
  const expErr = (3 * (n / 16 + 3 + extraRescales) + 8 * sMag) * 2 ** -23;
  const tol = vMax * (2 * (delta + expErr) + 2 * (n + 2) * U32);
  return { out, tol };
}
