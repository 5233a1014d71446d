// The 6-bit sub-block scales and mins of GGUF's Q4_K and Q5_K super-blocks (ggml's
// get_scale_min_k4), for their weight codecs (w_q4_k.wgsl, w_q5_k.wgsl), which it is included
// before (gpu/kernels/matmul.ts). 12 bytes pack 8 sub-blocks: sub-blocks 0..3 keep theirs in the
// low 6 bits of bytes j (scale) and j + 4 (min); 4..7 have their low 4 bits in the nibbles of
// byte j + 4 and their top 2 bits in the top bits of bytes j - 4 (scale) and j (min).

// Byte j of the words from `at`.
fn w_byte(at: u32, j: u32) -> u32 { return (w[at + j / 4u] >> (8u * (j % 4u))) & 255u; }

// (scale, min) of sub-block j of the 12 scale bytes at word `at`.
fn k4_scale_min(at: u32, j: u32) -> vec2<f32> {
  if (j < 4u) { return vec2<f32>(f32(w_byte(at, j) & 63u), f32(w_byte(at, j + 4u) & 63u)); }
  let sc = (w_byte(at, j + 4u) & 15u) | ((w_byte(at, j - 4u) >> 6u) << 4u);
  let m = (w_byte(at, j + 4u) >> 4u) | ((w_byte(at, j) >> 6u) << 4u);
  return vec2<f32>(f32(sc), f32(m));
}
