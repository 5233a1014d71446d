// Causal attention with GQA over one KV-cache part, for the query heads
// [Q_HEAD_BASE, Q_HEAD_BASE + N_Q_HEADS) of every row.
//
// Keys of a row's own forward (positions >= the sequence's first position in this forward) are
// read from the fresh fused q|k|v rows; older keys come from the cache, addressed by the layout
// include (cache_paged.wgsl or cache_ring.wgsl: `cache_entry`) and dequantized in the inner loops
// by the KV codec (kv_float.wgsl, kv_int8.wgsl, kv_int4.wgsl: `kv_k4`, `kv_v4`). The layout also
// says which keys a query sees (`sink_end`, `window_start`, `holds`): all of [0, i] for pages;
// for the sink + recent ring key j is visible from query i when j <= i and (j < SINK or
// i - j < RECENT). Key tiles outside the visible ranges are never visited, so a ring's cost grows as
// n * (SINK + RECENT), not n^2. Keys are stored after RoPE at their original positions and are
// never re-rotated.
//
// Compensation (the compensation include: comp_none.wgsl, or comp_mean.wgsl for a "compensated"
// ring): RazorAttention's compensation token, the mean key and value of the keys the window has
// dropped, counted as many times as it stands for, is where each query's online softmax starts:
// m = q.k_mean * SCALE + ln(count), l = 1, output = the mean value (prefill: at the slot's first
// shard; decode: in split 0). Key tiles and the merge are unchanged.
//
// Shards: a part whose cache is split over CACHE_SHARDS buffer pairs is attended by one dispatch
// per shard (`shard`), each over the keys its shard holds (`cache_shard`; the fresh keys belong
// to the slot's last shard), skipping key tiles and blocks with none. The online-softmax state
// (max m, denominator l, unnormalised output) passes from one shard's dispatch to the next: the
// slot's first shard starts it, later ones continue it, its last shard finishes. Prefill keeps m
// and l in `carry` and the output in `out`; decode keeps all three in its split's `partials`
// entry. With one shard the first is the last: nothing is carried.
//
// Entry points: `prefill` (flash attention: tiles of 32 query slots, a sequence's rows x a KV
// head's query heads, online softmax over 16-key tiles), `decode` (one query row and KV head per workgroup serving the head's query group,
// split-K over keys, one block of SPLIT_KEYS keys per split, partials), `decode_long` (the same
// with `fwd.keys_per_split` keys per split in blocks of SPLIT_KEYS, once the split cap is
// reached) and `merge` (combines the split-K partials; with a single split the decode writes the
// output itself).

override HEAD_DIM: u32;       // dims per head, <= 128
override GROUP: u32;          // query heads per KV head
override Q_HEAD_BASE: u32;    // first query head of this dispatch
override N_HEADS: u32;        // query heads of the model (output row = N_HEADS * HEAD_DIM)
override N_KV_HEADS: u32;     // KV heads of the model (fused row = (N_HEADS + 2 N_KV_HEADS) dims)
override CACHE_HEADS: u32;    // KV heads held by this cache buffer (KV heads from Q_HEAD_BASE/GROUP)
override SCALE: f32;          // softmax scale, 1/sqrt(HEAD_DIM)

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> rows: array<Row>;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<KV>;
@group(0) @binding(4) var<storage, read> v_cache: array<KV>;
// @binding(5): the layout's (cache_paged.wgsl: the page table).
@group(0) @binding(6) var<storage, read_write> out: array<f32>;       // prefill/merge output
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;  // decode split-K partials
// Prefill's m and l per (row, query head), [rows][N_HEADS][2], between shard dispatches.
@group(0) @binding(8) var<storage, read_write> carry: array<f32>;
@group(0) @binding(9) var<uniform> shard: CacheShard;  // the shard k_cache and v_cache are

const NEG = -3.0e38;

fn row_stride() -> u32 { return (N_HEADS + 2u * N_KV_HEADS) * HEAD_DIM; }

const FRESH = 0x80000000u; // key_index flag: the key is in the fresh q|k|v rows, not the cache
const SKIP = 0xffffffffu;  // key_index: the key is another shard's (this dispatch leaves it out)

// Where key j of `row` lives for KV head kvh: FRESH | fused row index when j is one of this
// forward's own positions, SKIP when this dispatch's shard does not hold it, else the index of
// its dim 0 in this shard's cache buffers. Computed once per key, so page-table and ring lookups
// are not repeated per element.
fn key_index(row: Row, r: u32, j: u32, kvh: u32) -> u32 {
  let pos0 = row.pos - (r - row.first_row);
  if (j >= pos0) {
    if (CACHE_SHARDS > 1u && shard.index != last_shard(row.slot)) { return SKIP; }
    return FRESH | (row.first_row + (j - pos0));
  }
  if (CACHE_SHARDS > 1u && cache_shard(row.slot, j) != shard.index) { return SKIP; }
  return cache_entry(row.slot, j, kvh - Q_HEAD_BASE / GROUP);
}

fn skipped(idx: u32) -> bool { return CACHE_SHARDS > 1u && idx == SKIP; }

// Whether this dispatch's shard may hold one of keys [j0, j1) of `row` (the fresh ones are the
// slot's last shard's); false lets a whole tile or block be skipped.
fn keys_in_shard(row: Row, r: u32, j0: u32, j1: u32) -> bool {
  if (CACHE_SHARDS == 1u) { return true; }
  let pos0 = row.pos - (r - row.first_row);
  if (j1 > pos0 && shard.index == last_shard(row.slot)) { return true; }
  return shard_holds_any(row.slot, j0, min(j1, pos0), shard.index);
}

// Whether this dispatch's shard takes part in the attention of `slot`'s rows.
fn shard_serves(slot: u32) -> bool {
  return shard.index >= first_shard(slot) && shard.index <= last_shard(slot);
}

// Dims d .. d+3 (HEAD_DIM is a multiple of 4) of the key (which = 0) or value (which = 1) at
// `idx` (from key_index): from the fresh rows, or dequantized by the KV codec (kv_<dtype>.wgsl)
// straight from the cache.
fn load4(idx: u32, kvh: u32, d: u32, which: u32) -> vec4<f32> {
  if ((idx & FRESH) != 0u) {
    let b = (idx & ~FRESH) * row_stride() + (N_HEADS + which * N_KV_HEADS + kvh) * HEAD_DIM + d;
    return vec4<f32>(qkv[b], qkv[b + 1u], qkv[b + 2u], qkv[b + 3u]);
  }
  if (which == 0u) { return kv_k4(idx, d); }
  return kv_v4(idx, d);
}

fn visible(i: u32, j: u32) -> bool {
  if (j > i) { return false; }
  return holds(i, j);
}

// ---- prefill: flash attention over a KV head's query group ----
// One workgroup per (tile of rows, KV head, chunk of its query heads). Its QS query slots are the
// tile's rows x the chunk's heads (slot s: row s / heads, head s % heads; prefill_heads), so each
// key and value tile is read once for the KV head's whole group (GQA), and a tile's rows span
// fewer positions (less of the causal diagonal is masked) the larger the group. Online softmax
// over BK-key tiles, 64 threads.
// Loads bound this kernel (on CPU adapters every load costs about as much as a vec4 load; on
// GPUs workgroup-memory bandwidth runs out before the FMAs do), so the inner loops count them.
// Thread (sq, c) holds the queries of slots 4sq .. 4sq+3 in registers, their vec4 columns
// c + 8m: against each key of the tile it reads just those columns (1 load per 16 FMAs) and
// leaves a partial score per slot in part_s. After a barrier thread (sq, kp) adds the 8 partials
// of keys kp and kp + 8 (in column order), and the softmax runs in registers: the 8 threads of a
// slot quad share their tile maxima through red_s (all 8 then hold the same running max) and each
// keeps the denominators of its own keys, summed once at the end. Thread (sq, c) then sums the
// weighted values of its slots and columns (5 loads per 64 FMAs). Keys and then values share one
// staging tile (kv_s); everything fits 32 KiB of workgroup memory.
const QS = 32u;
const BK = 16u;
var<workgroup> kv_s: array<vec4<f32>, 512>;   // [BK][HEAD_DIM / 4] the tile's keys, then values
var<workgroup> part_s: array<vec4<f32>, 1024>; // [BK][QS / 4][8] partial scores (part_at)
var<workgroup> p_s: array<vec4<f32>, 128>;    // [BK][QS / 4] probabilities
var<workgroup> m_s: array<f32, 32>;           // the state a slot starts from: max
var<workgroup> l_s: array<f32, 32>;           // and denominator
var<workgroup> red_s: array<vec4<f32>, 64>;   // [QS / 4][8] per-thread maxima of a tile, or sums
var<workgroup> kidx: array<u32, 256>;         // key_index of each key of the tile (prefill) or split

// Where column thread u's partial scores of slot quad sq against key j are: rotated by j, so
// that the 8 keys one thread group reads at once lie in distinct banks.
fn part_at(j: u32, sq: u32, u: u32) -> u32 { return (j * 8u + sq) * 8u + (u + j) % 8u; }

// Query heads per workgroup: the group, or (groups larger than QS) an even share of it.
fn prefill_chunks() -> u32 { return (GROUP + QS - 1u) / QS; }
fn prefill_heads() -> u32 { return (GROUP + prefill_chunks() - 1u) / prefill_chunks(); }

// What one prefill workgroup serves.
struct PrefillTile {
  r0: u32,    // first row
  rq: u32,    // rows (<= QS / heads)
  heads: u32, // slots per row: prefill_heads()
  h0: u32,    // first query head
  hn: u32,    // query heads (the last chunk of a group may have fewer)
  kvh: u32,
}

// Dims d .. d+3 of slot s's query, scaled.
fn slot_q4(t: PrefillTile, s: u32, d: u32) -> vec4<f32> {
  let b = (t.r0 + s / t.heads) * row_stride() + (t.h0 + s % t.heads) * HEAD_DIM + d;
  return vec4<f32>(qkv[b], qkv[b + 1u], qkv[b + 2u], qkv[b + 3u]) * SCALE;
}

// Whether slot s holds a (row, head) of the tile.
fn slot_live(t: PrefillTile, s: u32) -> bool {
  return s / t.heads < t.rq && s % t.heads < t.hn;
}

// Slot s's (row, query head) index: where its output starts in `out` (x HEAD_DIM) and its carry
// entry (x 2).
fn slot_index(t: PrefillTile, s: u32) -> u32 {
  return (t.r0 + s / t.heads) * N_HEADS + t.h0 + s % t.heads;
}
fn slot_out(t: PrefillTile, s: u32) -> u32 { return slot_index(t, s) * HEAD_DIM; }
fn slot_carry(t: PrefillTile, s: u32) -> u32 { return slot_index(t, s) * 2u; }

@compute @workgroup_size(64)
fn prefill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let n_rows = fwd.n_rows;
  var t: PrefillTile;
  t.heads = prefill_heads();
  t.r0 = wg.x * (QS / t.heads);
  if (t.r0 >= n_rows) { return; }
  t.rq = min(QS / t.heads, n_rows - t.r0);
  let chunks = prefill_chunks();
  t.kvh = Q_HEAD_BASE / GROUP + wg.y / chunks;
  t.h0 = t.kvh * GROUP + (wg.y % chunks) * t.heads;
  t.hn = min(t.heads, t.kvh * GROUP + GROUP - t.h0);
  let kvh = t.kvh;
  let ch = kvh - Q_HEAD_BASE / GROUP;
  let r0 = t.r0;
  let row0 = rows[r0];
  if (!shard_serves(row0.slot)) { return; }
  let first = shard.index == first_shard(row0.slot);
  let last = shard.index == last_shard(row0.slot);
  let qa = row0.pos;
  let qb = qa + t.rq - 1u;
  let hd4 = HEAD_DIM / 4u;
  // The state so far: empty at the slot's first shard (or the compensation token), else what
  // the previous shard left.
  if (tid < QS) {
    m_s[tid] = NEG;
    l_s[tid] = 0.0;
    if (slot_live(t, tid) && !first) {
      m_s[tid] = carry[slot_carry(t, tid)];
      l_s[tid] = carry[slot_carry(t, tid) + 1u];
    }
    if (COMPENSATED && first && slot_live(t, tid) && comp_count(qa + tid / t.heads) > 0u) {
      var s = 0.0;
      for (var d = 0u; d < HEAD_DIM; d += 4u) {
        s += dot(slot_q4(t, tid, d), comp_k4(r0 + tid / t.heads, ch, d));
      }
      m_s[tid] = s + log(f32(comp_count(qa + tid / t.heads)));
      l_s[tid] = 1.0;
    }
  }
  // Thread (sq, c): the queries of slots 4sq + i, columns c + 8m, in q[4m + i]; their weighted
  // value sums in o[4m + i]. m4: the slots' running max; l4: their denominators over the keys
  // this thread scores (thread c == 0 starts from the state so far).
  let sq = tid / 8u;
  let c = tid % 8u;
  var q: array<vec4<f32>, 16>;
  for (var i = 0u; i < 4u; i++) {
    for (var m = 0u; m < 4u; m++) {
      let col = c + 8u * m;
      var x = vec4<f32>(0.0);
      if (slot_live(t, 4u * sq + i) && col < hd4) { x = slot_q4(t, 4u * sq + i, col * 4u); }
      q[4u * m + i] = x;
    }
  }
  workgroupBarrier(); // the state so far is in m_s, l_s
  var m4 = vec4<f32>(m_s[4u * sq], m_s[4u * sq + 1u], m_s[4u * sq + 2u], m_s[4u * sq + 3u]);
  var l4 = vec4<f32>(0.0);
  if (c == 0u) {
    l4 = vec4<f32>(l_s[4u * sq], l_s[4u * sq + 1u], l_s[4u * sq + 2u], l_s[4u * sq + 3u]);
  }
  var o: array<vec4<f32>, 16>;
  for (var i = 0u; i < 4u; i++) {
    let s = 4u * sq + i;
    let live = slot_live(t, s);
    let comp = COMPENSATED && first && live && comp_count(qa + s / t.heads) > 0u;
    for (var m = 0u; m < 4u; m++) {
      let col = c + 8u * m;
      var a = vec4<f32>(0.0);
      if (live && col < hd4 && !first) {
        let b = slot_out(t, s) + col * 4u;
        a = vec4<f32>(out[b], out[b + 1u], out[b + 2u], out[b + 3u]);
      }
      if (comp && col < hd4) {
        let r = r0 + s / t.heads;
        a = vec4<f32>(comp_v(r, ch, col * 4u), comp_v(r, ch, col * 4u + 1u),
                      comp_v(r, ch, col * 4u + 2u), comp_v(r, ch, col * 4u + 3u));
      }
      o[4u * m + i] = a;
    }
  }

  // Key ranges: [0, end_a) then [start_b, qb + 1), the layout's visible keys of the tile's rows
  // (for pages end_a = start_b = 0: all of [0, qb]).
  let end_a = sink_end(qb);
  let start_b = max(end_a, window_start(qa));
  let tiles_a = (end_a + BK - 1u) / BK;
  let tiles = tiles_a + (qb + 1u - start_b + BK - 1u) / BK;
  // Staging: thread (key jj, part) moves vec4 columns part, part + 4, ... of key jj.
  let jj = tid / 4u;
  let part = tid % 4u;
  for (var it = 0u; it < tiles; it++) {
    var k0 = start_b + (it - tiles_a) * BK;
    var kend = qb + 1u;
    if (it < tiles_a) { k0 = it * BK; kend = end_a; }
    if (!keys_in_shard(row0, r0, k0, kend)) { continue; }
    workgroupBarrier(); // the previous tile's values and probabilities are read
    // Keys: out-of-range and other shards' keys are zeros (their scores are masked, and a NaN
    // there would still poison 0 * v).
    var idx = SKIP;
    let staged = k0 + jj < kend;
    if (staged) { idx = key_index(row0, r0, k0 + jj, kvh); }
    let used = staged && !skipped(idx);
    if (part == 0u) { kidx[jj] = idx; }
    for (var d = part; d < hd4; d += 4u) {
      var k = vec4<f32>(0.0);
      if (used) { k = load4(idx, kvh, d * 4u, 0u); }
      kv_s[jj * hd4 + d] = k;
    }
    workgroupBarrier();
    // Partial scores: this thread's columns of its 4 slots against every key of the tile.
    for (var j = 0u; j < BK; j++) {
      var sc = vec4<f32>(0.0);
      for (var m = 0u; m < 4u; m++) {
        // Columns past the head hold zero queries: skip them where no thread has any.
        if (m * 32u < HEAD_DIM) {
          let k = kv_s[j * hd4 + c + 8u * m];
          sc += vec4<f32>(dot(q[4u * m], k), dot(q[4u * m + 1u], k), dot(q[4u * m + 2u], k),
                          dot(q[4u * m + 3u], k));
        }
      }
      part_s[part_at(j, sq, c)] = sc;
    }
    workgroupBarrier(); // the keys are read; the partial scores are in
    for (var d = part; d < hd4; d += 4u) {
      var v = vec4<f32>(0.0);
      if (used) { v = load4(idx, kvh, d * 4u, 1u); }
      kv_s[jj * hd4 + d] = v;
    }
    // Scores of slots 4sq .. 4sq+3 (one vec4) against keys kp and kp + 8.
    let kp = c;
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    for (var u = 0u; u < 8u; u++) {
      s0 += part_s[part_at(kp, sq, u)];
      s1 += part_s[part_at(kp + 8u, sq, u)];
    }
    for (var i = 0u; i < 4u; i++) {
      let s = 4u * sq + i;
      let pos = qa + s / t.heads;
      let ja = k0 + kp;
      let jb = k0 + kp + 8u;
      if (!(slot_live(t, s) && ja < kend && !skipped(kidx[kp]) && visible(pos, ja))) { s0[i] = NEG; }
      if (!(slot_live(t, s) && jb < kend && !skipped(kidx[kp + 8u]) && visible(pos, jb))) { s1[i] = NEG; }
    }
    red_s[sq * 8u + c] = max(s0, s1);
    workgroupBarrier(); // every thread's maxima are in
    // The slots' new max, this tile's probabilities and the rescale of what came before.
    var mx = m4;
    for (var u = 0u; u < 8u; u++) { mx = max(mx, red_s[sq * 8u + u]); }
    let masked = vec4<f32>(NEG);
    let p0 = select(vec4<f32>(0.0), exp(s0 - mx), s0 > masked);
    let p1 = select(vec4<f32>(0.0), exp(s1 - mx), s1 > masked);
    let alpha = exp(m4 - mx);
    m4 = mx;
    l4 = l4 * alpha + p0 + p1;
    p_s[kp * (QS / 4u) + sq] = p0;
    p_s[(kp + 8u) * (QS / 4u) + sq] = p1;
    workgroupBarrier();
    for (var m = 0u; m < 4u; m++) {
      for (var i = 0u; i < 4u; i++) { o[4u * m + i] *= alpha[i]; }
    }
    for (var j = 0u; j < BK; j++) {
      let p = p_s[j * (QS / 4u) + sq];
      for (var m = 0u; m < 4u; m++) {
        // Columns past the head are never stored: skip them where no thread has any.
        if (m * 32u < HEAD_DIM) {
          let v = kv_s[j * hd4 + c + 8u * m];
          o[4u * m] += p.x * v;
          o[4u * m + 1u] += p.y * v;
          o[4u * m + 2u] += p.z * v;
          o[4u * m + 3u] += p.w * v;
        }
      }
    }
  }
  // The slots' denominators: the 8 threads' sums, in thread order.
  workgroupBarrier(); // the last tile's maxima are read
  red_s[sq * 8u + c] = l4;
  workgroupBarrier();
  var l = vec4<f32>(0.0);
  for (var u = 0u; u < 8u; u++) { l += red_s[sq * 8u + u]; }
  for (var i = 0u; i < 4u; i++) {
    let s = 4u * sq + i;
    if (!slot_live(t, s)) { continue; }
    // The slot's last shard normalises; earlier ones leave the sums for the next shard.
    var inv = 1.0;
    if (last) { inv = 1.0 / l[i]; }
    for (var m = 0u; m < 4u; m++) {
      let col = c + 8u * m;
      if (col < hd4) {
        let b = slot_out(t, s) + col * 4u;
        let a = o[4u * m + i] * inv;
        out[b] = a.x;
        out[b + 1u] = a.y;
        out[b + 2u] = a.z;
        out[b + 3u] = a.w;
      }
    }
    if (c == 0u && !last) {
      carry[slot_carry(t, s)] = m4[i];
      carry[slot_carry(t, s) + 1u] = l[i];
    }
  }
}

// ---- decode: split-K over the visible keys of one row ----
// One workgroup per (row, KV head, group chunk, split) serves up to 8 query heads of the KV
// head's group, so each key and value is read once for the whole group (GQA). A split's
// `fwd.keys_per_split` keys are visited in blocks of SPLIT_KEYS with an online softmax, so the
// number of splits (and the partials) stays capped however long the context.
const SPLIT_KEYS = 256u;
const MAX_G = 8u;                        // query heads per workgroup
var<workgroup> qg_s: array<vec4<f32>, 256>; // [MAX_G][HEAD_DIM / 4] scaled queries
var<workgroup> pg_s: array<f32, 2048>;   // [MAX_G][SPLIT_KEYS] scores, then probabilities
var<workgroup> red_g: array<f32, 512>;   // [MAX_G][64] per-thread partial max / sum
var<workgroup> stat_g: array<f32, 16>;   // [g]: running max, [MAX_G + g]: running sum
var<workgroup> alpha_g: array<f32, 8>;   // [g]: rescale of the output so far by this block's max
var<workgroup> acc_s: array<f32, 2048>;  // [subset][MAX_G][HEAD_DIM] partial outputs

// The v-th visible key position of a query at position i (sink first, then the window).
fn nth_key(i: u32, v: u32) -> u32 {
  let na = sink_end(i);
  if (v < na) { return v; }
  return max(na, window_start(i)) + (v - na);
}

fn visible_count(i: u32) -> u32 {
  let na = sink_end(i);
  return na + (i + 1u - max(na, window_start(i)));
}

// What one decode workgroup serves: a row, a KV head's chunk of query heads, one split of the
// row's visible keys, and where the split's state lives in `partials`.
struct DecodeTask {
  r: u32,
  kvh: u32,
  h0: u32,        // first query head of this workgroup
  gn: u32,        // query heads of this workgroup
  row: Row,
  first: bool,    // this shard starts the state (the slot's first shard)
  last: bool,     // this shard finishes it
  v_begin: u32,   // the split's visible keys [v_begin, v_end)
  v_end: u32,
  p0: u32,        // partials entry of query head h0 + g: p0 + g * p_stride
  p_stride: u32,
}

fn decode_task(wg: vec3<u32>) -> DecodeTask {
  var t: DecodeTask;
  t.r = wg.x;
  let chunks = (GROUP + MAX_G - 1u) / MAX_G;
  t.kvh = Q_HEAD_BASE / GROUP + wg.y / chunks;
  t.h0 = t.kvh * GROUP + (wg.y % chunks) * MAX_G;
  t.gn = min(MAX_G, t.kvh * GROUP + GROUP - t.h0);
  t.row = rows[t.r];
  t.first = shard.index == first_shard(t.row.slot);
  t.last = shard.index == last_shard(t.row.slot);
  let total = visible_count(t.row.pos);
  t.v_begin = min(total, wg.z * fwd.keys_per_split);
  t.v_end = min(total, t.v_begin + fwd.keys_per_split);
  t.p0 = ((t.r * N_HEADS + t.h0) * fwd.n_splits + wg.z) * (HEAD_DIM + 2u);
  t.p_stride = fwd.n_splits * (HEAD_DIM + 2u);
  return t;
}

// Whether this dispatch's shard holds any of the visible keys [v0, v1) of the task's row.
fn decode_keys_in_shard(t: DecodeTask, v0: u32, v1: u32) -> bool {
  if (v1 <= v0) { return false; }
  return keys_in_shard(t.row, t.r, nth_key(t.row.pos, v0), nth_key(t.row.pos, v1 - 1u) + 1u);
}

// Weighted values: thread (subset, column) sums every `subsets`-th key of one vec4 column.
fn value_subsets() -> u32 { return 64u / (HEAD_DIM / 4u); }

// Queries into qg_s; the state so far into stat_g and `acc`: empty at the slot's first shard,
// else what the previous shard left in partials (its output goes to subset 0's sums).
fn decode_start(t: DecodeTask, tid: u32, acc: ptr<function, array<vec4<f32>, 8>>) {
  for (var e = tid; e < t.gn * HEAD_DIM / 4u; e += 64u) {
    let b = t.r * row_stride() + t.h0 * HEAD_DIM + 4u * e;
    qg_s[e] = vec4<f32>(qkv[b], qkv[b + 1u], qkv[b + 2u], qkv[b + 3u]) * SCALE;
  }
  for (var g = 0u; g < MAX_G; g++) { (*acc)[g] = vec4<f32>(0.0); }
  if (tid < MAX_G) {
    stat_g[tid] = NEG;
    stat_g[MAX_G + tid] = 0.0;
    if (!t.first && tid < t.gn) {
      stat_g[tid] = partials[t.p0 + tid * t.p_stride];
      stat_g[MAX_G + tid] = partials[t.p0 + tid * t.p_stride + 1u];
    }
  }
  let col = tid % (HEAD_DIM / 4u);
  if (!t.first && tid / (HEAD_DIM / 4u) == 0u) {
    for (var g = 0u; g < t.gn; g++) {
      let b = t.p0 + g * t.p_stride + 2u + col * 4u;
      (*acc)[g] = vec4<f32>(partials[b], partials[b + 1u], partials[b + 2u], partials[b + 3u]);
    }
  }
  if (COMPENSATED) {
    // Split 0 starts from the compensation token (subset 0's sums hold its value).
    workgroupBarrier(); // the queries are in
    let c = comp_count(t.row.pos);
    let ch = t.kvh - Q_HEAD_BASE / GROUP;
    if (t.first && t.v_begin == 0u && c > 0u) {
      if (tid < t.gn) {
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d += 4u) {
          s += dot(qg_s[(tid * HEAD_DIM + d) / 4u], comp_k4(t.r, ch, d));
        }
        stat_g[tid] = s + log(f32(c));
        stat_g[MAX_G + tid] = 1.0;
      }
      if (tid / (HEAD_DIM / 4u) == 0u) {
        let v = vec4<f32>(comp_v(t.r, ch, col * 4u), comp_v(t.r, ch, col * 4u + 1u),
                          comp_v(t.r, ch, col * 4u + 2u), comp_v(t.r, ch, col * 4u + 3u));
        for (var g = 0u; g < t.gn; g++) { (*acc)[g] = v; }
      }
    }
  }
}

// One block of n <= SPLIT_KEYS visible keys from b0: scores, then the online-softmax update of
// the running max and sum (stat_g) and of this thread's output sums (`acc`). Called in uniform
// control flow (it has barriers). Loops over the group's heads run MAX_G times with a `g < gn`
// guard (gn is uniform): a constant trip count keeps the per-head arrays in registers.
fn decode_block(t: DecodeTask, b0: u32, n: u32, tid: u32, acc: ptr<function, array<vec4<f32>, 8>>) {
  let i = t.row.pos;
  let gn = t.gn;
  workgroupBarrier(); // the queries are in; the previous block's kidx and pg_s are read

  // Scores of every query head against each key of the block.
  var m: array<f32, 8>;
  for (var g = 0u; g < MAX_G; g++) { m[g] = NEG; }
  for (var v = tid; v < n; v += 64u) {
    let idx = key_index(t.row, t.r, nth_key(i, b0 + v), t.kvh);
    kidx[v] = idx;
    var s: array<f32, 8>;
    for (var g = 0u; g < MAX_G; g++) { s[g] = NEG; }
    if (!skipped(idx)) {
      for (var g = 0u; g < MAX_G; g++) { s[g] = 0.0; }
      for (var d = 0u; d < HEAD_DIM; d += 4u) {
        let k4 = load4(idx, t.kvh, d, 0u);
        // A loop of constant trip count (gn is uniform), so the scores stay in registers.
        for (var g = 0u; g < MAX_G; g++) {
          if (g < gn) { s[g] += dot(qg_s[(g * HEAD_DIM + d) / 4u], k4); }
        }
      }
    }
    for (var g = 0u; g < MAX_G; g++) {
      if (g < gn) {
        pg_s[g * SPLIT_KEYS + v] = s[g];
        m[g] = max(m[g], s[g]);
      }
    }
  }
  for (var g = 0u; g < MAX_G; g++) { red_g[g * 64u + tid] = m[g]; }
  workgroupBarrier();
  if (tid < gn) {
    var mx = stat_g[tid];
    for (var u = 0u; u < 64u; u++) { mx = max(mx, red_g[tid * 64u + u]); }
    alpha_g[tid] = exp(stat_g[tid] - mx);
    stat_g[tid] = mx;
  }
  workgroupBarrier();
  var l: array<f32, 8>;
  for (var g = 0u; g < MAX_G; g++) { l[g] = 0.0; }
  for (var v = tid; v < n; v += 64u) {
    for (var g = 0u; g < MAX_G; g++) {
      if (g < gn) {
        let s = pg_s[g * SPLIT_KEYS + v];
        var p = 0.0;
        if (s > NEG) { p = exp(s - stat_g[g]); }
        pg_s[g * SPLIT_KEYS + v] = p;
        l[g] += p;
      }
    }
  }
  for (var g = 0u; g < MAX_G; g++) { red_g[g * 64u + tid] = l[g]; }
  workgroupBarrier();
  if (tid < gn) {
    var sum = 0.0;
    for (var u = 0u; u < 64u; u++) { sum += red_g[tid * 64u + u]; }
    stat_g[MAX_G + tid] = stat_g[MAX_G + tid] * alpha_g[tid] + sum;
  }
  let cols = HEAD_DIM / 4u;
  let subsets = value_subsets();
  let col = tid % cols;
  let sub = tid / cols;
  if (sub < subsets) {
    for (var g = 0u; g < MAX_G; g++) { if (g < gn) { (*acc)[g] *= alpha_g[g]; } }
    for (var v = sub; v < n; v += subsets) {
      if (skipped(kidx[v])) { continue; }
      let v4 = load4(kidx[v], t.kvh, col * 4u, 1u);
      for (var g = 0u; g < MAX_G; g++) {
        if (g < gn) { (*acc)[g] += pg_s[g * SPLIT_KEYS + v] * v4; }
      }
    }
  }
}

// The subsets' sums added up; the slot's last shard with one split (short contexts) normalises
// and writes the output (`merge` is not run), otherwise the state goes to the split's partials.
fn decode_finish(t: DecodeTask, tid: u32, acc: ptr<function, array<vec4<f32>, 8>>) {
  let cols = HEAD_DIM / 4u;
  let subsets = value_subsets();
  let col = tid % cols;
  let sub = tid / cols;
  if (sub < subsets) {
    for (var g = 0u; g < t.gn; g++) {
      let b = (sub * MAX_G + g) * HEAD_DIM + col * 4u;
      acc_s[b] = (*acc)[g].x;
      acc_s[b + 1u] = (*acc)[g].y;
      acc_s[b + 2u] = (*acc)[g].z;
      acc_s[b + 3u] = (*acc)[g].w;
    }
  }
  workgroupBarrier();
  let single = t.last && fwd.n_splits == 1u;
  for (var e = tid; e < t.gn * HEAD_DIM; e += 64u) {
    let g = e / HEAD_DIM;
    let d = e % HEAD_DIM;
    var a = 0.0;
    for (var s2 = 0u; s2 < subsets; s2++) { a += acc_s[(s2 * MAX_G + g) * HEAD_DIM + d]; }
    if (single) {
      out[t.r * N_HEADS * HEAD_DIM + (t.h0 + g) * HEAD_DIM + d] = a / stat_g[MAX_G + g];
    } else {
      partials[t.p0 + g * t.p_stride + 2u + d] = a;
    }
  }
  if (tid < t.gn && !single) {
    partials[t.p0 + tid * t.p_stride] = stat_g[tid];
    partials[t.p0 + tid * t.p_stride + 1u] = stat_g[MAX_G + tid];
  }
}

// Splits of one block (fwd.keys_per_split == SPLIT_KEYS, contexts up to SPLIT_KEYS * the split
// cap): straight-line, no barrier inside a branch or loop (llvmpipe runs the same work ~1.4x
// slower with its barriers inside a loop, as in decode_long).
@compute @workgroup_size(64)
fn decode(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let t = decode_task(wg);
  if (!shard_serves(t.row.slot)) { return; }
  let n = min(SPLIT_KEYS, t.v_end - t.v_begin);
  if (!decode_keys_in_shard(t, t.v_begin, t.v_begin + n)) {
    // Nothing of this shard's: the state passes on unchanged, and the first shard starts it
    // empty (l = 0: merge leaves such a split out).
    if (t.first && tid < t.gn) {
      partials[t.p0 + tid * t.p_stride] = NEG;
      partials[t.p0 + tid * t.p_stride + 1u] = 0.0;
      for (var d = 0u; d < HEAD_DIM; d++) { partials[t.p0 + tid * t.p_stride + 2u + d] = 0.0; }
    }
    return;
  }
  var acc: array<vec4<f32>, 8>;
  decode_start(t, tid, &acc);
  decode_block(t, t.v_begin, n, tid, &acc);
  decode_finish(t, tid, &acc);
}

// Splits of several blocks (fwd.keys_per_split a larger multiple of SPLIT_KEYS: the split cap
// reached), visited in turn; blocks this shard holds none of are skipped.
@compute @workgroup_size(64)
fn decode_long(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let t = decode_task(wg);
  if (!shard_serves(t.row.slot)) { return; }
  var acc: array<vec4<f32>, 8>;
  decode_start(t, tid, &acc);
  let blocks = (t.v_end - t.v_begin + SPLIT_KEYS - 1u) / SPLIT_KEYS;
  for (var blk = 0u; blk < blocks; blk++) {
    let b0 = t.v_begin + blk * SPLIT_KEYS;
    let n = min(SPLIT_KEYS, t.v_end - b0);
    if (decode_keys_in_shard(t, b0, b0 + n)) { decode_block(t, b0, n, tid, &acc); }
  }
  decode_finish(t, tid, &acc);
}

@compute @workgroup_size(64)
fn merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r = wg.x;
  let h = Q_HEAD_BASE + wg.y;
  let ns = fwd.n_splits;
  let base = (r * N_HEADS + h) * ns;
  var mx = NEG;
  for (var s = 0u; s < ns; s++) {
    let p = (base + s) * (HEAD_DIM + 2u);
    if (partials[p + 1u] > 0.0) { mx = max(mx, partials[p]); }
  }
  var l = 0.0;
  for (var s = 0u; s < ns; s++) {
    let p = (base + s) * (HEAD_DIM + 2u);
    if (partials[p + 1u] > 0.0) { l += partials[p + 1u] * exp(partials[p] - mx); }
  }
  for (var d = tid; d < HEAD_DIM; d += 64u) {
    var a = 0.0;
    for (var s = 0u; s < ns; s++) {
      let p = (base + s) * (HEAD_DIM + 2u);
      if (partials[p + 1u] > 0.0) { a += partials[p + 2u + d] * exp(partials[p] - mx); }
    }
    out[r * N_HEADS * HEAD_DIM + h * HEAD_DIM + d] = a / l;
  }
}
