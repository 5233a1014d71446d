// KV codec "int4" (--kv-dtype int4): asymmetric, one (scale, zero) per token per KV head (a
// group of HEAD_DIM values, as DuoAttention's int4_kv groups 128 = Llama's head_dim). An entry
// is HEAD_DIM / 8 words of eight nibbles (word w: dims 8w .. 8w+7, dim 8w + i at bits 4i), then
// one word of f16 (scale, zero) (pack2x16float: scale in the low half). zero is the head's min
// rounded to f16, scale = (max - zero) / 15 rounded to f16, q = clamp(round((x - zero) / scale),
// 0, 15), and a value reads back as zero + q * scale: within scale / 2 of x, plus the f16
// rounding of zero where it lands above the min (<= 2^-11 |min|). Ranges are clamped to f16's
// finite range (+-65504) first. Names as kv_float.wgsl documents them.

const KV_SCALED = true;
const F16_MAX = 65504.0;

fn kv_entry_units() -> u32 { return HEAD_DIM / 8u + 1u; }
fn kv_units() -> u32 { return HEAD_DIM / 8u; }

fn kv_f16(x: f32) -> f32 { return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x; }

// (scale, zero) as stored.
fn kv_params(range: vec2<f32>) -> vec2<f32> {
  let lo = clamp(range.x, -F16_MAX, F16_MAX);
  let hi = clamp(range.y, -F16_MAX, F16_MAX);
  let zero = kv_f16(lo);
  return vec2<f32>(kv_f16(max(hi - zero, 0.0) / 15.0), zero);
}

fn kv_pack(src: u32, u: u32, range: vec2<f32>) -> KV {
  let p = kv_params(range);
  var inv = 0.0; // a constant head stores zeros (every value reads back as zero)
  if (p.x > 0.0) { inv = 1.0 / p.x; }
  var w = 0u;
  for (var i = 0u; i < 8u; i++) {
    let q = u32(clamp(round((qkv[src + 8u * u + i] - p.y) * inv), 0.0, 15.0));
    w |= q << (4u * i);
  }
  return w;
}

fn kv_scale(range: vec2<f32>) -> KV { return pack2x16float(kv_params(range)); }

// Dims d .. d+3 of an entry whose word holds them (d % 8 is 0 or 4).
fn kv_dequant4(w: u32, p: vec2<f32>, d: u32) -> vec4<f32> {
  let s = (d % 8u) * 4u;
  let q = vec4<u32>(w >> s, w >> (s + 4u), w >> (s + 8u), w >> (s + 12u)) & vec4<u32>(15u);
  return p.y + vec4<f32>(q) * p.x;
}

fn kv_k4(idx: u32, d: u32) -> vec4<f32> {
  return kv_dequant4(k_cache[idx + d / 8u], unpack2x16float(k_cache[idx + HEAD_DIM / 8u]), d);
}

fn kv_v4(idx: u32, d: u32) -> vec4<f32> {
  return kv_dequant4(v_cache[idx + d / 8u], unpack2x16float(v_cache[idx + HEAD_DIM / 8u]), d);
}
