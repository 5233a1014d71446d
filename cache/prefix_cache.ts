// Automatic prefix caching over the hybrid cache: what later requests may resume from.
//
// A prompt's full pages are named by a hash chain (page i's hash covers its tokens and, through
// page i - 1's hash, every token before it), as vLLM's automatic prefix caching names blocks.
// - Retrieval (paged) parts: a sequence's full pages are registered under their hashes; the cache
//   holds one reference on each (page_pool.ts counts them), so the page outlives the sequence and
//   is shared read-only by every later sequence with the same prefix. A cached page that no
//   sequence holds is idle: admission counts it as free, and `evict` returns the least recently
//   idle ones to the pool when a sequence needs pages (a finished sequence's pages go idle tail
//   first, so a chain is evicted from its end). A lookup stops at the first page missing.
// - Streaming (ring) parts: a ring's state at a position is its sink + recent window, a constant
//   amount whatever the length. A snapshot is a copy of a sequence's rings into one of the
//   layout's snapshot rings; with the rings' slack (cache/kinds.ts StreamingRing) a copy taken at
//   position b is the state of every page boundary in [b - slack, b]. The engine takes one at the
//   end of each prompt and of each finished request; the least recently used is replaced when
//   every snapshot ring is taken, and evicting a page drops the snapshots that depend on it.
// - A request resumes at the longest page-aligned position that every part can restore (pages
//   for the paged parts, a snapshot for the rings; duo layers need both), and at most at its last
//   prompt token, which is always recomputed so that its logits exist. Resuming at a page
//   boundary means no sequence ever writes into a shared page: a hit that ends mid-page has its
//   last partial page recomputed into a page of its own.
// Pure bookkeeping, like the page pool: the engine tells the runner to copy rings.

import { createHash } from "node:crypto";
import type { PagePool } from "./page_pool.ts";

/** The hash chain of a token sequence's full pages: `hashes[i]` names tokens [0, (i+1) pages). */
export class TokenChain {
  readonly hashes: string[] = [];

  constructor(readonly pageSize: number) {}

  /** Extends the chain over the full pages of `tokens[0, upTo)` (tokens already hashed must be
   * the same ones). */
  extend(tokens: ArrayLike<number>, upTo = tokens.length): string[] {
    const ps = this.pageSize;
    const pages = Math.floor(Math.min(upTo, tokens.length) / ps);
    const words = new Uint32Array(ps);
    for (let i = this.hashes.length; i < pages; i++) {
      for (let t = 0; t < ps; t++) words[t] = tokens[i * ps + t];
      const h = createHash("sha256");
      if (i > 0) h.update(this.hashes[i - 1]);
      h.update(new Uint8Array(words.buffer));
      this.hashes.push(h.digest("base64"));
    }
    return this.hashes;
  }
}

/** Where a request can resume. */
export interface PrefixHit {
  /** Positions [0, positions) restored from the cache (a multiple of the page size). */
  positions: number;
  /** The cached pages of those positions (none when no part is paged). */
  pages: number[];
  /** The snapshot ring to copy into the sequence's rings (null when no part is a ring). */
  snapshot: number | null;
  /** Of `pages`, those no sequence holds now: admission takes them out of the free room. */
  idlePages: number;
}

export const NO_HIT: PrefixHit = { positions: 0, pages: [], snapshot: null, idlePages: 0 };

export interface PrefixCacheOptions {
  pageSize: number;
  /** Some part is paged: a resume needs the pages. */
  paged: boolean;
  /** Some part is a ring: a resume needs a snapshot. */
  ringed: boolean;
  /** Positions a ring keeps beyond sink + recent. */
  ringSlack: number;
  /** Snapshot rings: ring slots [firstSnapshotSlot, firstSnapshotSlot + snapshotSlots). */
  snapshotSlots: number;
  firstSnapshotSlot: number;
}

interface CachedPage {
  hash: string;
  page: number;
  /** Pages of the chain up to and including this one. */
  depth: number;
}

interface Snapshot {
  /** Ring slot of the copy. */
  slot: number;
  /** The chain of the sequence it was copied from (at least `depth` long for every depth it
   * covers). */
  chain: readonly string[];
  /** Depths (positions / pageSize) it restores. */
  depths: Set<number>;
  lastUsed: number;
}

export interface PrefixCacheStats {
  /** Pages registered under a hash (shared or idle). */
  pages: number;
  /** Of those, pages no sequence holds (counted as free; evicted on demand). */
  idle_pages: number;
  snapshots: number;
  snapshot_slots: number;
}

export class PrefixCache {
  readonly #pages = new Map<string, CachedPage>();
  readonly #byPage = new Map<number, CachedPage>();
  /** Idle cached pages, least recently idle first (a Map keeps insertion order). */
  readonly #idle = new Map<number, CachedPage>();
  /** Snapshot rings by index (slot - firstSnapshotSlot); null when free. */
  readonly #snapshots: (Snapshot | null)[];
  /** The snapshot restoring each (chain hash at depth d, depth d). */
  readonly #snapshotAt = new Map<string, Snapshot>();
  #clock = 0;

  constructor(readonly pool: PagePool, readonly o: PrefixCacheOptions) {
    this.#snapshots = new Array(o.ringed ? o.snapshotSlots : 0).fill(null);
  }

  /** Whether this cache can ever restore anything. */
  get usable(): boolean {
    return !this.o.ringed || this.#snapshots.length > 0;
  }

  /** Cached pages no sequence holds: free for admission, reclaimed by `evict`. */
  get idlePages(): number {
    return this.#idle.size;
  }

  /**
   * The longest resumable prefix of a prompt of `promptTokens` tokens whose full pages hash to
   * `chain`: page-aligned, below the last prompt token, every paged part's pages cached and (with
   * rings) a snapshot at that position. Changes nothing.
   */
  lookup(chain: readonly string[], promptTokens: number): PrefixHit {
    const o = this.o;
    if (!this.usable) return NO_HIT;
    let depth = Math.min(chain.length, Math.floor((promptTokens - 1) / o.pageSize));
    const pages: number[] = [];
    if (o.paged) {
      for (let d = 0; d < depth; d++) {
        const e = this.#pages.get(chain[d]);
        if (!e) break;
        pages.push(e.page);
      }
      depth = pages.length;
    }
    let snapshot: Snapshot | null = null;
    if (o.ringed) {
      while (depth > 0 && !(snapshot = this.#snapshotAt.get(snapshotKey(chain, depth)) ?? null)) {
        depth--;
      }
    }
    if (depth === 0) return NO_HIT;
    pages.length = o.paged ? depth : 0;
    return {
      positions: depth * o.pageSize,
      pages,
      snapshot: snapshot?.slot ?? null,
      idlePages: pages.filter((p) => this.#idle.has(p)).length,
    };
  }

  /** Takes a hit for a sequence: one more reference on each of its pages (no longer idle) and
   * the snapshot marked used. Returns the pages, in order. */
  acquire(hit: PrefixHit): number[] {
    for (const p of hit.pages) {
      this.pool.retain(p);
      this.#idle.delete(p);
    }
    if (hit.snapshot !== null) {
      const s = this.#snapshots[hit.snapshot - this.o.firstSnapshotSlot];
      if (s) s.lastUsed = ++this.#clock;
    }
    return [...hit.pages];
  }

  /**
   * Registers a sequence's first `depth` full pages under `chain` (the cache takes a reference
   * on each page it did not have). A hash already cached under another page (two sequences that
   * computed the same prefix at once) keeps the first: the second's page stays its own.
   */
  insertPages(chain: readonly string[], pages: readonly number[], depth: number): void {
    if (!this.o.paged) return;
    const n = Math.min(depth, chain.length, pages.length);
    for (let d = 0; d < n; d++) {
      if (this.#pages.has(chain[d]) || this.#byPage.has(pages[d])) continue;
      const entry = { hash: chain[d], page: pages[d], depth: d + 1 };
      this.pool.retain(pages[d]);
      this.#pages.set(entry.hash, entry);
      this.#byPage.set(entry.page, entry);
    }
  }

  /** After a sequence released `pages` (in order): those only the cache still holds go idle,
   * the last page first (so a chain is evicted from its end). */
  released(pages: readonly number[]): void {
    for (let i = pages.length - 1; i >= 0; i--) {
      const e = this.#byPage.get(pages[i]);
      if (e && this.pool.refCount(e.page) === 1) this.#idle.set(e.page, e);
    }
  }

  /**
   * A snapshot ring for a sequence at `positions` whose full pages hash to `chain`, or null when
   * every page boundary it would restore is restorable already (or there are no snapshot rings).
   * The caller copies the sequence's rings into the returned slot before anything else writes
   * them. Replaces the least recently used snapshot when all are taken.
   */
  insertSnapshot(chain: readonly string[], positions: number): number | null {
    const o = this.o;
    if (!o.ringed || this.#snapshots.length === 0) return null;
    const hi = Math.min(chain.length, Math.floor(positions / o.pageSize));
    const lo = Math.max(1, Math.ceil((positions - o.ringSlack) / o.pageSize));
    const depths: number[] = [];
    for (let d = lo; d <= hi; d++) {
      if (!this.#snapshotAt.has(snapshotKey(chain, d))) depths.push(d);
    }
    if (depths.length === 0) return null;
    let i = this.#snapshots.indexOf(null);
    if (i < 0) {
      i = 0;
      for (let j = 1; j < this.#snapshots.length; j++) {
        if (this.#snapshots[j]!.lastUsed < this.#snapshots[i]!.lastUsed) i = j;
      }
      this.#dropSnapshot(this.#snapshots[i]!);
    }
    const s: Snapshot = {
      slot: o.firstSnapshotSlot + i,
      chain: chain.slice(0, hi),
      depths: new Set(depths),
      lastUsed: ++this.#clock,
    };
    this.#snapshots[i] = s;
    for (const d of depths) this.#snapshotAt.set(snapshotKey(chain, d), s);
    return s.slot;
  }

  /** Forgets the snapshot in ring `slot` (its copy failed). */
  dropSnapshot(slot: number): void {
    const s = this.#snapshots[slot - this.o.firstSnapshotSlot];
    if (s) this.#dropSnapshot(s);
  }

  /** Returns up to `n` idle pages to the pool, least recently idle first; how many it freed. */
  evict(n: number): number {
    let freed = 0;
    for (const e of this.#idle.values()) {
      if (freed >= n) break;
      this.#idle.delete(e.page);
      this.#pages.delete(e.hash);
      this.#byPage.delete(e.page);
      this.pool.release([e.page]);
      freed++;
      // Snapshots past this page restore nothing without it.
      for (const s of this.#snapshots) {
        if (!s || s.chain[e.depth - 1] !== e.hash) continue;
        for (const d of [...s.depths]) {
          if (d >= e.depth) {
            s.depths.delete(d);
            this.#snapshotAt.delete(snapshotKey(s.chain, d));
          }
        }
        if (s.depths.size === 0) this.#dropSnapshot(s);
      }
    }
    return freed;
  }

  /** Whether `page` is registered (shared or idle). */
  holds(page: number): boolean {
    return this.#byPage.has(page);
  }

  stats(): PrefixCacheStats {
    return {
      pages: this.#pages.size,
      idle_pages: this.#idle.size,
      snapshots: this.#snapshots.filter((s) => s !== null).length,
      snapshot_slots: this.#snapshots.length,
    };
  }

  #dropSnapshot(s: Snapshot): void {
    for (const d of s.depths) {
      const key = snapshotKey(s.chain, d);
      if (this.#snapshotAt.get(key) === s) this.#snapshotAt.delete(key);
    }
    s.depths.clear();
    const i = s.slot - this.o.firstSnapshotSlot;
    if (this.#snapshots[i] === s) this.#snapshots[i] = null;
  }
}

function snapshotKey(chain: readonly string[], depth: number): string {
  return chain[depth - 1];
}
