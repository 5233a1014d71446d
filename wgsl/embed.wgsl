// Token embedding gather: x[r, :] = table[tokens[r], :] as f32.

override DIM: u32; // model width (row length of the table and of x)

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<W>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r = wg.x;
  if (r >= fwd.n_rows) { return; }
  let base = tokens[r] * DIM;
  for (var i = tid; i < DIM; i += 64u) { x[r * DIM + i] = f32(table[base + i]); }
}
