// Weight codec "q4_k" of wgsl/matmul.wgsl (GGUF's Q4_K): a row is its super-blocks of 256
// weights exactly as the file stores them, 144 bytes = 36 words each: f16 d and dmin (word 0),
// 12 bytes of 6-bit scales and mins for 8 sub-blocks of 32 (words 1-3, get_scale_min_k4's
// packing), 128 bytes of nibbles (words 4-35: chunk c of 64 weights is bytes 32c .. 32c+31,
// sub-block 2c in the low nibbles, 2c+1 in the high). x = d * sc * q - dmin * m. 4.5 bits per
// weight. K is a multiple of 256. Names as w_float.wgsl documents them.

@group(0) @binding(2) var<storage, read> w: array<u32>;

fn w_row(n: u32) -> u32 { return n * (K / 256u) * 36u; }

// w_byte and k4_scale_min: w_kquant_scales.wgsl.

fn w4(base: u32, k4: u32) -> vec4<f32> {
  let blk = base + (k4 / 64u) * 36u;
  let e = (k4 % 64u) * 4u; // weight within the super-block
  let c = e / 64u;
  let l = e % 64u;
  let high = l >= 32u;
  let word = w[blk + 4u + 8u * c + (l % 32u) / 4u];
  let s = select(0u, 4u, high);
  let q = vec4<u32>(word >> s, word >> (s + 8u), word >> (s + 16u), word >> (s + 24u)) & vec4<u32>(15u);
  let dd = unpack2x16float(w[blk]);
  let sm = k4_scale_min(blk + 1u, 2u * c + select(0u, 1u, high));
  return (dd.x * sm.x) * vec4<f32>(q) - dd.y * sm.y;
}
