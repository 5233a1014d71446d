// The cache's shape for one model and plan: which parts each layer has, the byte formula, and
// (once a budget sizes it) how many pages and sequence slots there are.
//
// `CacheGeometry` needs no budget: per layer the parts (a kind and the KV heads it holds, in
// cache order), and `bytes(seq)`, the one formula every byte count in zigzag comes from.
// `CacheLayout` adds the sizes the GPU buffers and the page pool are built with.

import type { ModelConfig } from "../model/types.ts";
import type { HeadKind, ResolvedPlan } from "../plans/types.ts";
import { CACHE_KINDS, type CacheKind, KIND_NAMES, type SeqState } from "./kinds.ts";

export type KvDtype = "f16" | "f32";

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

export class CacheGeometry {
  readonly bytesPerElement: number;
  /** The kinds, in CACHE_KINDS order (all of them, used or not). */
  readonly kinds: readonly CacheKind[];
  readonly layers: LayerCacheLayout[];
  readonly #heads: Map<HeadKind, number>;

  constructor(
    readonly config: ModelConfig,
    readonly plan: ResolvedPlan,
    readonly kvDtype: KvDtype,
    readonly pageSize = 16,
  ) {
    this.bytesPerElement = kvDtype === "f16" ? 2 : 4;
    const params = { pageSize, sink: plan.sink, recent: plan.recent };
    this.kinds = CACHE_KINDS.map((k) => k.make(params));
    this.layers = plan.layers.map((lp) => {
      const parts: CachePartLayout[] = [];
      let base = 0;
      for (const kind of this.kinds) {
        const kvHeads = lp.kvHeadKinds.flatMap((k, h) => k === kind.name ? [h] : []);
        if (kvHeads.length === 0) continue;
        parts.push({ kind, kvHeads, kvHeadBase: base, heads: kvHeads.length });
        base += kvHeads.length;
      }
      return { parts };
    });
    this.#heads = new Map(KIND_NAMES.map((n) => [n, 0]));
    for (const l of this.layers) {
      for (const p of l.parts) {
        this.#heads.set(p.kind.name, this.#heads.get(p.kind.name)! + p.heads);
      }
    }
  }

  kind(name: HeadKind): CacheKind {
    return this.kinds.find((k) => k.name === name)!;
  }

  /** KV heads of a kind summed over layers. */
  headsOf(name: HeadKind): number {
    return this.#heads.get(name)!;
  }

  /** KV heads in cache order for a layer: its parts' heads, one part after another. */
  kvHeadOrder(layer: number): number[] {
    return this.layers[layer].parts.flatMap((p) => p.kvHeads);
  }

  /** Whether any layer keeps paged (pool) memory. */
  get paged(): boolean {
    return this.kinds.some((k) => k.paged && this.headsOf(k.name) > 0);
  }

  /** K and V bytes of one token for `heads` KV heads. */
  tokenBytes(heads: number): number {
    return 2 * heads * this.config.headDim * this.bytesPerElement;
  }

  /** Bytes of one page across every paged part. */
  get pageBytes(): number {
    return this.pageSize * this.#pagedTokenBytes();
  }

  /** Bytes one sequence slot reserves across every non-paged part (its rings). */
  get ringBytes(): number {
    let b = 0;
    for (const k of this.kinds) b += k.slotsPerSeq * this.tokenBytes(this.headsOf(k.name));
    return b;
  }

  get ringLength(): number {
    return this.plan.sink + this.plan.recent;
  }

  get retrievalHeads(): number {
    return this.headsOf("retrieval");
  }

  get streamingHeads(): number {
    return this.headsOf("streaming");
  }

  #pagedTokenBytes(): number {
    let b = 0;
    for (const k of this.kinds) if (k.paged) b += this.tokenBytes(this.headsOf(k.name));
    return b;
  }

  /** Pages that hold positions [0, positions) (0 when no part is paged). */
  pagesFor(positions: number): number {
    return this.paged ? Math.ceil(positions / this.pageSize) : 0;
  }

  /** The byte formula: what a sequence in this state occupies, per kind and in total. */
  bytes(s: SeqState): KindBytes {
    return this.kindBytes((k) => k.slotsHeld(s));
  }

  /** Bytes of each kind when it holds `slots(kind)` token positions per KV head. */
  protected kindBytes(slots: (k: CacheKind) => number): KindBytes {
    const out = { total: 0 } as KindBytes;
    for (const k of this.kinds) {
      const b = slots(k) * this.tokenBytes(this.headsOf(k.name));
      out[k.name] = b;
      out.total += b;
    }
    return out;
  }

  /** A sequence of `tokens` positions holding exactly the pages they need. */
  stateFor(tokens: number): SeqState {
    return { tokens, pages: new Array(this.pagesFor(tokens)).fill(0) };
  }

  /** `bytes` of sequences of these lengths, summed. */
  usedBytes(lengths: number[]): KindBytes {
    const out = { total: 0 } as KindBytes;
    for (const k of this.kinds) out[k.name] = 0;
    for (const n of lengths) {
      const b = this.bytes(this.stateFor(n));
      for (const k of this.kinds) out[k.name] += b[k.name];
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
}

/** A geometry sized by a byte budget: pages in the pool, sequence slots, page-table rows. */
export class CacheLayout extends CacheGeometry {
  readonly maxSeqs: number;
  readonly maxSeqLen: number;
  readonly maxPagesPerSeq: number;
  readonly numPages: number;
  readonly budgetBytes: number;

  constructor(config: ModelConfig, plan: ResolvedPlan, s: CacheSizing) {
    super(config, plan, s.kvDtype, s.pageSize ?? 16);
    this.maxSeqs = s.maxSeqs;
    this.maxSeqLen = s.maxSeqLen;
    this.budgetBytes = s.budgetBytes;
    this.maxPagesPerSeq = Math.ceil(s.maxSeqLen / this.pageSize);
    const fixed = s.maxSeqs * this.ringBytes;
    if (fixed > s.budgetBytes) {
      throw new CacheExhaustedError(
        `--kv-cache-mb ${mb(s.budgetBytes)} is too small: the streaming rings of ` +
          `${s.maxSeqs} sequences alone need ${mb(fixed)} MB`,
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
  }

  /** Token positions one part of this kind holds in its buffers (all slots or all pages). */
  capacity(kind: CacheKind): number {
    return kind.paged ? this.numPages * this.pageSize : this.maxSeqs * kind.slotsPerSeq;
  }

  /** Bytes allocated for each kind. */
  reservedBytes(): KindBytes {
    return this.kindBytes((k) => this.capacity(k));
  }

  /** The layout's `override` constants for a kind's kernels. */
  constants(kind: CacheKind): Record<string, number | boolean> {
    return kind.constants(this.maxPagesPerSeq);
  }
}

export function mb(bytes: number): string {
  return (bytes / (1 << 20)).toFixed(bytes < 1 << 20 ? 3 : 1);
}
