// RazorAttention's compensation token of a "compensated" ring part (cache/kinds.ts
// CompensatedRing). Per sequence slot and cache head the part keeps the sums of the keys and of
// the values that have left the attention window, positions [SINK, i + 1 - RECENT) for a query at
// position i (ring include: `dropped(i)` of them), each sum in f32 with a Neumaier correction
// term, so that the mean of a million keys is still right to f32 rounding rather than drifting
// with the count. Keys are summed as attention sees them: after RoPE at their own positions,
// read from the cache as stored (or from this forward's fresh rows, in f32).
//
// `fold` runs before the layer's attention: one workgroup per sequence of the forward and cache
// head walks the sequence's rows in order, adding each key as the window drops it (from the ring,
// or from the forward's fresh rows), and writes the mean key and value that row's query sees into
// `comp_rows` (comp_mean.wgsl reads them). The slot's state keeps the sums of the dropped keys
// that have also left the ring's SLACK, positions [SINK, e), with e stored after them: a copy of
// the state and ring taken at position b (a prefix-cache snapshot) then serves a resume at any
// position in [b - SLACK, b], since every key from e on is still in that ring. Each forward adds
// keys [e, window start) to a working copy first (at most SLACK + its rows), and moves e on to
// where the ring will start once its rows are stored. The KV store runs after attention, so every
// key the walk reads is still there. A sequence at position 0 starts from zero: a reused slot
// needs no clearing. One dispatch per shard of the part: each serves the slots whose rings that
// shard holds.

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
// [slots][CACHE_HEADS][4 HEAD_DIM + 4]: key sum, its correction, value sum, its correction
// (HEAD_DIM words each, f32 bits), then e (3 words of padding): the sums cover [SINK, e). Words,
// so that no value is ever converted on its way in or out.
@group(0) @binding(11) var<storage, read_write> comp_state: array<u32>;

fn load4(b: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>(vec4<u32>(comp_state[b], comp_state[b + 1u], comp_state[b + 2u],
                                      comp_state[b + 3u]));
}

fn state_base(slot: u32, ch: u32) -> u32 { return (slot * CACHE_HEADS + ch) * (4u * HEAD_DIM + 4u); }

// Where the window of a query at position i starts, at least SINK: keys [SINK, it) are dropped.
fn dropped_end(i: u32) -> u32 { return SINK + dropped(i); }

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
  let st = state_base(first.slot, ch);
  // words[0..3]: key sum, its correction, value sum, its correction (dims d .. d+3).
  var w = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
  var e = SINK;
  if (pos0 > 0u) {
    for (var k = 0u; k < 4u; k++) {
      w[k] = load4(st + k * HEAD_DIM + d);
    }
    e = comp_state[st + 4u * HEAD_DIM];
  }
  // The state this forward leaves: the sums up to where the ring will start once its rows are
  // stored (never back).
  let next = pos0 + first.n_seq_rows;
  var e_kept = e;
  if (next > RECENT + SLACK) { e_kept = max(e, next - RECENT - SLACK); }
  var kept = w;
  var j = e; // the next key to add
  for (var n = 0u; n < first.n_seq_rows; n++) {
    let i = pos0 + n;
    let end = dropped_end(i);
    for (; j < end; j++) {
      if (j == e_kept) { kept = w; }
      var ks = w[0];
      var kc = w[1];
      var vs = w[2];
      var vc = w[3];
      add_exact(&ks, &kc, kv4(first, j, ch, d, 0u));
      add_exact(&vs, &vc, kv4(first, j, ch, d, 1u));
      w = array<vec4<f32>, 4>(ks, kc, vs, vc);
    }
    if (j == e_kept) { kept = w; }
    let c = dropped(i);
    var mk = vec4<f32>(0.0);
    var mv = vec4<f32>(0.0);
    if (c > 0u) {
      mk = (w[0] + w[1]) / f32(c);
      mv = (w[2] + w[3]) / f32(c);
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
  for (var k = 0u; k < 4u; k++) {
    let b = st + k * HEAD_DIM + d;
    let u = bitcast<vec4<u32>>(kept[k]);
    comp_state[b] = u.x;
    comp_state[b + 1u] = u.y;
    comp_state[b + 2u] = u.z;
    comp_state[b + 3u] = u.w;
  }
  if (tid == 0u) { comp_state[st + 4u * HEAD_DIM] = e_kept; }
}
