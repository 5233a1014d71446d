// Token embedding gather: x[r, :] = table[tokens[r], :DIM] as f32.
// The table may be split into row parts (a vocabulary larger than one storage binding; see
// gpu/weights.ts): one dispatch per part, each writing the rows whose token it holds.

override DIM: u32;      // model width (row length of x)
override STRIDE: u32;   // row stride of the table (DIM, or DIM padded for the tied LM head)
override ROW_BASE: u32 = 0u; // first token id held by this part
override ROWS: u32;     // token ids held by this part

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<W>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r = wg.x;
  if (r >= fwd.n_rows) { return; }
  let token = tokens[r];
  if (token < ROW_BASE || token - ROW_BASE >= ROWS) { return; }
  let base = (token - ROW_BASE) * STRIDE;
  for (var i = tid; i < DIM; i += 64u) { x[r * DIM + i] = f32(table[base + i]); }
}
