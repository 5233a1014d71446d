// Weight codec "q5_0" of wgsl/matmul.wgsl (GGUF's Q5_0, blocks of 32: x = d * (q - 16), q of 5
// bits, d an f16 per block), repacked row by row so every load is aligned: K / 8 words of the
// blocks' low nibbles in Q4_0's order, then K / 32 words of high bits (bit j of block b's word:
// weight 32 b + j), then ceil(K / 64) words of f16 scales. 5.5 bits per weight. Names as
// w_float.wgsl documents them.

@group(0) @binding(2) var<storage, read> w: array<u32>;

fn w_row(n: u32) -> u32 { return n * (K / 8u + K / 32u + (K + 63u) / 64u); }

fn w4(base: u32, k4: u32) -> vec4<f32> {
  let b = k4 / 8u;
  let j = (k4 % 8u) * 4u;
  let word = w[base + b * 4u + (j % 16u) / 4u];
  let s = select(0u, 4u, j >= 16u);
  let lo = vec4<u32>(word >> s, word >> (s + 8u), word >> (s + 16u), word >> (s + 24u)) & vec4<u32>(15u);
  let qh = w[base + K / 8u + b] >> j;
  let hi = (vec4<u32>(qh, qh >> 1u, qh >> 2u, qh >> 3u) & vec4<u32>(1u)) << vec4<u32>(4u);
  let d = unpack2x16float(w[base + K / 8u + K / 32u + b / 2u])[b % 2u];
  return d * (vec4<f32>(lo | hi) - 16.0);
}
