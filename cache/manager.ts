// The KV-cache manager: sequences' claims on the page pool, and the figures they add up to.
//
// Pure bookkeeping: it hands out slots and pages and counts bytes; the GPU side (gpu/kv_buffers.ts)
// owns the buffers and copies each sequence's page list into the page table before a forward.
// The engine allocates here (`ensure`) before it runs a forward and commits after.

import type { HeadKind } from "../plans/types.ts";
import { CacheExhaustedError, type CacheLayout, type KindBytes } from "./layout.ts";
import { PagePool } from "./page_pool.ts";

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
  bytes_used: number;
  pages_used: number;
  pages_free: number;
}

export type CacheStats =
  & {
    sequences: number;
    page_size: number;
    sink: number;
    recent: number;
    total: KindStats;
    /** Bytes a full-attention cache would hold for the same sequences. */
    full_attention_bytes: number;
    /** total.bytes_used / full_attention_bytes (1 when nothing is cached). */
    ratio_to_full: number;
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
  #seqs = new Map<number, SeqCache>();
  #nextId = 1;

  constructor(readonly layout: CacheLayout) {
    this.pool = new PagePool(layout.numPages, layout.maxSeqs);
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

  /** Returns a sequence's pages and slot to the pool (finish or cancel). Idempotent. */
  close(seq: SeqCache): void {
    if (!this.#seqs.delete(seq.id)) return;
    this.pool.release(seq.pages);
    seq.pages = [];
    this.pool.closeSlot(seq.slot);
  }

  get freePages(): number {
    return this.pool.freePages;
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
      streaming_bytes: b.streaming,
      bytes: b.total,
      full_attention_bytes: full,
      ratio_to_full: full > 0 ? b.total / full : 1,
    };
  }

  stats(): CacheStats {
    const g = this.layout;
    const seqs = [...this.#seqs.values()];
    const used = { total: 0 } as KindBytes;
    for (const k of g.kinds) used[k.name] = 0;
    let tokens = 0;
    for (const s of seqs) {
      const b = g.bytes(s);
      for (const k of g.kinds) used[k.name] += b[k.name];
      used.total += b.total;
      tokens += s.tokens;
    }
    const reserved = g.reservedBytes();
    const pagesUsed = this.pool.usedPages;
    const pagesFree = this.pool.freePages;
    const out = {
      sequences: seqs.length,
      page_size: g.pageSize,
      sink: g.plan.sink,
      recent: g.plan.recent,
    } as CacheStats;
    for (const k of g.kinds) {
      out[k.name] = {
        tokens: g.headsOf(k.name) > 0 ? seqs.reduce((a, s) => a + k.tokensHeld(s.tokens), 0) : 0,
        bytes_reserved: reserved[k.name],
        bytes_used: used[k.name],
        pages_used: k.paged ? pagesUsed : 0,
        pages_free: k.paged ? pagesFree : 0,
      };
    }
    out.total = {
      tokens,
      bytes_reserved: reserved.total,
      bytes_used: used.total,
      pages_used: pagesUsed,
      pages_free: pagesFree,
    };
    const full = g.fullBytes(tokens);
    out.full_attention_bytes = full;
    out.ratio_to_full = full > 0 ? used.total / full : 1;
    return out;
  }
}
