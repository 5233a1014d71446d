// Weight codec "q6_k" of wgsl/matmul.wgsl (GGUF's Q6_K): a row is its super-blocks of 256
// weights as the file stores them (210 bytes) padded to 212 = 53 words so each starts on a word:
// 128 bytes of low nibbles (words 0-31), 64 bytes of high 2-bit pairs (words 32-47), 16 signed
// byte scales (words 48-51), f16 d (the low half of word 52). Per half n of 128 weights and
// l in 0..31, weights l, l+32, l+64, l+96 take the low nibbles of ql[64n + l], ql[64n + l + 32]
// and the high ones of the same bytes, with bits 0-1, 2-3, 4-5, 6-7 of qh[32n + l] on top, and
// scales sc[8n + l / 16 + 0, 2, 4, 6]. x = d * sc * (q - 32). 6.6 bits per weight. K is a
// multiple of 256. Names as w_float.wgsl documents them.

@group(0) @binding(2) var<storage, read> w: array<u32>;

fn w_row(n: u32) -> u32 { return n * (K / 256u) * 53u; }

fn w4(base: u32, k4: u32) -> vec4<f32> {
  let blk = base + (k4 / 64u) * 53u;
  let e = (k4 % 64u) * 4u;
  let n = e / 128u;
  let g = (e % 128u) / 32u; // which of the four 32-weight groups
  let l = e % 32u;
  let qlw = w[blk + 16u * n + (l + 32u * (g % 2u)) / 4u];
  let s = select(0u, 4u, g >= 2u);
  let lo = vec4<u32>(qlw >> s, qlw >> (s + 8u), qlw >> (s + 16u), qlw >> (s + 24u)) & vec4<u32>(15u);
  let qhw = w[blk + 32u + 8u * n + l / 4u] >> (2u * g);
  let hi = (vec4<u32>(qhw, qhw >> 8u, qhw >> 16u, qhw >> 24u) & vec4<u32>(3u)) << vec4<u32>(4u);
  let si = 8u * n + l / 16u + 2u * g;
  let sc = f32((bitcast<i32>(w[blk + 48u + si / 4u]) << (24u - 8u * (si % 4u))) >> 24u);
  let d = unpack2x16float(w[blk + 52u]).x;
  return (d * sc) * (vec4<f32>(lo | hi) - 32.0);
}
