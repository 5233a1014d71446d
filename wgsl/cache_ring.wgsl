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
//
// Elastic windows (MoA; plans/types.ts Window): a query at position i sees the last
// recent_at(i) = min(RECENT, RECENT_BASE + floor(GROWTH_Q16 (i + 1) / 65536)) positions, which
// never shrinks and whose start never moves back, so every rule below holds with it; RECENT is
// then the ring's size, the window's largest. A plain window has RECENT_BASE = RECENT.

override SINK: u32;             // attention-sink positions kept
override RECENT: u32;           // most recent positions seen (the current one included), >= 1
override RECENT_BASE: u32;      // elastic: the window at position 0 (else RECENT)
override GROWTH_Q16: u32 = 0u;  // elastic: recent positions gained per position, x 65536 (< 65536)
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

// Recent positions a query at position i sees. floor(q n / 2^16) split by n's halves so that
// nothing overflows u32 (q < 2^16): q (hi 2^16 + lo) / 2^16 = q hi + q lo / 2^16.
fn recent_at(i: u32) -> u32 {
  if (GROWTH_Q16 == 0u) { return RECENT; }
  let n = i + 1u;
  let grown = (n >> 16u) * GROWTH_Q16 + (((n & 0xffffu) * GROWTH_Q16) >> 16u);
  return min(RECENT, RECENT_BASE + min(grown, RECENT));
}

// A query at position i sees the sink and the last recent_at(i) positions.
fn sink_end(i: u32) -> u32 { return min(SINK, i + 1u); }
fn window_start(i: u32) -> u32 {
  let r = recent_at(i);
  if (i + 1u > r) { return i + 1u - r; }
  return 0u;
}
fn holds(i: u32, j: u32) -> bool { return j < SINK || i - j < recent_at(i); }
fn keeps(i: u32, j: u32) -> bool { return j < SINK || i - j < RECENT + SLACK; }
// Keys the window has dropped for a query at position i: positions [SINK, window_start(i)), what
// a compensated ring's compensation token stands for (compensation.wgsl, comp_mean.wgsl).
fn dropped(i: u32) -> u32 {
  let r = recent_at(i);
  if (i + 1u > SINK + r) { return i + 1u - SINK - r; }
  return 0u;
}
