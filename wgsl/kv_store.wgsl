// Writes the fresh keys and values of a forward's rows into one KV-cache part, after the
// layer's attention has read them (so a streaming ring may be overwritten safely). Addresses come
// from the layout include (cache_paged.wgsl or cache_ring.wgsl). A row is stored only when the
// layout still holds its position once the sequence's last row in this forward is written
// (`holds`): pages keep every position; a ring keeps positions < SINK and the last RECENT (earlier
// rows of a long chunk would be overwritten by later ones in the same ring slot, so they are
// skipped). A part split into shards is stored by one dispatch per shard, each writing the rows
// whose position its shard holds.

override HEAD_DIM: u32;
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

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r = wg.x;
  if (r >= fwd.n_rows) { return; }
  let row = rows[r];
  let j = row.pos;
  let last = row.pos + (row.first_row + row.n_seq_rows - 1u - r);
  if (!holds(last, j)) { return; }
  if (cache_shard(row.slot, j) != shard.index) { return; }
  let dst = cache_entry(row.slot, j, 0u);
  let stride = (N_HEADS + 2u * N_KV_HEADS) * HEAD_DIM;
  let k_src = r * stride + (N_HEADS + KV_HEAD_BASE) * HEAD_DIM;
  let v_src = k_src + N_KV_HEADS * HEAD_DIM;
  for (var e = tid; e < CACHE_HEADS * HEAD_DIM; e += 64u) {
    k_cache[dst + e] = KV(qkv[k_src + e]);
    v_cache[dst + e] = KV(qkv[v_src + e]);
  }
}
