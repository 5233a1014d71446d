// KV codec "int8" (--kv-dtype int8): symmetric, one scale per token per KV head. An entry is
// HEAD_DIM / 4 words of four signed bytes (word w: dims 4w .. 4w+3, dim 4w in the low byte,
// each round(127 x / amax) as pack4x8snorm makes it), then amax = max |x| of the head as an f32
// word; a value reads back as amax * q / 127. The error of a value is at most amax / 254 (half a
// step), relative to the head's largest. Names as kv_float.wgsl documents them.

const KV_SCALED = true;

fn kv_entry_units() -> u32 { return HEAD_DIM / 4u + 1u; }
fn kv_units() -> u32 { return HEAD_DIM / 4u; }

fn kv_amax(range: vec2<f32>) -> f32 { return max(-range.x, range.y); }

fn kv_pack(src: u32, u: u32, range: vec2<f32>) -> KV {
  let amax = kv_amax(range);
  var inv = 0.0; // an all-zero head stores zeros (and amax 0)
  if (amax > 0.0) { inv = 1.0 / amax; }
  let b = src + 4u * u;
  return pack4x8snorm(vec4<f32>(qkv[b], qkv[b + 1u], qkv[b + 2u], qkv[b + 3u]) * inv);
}

fn kv_scale(range: vec2<f32>) -> KV { return bitcast<u32>(kv_amax(range)); }

fn kv_k4(idx: u32, d: u32) -> vec4<f32> {
  return unpack4x8snorm(k_cache[idx + d / 4u]) * bitcast<f32>(k_cache[idx + HEAD_DIM / 4u]);
}

fn kv_v4(idx: u32, d: u32) -> vec4<f32> {
  return unpack4x8snorm(v_cache[idx + d / 4u]) * bitcast<f32>(v_cache[idx + HEAD_DIM / 4u]);
}
