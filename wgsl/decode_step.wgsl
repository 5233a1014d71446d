// Chains decode steps inside one submission: each row's next input token is the token just
// sampled for it, one position further on. The host reads all steps' tokens back at once.

override MAX_ROWS: u32; // row stride of the sampled-token ring

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read_write> rows: array<Row>;
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> sampled: array<u32>;
@group(0) @binding(4) var<storage, read_write> step: array<u32>; // [0]: decode step index

// One workgroup: a decode batch has at most 64 rows, so the step counter can be read by every
// thread before thread 0 advances it.
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) r: u32) {
  let s = step[0];
  if (r < fwd.n_rows) {
    tokens[r] = sampled[s * MAX_ROWS + r];
    rows[r].pos += 1u;
  }
  storageBarrier();
  if (r == 0u) { step[0] = s + 1u; }
}
