// KV-cache layout "ring" (cache/kinds.ts StreamingRing): per sequence slot a ring of
// SINK + RECENT + SLACK positions: the first SINK positions (attention sinks) stay, later ones
// cycle through the other RECENT + SLACK. A query sees the sinks and the last RECENT positions;
// the SLACK older ones are kept so that a copy of the ring taken at position b (a prefix-cache
// snapshot) is the exact state of any position in [b - SLACK, b]. Keys stay as RoPE rotated them
// at their original positions. The rings are split into
// CACHE_SHARDS buffer pairs of SLOTS_PER_SHARD slots: slot s lives in shard s / SLOTS_PER_SHARD,
// so each sequence's keys are all in one shard. Included (gpu/pipelines.ts) after common.wgsl
// and the KV codec; cache_paged.wgsl defines the same functions and documents them. The
// including kernel declares HEAD_DIM and CACHE_HEADS.

override SINK: u32;             // attention-sink positions kept
override RECENT: u32;           // most recent positions seen (the current one included), >= 1
override SLACK: u32 = 0u;       // older positions kept beyond RECENT (prefix-cache snapshots)
override SLOTS_PER_SHARD: u32;  // sequence slots whose rings each shard buffer holds
override CACHE_SHARDS: u32;     // shard buffers of the part

fn cache_shard(slot: u32, j: u32) -> u32 {
  if (CACHE_SHARDS == 1u) { return 0u; }
  return slot / SLOTS_PER_SHARD;
}

fn cache_entry(slot: u32, j: u32, ch: u32) -> u32 {
  var s = j;
  if (j >= SINK) { s = SINK + (j - SINK) % (RECENT + SLACK); }
  var local = slot;
  if (CACHE_SHARDS > 1u) { local = slot % SLOTS_PER_SHARD; }
  return ((local * (SINK + RECENT + SLACK) + s) * CACHE_HEADS + ch) * kv_entry_units();
}

// A slot's whole ring is in one shard.
fn first_shard(slot: u32) -> u32 { return cache_shard(slot, 0u); }
fn last_shard(slot: u32) -> u32 { return cache_shard(slot, 0u); }
fn shard_holds_any(slot: u32, j0: u32, j1: u32, shard: u32) -> bool {
  return j0 < j1 && cache_shard(slot, 0u) == shard;
}

// A query at position i sees the sink and the last RECENT positions.
fn sink_end(i: u32) -> u32 { return min(SINK, i + 1u); }
fn window_start(i: u32) -> u32 {
  if (i + 1u > RECENT) { return i + 1u - RECENT; }
  return 0u;
}
fn holds(i: u32, j: u32) -> bool { return j < SINK || i - j < RECENT; }
fn keeps(i: u32, j: u32) -> bool { return j < SINK || i - j < RECENT + SLACK; }
// Keys the window has dropped for a query at position i: positions [SINK, window_start(i)), what
// a compensated ring's compensation token stands for (compensation.wgsl, comp_mean.wgsl).
fn dropped(i: u32) -> u32 {
  if (i + 1u > SINK + RECENT) { return i + 1u - SINK - RECENT; }
  return 0u;
}
