// Writes the fresh keys and values of a forward's rows into one KV-cache part, after the
// layer's attention has read them (so a streaming ring may be overwritten safely). Addresses come
// from the layout include (cache_paged.wgsl or cache_ring.wgsl), the stored form from the KV
// codec (kv_float.wgsl, kv_int8.wgsl, kv_int4.wgsl): quantized as it is written, so no
// full-precision copy of the cache ever exists. A row is stored only when the layout still keeps
// its position once the sequence's last row in this forward is written (`keeps`): pages keep
// every position; a ring keeps positions < SINK and the last RECENT + SLACK (earlier rows of a
// long chunk would be overwritten by later ones in the same ring slot, so they are skipped). A part
// split into shards is stored by one dispatch per shard, each writing the rows whose position
// its shard holds.

override HEAD_DIM: u32;     // <= 128
override N_HEADS: u32;      // query heads of the model (offset of the keys in a fused row)
override N_KV_HEADS: u32;   // KV heads of the model
override KV_HEAD_BASE: u32; // first KV head held by this cache
override CACHE_HEADS: u32;  // KV heads held by this cache

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> rows: array<Row>;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<KV>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<KV>;
// @binding(5): the layout's (cache_paged.wgsl: the page table).
@group(0) @binding(9) var<uniform> shard: CacheShard;  // the shard k_cache and v_cache are

var<workgroup> range_s: array<vec4<f32>, 64>; // per thread: (min k, max k, min v, max v)

// (min, max) of the key and of the value of one head, over its HEAD_DIM dims: a tree reduction
// over the workgroup (uniform control flow: every thread calls it).
fn head_ranges(k_src: u32, v_src: u32, tid: u32) -> vec4<f32> {
  var r = vec4<f32>(3.0e38, -3.0e38, 3.0e38, -3.0e38);
  for (var e = tid; e < HEAD_DIM; e += 64u) {
    let k = qkv[k_src + e];
    let v = qkv[v_src + e];
    r = vec4<f32>(min(r.x, k), max(r.y, k), min(r.z, v), max(r.w, v));
  }
  range_s[tid] = r;
  for (var n = 32u; n > 0u; n /= 2u) {
    workgroupBarrier();
    if (tid < n) {
      let o = range_s[tid + n];
      let a = range_s[tid];
      range_s[tid] = vec4<f32>(min(a.x, o.x), max(a.y, o.y), min(a.z, o.z), max(a.w, o.w));
    }
  }
  workgroupBarrier();
  return range_s[0];
}

// One workgroup per (token row, cache head).
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r = wg.x;
  let ch = wg.y;
  if (r >= fwd.n_rows) { return; }
  let row = rows[r];
  let j = row.pos;
  let last = row.pos + (row.first_row + row.n_seq_rows - 1u - r);
  if (!keeps(last, j)) { return; }
  if (cache_shard(row.slot, j) != shard.index) { return; }
  let dst = cache_entry(row.slot, j, ch);
  let stride = (N_HEADS + 2u * N_KV_HEADS) * HEAD_DIM;
  let k_src = r * stride + (N_HEADS + KV_HEAD_BASE + ch) * HEAD_DIM;
  let v_src = k_src + N_KV_HEADS * HEAD_DIM;
  // The workgroup's exits above depend only on its row, so the reduction stays uniform.
  var range = vec4<f32>(0.0);
  if (KV_SCALED) { range = head_ranges(k_src, v_src, tid); }
  for (var u = tid; u < kv_units(); u += 64u) {
    k_cache[dst + u] = kv_pack(k_src, u, range.xy);
    v_cache[dst + u] = kv_pack(v_src, u, range.zw);
  }
  if (KV_SCALED && tid == 0u) {
    k_cache[dst + kv_units()] = kv_scale(range.xy);
    v_cache[dst + kv_units()] = kv_scale(range.zw);
  }
}
