// Cache kinds: what one kind of KV-head cache holds, and how many bytes that takes.
//
// A layer's cache is a list of parts, one per kind its KV heads use (a zigzag layer has one part,
// a duo layer two). Each kind alone knows its layout: how many token positions a sequence holds in
// it, how many it reserves up front, whether it draws on the shared page pool, the unit its
// buffers are sharded by (a page, or a sequence slot's ring) and the `override` constants its WGSL
// addressing include (`wgsl/cache_<layout>.wgsl`) needs. Everything that counts
// KV bytes (admission, statistics, metrics, the bench) goes through `CacheGeometry.bytes`, which
// asks the kinds.
//
// Adding a kind: a head kind of plans (plans/types.ts HeadKind), one class here (registered in
// CACHE_KINDS), its WGSL layout include and the attention/store entry points that use it.

import { GROWTH_UNITS, type HeadKind, ringRecent, type Window } from "../plans/types.ts";

/** What a kind needs to know of a sequence: positions written and pages held. */
export interface SeqState {
  readonly tokens: number;
  readonly pages: readonly number[];
}

/** Sizes every kind may read: the cache's, and the window of the heads the instance serves (a
 * plan with per-layer windows has one ring instance per distinct window). */
export interface KindParams {
  pageSize: number;
  sink: number;
  recent: number;
  /** Elastic windows (plans/types.ts Window): growth per position and the largest recent. */
  growth?: number;
  maxRecent?: number;
  /** Positions a ring keeps beyond sink + recent (prefix-cache snapshots; default 0). */
  ringSlack?: number;
}

/** What a kind's kernel constants depend on beyond the kind itself (CacheLayout sets them). */
export interface KindSizes {
  /** Page-table entries per sequence slot. */
  maxPagesPerSeq: number;
  /** Shard units (pages, or sequence slots) each shard buffer holds. */
  unitsPerShard: number;
  /** Shard buffers each part of the kind is split into. */
  shards: number;
}

export interface CacheKind {
  /** The head kind of plans, statistics and metrics. */
  readonly name: HeadKind;
  /** The window it keeps (rings), or null (it keeps every position): heads of one kind with
   * different windows are different instances, each its own cache part and kernels. */
  readonly window: Window | null;
  /** WGSL addressing include: `wgsl/cache_${layout}.wgsl`. */
  readonly layout: "paged" | "ring";
  /** Draws its memory from the shared page pool (one page table serves every such part). */
  readonly paged: boolean;
  /** Token positions per KV head that every sequence slot reserves whatever its length. */
  readonly slotsPerSeq: number;
  /** Keeps RazorAttention's compensation token: attention reads it and `wgsl/compensation.wgsl`
   * folds the keys that leave the window into it. */
  readonly compensated: boolean;
  /** 32-bit words per KV head that every sequence slot keeps besides its positions (a
   * compensation token's running sums), 0 for most kinds. */
  stateWords(headDim: number): number;
  /** Token positions of one shard unit: the kind's buffers are split into shards of whole units
   * (a page of the pool, or one sequence slot's ring). */
  readonly unitPositions: number;
  /** Token positions per KV head a sequence in this state occupies (what its bytes count). */
  slotsHeld(s: SeqState): number;
  /** Tokens of a sequence of `tokens` positions that this kind keeps. */
  tokensHeld(tokens: number): number;
  /** The layout's `override` constants for the attention and store kernels. */
  constants(s: KindSizes): Record<string, number | boolean>;
}

/** Retrieval heads: every position, in pages of `pageSize` tokens from the shared pool. */
export class RetrievalPages implements CacheKind {
  readonly name = "retrieval" as const;
  readonly layout = "paged" as const;
  readonly paged = true;
  readonly slotsPerSeq = 0;
  readonly compensated = false;
  readonly window = null;
  constructor(readonly pageSize: number) {}

  stateWords(): number {
    return 0;
  }

  get unitPositions(): number {
    return this.pageSize;
  }

  slotsHeld(s: SeqState): number {
    return s.pages.length * this.pageSize;
  }

  tokensHeld(tokens: number): number {
    return tokens;
  }

  constants(s: KindSizes) {
    return {
      PAGE_SIZE: this.pageSize,
      MAX_PAGES: s.maxPagesPerSeq,
      PAGES_PER_SHARD: s.unitsPerShard,
      CACHE_SHARDS: s.shards,
    };
  }
}

/**
 * Streaming heads: the first `sink` positions and the last `recent`, in a ring per slot. With
 * `slack` > 0 the ring keeps `slack` older positions too (attention never reads them), so that a
 * copy of it taken at position b is the exact state of every position in [b - slack, b]: the
 * prefix cache's snapshots resume from any page boundary in that range. Elastic (`elastic`
 * given): `recent` is the ring's size, the window's largest; a query at i sees the last
 * min(recent, elastic.base + floor(elastic.growth (i + 1))) positions.
 */
export class StreamingRing implements CacheKind {
  readonly name: HeadKind = "streaming";
  readonly layout = "ring" as const;
  readonly paged = false;
  readonly compensated: boolean = false;
  constructor(
    readonly sink: number,
    readonly recent: number,
    readonly slack = 0,
    readonly elastic: { base: number; growth: number } | null = null,
  ) {}

  /** The ring for a window (its ring size from `ringRecent`). */
  static sized<T extends StreamingRing>(
    this: new (
      sink: number,
      recent: number,
      slack?: number,
      elastic?: { base: number; growth: number } | null,
    ) => T,
    w: Window,
    slack: number,
  ): T {
    return new this(
      w.sink,
      ringRecent(w),
      slack,
      w.growth ? { base: w.recent, growth: w.growth } : null,
    );
  }

  get window(): Window {
    return this.elastic
      ? {
        sink: this.sink,
        recent: this.elastic.base,
        growth: this.elastic.growth,
        maxRecent: this.recent,
      }
      : { sink: this.sink, recent: this.recent };
  }

  stateWords(_headDim: number): number {
    return 0;
  }

  get slotsPerSeq(): number {
    return this.sink + this.recent + this.slack;
  }

  get unitPositions(): number {
    return this.slotsPerSeq;
  }

  slotsHeld(s: SeqState): number {
    return this.tokensHeld(s.tokens);
  }

  tokensHeld(tokens: number): number {
    return Math.min(tokens, this.slotsPerSeq);
  }

  constants(s: KindSizes) {
    return {
      SINK: this.sink,
      RECENT: this.recent,
      // The window's start: RECENT alone unless elastic.
      RECENT_BASE: this.elastic?.base ?? this.recent,
      GROWTH_Q16: Math.round((this.elastic?.growth ?? 0) * GROWTH_UNITS),
      SLACK: this.slack,
      SLOTS_PER_SHARD: s.unitsPerShard,
      CACHE_SHARDS: s.shards,
    };
  }
}

/**
 * Streaming heads with RazorAttention's compensation token: the ring of StreamingRing, plus per
 * sequence slot and KV head the sums of the keys and of the values that have left the window
 * (positions [sink, i + 1 - recent) for a query at i), each with a Neumaier correction term, and
 * the position e they reach: 4 x head_dim + 4 words. The sums stop where the ring's slack starts
 * (the keys between are still in the ring), so a snapshot serves every position of its slack as
 * a plain ring's does. Attention treats the token as one more key, the mean key with logit
 * q.k_mean + ln(count), carrying the mean value; the count follows from the position.
 */
export class CompensatedRing extends StreamingRing {
  override readonly name: HeadKind = "compensated";
  override readonly compensated = true;

  override stateWords(headDim: number): number {
    return 4 * headDim + 4;
  }
}

/** Every kind, in cache order: within a layer, heads of an earlier kind come first (and, of
 * one kind, heads of a smaller window). */
export const CACHE_KINDS: readonly {
  name: HeadKind;
  make: (p: KindParams) => CacheKind;
}[] = [
  { name: "retrieval", make: (p) => new RetrievalPages(p.pageSize) },
  { name: "streaming", make: (p) => StreamingRing.sized(p, p.ringSlack ?? 0) },
  { name: "compensated", make: (p) => CompensatedRing.sized(p, p.ringSlack ?? 0) },
];

export const KIND_NAMES: readonly HeadKind[] = CACHE_KINDS.map((k) => k.name);
