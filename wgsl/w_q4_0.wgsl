// Weight codec "q4_0" of wgsl/matmul.wgsl (GGUF's Q4_0, blocks of 32 weights: x = d * (q - 8),
// q a nibble, d an f16 per block), repacked row by row so every load is aligned: a row is K / 8
// words holding each block's 16 bytes in GGUF's order (byte j of block b: weight 32 b + j in its
// low nibble, 32 b + j + 16 in its high nibble), then ceil(K / 64) words of f16 scales (block b
// in half b % 2 of word b / 2). 4.5 bits per weight. K is a multiple of 32 (KP = K). Names as
// w_float.wgsl documents them.

@group(0) @binding(2) var<storage, read> w: array<u32>;

fn w_row(n: u32) -> u32 { return n * (K / 8u + (K + 63u) / 64u); }

fn w4(base: u32, k4: u32) -> vec4<f32> {
  let b = k4 / 8u;       // block
  let j = (k4 % 8u) * 4u; // first weight within the block, 0 .. 28
  // Weights j .. j+3 (j < 16) are the low nibbles of bytes j .. j+3, weights 16 .. 31 the high
  // nibbles of bytes j - 16 ..: one word either way.
  let word = w[base + b * 4u + (j % 16u) / 4u];
  let s = select(0u, 4u, j >= 16u);
  let q = vec4<u32>(word >> s, word >> (s + 8u), word >> (s + 16u), word >> (s + 24u)) & vec4<u32>(15u);
  let d = unpack2x16float(w[base + K / 8u + b / 2u])[b % 2u];
  return d * (vec4<f32>(q) - 8.0);
}
