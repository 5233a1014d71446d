// The KV-cache manager: sequences' claims on the page pool, and the figures they add up to.
//
// Pure bookkeeping: it hands out slots and pages and counts bytes; the GPU side (gpu/kv_buffers.ts)
// owns the buffers and copies each sequence's page list into the page table before a forward.
// The engine allocates here (`ensure`) before it runs a forward and commits after.

import { type HeadKind, windowJson } from "../plans/types.ts";
import { CacheExhaustedError, type CacheLayout } from "./layout.ts";
import { PagePool } from "./page_pool.ts";
import { NO_HIT, PrefixCache, type PrefixCacheStats, type PrefixHit } from "./prefix_cache.ts";

export { NO_HIT, type PrefixHit };

export { CacheExhaustedError };

/** A sequence's claim on the cache. */
export interface SeqCache {
  readonly id: number;
  /** Page-table row and ring index. */
  readonly slot: number;
  /** Pages of positions [0, pages.length * pageSize), in order. */
  pages: number[];
  /** Positions written so far. */
  tokens: number;
}

export interface KindStats {
  tokens: number;
  bytes_reserved: number;
  /** Held by running sequences (a page shared by several counts once). */
  bytes_used: number;
  /** Held by the prefix cache: its pages (shared or idle) and snapshot rings. */
  bytes_cached: number;
  /** Pages some sequence holds. */
  pages_used: number;
  /** Pages free, idle cached pages included (they are evicted on demand). */
  pages_free: number;
  /** Pages registered in the prefix cache (shared or idle). */
  pages_cached: number;
}

export interface RingStats {
  kind: HeadKind;
  sink: number;
  recent: number;
  /** Elastic windows: recent positions gained per position, up to max_recent (the ring). */
  growth?: number;
  max_recent?: number;
  kv_heads: number;
  tokens: number;
  bytes_reserved: number;
  bytes_used: number;
}

export type CacheStats =
  & {
    sequences: number;
    page_size: number;
    sink: number;
    recent: number;
    total: KindStats;
    /** Each ring kind in use at each window (a plan with per-layer windows has several): its
     * KV heads summed over layers, tokens its rings keep and bytes. */
    rings: RingStats[];
    /** Bytes a full-attention cache would hold for the same sequences. */
    full_attention_bytes: number;
    /** total.bytes_used / full_attention_bytes (1 when nothing is cached). */
    ratio_to_full: number;
    /** The prefix cache (null when disabled). */
    prefix_cache: PrefixCacheStats | null;
  }
  & Record<HeadKind, KindStats>;

/** A request's KV-cache use, in the manager's units. */
export interface CacheFootprint {
  /** Positions held in the cache. */
  tokens: number;
  /** Pages of the paged (retrieval) cache. */
  pages: number;
  retrieval_bytes: number;
  streaming_bytes: number;
  bytes: number;
  /** What a full-attention cache would hold for the same positions. */
  full_attention_bytes: number;
  ratio_to_full: number;
}

export class KvCacheManager {
  readonly pool: PagePool;
  /** Null when prefix caching is off (or the layout has no snapshot ring for its rings). */
  readonly prefix: PrefixCache | null;
  #seqs = new Map<number, SeqCache>();
  #nextId = 1;

  constructor(readonly layout: CacheLayout, opts: { prefixCache?: boolean } = {}) {
    this.pool = new PagePool(layout.numPages, layout.maxSeqs);
    const prefix = new PrefixCache(this.pool, {
      pageSize: layout.pageSize,
      paged: layout.paged,
      ringed: layout.ringed,
      ringSlack: layout.ringSlack,
      snapshotSlots: layout.snapshotSlots,
      firstSnapshotSlot: layout.maxSeqs,
    });
    this.prefix = opts.prefixCache && prefix.usable ? prefix : null;
  }

  get pageSize(): number {
    return this.layout.pageSize;
  }

  get numPages(): number {
    return this.layout.numPages;
  }

  get maxSeqs(): number {
    return this.layout.maxSeqs;
  }

  get maxPagesPerSeq(): number {
    return this.layout.maxPagesPerSeq;
  }

  /** Claims a slot for a new sequence, or null when every slot is taken. */
  open(): SeqCache | null {
    const slot = this.pool.openSlot();
    if (slot === null) return null;
    const seq: SeqCache = { id: this.#nextId++, slot, pages: [], tokens: 0 };
    this.#seqs.set(seq.id, seq);
    return seq;
  }

  /** Pages needed to hold positions [0, positions) beyond what `seq` has. */
  pagesNeeded(seq: SeqCache, positions: number): number {
    return Math.max(0, this.layout.pagesFor(positions) - seq.pages.length);
  }

  /**
   * Makes room for positions [0, positions). Returns false, changing nothing, when the pool
   * lacks pages or the sequence would exceed its page-table row.
   */
  ensure(seq: SeqCache, positions: number): boolean {
    if (!this.#seqs.has(seq.id)) throw new Error(`sequence ${seq.id} is not open`);
    if (!this.layout.paged) return positions <= this.maxPagesPerSeq * this.pageSize;
    const need = this.pagesNeeded(seq, positions);
    if (need === 0) return true;
    if (seq.pages.length + need > this.maxPagesPerSeq) return false;
    const short = need - this.pool.freePages;
    if (short > 0 && this.prefix) this.prefix.evict(short);
    const pages = this.pool.allocate(need);
    if (!pages) return false;
    seq.pages.push(...pages);
    return true;
  }

  /** `ensure`, or a RangeError saying why the positions cannot be held. */
  reserve(seq: SeqCache, positions: number): void {
    if (positions > this.layout.maxSeqLen) {
      throw new RangeError(
        `sequence of ${positions} tokens exceeds the context of ${this.layout.maxSeqLen}`,
      );
    }
    if (!this.ensure(seq, positions)) {
      throw new RangeError(`the KV cache has no free pages for ${positions} tokens`);
    }
  }

  /** Records that positions [0, tokens) now hold keys and values. */
  commit(seq: SeqCache, tokens: number): void {
    seq.tokens = Math.max(seq.tokens, tokens);
  }

  // ---- prefix caching (cache/prefix_cache.ts) ------------------------------------------------

  /** Where a prompt whose full pages hash to `chain` could resume (NO_HIT when caching is off). */
  lookup(chain: readonly string[], promptTokens: number): PrefixHit {
    return this.prefix?.lookup(chain, promptTokens) ?? NO_HIT;
  }

  /** Starts a freshly opened sequence at a hit: its cached pages shared, `hit.positions` written.
   * The caller copies `hit.snapshot` into the sequence's rings before its next forward. */
  resume(seq: SeqCache, hit: PrefixHit): void {
    if (seq.tokens !== 0 || seq.pages.length !== 0) throw new Error("resume needs a new sequence");
    if (hit.positions === 0) return;
    seq.pages = this.prefix!.acquire(hit);
    seq.tokens = hit.positions;
  }

  /** Registers the full pages `seq` has written (their tokens hashing to `chain`) for reuse. */
  cachePages(seq: SeqCache, chain: readonly string[]): void {
    this.prefix?.insertPages(chain, seq.pages, Math.floor(seq.tokens / this.pageSize));
  }

  /** A snapshot ring to copy `seq`'s rings into (its state at `seq.tokens`), or null. */
  snapshot(seq: SeqCache, chain: readonly string[]): number | null {
    return this.prefix?.insertSnapshot(chain, seq.tokens) ?? null;
  }

  /** Returns a sequence's pages and slot to the pool (finish or cancel): the pages the prefix
   * cache registered stay cached. Idempotent. */
  close(seq: SeqCache): void {
    if (!this.#seqs.delete(seq.id)) return;
    this.pool.release(seq.pages);
    this.prefix?.released(seq.pages);
    seq.pages = [];
    this.pool.closeSlot(seq.slot);
  }

  /** Pages a sequence may still get: free ones and idle cached ones (evicted on demand). */
  get freePages(): number {
    return this.pool.freePages + (this.prefix?.idlePages ?? 0);
  }

  get freeSlots(): number {
    return this.pool.freeSlots;
  }

  get openSequences(): number {
    return this.#seqs.size;
  }

  /** What `seq` holds now: bytes by kind and the full-attention equivalent. */
  footprint(seq: SeqCache): CacheFootprint {
    const b = this.layout.bytes(seq);
    const full = this.layout.fullBytes(seq.tokens);
    return {
      tokens: seq.tokens,
      pages: seq.pages.length,
      retrieval_bytes: b.retrieval,
      streaming_bytes: b.streaming + b.compensated,
      bytes: b.total,
      full_attention_bytes: full,
      ratio_to_full: full > 0 ? b.total / full : 1,
    };
  }

  stats(): CacheStats {
    const g = this.layout;
    const seqs = [...this.#seqs.values()];
    // Pages shared by several sequences (a cached prefix) count once.
    const held = new Set<number>();
    for (const s of seqs) for (const p of s.pages) held.add(p);
    const pc = this.prefix?.stats() ?? null;
    const reserved = g.reservedBytes();
    const pagesUsed = held.size;
    const pagesFree = this.freePages;
    const out = {
      sequences: seqs.length,
      page_size: g.pageSize,
      sink: g.plan.sink,
      recent: g.plan.recent,
    } as CacheStats;
    const total: KindStats = {
      tokens: seqs.reduce((a, s) => a + s.tokens, 0),
      bytes_reserved: reserved.total,
      bytes_used: 0,
      bytes_cached: 0,
      pages_used: pagesUsed,
      pages_free: pagesFree,
      pages_cached: pc?.pages ?? 0,
    };
    const started = seqs.filter((s) => s.tokens > 0).length;
    out.rings = [];
    for (const k of g.kinds) {
      const heads = g.headsIn(k);
      const token = g.tokenBytes(heads);
      const state = g.stateBytes(k, heads);
      const slots = k.paged ? pagesUsed * g.pageSize : seqs.reduce((a, s) => a + k.slotsHeld(s), 0);
      const cachedSlots = !pc ? 0 : k.paged ? pc.pages * g.pageSize : pc.snapshots * k.slotsPerSeq;
      const tokens = heads > 0 ? seqs.reduce((a, s) => a + k.tokensHeld(s.tokens), 0) : 0;
      const bytesUsed = slots * token + started * state;
      // A snapshot ring keeps its sums too (compensated rings).
      const bytesCached = cachedSlots * token + (pc && !k.paged ? pc.snapshots * state : 0);
      const bytesReserved = g.instanceBytes(k, g.capacity(k), g.ringSlots);
      // A kind's figures sum its instances (one per window); its tokens are the most any of
      // them keeps.
      const ks: KindStats = out[k.name] ?? {
        tokens: 0,
        bytes_reserved: reserved[k.name],
        bytes_used: 0,
        bytes_cached: 0,
        pages_used: k.paged ? pagesUsed : 0,
        pages_free: k.paged ? pagesFree : 0,
        pages_cached: k.paged ? total.pages_cached : 0,
      };
      ks.tokens = Math.max(ks.tokens, tokens);
      ks.bytes_used += bytesUsed;
      ks.bytes_cached += bytesCached;
      out[k.name] = ks;
      total.bytes_used += bytesUsed;
      total.bytes_cached += bytesCached;
      if (!k.paged && heads > 0) {
        out.rings.push({
          kind: k.name,
          ...windowJson(k.window!),
          kv_heads: heads,
          tokens,
          bytes_reserved: bytesReserved,
          bytes_used: bytesUsed,
        });
      }
    }
    out.total = total;
    const full = g.fullBytes(total.tokens);
    out.full_attention_bytes = full;
    out.ratio_to_full = full > 0 ? total.bytes_used / full : 1;
    out.prefix_cache = pc;
    return out;
  }
}
