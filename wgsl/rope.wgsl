// Rotary position embedding, in place on the fused q|k|v rows: rotates the N_HEADS query heads
// and N_KV_HEADS key heads of each row by the row's absolute position.
// INTERLEAVED pairs dims (2i, 2i+1) (llama2.c); otherwise (i, i + HEAD_DIM/2) (HF rotate-half).
// inv_freq holds the per-pair frequency with any model scaling (Llama-3) already applied.

override HEAD_DIM: u32;
override N_HEADS: u32;     // query heads, stored first in each row
override N_KV_HEADS: u32;  // key heads, stored right after the query heads
override ROW_STRIDE: u32;  // floats per fused row: (N_HEADS + 2 * N_KV_HEADS) * HEAD_DIM
override INTERLEAVED: bool;

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> rows: array<Row>;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read_write> qkv: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r = wg.x;
  if (r >= fwd.n_rows) { return; }
  let pos = f32(rows[r].pos);
  let half = HEAD_DIM / 2u;
  let pairs = (N_HEADS + N_KV_HEADS) * half;
  for (var p = tid; p < pairs; p += 64u) {
    let head = p / half;
    let i = p % half;
    let angle = pos * inv_freq[i];
    let c = cos(angle);
    let s = sin(angle);
    let base = r * ROW_STRIDE + head * HEAD_DIM;
    var a = base + i;
    var b = base + i + half;
    if (INTERLEAVED) { a = base + 2u * i; b = a + 1u; }
    let x0 = qkv[a];
    let x1 = qkv[b];
    qkv[a] = x0 * c - x1 * s;
    qkv[b] = x0 * s + x1 * c;
  }
}
