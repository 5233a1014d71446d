// Causal attention with GQA over one KV-cache shape, for the query heads
// [Q_HEAD_BASE, Q_HEAD_BASE + N_Q_HEADS) of every row.
//
// Keys of a row's own forward (positions >= the sequence's first position in this forward) are
// read from the fresh fused q|k|v rows; older keys come from the cache:
//  - STREAMING = false: a paged cache; position j lives in page page_table[slot][j / PAGE_SIZE].
//  - STREAMING = true: the sink + recent ring of the row's slot; key j is visible from query i
//    when j <= i and (j < SINK or i - j < RECENT). Key tiles entirely outside the sink and the
//    window are never visited, so cost grows as n * (SINK + RECENT), not n^2.
// Keys are stored after RoPE at their original positions and are never re-rotated.
//
// Entry points: `prefill` (tiles of 16 query rows of one sequence, online softmax over 16-key
// tiles), `decode` (one query row per workgroup, split-K over keys, partials) and `merge`
// (combines the split-K partials; with a single split `decode` writes the output itself).

override HEAD_DIM: u32;       // dims per head, <= 128
override GROUP: u32;          // query heads per KV head
override Q_HEAD_BASE: u32;    // first query head of this dispatch
override N_HEADS: u32;        // query heads of the model (output row = N_HEADS * HEAD_DIM)
override N_KV_HEADS: u32;     // KV heads of the model (fused row = (N_HEADS + 2 N_KV_HEADS) dims)
override CACHE_HEADS: u32;    // KV heads held by this cache buffer (KV heads from Q_HEAD_BASE/GROUP)
override STREAMING: bool;     // sink + recent ring instead of pages
override SINK: u32 = 0u;      // attention-sink tokens kept by the ring
override RECENT: u32 = 1u;    // most recent tokens kept by the ring (the current one included)
override PAGE_SIZE: u32 = 16u; // tokens per page
override MAX_PAGES: u32 = 1u; // page-table entries per slot (row stride of page_table)
override SCALE: f32;          // softmax scale, 1/sqrt(HEAD_DIM)

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> rows: array<Row>;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<KV>;
@group(0) @binding(4) var<storage, read> v_cache: array<KV>;
@group(0) @binding(5) var<storage, read> page_table: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;       // prefill/merge output
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;  // decode split-K partials

const NEG = -3.0e38;

fn row_stride() -> u32 { return (N_HEADS + 2u * N_KV_HEADS) * HEAD_DIM; }

// Index of key position j's entry (dim 0) in the cache buffers, for cache head ch.
fn cache_index(slot: u32, j: u32, ch: u32) -> u32 {
  if (STREAMING) {
    var s = j;
    if (j >= SINK) { s = SINK + (j - SINK) % RECENT; }
    return ((slot * (SINK + RECENT) + s) * CACHE_HEADS + ch) * HEAD_DIM;
  }
  let page = page_table[slot * MAX_PAGES + j / PAGE_SIZE];
  return ((page * PAGE_SIZE + j % PAGE_SIZE) * CACHE_HEADS + ch) * HEAD_DIM;
}

// Key (which = 0) or value (which = 1) of position j for `row`, dim d, KV head kvh.
fn load_kv(row: Row, r: u32, j: u32, kvh: u32, d: u32, which: u32) -> f32 {
  let pos0 = row.pos - (r - row.first_row);
  if (j >= pos0) {
    let fr = row.first_row + (j - pos0);
    return qkv[fr * row_stride() + (N_HEADS + which * N_KV_HEADS + kvh) * HEAD_DIM + d];
  }
  let i = cache_index(row.slot, j, kvh - Q_HEAD_BASE / GROUP) + d;
  if (which == 0u) { return f32(k_cache[i]); }
  return f32(v_cache[i]);
}

fn visible(i: u32, j: u32) -> bool {
  if (j > i) { return false; }
  if (!STREAMING) { return true; }
  return j < SINK || i - j < RECENT;
}

// ---- prefill: 16 query rows x 16-key tiles, 64 threads ----
const BQ = 16u;
const BK = 16u;
var<workgroup> q_s: array<f32, 2048>; // [BQ][HEAD_DIM]
var<workgroup> k_s: array<f32, 2048>; // [BK][HEAD_DIM]
var<workgroup> v_s: array<f32, 2048>; // [BK][HEAD_DIM]
var<workgroup> p_s: array<f32, 256>;  // [BQ][BK] scores, then probabilities
var<workgroup> m_s: array<f32, 16>;   // running max per query row
var<workgroup> l_s: array<f32, 16>;   // running denominator per query row
var<workgroup> a_s: array<f32, 16>;   // rescale factor of this tile per query row

@compute @workgroup_size(64)
fn prefill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let n_rows = fwd.n_rows;
  let r0 = wg.x * BQ;
  if (r0 >= n_rows) { return; }
  let h = Q_HEAD_BASE + wg.y;
  let kvh = h / GROUP;
  let rq = min(BQ, n_rows - r0);
  let row0 = rows[r0];
  let qa = row0.pos;
  let qb = qa + rq - 1u;

  for (var e = tid; e < BQ * HEAD_DIM; e += 64u) {
    let i = e / HEAD_DIM;
    var v = 0.0;
    if (i < rq) { v = qkv[(r0 + i) * row_stride() + h * HEAD_DIM + e % HEAD_DIM] * SCALE; }
    q_s[e] = v;
  }
  if (tid < BQ) { m_s[tid] = NEG; l_s[tid] = 0.0; }
  var acc: array<f32, 32>;
  for (var m = 0u; m < 32u; m++) { acc[m] = 0.0; }
  let my_row = tid / 4u;
  let lane = tid % 4u;

  // Key ranges: [0, end_a) then [start_b, qb + 1). Without the streaming mask all of [0, qb].
  var end_a = 0u;
  var start_b = 0u;
  if (STREAMING) {
    end_a = min(SINK, qb + 1u);
    var w0 = 0u;
    if (qa + 1u > RECENT) { w0 = qa + 1u - RECENT; }
    start_b = max(end_a, w0);
  }
  let tiles_a = (end_a + BK - 1u) / BK;
  let tiles = tiles_a + (qb + 1u - start_b + BK - 1u) / BK;
  for (var it = 0u; it < tiles; it++) {
    var k0 = start_b + (it - tiles_a) * BK;
    var kend = qb + 1u;
    if (it < tiles_a) { k0 = it * BK; kend = end_a; }
    workgroupBarrier();
    for (var e = tid; e < BK * HEAD_DIM; e += 64u) {
      let j = k0 + e / HEAD_DIM;
      var kv = 0.0;
      var vv = 0.0;
      if (j < kend) {
        kv = load_kv(row0, r0, j, kvh, e % HEAD_DIM, 0u);
        vv = load_kv(row0, r0, j, kvh, e % HEAD_DIM, 1u);
      }
      k_s[e] = kv;
      v_s[e] = vv;
    }
    workgroupBarrier();
    // Scores: thread (row, lane) computes keys lane*4 .. lane*4+3.
    for (var c = 0u; c < 4u; c++) {
      let jj = lane * 4u + c;
      let j = k0 + jj;
      var s = NEG;
      if (my_row < rq && j < kend && visible(qa + my_row, j)) {
        s = 0.0;
        for (var d = 0u; d < HEAD_DIM; d++) { s += q_s[my_row * HEAD_DIM + d] * k_s[jj * HEAD_DIM + d]; }
      }
      p_s[my_row * BK + jj] = s;
    }
    workgroupBarrier();
    if (lane == 0u) {
      let m_old = m_s[my_row];
      var mx = m_old;
      for (var jj = 0u; jj < BK; jj++) { mx = max(mx, p_s[my_row * BK + jj]); }
      var sum = 0.0;
      for (var jj = 0u; jj < BK; jj++) {
        let s = p_s[my_row * BK + jj];
        var p = 0.0;
        if (s > NEG) { p = exp(s - mx); }
        p_s[my_row * BK + jj] = p;
        sum += p;
      }
      let alpha = exp(m_old - mx);
      a_s[my_row] = alpha;
      m_s[my_row] = mx;
      l_s[my_row] = l_s[my_row] * alpha + sum;
    }
    workgroupBarrier();
    let alpha = a_s[my_row];
    for (var m = 0u; m * 4u + lane < HEAD_DIM; m++) {
      let d = m * 4u + lane;
      var a = acc[m] * alpha;
      for (var jj = 0u; jj < BK; jj++) { a += p_s[my_row * BK + jj] * v_s[jj * HEAD_DIM + d]; }
      acc[m] = a;
    }
  }
  workgroupBarrier();
  if (my_row < rq) {
    let inv = 1.0 / l_s[my_row];
    let base = (r0 + my_row) * N_HEADS * HEAD_DIM + h * HEAD_DIM;
    for (var m = 0u; m * 4u + lane < HEAD_DIM; m++) { out[base + m * 4u + lane] = acc[m] * inv; }
  }
}

// ---- decode: split-K over the visible keys of one row ----
const SPLIT_KEYS = 256u;
var<workgroup> sc: array<f32, 256>;
var<workgroup> red: array<f32, 64>;

// The v-th visible key position of a query at position i (sink first, then the window).
fn nth_key(i: u32, v: u32) -> u32 {
  if (!STREAMING) { return v; }
  let na = min(SINK, i + 1u);
  if (v < na) { return v; }
  var w0 = 0u;
  if (i + 1u > RECENT) { w0 = i + 1u - RECENT; }
  return max(na, w0) + (v - na);
}

fn visible_count(i: u32) -> u32 {
  if (!STREAMING) { return i + 1u; }
  let na = min(SINK, i + 1u);
  var w0 = 0u;
  if (i + 1u > RECENT) { w0 = i + 1u - RECENT; }
  return na + (i + 1u - max(na, w0));
}

fn reduce(v: f32, tid: u32, is_max: bool) -> f32 {
  red[tid] = v;
  workgroupBarrier();
  for (var k = 32u; k > 0u; k >>= 1u) {
    if (tid < k) {
      if (is_max) { red[tid] = max(red[tid], red[tid + k]); } else { red[tid] += red[tid + k]; }
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(64)
fn decode(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r = wg.x;
  let hl = wg.y;
  let split = wg.z;
  let h = Q_HEAD_BASE + hl;
  let kvh = h / GROUP;
  let row = rows[r];
  let i = row.pos;
  for (var d = tid; d < HEAD_DIM; d += 64u) {
    q_s[d] = qkv[r * row_stride() + h * HEAD_DIM + d] * SCALE;
  }
  workgroupBarrier();
  let total = visible_count(i);
  let v0 = split * SPLIT_KEYS;
  let n = min(SPLIT_KEYS, select(0u, total - v0, total > v0));
  var mx = NEG;
  for (var v = tid; v < n; v += 64u) {
    let j = nth_key(i, v0 + v);
    var s = 0.0;
    for (var d = 0u; d < HEAD_DIM; d++) { s += q_s[d] * load_kv(row, r, j, kvh, d, 0u); }
    sc[v] = s;
    mx = max(mx, s);
  }
  mx = reduce(mx, tid, true);
  var sum = 0.0;
  for (var v = tid; v < n; v += 64u) {
    let p = exp(sc[v] - mx);
    sc[v] = p;
    sum += p;
  }
  sum = reduce(sum, tid, false);
  let nq = N_HEADS; // partial stride uses the model's head count so every dispatch fits
  let pidx = (r * nq + h) * fwd.n_splits + split;
  // One split (short contexts): normalise and write the output here; `merge` is not run.
  let single = fwd.n_splits == 1u;
  for (var d = tid; d < HEAD_DIM; d += 64u) {
    var a = 0.0;
    for (var v = 0u; v < n; v++) { a += sc[v] * load_kv(row, r, nth_key(i, v0 + v), kvh, d, 1u); }
    if (single) {
      out[r * N_HEADS * HEAD_DIM + h * HEAD_DIM + d] = a / sum;
    } else {
      partials[pidx * (HEAD_DIM + 2u) + 2u + d] = a;
    }
  }
  if (tid == 0u) {
    partials[pidx * (HEAD_DIM + 2u)] = mx;
    partials[pidx * (HEAD_DIM + 2u) + 1u] = sum;
  }
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
