// KV-cache layout "paged" (cache/kinds.ts RetrievalPages): every position of a sequence, in pages
// of PAGE_SIZE positions drawn from a pool shared by every paged part; position j of slot s lives
// in page page_table[s][j / PAGE_SIZE]. The pool is split into CACHE_SHARDS buffer pairs of
// PAGES_PER_SHARD pages: page p lives in shard p / PAGES_PER_SHARD at local page
// p % PAGES_PER_SHARD. Included (gpu/pipelines.ts) by the kernels that read or write a cache
// part, after common.wgsl and the KV codec (kv_<dtype>.wgsl: `kv_entry_units`, the storage
// units of one position's head); cache_ring.wgsl defines the same functions and constants. The
// including kernel declares HEAD_DIM (dims per head) and CACHE_HEADS (KV heads of the part).
//
// What a layout defines:
//   CACHE_SHARDS              (override) buffer pairs the part is split into;
//   cache_shard(slot, j)      the shard holding position j of slot;
//   cache_entry(slot, j, ch)  index of the first storage unit of position j, cache head ch,
//                             within that shard's K/V buffers (computed from the local unit, so
//                             it never nears 2^32);
//   first_shard(slot), last_shard(slot)  the shards that may hold any of slot's positions;
//   shard_holds_any(slot, j0, j1, shard)  whether `shard` may hold one of positions [j0, j1)
//                             (true may be conservative, false is exact);
//   sink_end(i), window_start(i)  the keys a query at position i sees (j <= i):
//                             [0, sink_end(i)) and [max(sink_end(i), window_start(i)), i];
//   holds(i, j)               whether key j (<= i) is among them, i.e. still held in the cache
//                             once position i is written.
//   keeps(i, j)               whether the layout stores key j once position i is written: what
//                             `holds` sees, and for a ring with slack the slack's older keys
//                             too (a prefix-cache snapshot resumes from them).
// Binding 5 belongs to the layout (the page table here; unused by the ring).

override PAGE_SIZE: u32;        // positions per page
override MAX_PAGES: u32;        // page-table entries per slot (row stride of page_table)
override PAGES_PER_SHARD: u32;  // pages of the pool each shard buffer holds
override CACHE_SHARDS: u32;     // shard buffers of the part

@group(0) @binding(5) var<storage, read> page_table: array<u32>;

fn cache_page(slot: u32, j: u32) -> u32 {
  return page_table[slot * MAX_PAGES + j / PAGE_SIZE];
}

fn cache_shard(slot: u32, j: u32) -> u32 {
  if (CACHE_SHARDS == 1u) { return 0u; }
  return cache_page(slot, j) / PAGES_PER_SHARD;
}

fn cache_entry(slot: u32, j: u32, ch: u32) -> u32 {
  var page = cache_page(slot, j);
  if (CACHE_SHARDS > 1u) { page = page % PAGES_PER_SHARD; }
  return ((page * PAGE_SIZE + j % PAGE_SIZE) * CACHE_HEADS + ch) * kv_entry_units();
}

// Any shard may hold a page of any sequence.
fn first_shard(slot: u32) -> u32 { return 0u; }
fn last_shard(slot: u32) -> u32 { return CACHE_SHARDS - 1u; }

// One page-table lookup per page of the range.
fn shard_holds_any(slot: u32, j0: u32, j1: u32, shard: u32) -> bool {
  if (CACHE_SHARDS == 1u) { return j0 < j1; }
  for (var p = j0 / PAGE_SIZE; p * PAGE_SIZE < j1; p++) {
    if (page_table[slot * MAX_PAGES + p] / PAGES_PER_SHARD == shard) { return true; }
  }
  return false;
}

// Every key is kept: one range [0, i].
fn sink_end(i: u32) -> u32 { return 0u; }
fn window_start(i: u32) -> u32 { return 0u; }
fn holds(i: u32, j: u32) -> bool { return true; }
fn keeps(i: u32, j: u32) -> bool { return true; }
