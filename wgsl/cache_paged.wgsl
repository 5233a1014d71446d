// KV-cache layout "paged" (cache/kinds.ts RetrievalPages): every position of a sequence, in pages
// of PAGE_SIZE positions drawn from a pool shared by every paged part; position j of slot s lives
// in page page_table[s][j / PAGE_SIZE]. Included (gpu/pipelines.ts) by the kernels that read or
// write a cache part, after common.wgsl; cache_ring.wgsl defines the same functions. The
// including kernel declares HEAD_DIM (dims per head) and CACHE_HEADS (KV heads of the part).
//
// What a layout defines:
//   cache_entry(slot, j, ch)  index of dim 0 of position j, cache head ch, in the K/V buffers;
//   sink_end(i), window_start(i)  the keys a query at position i sees (j <= i):
//                             [0, sink_end(i)) and [max(sink_end(i), window_start(i)), i];
//   holds(i, j)               whether key j (<= i) is among them, i.e. still held in the cache
//                             once position i is written.
// Binding 5 belongs to the layout (the page table here; unused by the ring).

override PAGE_SIZE: u32;  // positions per page
override MAX_PAGES: u32;  // page-table entries per slot (row stride of page_table)

@group(0) @binding(5) var<storage, read> page_table: array<u32>;

fn cache_entry(slot: u32, j: u32, ch: u32) -> u32 {
  let page = page_table[slot * MAX_PAGES + j / PAGE_SIZE];
  return ((page * PAGE_SIZE + j % PAGE_SIZE) * CACHE_HEADS + ch) * HEAD_DIM;
}

// Every key is kept: one range [0, i].
fn sink_end(i: u32) -> u32 { return 0u; }
fn window_start(i: u32) -> u32 { return 0u; }
fn holds(i: u32, j: u32) -> bool { return true; }
