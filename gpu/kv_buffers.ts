// The KV cache's GPU memory: per part of every layer its K and V buffers, split into the shards
// the layout decides, and the page table.
//
// The layout (cache/layout.ts) says what each part holds and how its buffers are sharded (page p
// of the pool in shard p / pagesPerShard, a ring's slot s in shard s / slotsPerShard, each shard
// within one storage binding); this module only allocates the shards, checks each against the
// adapter's limits (naming layer, kind, K or V and shard), keeps one tiny uniform per shard index
// (`CacheShard`, what a dispatch over that shard binds) and keeps the GPU page table in step with
// the page lists the cache manager hands out.

import type { CacheLayout, CachePartLayout } from "../cache/layout.ts";
import type { SeqCache } from "../cache/manager.ts";
import { STORAGE } from "./buffers.ts";
import { CACHE_SHARD_BYTES, encodeCacheShard } from "./kernels/common.ts";
import { checkBufferPlan, type PlannedBuffer } from "./limits.ts";

/** One shard of a part: its K and V buffers, and the uniform holding its index. */
export interface KvShard {
  k: GPUBuffer;
  v: GPUBuffer;
  index: GPUBuffer;
}

/** One layer part's buffers: the KV heads [kvHeadBase, kvHeadBase + heads) in cache order. */
export interface KvPartBuffers extends CachePartLayout {
  /** In shard order: shard s holds units [s, s + 1) * unitsPerShard of the part's kind. */
  shards: KvShard[];
  /** f32 [ring slots, heads, stateWords]: the kind's per-slot state (a compensated ring's
   * sums), or null when the kind keeps none. */
  state: GPUBuffer | null;
}

export class KvBuffers {
  /** Per layer, the buffers of each part. */
  readonly layers: KvPartBuffers[][];
  /** u32 [maxSeqs, maxPagesPerSeq]: page of each slot's i-th page. */
  readonly pageTable: GPUBuffer;
  /** Uniform `CacheShard` of each shard index, shared by every part. */
  readonly #shardIndex: GPUBuffer[];
  /** Per slot: the sequence whose pages are in its row (the object: ids are per manager), and
   * how many of them. */
  #rows: { seq: SeqCache | null; pages: number }[];
  /** Staging for ring copies within one shard buffer (WebGPU copies never share a buffer). */
  readonly #ringScratch: GPUBuffer | null;

  constructor(readonly device: GPUDevice, readonly layout: CacheLayout) {
    const g = layout;
    checkBufferPlan(device.limits, kvBufferPlan(g));
    const most = Math.max(1, ...g.kinds.map((k) => g.shards(k).count));
    this.#shardIndex = Array.from({ length: most }, (_, s) => {
      const b = device.createBuffer({
        label: `kv shard index ${s}`,
        size: CACHE_SHARD_BYTES,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      });
      device.queue.writeBuffer(b, 0, encodeCacheShard(s));
      return b;
    });
    this.layers = g.layers.map((l, li) =>
      l.parts.map((part) => {
        const shards = Array.from({ length: g.shards(part.kind).count }, (_, s) => {
          const size = Math.max(4, g.shardBytes(part.kind, part.heads, s));
          const mk = (name: string) =>
            device.createBuffer({ label: kvLabel(part, li, name, s), size, usage: STORAGE });
          return { k: mk("k"), v: mk("v"), index: this.#shardIndex[s] };
        });
        const stateBytes = g.ringSlots * g.stateBytes(part.kind, part.heads);
        const state = stateBytes > 0
          ? device.createBuffer({ label: stateLabel(part, li), size: stateBytes, usage: STORAGE })
          : null;
        return { ...part, shards, state };
      })
    );
    this.pageTable = device.createBuffer({
      label: "page table",
      size: Math.max(4, g.maxSeqs * g.maxPagesPerSeq * 4),
      usage: STORAGE,
    });
    this.#rows = Array.from({ length: g.maxSeqs }, () => ({ seq: null, pages: 0 }));
    const ringBytes = Math.max(
      0,
      ...this.#ringParts().map((p) =>
        Math.max(g.unitBytes(p.kind, p.heads), g.stateBytes(p.kind, p.heads))
      ),
    );
    this.#ringScratch = g.snapshotSlots > 0 && ringBytes > 0
      ? device.createBuffer({ label: "ring copy scratch", size: ringBytes, usage: STORAGE })
      : null;
  }

  #ringParts(): KvPartBuffers[] {
    return this.layers.flat().filter((p) => !p.kind.paged);
  }

  /**
   * Records a copy of ring slot `from` onto ring slot `to` in every streaming part, K and V (a
   * prefix-cache snapshot taken or restored: slots >= maxSeqs are the snapshot rings). Queue
   * order makes it see every forward submitted before it and precede every later one.
   */
  copyRing(enc: GPUCommandEncoder, from: number, to: number): void {
    const g = this.layout;
    for (const slot of [from, to]) {
      if (!(slot >= 0 && slot < g.ringSlots)) throw new RangeError(`no ring slot ${slot}`);
    }
    if (from === to) return;
    for (const part of this.#ringParts()) {
      const { unitsPerShard } = g.shards(part.kind);
      const bytes = g.unitBytes(part.kind, part.heads);
      const at = (slot: number) => ({
        shard: Math.floor(slot / unitsPerShard),
        offset: (slot % unitsPerShard) * bytes,
      });
      const a = at(from);
      const b = at(to);
      if (part.state) {
        // A compensated ring's sums and the position they reach go with its positions.
        const sb = g.stateBytes(part.kind, part.heads);
        enc.copyBufferToBuffer(part.state, from * sb, this.#ringScratch!, 0, sb);
        enc.copyBufferToBuffer(this.#ringScratch!, 0, part.state, to * sb, sb);
      }
      for (const kv of ["k", "v"] as const) {
        const src = part.shards[a.shard][kv];
        const dst = part.shards[b.shard][kv];
        if (src !== dst) {
          enc.copyBufferToBuffer(src, a.offset, dst, b.offset, bytes);
        } else {
          enc.copyBufferToBuffer(src, a.offset, this.#ringScratch!, 0, bytes);
          enc.copyBufferToBuffer(this.#ringScratch!, 0, dst, b.offset, bytes);
        }
      }
    }
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
        for (const s of p.shards) {
          s.k.destroy();
          s.v.destroy();
        }
        p.state?.destroy();
      }
    }
    for (const b of this.#shardIndex) b.destroy();
    this.pageTable.destroy();
    this.#ringScratch?.destroy();
  }
}

function kvLabel(part: CachePartLayout, layer: number, kv: string, shard: number): string {
  return `kv ${part.kind.name} ${kv} L${layer} shard ${shard}`;
}

function stateLabel(part: CachePartLayout, layer: number): string {
  return `kv ${part.kind.name} state L${layer}`;
}

/** Every KV-cache buffer the layout allocates, each bound whole: one K and one V per shard of
 * every part, and the page table. */
export function kvBufferPlan(g: CacheLayout): PlannedBuffer[] {
  const out: PlannedBuffer[] = [];
  g.layers.forEach((l, li) => {
    for (const part of l.parts) {
      for (let s = 0; s < g.shards(part.kind).count; s++) {
        const bytes = g.shardBytes(part.kind, part.heads, s);
        for (const kv of ["k", "v"]) {
          out.push({ name: kvLabel(part, li, kv, s), bytes, bound: true });
        }
      }
      const state = g.ringSlots * g.stateBytes(part.kind, part.heads);
      if (state > 0) out.push({ name: stateLabel(part, li), bytes: state, bound: true });
    }
  });
  out.push({ name: "page table", bytes: g.maxSeqs * g.maxPagesPerSeq * 4, bound: true });
  return out;
}
