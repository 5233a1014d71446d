// KV codec "float" (--kv-dtype f16 | f32): an entry (one position's key or value for one cache
// head) is HEAD_DIM values of the storage type KV, as they are. Included (gpu/pipelines.ts,
// `kvCodec`) after common.wgsl by the kernels that read or write the cache; kv_int8.wgsl and
// kv_int4.wgsl define the same names. The including kernel declares HEAD_DIM, `qkv` (the fused
// f32 rows) and `k_cache` / `v_cache` (array<KV>).
//
// What a codec defines:
//   KV_SCALED              whether an entry ends in a scale unit made from the head's range, so
//                          the store kernel must first reduce the head's (min, max);
//   kv_entry_units()       units of KV per entry: the stride the layout's `cache_entry` uses;
//   kv_units()             units of the entry's values (the store writes each from kv_pack);
//   kv_pack(src, u, range) value unit u of the head whose dim 0 is qkv[src], range = its
//                          (min, max) (ignored when not KV_SCALED);
//   kv_scale(range)        the entry's last unit (only when KV_SCALED);
//   kv_k4(idx, d), kv_v4(idx, d)  dims d .. d+3 (d a multiple of 4) of the key or value entry
//                          at unit idx, as f32: the dequantization attention's inner loops call.

const KV_SCALED = false;

fn kv_entry_units() -> u32 { return HEAD_DIM; }
fn kv_units() -> u32 { return HEAD_DIM; }

fn kv_pack(src: u32, u: u32, range: vec2<f32>) -> KV { return KV(qkv[src + u]); }
fn kv_scale(range: vec2<f32>) -> KV { return KV(0.0); }

fn kv_k4(idx: u32, d: u32) -> vec4<f32> {
  let b = idx + d;
  return vec4<f32>(f32(k_cache[b]), f32(k_cache[b + 1u]), f32(k_cache[b + 2u]), f32(k_cache[b + 3u]));
}

fn kv_v4(idx: u32, d: u32) -> vec4<f32> {
  let b = idx + d;
  return vec4<f32>(f32(v_cache[b]), f32(v_cache[b + 1u]), f32(v_cache[b + 2u]), f32(v_cache[b + 3u]));
}
