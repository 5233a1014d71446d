// Weight codec "q5_k" of wgsl/matmul.wgsl (GGUF's Q5_K): a row is its super-blocks of 256
// weights exactly as the file stores them, 176 bytes = 44 words each: f16 d and dmin (word 0),
// 12 scale bytes (words 1-3, as Q4_K), 32 bytes of high bits (words 4-11: bit 2c of byte l is
// the 5th bit of weight l of chunk c's low sub-block, bit 2c+1 of its high one), 128 bytes of
// nibbles (words 12-43, as Q4_K). x = d * sc * q - dmin * m. 5.5 bits per weight. K is a
// multiple of 256. Names as w_float.wgsl documents them.

@group(0) @binding(2) var<storage, read> w: array<u32>;

fn w_row(n: u32) -> u32 { return n * (K / 256u) * 44u; }

// w_byte and k4_scale_min: w_kquant_scales.wgsl.

fn w4(base: u32, k4: u32) -> vec4<f32> {
  let blk = base + (k4 / 64u) * 44u;
  let e = (k4 % 64u) * 4u;
  let c = e / 64u;
  let l = e % 64u;
  let high = l >= 32u;
  let word = w[blk + 12u + 8u * c + (l % 32u) / 4u];
  let s = select(0u, 4u, high);
  let lo = vec4<u32>(word >> s, word >> (s + 8u), word >> (s + 16u), word >> (s + 24u)) & vec4<u32>(15u);
  let hw = w[blk + 4u + (l % 32u) / 4u] >> (2u * c + select(0u, 1u, high));
  let hi = (vec4<u32>(hw, hw >> 8u, hw >> 16u, hw >> 24u) & vec4<u32>(1u)) << vec4<u32>(4u);
  let dd = unpack2x16float(w[blk]);
  let sm = k4_scale_min(blk + 1u, 2u * c + select(0u, 1u, high));
  return (dd.x * sm.x) * vec4<f32>(lo | hi) - dd.y * sm.y;
}
