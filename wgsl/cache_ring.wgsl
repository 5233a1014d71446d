// KV-cache layout "ring" (cache/kinds.ts StreamingRing): per sequence slot a ring of SINK + RECENT
// positions: the first SINK positions (attention sinks) stay, later ones cycle through the RECENT
// window. Keys stay as RoPE rotated them at their original positions. Included
// (gpu/pipelines.ts) after common.wgsl; cache_paged.wgsl defines the same functions and documents
// them. The including kernel declares HEAD_DIM and CACHE_HEADS.

override SINK: u32;    // attention-sink positions kept
override RECENT: u32;  // most recent positions kept (the current one included), >= 1

fn cache_entry(slot: u32, j: u32, ch: u32) -> u32 {
  var s = j;
  if (j >= SINK) { s = SINK + (j - SINK) % RECENT; }
  return ((slot * (SINK + RECENT) + s) * CACHE_HEADS + ch) * HEAD_DIM;
}

// A query at position i sees the sink and the last RECENT positions.
fn sink_end(i: u32) -> u32 { return min(SINK, i + 1u); }
fn window_start(i: u32) -> u32 {
  if (i + 1u > RECENT) { return i + 1u - RECENT; }
  return 0u;
}
fn holds(i: u32, j: u32) -> bool { return j < SINK || i - j < RECENT; }
