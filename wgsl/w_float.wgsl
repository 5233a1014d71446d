// Weight codec "float" of wgsl/matmul.wgsl: w is [N, KP] values of the storage type W (f16 or
// f32), rows zero-padded to KP. Included (gpu/kernels/matmul.ts) before matmul.wgsl;
// w_q8_0.wgsl and w_q4_0.wgsl define the same names:
//   @binding(2) w            the weight part's buffer;
//   w_row(n)                 where row n starts (in w's elements);
//   w4(base, k4)             weights k = 4 k4 .. 4 k4 + 3 of the row at `base`, as f32.

@group(0) @binding(2) var<storage, read> w: array<vec4<W>>;

fn w_row(n: u32) -> u32 { return n * (KP / 4u); }
fn w4(base: u32, k4: u32) -> vec4<f32> { return vec4<f32>(w[base + k4]); }
