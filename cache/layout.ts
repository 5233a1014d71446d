// The cache's shape for one model and plan: which parts each layer has, the byte formula, and
// (once a budget sizes it) how many pages and sequence slots there are.
//
// `CacheGeometry` needs no budget: per layer the parts (a kind and the KV heads it holds, in
// cache order), and `bytes(seq)`, the one formula every byte count in zigzag comes from.
// `CacheLayout` adds the sizes the GPU buffers and the page pool are built with, including how
// each kind's buffers are sharded: a part whose pool (or rings) would exceed one storage binding
// is split into several buffers of whole units, page p in shard p / pagesPerShard (rings: slot s
// in shard s / slotsPerShard), so that any context fits an adapter that binds 128 MiB and every
// index within a shard stays far below 2^32.

import type { ModelConfig } from "../model/types.ts";
import { type HeadKind, headWindow, type ResolvedPlan, type Window } from "../plans/types.ts";
import { CACHE_KINDS, type CacheKind, KIND_NAMES, type SeqState } from "./kinds.ts";

/** The adapter limits a cache's buffers must respect (GPUSupportedLimits has both). */
export interface BufferLimits {
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
}

/** WebGPU's default limits, which every adapter meets: the sizing when none is given. */
export const DEFAULT_BUFFER_LIMITS: BufferLimits = {
  maxStorageBufferBindingSize: 128 << 20,
  maxBufferSize: 256 << 20,
};

/** Largest shard buffer whatever the adapter binds: its unit indices stay below 2^31 (the
 * attention kernel flags fresh keys with bit 31), in every KV dtype. */
export const MAX_SHARD_BYTES = 2 ** 31;

/** How the buffers of every part of one kind are split. */
export interface KindShards {
  /** Shard buffers (of K, and as many of V) per part. */
  count: number;
  /** Units (pages of the pool, or sequence slots) per shard; the last shard may hold fewer. */
  unitsPerShard: number;
  /** Units in all: pages of the pool (paged kinds) or sequence slots (rings). */
  units: number;
}

/**
 * How the cache stores keys and values (`--kv-dtype`), independent of the weights' precision.
 * Each (position, KV head) entry of a K or V buffer is `kvEntryUnits` units of `kvUnitBytes`:
 * - f16, f32: the head's values as they are;
 * - int8: symmetric, the values over max|x| of the head (4 per u32, `pack4x8snorm`), then
 *   max|x| as an f32 word: one scale per token per KV head;
 * - int4: asymmetric, 8 values per u32 (nibble i of word w is dim 8w + i), then one word of
 *   f16 (scale, zero), zero = min of the head: one group of head_dim per token per KV head, as
 *   DuoAttention's int4_kv (its group of 128 is Llama's head_dim). Per-token groups keep every
 *   entry self-contained, so pages and ring slots need no per-channel state (KIVI's per-channel
 *   keys would need a group of positions to close before it could be quantized).
 * The wgsl/kv_<dtype>.wgsl codecs implement these; tests/kv_quant_reference.ts is their CPU
 * definition.
 */
export type KvDtype = "f16" | "f32" | "int8" | "int4";

export const KV_DTYPES: readonly KvDtype[] = ["f16", "f32", "int8", "int4"];

/** Bytes of one storage unit of a K or V buffer: an f16 or f32 value, or a u32 word. */
export function kvUnitBytes(dtype: KvDtype): number {
  return dtype === "f16" ? 2 : 4;
}

/** Storage units of one (position, KV head) entry, scales included. */
export function kvEntryUnits(dtype: KvDtype, headDim: number): number {
  if (dtype === "int8") return headDim / 4 + 1;
  if (dtype === "int4") return headDim / 8 + 1;
  return headDim;
}

/** Bytes of one (position, KV head) entry of K (or of V), scales included. */
export function kvEntryBytes(dtype: KvDtype, headDim: number): number {
  return kvEntryUnits(dtype, headDim) * kvUnitBytes(dtype);
}

/** Why `headDim` cannot be stored in `dtype` (the codecs pack whole words), or null. */
export function kvDtypeProblem(dtype: KvDtype, headDim: number): string | null {
  const per = dtype === "int8" ? 4 : dtype === "int4" ? 8 : 1;
  return headDim % per === 0
    ? null
    : `--kv-dtype ${dtype} packs ${per} values per word and needs head_dim a multiple of ${per} ` +
      `(this model's is ${headDim})`;
}

export class CacheExhaustedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CacheExhaustedError";
  }
}

/** One part of a layer's cache: the KV heads [kvHeadBase, kvHeadBase + heads) in cache order. */
export interface CachePartLayout {
  kind: CacheKind;
  /** The model's KV head indices this part holds, ascending. */
  kvHeads: number[];
  kvHeadBase: number;
  heads: number;
}

export interface LayerCacheLayout {
  /** One part per kind the layer's KV heads use, in CACHE_KINDS order. */
  parts: CachePartLayout[];
}

/** Bytes of each kind, and their sum. */
export type KindBytes = Record<HeadKind, number> & { total: number };

function zeroKindBytes(): KindBytes {
  const out = { total: 0 } as KindBytes;
  for (const name of KIND_NAMES) out[name] = 0;
  return out;
}

export class CacheGeometry {
  /** Bytes of one storage unit of the K and V buffers (kvUnitBytes). */
  readonly bytesPerElement: number;
  /** Bytes of one (position, KV head) entry of K or V, scales included (kvEntryBytes). */
  readonly entryBytes: number;
  /** The kind instances, in cache order: one of every kind at the plan's window (used or not),
   * and one more of a ring kind per other window the plan's layers give its heads. */
  readonly kinds: readonly CacheKind[];
  readonly layers: LayerCacheLayout[];
  /** KV heads each instance holds, summed over layers. */
  readonly #heads: Map<CacheKind, number>;
  /** Each kind's instance at the plan's window. */
  readonly #planWindow: Map<HeadKind, CacheKind>;

  constructor(
    readonly config: ModelConfig,
    readonly plan: ResolvedPlan,
    readonly kvDtype: KvDtype,
    readonly pageSize = 16,
    /** Positions each ring keeps beyond sink + recent (StreamingRing's slack). */
    readonly ringSlack = 0,
  ) {
    const problem = kvDtypeProblem(kvDtype, config.headDim);
    if (problem) throw new RangeError(problem);
    this.bytesPerElement = kvUnitBytes(kvDtype);
    this.entryBytes = kvEntryBytes(kvDtype, config.headDim);
    // One instance per (kind, window): heads with the same kind and window share kernels.
    const instances = new Map<string, CacheKind>();
    const instanceOf = (name: HeadKind, w: Window): CacheKind => {
      const spec = CACHE_KINDS.find((k) => k.name === name)!;
      const probe = spec.make({ pageSize, ...w, ringSlack });
      const pw = probe.window;
      const key = `${name}:${pw?.sink}:${pw?.recent}:${pw?.growth ?? 0}:${pw?.maxRecent ?? 0}`;
      if (!instances.has(key)) instances.set(key, probe);
      return instances.get(key)!;
    };
    this.#planWindow = new Map(
      KIND_NAMES.map((k) => [k, instanceOf(k, { sink: plan.sink, recent: plan.recent })]),
    );
    const headKinds = plan.layers.map((lp, l) =>
      lp.kvHeadKinds.map((k, h) => instanceOf(k, headWindow(plan, l, h)))
    );
    const order = (k: CacheKind) => [
      KIND_NAMES.indexOf(k.name),
      k.window?.sink ?? 0,
      k.window?.recent ?? 0,
      k.window?.growth ?? 0,
      k.window?.maxRecent ?? 0,
    ];
    this.kinds = [...instances.values()].sort((a, b) => {
      const [x, y] = [order(a), order(b)];
      return x.map((v, i) => v - y[i]).find((d) => d !== 0) ?? 0;
    });
    this.layers = headKinds.map((kinds) => {
      const parts: CachePartLayout[] = [];
      let base = 0;
      for (const kind of this.kinds) {
        const kvHeads = kinds.flatMap((k, h) => k === kind ? [h] : []);
        if (kvHeads.length === 0) continue;
        parts.push({ kind, kvHeads, kvHeadBase: base, heads: kvHeads.length });
        base += kvHeads.length;
      }
      return { parts };
    });
    this.#heads = new Map(this.kinds.map((k) => [k, 0]));
    for (const l of this.layers) {
      for (const p of l.parts) this.#heads.set(p.kind, this.#heads.get(p.kind)! + p.heads);
    }
  }

  /** The instance of a kind at the plan's window. */
  kind(name: HeadKind): CacheKind {
    return this.#planWindow.get(name)!;
  }

  /** KV heads of a kind summed over layers (every window). */
  headsOf(name: HeadKind): number {
    let n = 0;
    for (const [k, heads] of this.#heads) if (k.name === name) n += heads;
    return n;
  }

  /** KV heads of one kind instance summed over layers. */
  headsIn(kind: CacheKind): number {
    return this.#heads.get(kind) ?? 0;
  }

  /** KV heads in cache order for a layer: its parts' heads, one part after another. */
  kvHeadOrder(layer: number): number[] {
    return this.layers[layer].parts.flatMap((p) => p.kvHeads);
  }

  /** Whether any layer keeps paged (pool) memory. */
  get paged(): boolean {
    return this.kinds.some((k) => k.paged && this.headsIn(k) > 0);
  }

  /** K and V bytes of one token for `heads` KV heads, scales included. */
  tokenBytes(heads: number): number {
    return 2 * heads * this.entryBytes;
  }

  /** Bytes of one page across every paged part. */
  get pageBytes(): number {
    return this.pageSize * this.#pagedTokenBytes();
  }

  /** Bytes of a kind's per-slot state (compensation sums) for `heads` KV heads. */
  stateBytes(kind: CacheKind, heads: number): number {
    return kind.stateWords(this.config.headDim) * 4 * heads;
  }

  /** Bytes one sequence slot reserves across every non-paged part (its rings and their state). */
  get ringBytes(): number {
    let b = 0;
    for (const k of this.kinds) {
      const heads = this.headsIn(k);
      b += k.slotsPerSeq * this.tokenBytes(heads) + this.stateBytes(k, heads);
    }
    return b;
  }

  /** Whether any layer keeps compensation tokens. */
  get compensated(): boolean {
    return this.kinds.some((k) => k.compensated && this.headsIn(k) > 0);
  }

  /** Positions of the longest ring the plan uses (sink + recent + slack; the plan's window when
   * no layer keeps a ring). */
  get ringLength(): number {
    const used = this.ringKinds.map((k) => k.slotsPerSeq);
    return used.length > 0 ? Math.max(...used) : this.plan.sink + this.plan.recent + this.ringSlack;
  }

  /** The ring kind instances some layer uses (one per kind and window). */
  get ringKinds(): CacheKind[] {
    return this.kinds.filter((k) => !k.paged && this.headsIn(k) > 0);
  }

  /** Whether any layer keeps rings (streaming heads). */
  get ringed(): boolean {
    return this.ringKinds.length > 0;
  }

  get retrievalHeads(): number {
    return this.headsOf("retrieval");
  }

  get streamingHeads(): number {
    return this.headsOf("streaming");
  }

  #pagedTokenBytes(): number {
    let b = 0;
    for (const k of this.kinds) if (k.paged) b += this.tokenBytes(this.headsIn(k));
    return b;
  }

  /** Pages that hold positions [0, positions) (0 when no part is paged). */
  pagesFor(positions: number): number {
    return this.paged ? Math.ceil(positions / this.pageSize) : 0;
  }

  /** The byte formula: what a sequence in this state occupies, per kind and in total (a kind's
   * per-slot state counts once the sequence holds a position). */
  bytes(s: SeqState): KindBytes {
    return this.kindBytes((k) => k.slotsHeld(s), s.tokens > 0 ? 1 : 0);
  }

  /** Bytes of each kind when it holds `slots(kind)` token positions per KV head and `states`
   * slots' per-slot state. */
  protected kindBytes(slots: (k: CacheKind) => number, states: number): KindBytes {
    const out = zeroKindBytes();
    for (const k of this.kinds) {
      const b = this.instanceBytes(k, slots(k), states);
      out[k.name] += b;
      out.total += b;
    }
    return out;
  }

  /** Bytes of one kind instance holding `slots` token positions per KV head and `states`
   * slots' per-slot state. */
  instanceBytes(k: CacheKind, slots: number, states: number): number {
    const heads = this.headsIn(k);
    return slots * this.tokenBytes(heads) + states * this.stateBytes(k, heads);
  }

  /** A sequence of `tokens` positions holding exactly the pages they need. */
  stateFor(tokens: number): SeqState {
    return { tokens, pages: new Array(this.pagesFor(tokens)).fill(0) };
  }

  /** `bytes` of sequences of these lengths, summed. */
  usedBytes(lengths: number[]): KindBytes {
    const out = zeroKindBytes();
    for (const n of lengths) {
      const b = this.bytes(this.stateFor(n));
      for (const name of KIND_NAMES) out[name] += b[name];
      out.total += b.total;
    }
    return out;
  }

  /** Bytes a full-attention cache needs for `tokens` tokens (no paging). */
  fullBytes(tokens: number): number {
    return tokens * this.tokenBytes(this.config.nLayers * this.config.nKvHeads);
  }
}

export interface CacheSizing {
  /** Total bytes the cache may take (`--kv-cache-mb`). */
  budgetBytes: number;
  /** Sequences that can hold cache at once (each owns one slot). */
  maxSeqs: number;
  /** Longest sequence (prompt + generated); sizes the page-table rows. */
  maxSeqLen: number;
  kvDtype: KvDtype;
  /** Tokens per page (default 16). */
  pageSize?: number;
  /** The adapter's buffer limits (`gpu.limits`), which size the shards; default WebGPU's
   * defaults (128 MiB bindings). Tests pass tiny ones to force several shards. */
  limits?: BufferLimits;
  /** Positions each ring keeps beyond sink + recent (default 0; the prefix cache's snapshots
   * need it, see StreamingRing). */
  ringSlack?: number;
  /** Rings kept for prefix-cache snapshots besides the sequences' own (default 0; none when
   * no layer has streaming heads). Their bytes come out of the budget. */
  snapshotSlots?: number;
}

/** A geometry sized by a byte budget: pages in the pool, sequence slots, page-table rows. */
export class CacheLayout extends CacheGeometry {
  readonly maxSeqs: number;
  readonly maxSeqLen: number;
  readonly maxPagesPerSeq: number;
  readonly numPages: number;
  /** Rings for prefix-cache snapshots: ring slots [maxSeqs, maxSeqs + snapshotSlots). */
  readonly snapshotSlots: number;
  readonly budgetBytes: number;
  /** Bytes a shard buffer may take: the binding and buffer limits, at most MAX_SHARD_BYTES. */
  readonly maxShardBytes: number;
  readonly #shards = new Map<CacheKind, KindShards>();

  constructor(config: ModelConfig, plan: ResolvedPlan, s: CacheSizing) {
    super(config, plan, s.kvDtype, s.pageSize ?? 16, s.ringSlack ?? 0);
    this.maxSeqs = s.maxSeqs;
    this.snapshotSlots = this.ringed ? s.snapshotSlots ?? 0 : 0;
    this.maxSeqLen = s.maxSeqLen;
    this.budgetBytes = s.budgetBytes;
    this.maxPagesPerSeq = Math.ceil(s.maxSeqLen / this.pageSize);
    const fixed = this.ringSlots * this.ringBytes;
    if (fixed > s.budgetBytes) {
      const snaps = this.snapshotSlots > 0 ? ` and ${this.snapshotSlots} prefix snapshots` : "";
      throw new CacheExhaustedError(
        `--kv-cache-mb ${mb(s.budgetBytes)} is too small: the streaming rings of ` +
          `${s.maxSeqs} sequences${snaps} alone need ${mb(fixed)} MB`,
      );
    }
    const maxUseful = s.maxSeqs * this.maxPagesPerSeq;
    this.numPages = !this.paged
      ? 0
      : Math.min(maxUseful, Math.floor((s.budgetBytes - fixed) / this.pageBytes));
    if (this.paged && this.numPages === 0) {
      throw new CacheExhaustedError(
        `--kv-cache-mb ${mb(s.budgetBytes)} leaves no room for a single ${
          mb(this.pageBytes)
        } MB page of the retrieval layers`,
      );
    }
    const limits = s.limits ?? DEFAULT_BUFFER_LIMITS;
    this.maxShardBytes = Math.min(
      limits.maxStorageBufferBindingSize,
      limits.maxBufferSize,
      MAX_SHARD_BYTES,
    );
    for (const kind of this.kinds) this.#shards.set(kind, this.#shardsOf(kind));
  }

  /** Shards of whole units, each sized for the kind's largest part. */
  #shardsOf(kind: CacheKind): KindShards {
    const units = kind.paged ? this.numPages : this.ringSlots;
    const heads = Math.max(
      0,
      ...this.layers.flatMap((l) => l.parts.filter((p) => p.kind === kind).map((p) => p.heads)),
    );
    const unitBytes = this.unitBytes(kind, heads);
    if (units === 0 || unitBytes === 0) {
      return { count: 1, unitsPerShard: Math.max(1, units), units };
    }
    const fit = Math.floor(this.maxShardBytes / unitBytes);
    if (fit === 0) {
      throw new CacheExhaustedError(
        `one ${kind.paged ? "page" : "sequence's ring"} of a ${kind.name} layer needs ` +
          `${mb(unitBytes)} MB but the adapter binds at most ${mb(this.maxShardBytes)} MB`,
      );
    }
    const unitsPerShard = Math.min(fit, units);
    return { count: Math.ceil(units / unitsPerShard), unitsPerShard, units };
  }

  /** Bytes of one unit (a page, or one slot's ring) of the kind's K (or V) buffer for a part of
   * `heads` KV heads. */
  unitBytes(kind: CacheKind, heads: number): number {
    return kind.unitPositions * heads * this.entryBytes;
  }

  /** How the kind's buffers are split into shards. */
  shards(kind: CacheKind): KindShards {
    return this.#shards.get(kind)!;
  }

  /** Bytes of shard `shard` of one K (or V) buffer of a part of `heads` KV heads. */
  shardBytes(kind: CacheKind, heads: number, shard: number): number {
    const s = this.shards(kind);
    const units = Math.min(s.unitsPerShard, s.units - shard * s.unitsPerShard);
    return units * this.unitBytes(kind, heads);
  }

  /** Rings in each ring buffer: one per sequence slot, then the snapshots'. */
  get ringSlots(): number {
    return this.maxSeqs + this.snapshotSlots;
  }

  /** Token positions one part of this kind holds in its buffers (all rings or all pages). */
  capacity(kind: CacheKind): number {
    return kind.paged ? this.numPages * this.pageSize : this.ringSlots * kind.slotsPerSeq;
  }

  /** Bytes allocated for each kind. */
  reservedBytes(): KindBytes {
    return this.kindBytes((k) => this.capacity(k), this.ringSlots);
  }

  /** The layout's `override` constants for a kind's kernels. */
  constants(kind: CacheKind): Record<string, number | boolean> {
    const s = this.shards(kind);
    return kind.constants({
      maxPagesPerSeq: this.maxPagesPerSeq,
      unitsPerShard: s.unitsPerShard,
      shards: s.count,
    });
  }
}

export function mb(bytes: number): string {
  return (bytes / (1 << 20)).toFixed(bytes < 1 << 20 ? 3 : 1);
}
