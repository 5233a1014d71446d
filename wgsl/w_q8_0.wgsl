// Weight codec "q8_0" of wgsl/matmul.wgsl (GGUF's Q8_0, blocks of 32 weights: x = d * q, q a
// signed byte, d an f16 per block), repacked row by row so every load is aligned: a row is K / 4
// words of signed bytes (weight k in byte k % 4 of word k / 4), then ceil(K / 64) words of f16
// scales (block b in half b % 2 of word b / 2). 8.5 bits per weight. K is a multiple of 32
// (KP = K). Names as w_float.wgsl documents them.

@group(0) @binding(2) var<storage, read> w: array<u32>;

fn w_row(n: u32) -> u32 { return n * (K / 4u + (K + 63u) / 64u); }

fn w4(base: u32, k4: u32) -> vec4<f32> {
  let q = bitcast<i32>(w[base + k4]);
  let b = k4 / 8u; // 8 vec4s per block of 32
  let d = unpack2x16float(w[base + K / 4u + b / 2u])[b % 2u];
  return d * vec4<f32>(vec4<i32>((q << 24u) >> 24u, (q << 16u) >> 24u, (q << 8u) >> 24u, q >> 24u));
}
