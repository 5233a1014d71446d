// The page pool: sequence slots and KV pages as plain numbers, with no device behind them.
//
// A slot is a sequence's row in the page table and its ring in every streaming part. A page is
// the same index in every paged part's buffers, so one page table serves every retrieval layer.
// Pages carry reference counts so that a page can be shared read-only between sequences (prefix
// caching); a page returns to the free list when its last holder releases it.

export class PagePool {
  #freePages: number[];
  #freeSlots: number[];
  #refs: Uint32Array;

  constructor(readonly numPages: number, readonly numSlots: number) {
    // Pop from the end: low numbers are handed out first.
    this.#freePages = Array.from({ length: numPages }, (_, i) => numPages - 1 - i);
    this.#freeSlots = Array.from({ length: numSlots }, (_, i) => numSlots - 1 - i);
    this.#refs = new Uint32Array(numPages);
  }

  /** A free sequence slot, or null when every slot is taken. */
  openSlot(): number | null {
    return this.#freeSlots.pop() ?? null;
  }

  closeSlot(slot: number): void {
    if (!(slot >= 0 && slot < this.numSlots) || this.#freeSlots.includes(slot)) {
      throw new Error(`slot ${slot} is not open`);
    }
    this.#freeSlots.push(slot);
  }

  /** `n` pages, each with one reference, or null (changing nothing) when fewer are free. */
  allocate(n: number): number[] | null {
    if (n > this.#freePages.length) return null;
    const pages: number[] = [];
    for (let i = 0; i < n; i++) {
      const p = this.#freePages.pop()!;
      this.#refs[p] = 1;
      pages.push(p);
    }
    return pages;
  }

  /** One more holder of a page already in use (a sequence sharing a cached prefix). */
  retain(page: number): void {
    if (this.refCount(page) === 0) throw new Error(`page ${page} is free`);
    this.#refs[page]++;
  }

  /** Drops one reference to each page; pages nobody holds go back to the free list, in reverse
   * so that a sequence's first page is handed out first again. */
  release(pages: readonly number[]): void {
    for (let i = pages.length - 1; i >= 0; i--) {
      const p = pages[i];
      if (this.refCount(p) === 0) throw new Error(`page ${p} released more often than held`);
      if (--this.#refs[p] === 0) this.#freePages.push(p);
    }
  }

  refCount(page: number): number {
    if (!(page >= 0 && page < this.numPages)) throw new RangeError(`no page ${page}`);
    return this.#refs[page];
  }

  get freePages(): number {
    return this.#freePages.length;
  }

  get usedPages(): number {
    return this.numPages - this.#freePages.length;
  }

  get freeSlots(): number {
    return this.#freeSlots.length;
  }
}
