// RazorAttention's compensation token of a "compensated" ring part (cache/kinds.ts
// CompensatedRing). Per sequence slot and cache head the part keeps the sums of the keys and of
// the values that have left the attention window, positions [SINK, i + 1 - RECENT) for a query at
// position i (ring include: `dropped(i)` of them), each sum in f32 with a Neumaier correction
// term, so that the mean of a million keys is still right to f32 rounding rather than drifting
// with the count. Keys are summed as attention sees them: after RoPE at their own positions,
// read from the cache as stored (or from this forward's fresh rows, in f32).
//
// `fold` runs before the layer's attention: one workgroup per sequence of the forward and cache
// head walks the sequence's rows in order, adding each key as the window drops it, writes the
// mean key and value that row's query sees into `comp_rows` (comp_mean.wgsl reads them), and
// leaves in `comp_state` the sums the next forward's first query needs (it folds position
// next - RECENT too). A key is dropped RECENT positions after it was written, so it is always
// still in the ring or among the fresh rows: the KV store runs after the attention. A sequence
// whose first query has dropped nothing starts from zero, so a reused slot needs no clearing.
// One dispatch per shard of the part: each serves the slots whose rings that shard holds.

override HEAD_DIM: u32;     // <= 256, a multiple of 4
override N_HEADS: u32;      // query heads of the model (offset of the keys in a fused row)
override N_KV_HEADS: u32;   // KV heads of the model
override KV_HEAD_BASE: u32; // first KV head held by this part
override CACHE_HEADS: u32;  // KV heads held by this part

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> rows: array<Row>;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<KV>;
@group(0) @binding(4) var<storage, read> v_cache: array<KV>;
@group(0) @binding(9) var<uniform> shard: CacheShard;
// [rows][CACHE_HEADS][2][HEAD_DIM]: the mean key, then the mean value, each row's query sees
// (zeros where it has dropped nothing).
@group(0) @binding(10) var<storage, read_write> comp_rows: array<f32>;
// [slots][CACHE_HEADS][4][HEAD_DIM]: key sum, its correction, value sum, its correction.
@group(0) @binding(11) var<storage, read_write> comp_state: array<f32>;

// s + x, the low-order part the addition loses kept in c (Neumaier's compensated summation).
fn add_exact(s: ptr<function, vec4<f32>>, c: ptr<function, vec4<f32>>, x: vec4<f32>) {
  let t = *s + x;
  *c += select((x - t) + *s, (*s - t) + x, abs(*s) >= abs(x));
  *s = t;
}

// Dims d .. d+3 of the key (which = 0) or value (which = 1) at position j of the sequence whose
// first row in this forward is `first` (at position pos0).
fn kv4(first: Row, j: u32, ch: u32, d: u32, which: u32) -> vec4<f32> {
  if (j >= first.pos) {
    let stride = (N_HEADS + 2u * N_KV_HEADS) * HEAD_DIM;
    let b = (first.first_row + j - first.pos) * stride +
      (N_HEADS + which * N_KV_HEADS + KV_HEAD_BASE + ch) * HEAD_DIM + d;
    return vec4<f32>(qkv[b], qkv[b + 1u], qkv[b + 2u], qkv[b + 3u]);
  }
  let idx = cache_entry(first.slot, j, ch);
  if (which == 0u) { return kv_k4(idx, d); }
  return kv_v4(idx, d);
}

@compute @workgroup_size(64)
fn fold(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r0 = wg.x;
  let ch = wg.y;
  if (r0 >= fwd.n_rows) { return; }
  let first = rows[r0];
  // One workgroup per sequence: its first row's.
  if (first.first_row != r0 || cache_shard(first.slot, 0u) != shard.index) { return; }
  let d = tid * 4u;
  if (d >= HEAD_DIM) { return; }
  let pos0 = first.pos;
  let st = (first.slot * CACHE_HEADS + ch) * 4u * HEAD_DIM + d;
  var ks = vec4<f32>(0.0);
  var kc = vec4<f32>(0.0);
  var vs = vec4<f32>(0.0);
  var vc = vec4<f32>(0.0);
  if (dropped(pos0) > 0u) {
    ks = vec4<f32>(comp_state[st], comp_state[st + 1u], comp_state[st + 2u], comp_state[st + 3u]);
    let c1 = st + HEAD_DIM;
    kc = vec4<f32>(comp_state[c1], comp_state[c1 + 1u], comp_state[c1 + 2u], comp_state[c1 + 3u]);
    let v0 = st + 2u * HEAD_DIM;
    vs = vec4<f32>(comp_state[v0], comp_state[v0 + 1u], comp_state[v0 + 2u], comp_state[v0 + 3u]);
    let v1 = st + 3u * HEAD_DIM;
    vc = vec4<f32>(comp_state[v1], comp_state[v1 + 1u], comp_state[v1 + 2u], comp_state[v1 + 3u]);
  }
  for (var n = 0u; n < first.n_seq_rows; n++) {
    let i = pos0 + n;
    let c = dropped(i);
    // The first row's dropped keys are in the state; each later row drops one more.
    if (n > 0u && c > 0u) {
      add_exact(&ks, &kc, kv4(first, i - RECENT, ch, d, 0u));
      add_exact(&vs, &vc, kv4(first, i - RECENT, ch, d, 1u));
    }
    var mk = vec4<f32>(0.0);
    var mv = vec4<f32>(0.0);
    if (c > 0u) {
      mk = (ks + kc) / f32(c);
      mv = (vs + vc) / f32(c);
    }
    let o = ((r0 + n) * CACHE_HEADS + ch) * 2u * HEAD_DIM + d;
    comp_rows[o] = mk.x;
    comp_rows[o + 1u] = mk.y;
    comp_rows[o + 2u] = mk.z;
    comp_rows[o + 3u] = mk.w;
    comp_rows[o + HEAD_DIM] = mv.x;
    comp_rows[o + HEAD_DIM + 1u] = mv.y;
    comp_rows[o + HEAD_DIM + 2u] = mv.z;
    comp_rows[o + HEAD_DIM + 3u] = mv.w;
  }
  // The state the next forward's first query (position `next`) starts from.
  let next = pos0 + first.n_seq_rows;
  if (dropped(next) > 0u) {
    add_exact(&ks, &kc, kv4(first, next - RECENT, ch, d, 0u));
    add_exact(&vs, &vc, kv4(first, next - RECENT, ch, d, 1u));
  }
  let words = array<vec4<f32>, 4>(ks, kc, vs, vc);
  for (var w = 0u; w < 4u; w++) {
    let b = st + w * HEAD_DIM;
    comp_state[b] = words[w].x;
    comp_state[b + 1u] = words[w].y;
    comp_state[b + 2u] = words[w].z;
    comp_state[b + 3u] = words[w].w;
  }
}
