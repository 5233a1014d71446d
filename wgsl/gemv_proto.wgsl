// PROTOTYPE for review (bench only; gpu/runner.ts does not use it): a decode GEMV with the same
// bindings, overrides and dispatch contract as matmul.wgsl's `gemv`, except that a workgroup
// computes GEMV_COLS = 8 outputs instead of 4 (dispatch ceil(N / 8) workgroups).
//   y[t, n] (+)= sum_k x[t, k] * w[n, k] (+ bias[n]),  t < min(rows, 8)
//
// Layout: 64 threads = 8 groups of 8 lanes; group g computes output n0 + g. The 8 lanes of a group
// read 8 consecutive vec4s of the weight row per step (128 contiguous bytes: coalesced on GPUs,
// one 8-wide SIMD load on llvmpipe), keep one accumulator per batch row in a fixed-size array
// indexed by loop constants, and meet once in workgroup memory: one barrier instead of the
// log2(64)-step tree of `gemv`.
//
// Overrides (as matmul.wgsl): N, K, KP, ACCUMULATE, HAS_BIAS, LOGIT_ROWS.

override N: u32;
override K: u32;
override KP: u32;
override ACCUMULATE: bool = false;
override HAS_BIAS: bool = false;
override LOGIT_ROWS: bool = false;

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<W>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const LANES = 8u;
const GEMV_COLS = 8u;    // outputs per workgroup (64 threads / LANES)
const MAX_ROWS = 8u;
var<workgroup> red: array<f32, 512>; // [MAX_ROWS][64]

fn row_count() -> u32 {
  if (LOGIT_ROWS) { return fwd.n_logit_rows; }
  return fwd.n_rows;
}

fn x4(t: u32, k: u32) -> vec4<f32> {
  let b = t * K + k;
  if (k + 3u < K) { return vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]); }
  var v = vec4<f32>(0.0);
  for (var i = 0u; i < 4u; i++) { if (k + i < K) { v[i] = x[b + i]; } }
  return v;
}

@compute @workgroup_size(64)
fn gemv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let g = tid / LANES;
  let lane = tid % LANES;
  let n = (wg.y * nwg.x + wg.x) * GEMV_COLS + g;
  let rows = min(row_count(), MAX_ROWS);
  let k4n = KP / 4u;
  let base = min(n, N - 1u) * k4n;
  var acc: array<f32, 8>;
  for (var t = 0u; t < MAX_ROWS; t++) { acc[t] = 0.0; }
  for (var k4 = lane; k4 < k4n; k4 += LANES) {
    let wv = vec4<f32>(w[base + k4]);
    acc[0] += dot(x4(0u, k4 * 4u), wv);
    for (var t = 1u; t < MAX_ROWS; t++) {
      if (t < rows) { acc[t] += dot(x4(t, k4 * 4u), wv); }
    }
  }
  for (var t = 0u; t < MAX_ROWS; t++) { red[t * 64u + tid] = acc[t]; }
  workgroupBarrier();
  // Thread (g, lane) finishes batch row `lane` of output g.
  if (lane < rows && n < N) {
    var s = 0.0;
    for (var l = 0u; l < LANES; l++) { s += red[lane * 64u + g * LANES + l]; }
    if (HAS_BIAS) { s += bias[n]; }
    let i = lane * N + n;
    if (ACCUMULATE) { s += y[i]; }
    y[i] = s;
  }
}

// ---- gemv_rows: one invocation per output, no workgroup memory, no barrier ----
// Every invocation of a workgroup walks the same k at the same time, so the activation loads are
// uniform (one load broadcast to all lanes on SIMD CPU adapters such as llvmpipe) and only the
// weight loads differ per lane. Dispatch ceil(N / ROWS_WG) workgroups. On GPUs the weight reads
// of neighbouring lanes are a row apart (uncoalesced) and small N gives few workgroups: this is
// the CPU-adapter variant; `gemv` above is the GPU-shaped one.
override ROWS_WG: u32 = 64u;

@compute @workgroup_size(ROWS_WG)
fn gemv_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32,
             @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = (wg.y * nwg.x + wg.x) * ROWS_WG + tid;
  let rows = min(row_count(), MAX_ROWS);
  let k4n = KP / 4u;
  let base = min(n, N - 1u) * k4n;
  var acc: array<f32, 8>;
  for (var t = 0u; t < MAX_ROWS; t++) { acc[t] = 0.0; }
  for (var k4 = 0u; k4 < k4n; k4++) {
    let wv = vec4<f32>(w[base + k4]);
    acc[0] += dot(x4(0u, k4 * 4u), wv);
    for (var t = 1u; t < MAX_ROWS; t++) {
      if (t < rows) { acc[t] += dot(x4(t, k4 * 4u), wv); }
    }
  }
  if (n >= N) { return; }
  for (var t = 0u; t < MAX_ROWS; t++) {
    if (t < rows) {
      var s = acc[t];
      if (HAS_BIAS) { s += bias[n]; }
      let i = t * N + n;
      if (ACCUMULATE) { s += y[i]; }
      y[i] = s;
    }
  }
}

