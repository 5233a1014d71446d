// The attention kernel tests' shared parts (tests/kernels_test.ts, tests/kv_shards_test.ts): a
// test case's shapes, a host-side image of a KV-cache part laid out as the GPU holds it (pages
// shuffled over a pool, or rings per slot; split into shards when asked), the reference
// attention output of a row with its error bound, and the driver both tests run a case with.

import assert from "node:assert/strict";
import { RetrievalPages, StreamingRing } from "../cache/kinds.ts";
import { type KvDtype, kvEntryUnits } from "../cache/layout.ts";
import {
  ATTENTION_GEOMETRY,
  type AttentionConstants,
  attentionDecode,
  attentionMerge,
  attentionPrefill,
  CARRY_FLOATS,
  decodeEntry,
  decodeGroups,
  MAX_SPLITS,
  mergeGroups,
  prefillGroups,
  splitsFor,
} from "../gpu/kernels/attention.ts";
import type { CachePartKernel } from "../gpu/kernels/cache_layout.ts";
import type { ScalarType } from "../gpu/pipelines.ts";
import { quantizeEntry, storedKv } from "./kv_quant_reference.ts";
import {
  assertClose,
  call,
  type DispatchSpec,
  type KernelHarness,
  Rng,
  type RowSpec,
  SENTINEL,
  U32,
} from "./kernel_harness.ts";

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

/** The attention kernel tests' cases: paged and ring caches, GQA groups, heads 8 to 128. */
export const ATTENTION_CASES: AttnConfig[] = [
  {
    name: "head_dim 64, GQA group 2, paged",
    headDim: 64,
    nHeads: 4,
    nKvHeads: 2,
    kvHeadBase: 0,
    cacheHeads: 2,
    pageSize: 16,
    // 37 rows: three 16-row tiles, the last partial; pos0 not page aligned.
    prefill: [{ slot: 1, pos0: 45, n: 37 }, { slot: 0, pos0: 0, n: 20 }],
    // 701 keys: 3 splits; 256 and 257 keys on either side of a split boundary.
    decode: [{ slot: 2, pos: 700 }, { slot: 0, pos: 5 }, { slot: 3, pos: 255 }, {
      slot: 1,
      pos: 256,
    }],
  },
  {
    name: "head_dim 128, group 1, paged, Q_HEAD_BASE 1 with CACHE_HEADS 2 of 3",
    headDim: 128,
    nHeads: 3,
    nKvHeads: 3,
    kvHeadBase: 1,
    cacheHeads: 2,
    pageSize: 8,
    prefill: [{ slot: 0, pos0: 20, n: 20 }],
    decode: [{ slot: 1, pos: 40 }, { slot: 0, pos: 9 }],
  },
  {
    name: "head_dim 8, group 4, streaming sink 4 recent 24, Q_HEAD_BASE 4 with CACHE_HEADS 1 of 2",
    headDim: 8,
    nHeads: 8,
    nKvHeads: 2,
    kvHeadBase: 1,
    cacheHeads: 1,
    streaming: { sink: 4, recent: 24 },
    // A wrapped ring and a chunk longer than RECENT; a chunk starting inside the sink.
    prefill: [{ slot: 1, pos0: 100, n: 37 }, { slot: 0, pos0: 3, n: 30 }],
    decode: [{ slot: 0, pos: 1000 }, { slot: 2, pos: 10 }, { slot: 1, pos: 27 }, {
      slot: 3,
      pos: 28,
    }],
  },
  {
    name: "head_dim 64, group 2, streaming sink 8 recent 300 (2 splits)",
    headDim: 64,
    nHeads: 4,
    nKvHeads: 2,
    kvHeadBase: 0,
    cacheHeads: 2,
    streaming: { sink: 8, recent: 300 },
    prefill: [{ slot: 1, pos0: 400, n: 33 }],
    decode: [{ slot: 0, pos: 1000 }, { slot: 1, pos: 200 }, { slot: 2, pos: 307 }],
  },
  {
    // Decode serves at most 8 query heads per workgroup: a group of 10 takes two chunks.
    name: "head_dim 32, group 10 (two head chunks), paged, 2 splits",
    headDim: 32,
    nHeads: 20,
    nKvHeads: 2,
    kvHeadBase: 0,
    cacheHeads: 2,
    pageSize: 16,
    prefill: [{ slot: 0, pos0: 30, n: 18 }],
    decode: [{ slot: 1, pos: 300 }, { slot: 0, pos: 47 }],
  },
  {
    // Prefill tiles 10 rows x 3 heads (30 of 32 query slots): tiles straddle pages and rows.
    name: "head_dim 16, group 3, paged",
    headDim: 16,
    nHeads: 6,
    nKvHeads: 2,
    kvHeadBase: 0,
    cacheHeads: 2,
    pageSize: 4,
    prefill: [{ slot: 0, pos0: 13, n: 27 }],
    decode: [{ slot: 1, pos: 60 }, { slot: 0, pos: 3 }],
  },
  {
    // A group larger than prefill's 32 query slots: two chunks of 17 and 16 heads, a row each.
    name: "head_dim 8, group 33 (two prefill chunks), streaming sink 2 recent 6",
    headDim: 8,
    nHeads: 33,
    nKvHeads: 1,
    kvHeadBase: 0,
    cacheHeads: 1,
    streaming: { sink: 2, recent: 6 },
    prefill: [{ slot: 0, pos0: 9, n: 5 }],
    decode: [{ slot: 1, pos: 20 }],
  },
  {
    name: "head_dim 8, group 2, streaming sink 0 recent 5",
    headDim: 8,
    nHeads: 2,
    nKvHeads: 1,
    kvHeadBase: 0,
    cacheHeads: 1,
    streaming: { sink: 0, recent: 5 },
    prefill: [{ slot: 0, pos0: 7, n: 19 }],
    decode: [{ slot: 0, pos: 30 }, { slot: 1, pos: 2 }],
  },
];

/** Host-side KV cache of one config: logical keys/values per slot and the GPU layout of them,
 * in shard buffers of `unitsPerShard` units each (pages of the pool, or slots' rings), stored as
 * `kv` stores them: f32 values (uploaded in f16 or f32), or the quantized dtypes' u32 units. */
export class CacheImage {
  readonly stride: number; // floats per position: cacheHeads * headDim
  readonly kv: KvDtype;
  /** Storage units of one position's heads in a shard buffer. */
  readonly unitStride: number;
  readonly k: Map<number, Float32Array> = new Map(); // slot -> [pos][cacheHeads][headDim]
  readonly v: Map<number, Float32Array> = new Map();
  readonly maxPages: number;
  readonly pageTable: Uint32Array;
  /** Positions per shard unit: a page, or a slot's ring. */
  readonly unitPositions: number;
  readonly units: number;
  readonly unitsPerShard: number;
  readonly kShards: (Float32Array | Uint32Array)[] = [];
  readonly vShards: (Float32Array | Uint32Array)[] = [];

  /**
   * `lengths`: cached positions per slot (the keys before each row's forward). `o.slots`: ring
   * slots (default: one more than the largest slot used); `o.shards`: at least this many shards
   * (default one); `o.kv`: the storage (default f32).
   */
  constructor(
    readonly c: AttnConfig,
    lengths: Map<number, number>,
    rng: Rng,
    o: { shards?: number; slots?: number; kv?: KvDtype } = {},
  ) {
    this.stride = c.cacheHeads * c.headDim;
    this.kv = o.kv ?? "f32";
    this.unitStride = c.cacheHeads * kvEntryUnits(this.kv, c.headDim);
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
    // Everything the kernels must never read is NaN: it would poison any output it reaches (a
    // quantized entry whose scale word is 0x7fc00000 reads as NaN: int8's amax is an f32 NaN,
    // int4's zero an f16 NaN).
    for (let s = 0; s * this.unitsPerShard < this.units; s++) {
      const n = Math.min(this.unitsPerShard, this.units - s * this.unitsPerShard) *
        this.unitPositions * this.unitStride;
      const make = () =>
        this.quantized ? new Uint32Array(n).fill(0x7fc00000) : new Float32Array(n).fill(NaN);
      this.kShards.push(make());
      this.vShards.push(make());
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

  get quantized(): boolean {
    return this.kv === "int8" || this.kv === "int4";
  }

  /** `slot`'s keys or values as the cache gives them back (rounded or quantized). */
  storedOf(which: "k" | "v", slot: number): Float32Array {
    return storedKv(this.kv, (which === "k" ? this.k : this.v).get(slot)!, this.c.headDim);
  }

  /** Position j of `slot` at global entry `entry` (unit * unitPositions + offset). */
  #put(slot: number, j: number, entry: number): void {
    const s = this.stride;
    const perShard = this.unitsPerShard * this.unitPositions;
    const shard = Math.floor(entry / perShard);
    const local = entry % perShard;
    for (const [src, dst] of [[this.k, this.kShards], [this.v, this.vShards]] as const) {
      const x = src.get(slot)!.subarray(j * s, (j + 1) * s);
      if (!this.quantized) {
        dst[shard].set(x, local * s);
        continue;
      }
      const hd = this.c.headDim;
      const units = kvEntryUnits(this.kv, hd);
      for (let ch = 0; ch < this.c.cacheHeads; ch++) {
        const e = quantizeEntry(this.kv as "int8" | "int4", x.subarray(ch * hd, (ch + 1) * hd));
        dst[shard].set(e, local * this.unitStride + ch * units);
      }
    }
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
 * by two shards' dispatches, or a state carried from one shard to the next. `dequantErr`: how far
 * the GPU's dequantized cache keys and values may be from `cacheK` / `cacheV` (the same units
 * decoded with the GPU's own f32 roundings), per element.
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
  dequantErr = { k: 0, v: 0 },
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
  let mx = -Infinity, sMag = 0, vMax = 0, qAbs = 0;
  for (let d = 0; d < hd; d++) qAbs += Math.abs(q[d]);
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
  //  - a cached key off by dequantErr.k per element moves its score by <= scale sum|q| of it; a
  //    value off by dequantErr.v moves the output by as much.
  const delta = (hd + 2) * U32 * sMag + scale * qAbs * dequantErr.k;
  const expErr = (3 * (n / 16 + 3 + extraRescales) + 8 * sMag) * 2 ** -23;
  const tol = vMax * (2 * (delta + expErr) + 2 * (n + 2) * U32) + dequantErr.v;
  return { out, tol };
}

/** How a case's cache is laid out and decoded (kv_shards_test.ts varies them). */
export interface AttentionRunOptions {
  /** Shards the cache is split into (default 1). */
  shards?: number;
  /** Ring slots per shard. */
  slots?: number;
  /** Cap on decode splits (default MAX_SPLITS). */
  maxSplits?: number;
  /** How the cache stores keys and values (default: the precision `p`). */
  kv?: KvDtype;
}

/**
 * Runs every forward of case `c` (its prefills, then one decode batch) against a cache image
 * holding each sequence's earlier positions: one dispatch per shard, state carried between them
 * (NaN-filled beforehand, so state read before it is written poisons the output), then the
 * split-K merge. Asserts each output against attentionRef and returns each forward's name and
 * its error as a share of the bound.
 */
export async function checkAttention(
  h: KernelHarness,
  p: ScalarType,
  c: AttnConfig,
  rng: Rng,
  o: AttentionRunOptions = {},
): Promise<{ what: string; ratio: number }[]> {
  const hd = c.headDim;
  const group = c.nHeads / c.nKvHeads;
  const qBase = c.kvHeadBase * group;
  const nq = c.cacheHeads * group;
  const stride = (c.nHeads + 2 * c.nKvHeads) * hd;
  const outDim = c.nHeads * hd;
  const forwards: { kind: "prefill" | "decode"; rows: RowSpec[] }[] = [
    ...c.prefill.map((s) => ({
      kind: "prefill" as const,
      rows: Array.from({ length: s.n }, (_, r) => ({
        slot: s.slot,
        pos: s.pos0 + r,
        firstRow: 0,
        nSeqRows: s.n,
      })),
    })),
    {
      kind: "decode",
      rows: c.decode.map((s, r) => ({ slot: s.slot, pos: s.pos, firstRow: r, nSeqRows: 1 })),
    },
  ];
  const results = [];
  for (const f of forwards) {
    const n = f.rows.length;
    const lengths = new Map<number, number>();
    for (const [r, row] of f.rows.entries()) lengths.set(row.slot, row.pos - (r - row.firstRow));
    const kv = o.kv ?? p;
    const img = new CacheImage(
      c,
      lengths,
      rng,
      o.shards ? { shards: o.shards, slots: o.slots, kv } : { kv },
    );
    if (o.shards) {
      assert.ok(img.shards >= Math.min(o.shards, img.units), `${c.name}: ${img.shards}`);
      if (!c.streaming && o.shards >= 3) {
        // The longest sequence's pages lie in >= 3 shards, out of shard order.
        const [slot, len] = [...lengths].sort((a, b) => b[1] - a[1])[0];
        const shards = img.pageShards(slot, len);
        if (len >= 200) {
          assert.ok(new Set(shards).size >= 3, `${c.name}: pages in shards ${shards}`);
          assert.ok(shards.some((s, i) => i > 0 && s < shards[i - 1]), "pages out of order");
        }
      }
    }
    // q in [-2, 2]: sharper softmaxes, so a wrong or leaked key shows more.
    const qkv = rng.array(n * stride);
    for (let r = 0; r < n; r++) {
      for (let e = 0; e < c.nHeads * hd; e++) qkv[r * stride + e] *= 2;
    }
    const constants = img.constants();
    const part = img.part();
    const common = {
      rows: h.rows(f.rows),
      qkv: h.upload(qkv),
      pageTable: h.upload(img.pageTable, "u32"),
      out: h.filled(n * outDim, SENTINEL),
    };
    const unit = img.quantized ? "u32" : p;
    const shardBuffers = img.kShards.map((k, s) => ({
      kCache: h.upload(k, unit),
      vCache: h.upload(img.vShards[s], unit),
      shard: h.shard(s),
    }));
    const steps: DispatchSpec[] = [];
    let splits = 1;
    if (f.kind === "prefill") {
      const fwd = h.forward({ nRows: n });
      const carry = h.filled(n * c.nHeads * CARRY_FLOATS, NaN);
      for (const sb of shardBuffers) {
        steps.push(call(
          attentionPrefill(constants, part),
          { fwd, ...common, ...sb, carry },
          prefillGroups(n, c.cacheHeads, group),
        ));
      }
    } else {
      const maxPos = Math.max(...f.rows.map((row) => row.pos + 1));
      const plan = splitsFor(maxPos, o.maxSplits ?? MAX_SPLITS);
      if (o.maxSplits) {
        assert.ok(plan.splits <= o.maxSplits && plan.splits < Math.ceil(maxPos / 256));
      } else {
        assert.equal(plan.keysPerSplit, ATTENTION_GEOMETRY.SPLIT_KEYS);
      }
      splits = plan.splits;
      const fwd = h.forward({
        nRows: n,
        nLogitRows: n,
        nSplits: splits,
        nKeysPerSplit: plan.keysPerSplit,
      });
      const partials = h.filled(n * c.nHeads * splits * (hd + 2), NaN);
      for (const sb of shardBuffers) {
        steps.push(call(
          attentionDecode(constants, part, decodeEntry(plan.keysPerSplit)),
          { fwd, ...common, ...sb, partials },
          decodeGroups(n, c.cacheHeads, group, splits),
        ));
      }
      // With one split and one shard `decode` writes the output itself and `merge` is not run.
      const merge = mergeGroups(n, nq, splits);
      assert.equal(merge === null, splits === 1);
      if (merge) {
        steps.push(
          call(attentionMerge(constants, part), { fwd, out: common.out, partials }, merge),
        );
      }
    }
    await h.run({ W: p, KV: kv }, steps);
    const want = new Float64Array(n * outDim).fill(SENTINEL);
    const tol = new Float64Array(n * outDim);
    for (const [r, row] of f.rows.entries()) {
      const ck = img.storedOf("k", row.slot);
      const cv = img.storedOf("v", row.slot);
      // Quantized: the GPU decodes the same units with its own f32 roundings (a product, and
      // int4's sum zero + q scale, each within an ULP of values <= 3 max|x|).
      const maxAbs = (x: Float32Array) => x.reduce((m, y) => Math.max(m, Math.abs(y)), 0);
      const dq = img.quantized
        ? { k: 8 * U32 * maxAbs(img.k.get(row.slot)!), v: 8 * U32 * maxAbs(img.v.get(row.slot)!) }
        : undefined;
      // Sharded: each tile at most twice, and one rescale per shard's hand-over.
      const extra = img.shards > 1 ? (row.pos + 1) / 16 + img.shards : undefined;
      for (let head = qBase; head < qBase + nq; head++) {
        const ref = attentionRef(c, qkv, r, row, head, ck, cv, extra ?? 0, dq);
        want.set(ref.out, r * outDim + head * hd);
        tol.fill(ref.tol, r * outDim + head * hd, r * outDim + (head + 1) * hd);
      }
    }
    const what = `${c.name}: ${p}${kv === p ? "" : ` kv ${kv}`} ${f.kind} ${
      f.kind === "prefill"
        ? `pos0 ${f.rows[0].pos} rows ${n}`
        : `positions ${f.rows.map((row) => row.pos)}, ${splits} splits`
    }, ${img.shards} shard(s)`;
    results.push({
      what,
      ratio: assertClose(await h.readF32(common.out), want, (i) => tol[i], what),
    });
  }
  return results;
}
