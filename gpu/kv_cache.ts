// The KV-cache manager: the only owner of KV memory, page tables and byte counts.
//
// Each layer gets exactly the cache its plan asks for:
//  - retrieval KV heads: `RetrievalPages`, a paged cache. Pages (16 tokens by default) come from
//    one pool shared by all retrieval layers: page p is the same slot in every retrieval layer's
//    buffer, so one page table per sequence serves every layer (as in vLLM).
//  - streaming KV heads: `StreamingRing`, per sequence slot a fixed ring of sink + recent
//    positions; keys stay as RoPE rotated them at their original positions.
// A duo layer holds both (its KV heads reordered so the retrieval heads come first).

import type { ModelConfig } from "../model/types.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import { STORAGE } from "./buffers.ts";

export type KvDtype = "f16" | "f32";

export interface KvCacheOptions {
  /** Total bytes the cache may take (`--kv-cache-mb`). */
  budgetBytes: number;
  /** Sequences that can hold cache at once (each owns one ring slot and page-table row). */
  maxSeqs: number;
  /** Longest sequence (prompt + generated), sizes the page-table rows. */
  maxSeqLen: number;
  kvDtype: KvDtype;
  /** Tokens per page (default 16). */
  pageSize?: number;
}

/** One cache buffer pair of a layer: the KV heads [kvHeadBase, kvHeadBase + heads). */
export interface CachePart {
  kind: "retrieval" | "streaming";
  kvHeadBase: number;
  heads: number;
  k: GPUBuffer;
  v: GPUBuffer;
}

export interface LayerCache {
  /** Paged full cache of the layer's retrieval heads, or null. */
  retrieval: CachePart | null;
  /** Sink + recent ring of the layer's streaming heads, or null. */
  streaming: CachePart | null;
}

/** A sequence's claim on the cache. */
export interface SeqCache {
  readonly id: number;
  /** Ring index and page-table row. */
  readonly slot: number;
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

export interface CacheStats {
  sequences: number;
  page_size: number;
  sink: number;
  recent: number;
  retrieval: KindStats;
  streaming: KindStats;
  total: KindStats;
  /** Bytes a full-attention cache would hold for the same sequences. */
  full_attention_bytes: number;
  /** total.bytes_used / full_attention_bytes (1 when nothing is cached). */
  ratio_to_full: number;
}

export class CacheExhaustedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CacheExhaustedError";
  }
}

/** Byte sizes implied by a model, a plan and a KV dtype; shared by the manager and the bench. */
export class KvGeometry {
  readonly bytesPerElement: number;
  /** Retrieval KV heads summed over layers. */
  readonly retrievalHeads: number;
  /** Streaming KV heads summed over layers. */
  readonly streamingHeads: number;
  readonly ringLength: number;

  constructor(
    readonly config: ModelConfig,
    readonly plan: ResolvedPlan,
    readonly kvDtype: KvDtype,
    readonly pageSize = 16,
  ) {
    this.bytesPerElement = kvDtype === "f16" ? 2 : 4;
    this.retrievalHeads = plan.layers.reduce((a, l) => a + l.retrievalKvHeads.length, 0);
    this.streamingHeads = plan.layers.reduce((a, l) => a + l.streamingKvHeads.length, 0);
    this.ringLength = plan.sink + plan.recent;
  }

  /** K and V bytes of one token for `heads` KV heads. */
  tokenBytes(heads: number): number {
    return 2 * heads * this.config.headDim * this.bytesPerElement;
  }

  /** Bytes of one page across every retrieval layer. */
  get pageBytes(): number {
    return this.pageSize * this.tokenBytes(this.retrievalHeads);
  }

  /** Bytes of one sequence's rings across every streaming layer. */
  get ringBytes(): number {
    return this.ringLength * this.tokenBytes(this.streamingHeads);
  }

  /** Bytes a full-attention cache needs for `tokens` tokens (no paging). */
  fullBytes(tokens: number): number {
    return tokens * this.tokenBytes(this.config.nLayers * this.config.nKvHeads);
  }

  /** Closed form of the bytes in use for sequences of these lengths. */
  usedBytes(lengths: number[]): { retrieval: number; streaming: number } {
    let retrieval = 0;
    let streaming = 0;
    for (const n of lengths) {
      retrieval += Math.ceil(n / this.pageSize) * this.pageBytes;
      streaming += Math.min(n, this.ringLength) * this.tokenBytes(this.streamingHeads);
    }
    return { retrieval, streaming };
  }
}

export class KvCacheManager {
  readonly geometry: KvGeometry;
  readonly layers: LayerCache[];
  readonly pageSize: number;
  readonly maxPagesPerSeq: number;
  readonly numPages: number;
  /** u32 [maxSeqs, maxPagesPerSeq]: page of each sequence slot's i-th page. */
  readonly pageTable: GPUBuffer;
  readonly maxSeqs: number;

  #freePages: number[];
  #freeSlots: number[];
  #seqs = new Map<number, SeqCache>();
  #nextId = 1;

  constructor(
    readonly device: GPUDevice,
    readonly config: ModelConfig,
    readonly plan: ResolvedPlan,
    opts: KvCacheOptions,
  ) {
    this.pageSize = opts.pageSize ?? 16;
    this.maxSeqs = opts.maxSeqs;
    const g = new KvGeometry(config, plan, opts.kvDtype, this.pageSize);
    this.geometry = g;
    this.maxPagesPerSeq = Math.ceil(opts.maxSeqLen / this.pageSize);
    const ringReserved = opts.maxSeqs * g.ringBytes;
    if (ringReserved > opts.budgetBytes) {
      throw new CacheExhaustedError(
        `--kv-cache-mb ${mb(opts.budgetBytes)} is too small: the streaming rings of ` +
          `${opts.maxSeqs} sequences alone need ${mb(ringReserved)} MB`,
      );
    }
    const maxUseful = opts.maxSeqs * this.maxPagesPerSeq;
    this.numPages = g.retrievalHeads === 0
      ? 0
      : Math.min(maxUseful, Math.floor((opts.budgetBytes - ringReserved) / g.pageBytes));
    if (g.retrievalHeads > 0 && this.numPages === 0) {
      throw new CacheExhaustedError(
        `--kv-cache-mb ${mb(opts.budgetBytes)} leaves no room for a single ${
          mb(g.pageBytes)
        } MB page of the retrieval layers`,
      );
    }
    const limit = device.limits.maxStorageBufferBindingSize;
    const part = (
      kind: "retrieval" | "streaming",
      kvHeadBase: number,
      heads: number,
      tokens: number,
      l: number,
    ): CachePart => {
      const size = Math.max(4, tokens * heads * config.headDim * g.bytesPerElement);
      if (size > limit) {
        throw new CacheExhaustedError(
          `layer ${l} ${kind} cache needs one ${mb(size)} MB buffer but the adapter binds at ` +
            `most ${mb(limit)} MB: lower --kv-cache-mb or --max-batch`,
        );
      }
      const mk = (name: string) =>
        device.createBuffer({ label: `kv ${kind} ${name} L${l}`, size, usage: STORAGE });
      return { kind, kvHeadBase, heads, k: mk("k"), v: mk("v") };
    };
    this.layers = plan.layers.map((lp, l) => {
      const nRet = lp.retrievalKvHeads.length;
      const nStr = lp.streamingKvHeads.length;
      return {
        retrieval: nRet > 0 ? part("retrieval", 0, nRet, this.numPages * this.pageSize, l) : null,
        streaming: nStr > 0 ? part("streaming", nRet, nStr, opts.maxSeqs * g.ringLength, l) : null,
      };
    });
    this.pageTable = device.createBuffer({
      label: "page table",
      size: Math.max(4, opts.maxSeqs * this.maxPagesPerSeq * 4),
      usage: STORAGE,
    });
    // Pop from the end: low page numbers are handed out first.
    this.#freePages = Array.from({ length: this.numPages }, (_, i) => this.numPages - 1 - i);
    this.#freeSlots = Array.from({ length: opts.maxSeqs }, (_, i) => opts.maxSeqs - 1 - i);
  }

  /** Claims a slot for a new sequence, or null when every slot is taken. */
  open(): SeqCache | null {
    const slot = this.#freeSlots.pop();
    if (slot === undefined) return null;
    const seq: SeqCache = { id: this.#nextId++, slot, pages: [], tokens: 0 };
    this.#seqs.set(seq.id, seq);
    return seq;
  }

  /** Pages needed to hold positions [0, positions) beyond what `seq` has. */
  pagesNeeded(seq: SeqCache, positions: number): number {
    if (this.numPages === 0) return 0;
    return Math.max(0, Math.ceil(positions / this.pageSize) - seq.pages.length);
  }

  /**
   * Makes room for positions [0, positions). Returns false, changing nothing, when the pool
   * lacks pages or the sequence would exceed the page table.
   */
  ensure(seq: SeqCache, positions: number): boolean {
    if (!this.#seqs.has(seq.id)) throw new Error(`sequence ${seq.id} is not open`);
    if (this.numPages === 0) return positions <= this.maxPagesPerSeq * this.pageSize;
    const need = this.pagesNeeded(seq, positions);
    if (need === 0) return true;
    if (seq.pages.length + need > this.maxPagesPerSeq || need > this.#freePages.length) {
      return false;
    }
    const first = seq.pages.length;
    for (let i = 0; i < need; i++) seq.pages.push(this.#freePages.pop()!);
    const entries = new Uint32Array(seq.pages.slice(first));
    this.device.queue.writeBuffer(
      this.pageTable,
      (seq.slot * this.maxPagesPerSeq + first) * 4,
      entries,
    );
    return true;
  }

  /** Records that positions [0, tokens) now hold keys and values. */
  commit(seq: SeqCache, tokens: number): void {
    seq.tokens = Math.max(seq.tokens, tokens);
  }

  /** Returns a sequence's pages and slot to the pool (finish or cancel). Idempotent. */
  close(seq: SeqCache): void {
    if (!this.#seqs.delete(seq.id)) return;
    for (let i = seq.pages.length - 1; i >= 0; i--) this.#freePages.push(seq.pages[i]);
    seq.pages = [];
    this.#freeSlots.push(seq.slot);
  }

  get freePages(): number {
    return this.#freePages.length;
  }

  get freeSlots(): number {
    return this.#freeSlots.length;
  }

  get openSequences(): number {
    return this.#seqs.size;
  }

  stats(): CacheStats {
    const g = this.geometry;
    const seqs = [...this.#seqs.values()];
    const pagesUsed = seqs.reduce((a, s) => a + s.pages.length, 0);
    const tokens = seqs.reduce((a, s) => a + s.tokens, 0);
    const ringTokens = seqs.reduce((a, s) => a + Math.min(s.tokens, g.ringLength), 0);
    const retrieval: KindStats = {
      tokens: g.retrievalHeads > 0 ? tokens : 0,
      bytes_reserved: this.numPages * g.pageBytes,
      bytes_used: pagesUsed * g.pageBytes,
      pages_used: pagesUsed,
      pages_free: this.#freePages.length,
    };
    const streaming: KindStats = {
      tokens: g.streamingHeads > 0 ? ringTokens : 0,
      bytes_reserved: this.maxSeqs * g.ringBytes,
      bytes_used: ringTokens * g.tokenBytes(g.streamingHeads),
      pages_used: 0,
      pages_free: 0,
    };
    const total: KindStats = {
      tokens,
      bytes_reserved: retrieval.bytes_reserved + streaming.bytes_reserved,
      bytes_used: retrieval.bytes_used + streaming.bytes_used,
      pages_used: pagesUsed,
      pages_free: this.#freePages.length,
    };
    const full = g.fullBytes(tokens);
    return {
      sequences: seqs.length,
      page_size: this.pageSize,
      sink: this.plan.sink,
      recent: this.plan.recent,
      retrieval,
      streaming,
      total,
      full_attention_bytes: full,
      ratio_to_full: full > 0 ? total.bytes_used / full : 1,
    };
  }

  destroy(): void {
    for (const l of this.layers) {
      for (const p of [l.retrieval, l.streaming]) {
        p?.k.destroy();
        p?.v.destroy();
      }
    }
    this.pageTable.destroy();
  }
}

function mb(bytes: number): string {
  return (bytes / (1 << 20)).toFixed(bytes < 1 << 20 ? 3 : 1);
}
