// SwiGLU: h[t, i] = silu(gu[t, i]) * gu[t, HIDDEN + i], gu being the fused gate|up projection.

override HIDDEN: u32; // feed-forward width

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> gu: array<f32>;
@group(0) @binding(2) var<storage, read_write> h: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= fwd.n_rows * HIDDEN) { return; }
  let t = i / HIDDEN;
  let j = i % HIDDEN;
  let g = gu[t * 2u * HIDDEN + j];
  h[i] = g / (1.0 + exp(-g)) * gu[t * 2u * HIDDEN + HIDDEN + j];
}
