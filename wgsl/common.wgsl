// Shared declarations prepended to every kernel by gpu/pipelines.ts after the dtype header.
// `W` (weights) and `KV` (cache) are aliases the header sets to f16 or f32.

// Per-forward values that change between submissions; everything fixed per model is an override.
struct Forward {
  n_rows: u32,         // token rows in this forward (prefill chunk length or decode batch)
  n_logit_rows: u32,   // rows whose logits are computed (last row of a prefill, every decode row)
  keys_per_split: u32, // visible keys per split of split-K decode (a multiple of SPLIT_KEYS)
  n_splits: u32,       // key splits of split-K decode attention (partials per row and head)
}

// Which shard of a KV-cache part a dispatch binds. A part too large for one storage binding is
// split over CACHE_SHARDS buffer pairs (cache/layout.ts, the layout include's `cache_shard`);
// WGSL has no arrays of buffers, so the attention and KV-store kernels run once per shard.
struct CacheShard {
  index: u32,
}

// One token row of a forward: which sequence it belongs to and where it sits.
struct Row {
  slot: u32,       // sequence slot: row of the page table and index of the streaming ring
  pos: u32,        // absolute position of this token in its sequence
  first_row: u32,  // row index of this sequence's first token in this forward
  n_seq_rows: u32, // rows this sequence has in this forward
}
