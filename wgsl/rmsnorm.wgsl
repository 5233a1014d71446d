// Final RMSNorm: y[r, :] = x[src, :] / sqrt(mean(x[src, :]^2) + EPS) * weight, src = gather[r]
// for r < fwd.n_logit_rows: only the rows whose logits are needed (the last row of a prefill
// chunk, every row of a decode batch). The layers' norms run inside their matmuls (matmul.wgsl).

override DIM: u32;             // row length
override EPS: f32;             // epsilon inside the square root

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<W>;
@group(0) @binding(3) var<storage, read> gather: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> sums: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r = wg.x;
  if (r >= fwd.n_logit_rows) { return; }
  let src = gather[r];
  var s = 0.0;
  for (var i = tid; i < DIM; i += 64u) { let v = x[src * DIM + i]; s += v * v; }
  sums[tid] = s;
  workgroupBarrier();
  for (var k = 32u; k > 0u; k >>= 1u) {
    if (tid < k) { sums[tid] += sums[tid + k]; }
    workgroupBarrier();
  }
  let inv = inverseSqrt(sums[0] / f32(DIM) + EPS);
  for (var i = tid; i < DIM; i += 64u) {
    y[r * DIM + i] = x[src * DIM + i] * inv * f32(weight[i]);
  }
}
