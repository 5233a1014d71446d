// The KV cache's GPU memory: one K and one V buffer per part of every layer, and the page table.
//
// The layout (cache/layout.ts) says what each part holds; this module only allocates it, checks
// every buffer against the adapter's binding limit (naming the layer and kind), and keeps the GPU
// page table in step with the page lists the cache manager hands out.

import { type CacheLayout, type CachePartLayout, mb } from "../cache/layout.ts";
import { CacheExhaustedError } from "../cache/layout.ts";
import type { SeqCache } from "../cache/manager.ts";
import { STORAGE } from "./buffers.ts";

/** One layer part's buffers: the KV heads [kvHeadBase, kvHeadBase + heads) in cache order. */
export interface KvPartBuffers extends CachePartLayout {
  k: GPUBuffer;
  v: GPUBuffer;
}

export class KvBuffers {
  /** Per layer, one buffer pair per part. */
  readonly layers: KvPartBuffers[][];
  /** u32 [maxSeqs, maxPagesPerSeq]: page of each slot's i-th page. */
  readonly pageTable: GPUBuffer;
  /** Per slot: the sequence whose pages are in its row (the object: ids are per manager), and
   * how many of them. */
  #rows: { seq: SeqCache | null; pages: number }[];

  constructor(readonly device: GPUDevice, readonly layout: CacheLayout) {
    const limit = device.limits.maxStorageBufferBindingSize;
    const g = layout;
    this.layers = g.layers.map((l, li) =>
      l.parts.map((part) => {
        const tokens = g.capacity(part.kind);
        const size = Math.max(4, tokens * part.heads * g.config.headDim * g.bytesPerElement);
        if (size > limit) {
          throw new CacheExhaustedError(
            `layer ${li} ${part.kind.name} cache needs one ${mb(size)} MB buffer but the adapter ` +
              `binds at most ${mb(limit)} MB: lower --kv-cache-mb or --max-batch`,
          );
        }
        const mk = (name: string) =>
          device.createBuffer({
            label: `kv ${part.kind.name} ${name} L${li}`,
            size,
            usage: STORAGE,
          });
        return { ...part, k: mk("k"), v: mk("v") };
      })
    );
    this.pageTable = device.createBuffer({
      label: "page table",
      size: Math.max(4, g.maxSeqs * g.maxPagesPerSeq * 4),
      usage: STORAGE,
    });
    this.#rows = Array.from({ length: g.maxSeqs }, () => ({ seq: null, pages: 0 }));
  }

  /**
   * Makes the page table hold `seq`'s pages and checks they cover positions [0, positions).
   * Only pages the row does not have yet are written.
   */
  sync(seq: SeqCache, positions: number): void {
    const g = this.layout;
    if (positions > g.maxSeqLen) {
      throw new RangeError(`sequence of ${positions} tokens exceeds the context of ${g.maxSeqLen}`);
    }
    if (!g.paged) return;
    if (seq.pages.length < g.pagesFor(positions)) {
      throw new RangeError(
        `sequence ${seq.id} holds ${seq.pages.length} pages but positions up to ${positions} ` +
          `need ${g.pagesFor(positions)}: the cache manager must assign them first`,
      );
    }
    const row = this.#rows[seq.slot];
    if (row.seq !== seq) {
      row.seq = seq;
      row.pages = 0;
    }
    if (seq.pages.length <= row.pages) return;
    this.device.queue.writeBuffer(
      this.pageTable,
      (seq.slot * g.maxPagesPerSeq + row.pages) * 4,
      new Uint32Array(seq.pages.slice(row.pages)),
    );
    row.pages = seq.pages.length;
  }

  destroy(): void {
    for (const l of this.layers) {
      for (const p of l) {
        p.k.destroy();
        p.v.destroy();
      }
    }
    this.pageTable.destroy();
  }
}
