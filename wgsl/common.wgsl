// Shared declarations prepended to every kernel by gpu/pipelines.ts after the dtype header.
// `W` (weights) and `KV` (cache) are aliases the header sets to f16 or f32.

// Per-forward values that change between submissions; everything fixed per model is an override.
struct Forward {
  n_rows: u32,        // token rows in this forward (prefill chunk length or decode batch)
  n_logit_rows: u32,  // rows whose logits are computed (last row of a prefill, every decode row)
  _pad: u32,
  n_splits: u32,     // key splits of split-K decode attention (partials per row and head)
}

// One token row of a forward: which sequence it belongs to and where it sits.
struct Row {
  slot: u32,       // sequence slot: row of the page table and index of the streaming ring
  pos: u32,        // absolute position of this token in its sequence
  first_row: u32,  // row index of this sequence's first token in this forward
  n_seq_rows: u32, // rows this sequence has in this forward
}
