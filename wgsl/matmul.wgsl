// Linear layers: y[t, n] (+)= sum_k in[t, k] * w[n, k] (+ bias[n]).
// x: f32 activations; w: weights [N, KP], rows zero-padded to KP (a multiple of 4), stored as the
// weight codec include says (f16/f32 values, or GGUF's Q8_0 / Q4_0 blocks, dequantized as they
// are loaded: `w4`); y: f32 [rows, Y_STRIDE], of which this dispatch writes columns
// [N_OFFSET, N_OFFSET + N): a matrix larger than one storage binding is split into row parts,
// one dispatch per part (gpu/weights.ts), each writing its own column range of y.
// The input `in` is x itself [rows, K], or, fused so the layer needs no extra dispatch:
//  - NORM_INPUT: rmsnorm(x[t]) * norm_w, the row's root mean square computed here;
//  - SWIGLU_INPUT: silu(gate) * up of the fused gate|up projection x [rows, 2K].
// Entry points: `gemv1` for one row (decode of one sequence), `gemv` for a few rows (batched
// decode; streams each weight row once for all rows) and, for many rows (prefill), `gemm`
// (64x64 tiles staged in workgroup memory: GPUs) or `gemm_reg` (register tiles read straight
// from storage: CPU adapters); gpu/kernels/matmul.ts picks per adapter.

override N: u32;            // output features of this part (rows of w)
override N_OFFSET: u32 = 0u; // first output column this part writes (and its first bias)
override Y_STRIDE: u32;     // output features of the whole matrix (row stride of y)
override K: u32;            // input features
override KP: u32;           // padded input features (row stride of w), multiple of 4
override ACCUMULATE: bool = false; // y += result (residual connection) instead of y = result
override HAS_BIAS: bool = false;
override LOGIT_ROWS: bool = false; // the row count is fwd.n_logit_rows instead of fwd.n_rows
override NORM_INPUT: bool = false;   // in = rmsnorm(x) * norm_w
override EPS: f32 = 1e-5;            // RMSNorm epsilon (NORM_INPUT)
override SWIGLU_INPUT: bool = false; // in = silu(x[:, :K]) * x[:, K:]

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// @binding(2) w: the weight codec's (w_float.wgsl, w_q8_0.wgsl, w_q4_0.wgsl: `w_row`, `w4`).
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> norm_w: array<W>; // [K] (NORM_INPUT)

// 1 / rms of each input row of this workgroup (gemv: batch rows; gemm: the tile's 64 rows).
var<workgroup> inv_rms: array<f32, 64>;

fn row_count() -> u32 {
  if (LOGIT_ROWS) { return fwd.n_logit_rows; }
  return fwd.n_rows;
}

fn store(t: u32, n: u32, v: f32) {
  var r = v;
  if (HAS_BIAS) { r += bias[N_OFFSET + n]; }
  let i = t * Y_STRIDE + N_OFFSET + n;
  if (ACCUMULATE) { r += y[i]; }
  y[i] = r;
}

// Input element (t, k) before any norm scaling.
fn xin(t: u32, k: u32) -> f32 {
  if (SWIGLU_INPUT) {
    let g = x[t * 2u * K + k];
    return g / (1.0 + exp(-g)) * x[t * 2u * K + K + k];
  }
  return x[t * K + k];
}

// Input elements (t, k .. k+3); `local` indexes inv_rms. K need not be a multiple of 4: the
// tail reads zeros, matching w's zero padding.
fn x4(t: u32, k: u32, local: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  if (k + 3u < K) {
    v = vec4<f32>(xin(t, k), xin(t, k + 1u), xin(t, k + 2u), xin(t, k + 3u));
    if (NORM_INPUT) {
      v *= inv_rms[local] * vec4<f32>(
        f32(norm_w[k]), f32(norm_w[k + 1u]), f32(norm_w[k + 2u]), f32(norm_w[k + 3u]));
    }
    return v;
  }
  for (var i = 0u; i < 4u; i++) {
    if (k + i < K) {
      var e = xin(t, k + i);
      if (NORM_INPUT) { e *= inv_rms[local] * f32(norm_w[k + i]); }
      v[i] = e;
    }
  }
  return v;
}

// Sum of squares of row t over the k this thread owns (k = first, first + stride, ...).
fn sum_squares(t: u32, first: u32, stride: u32) -> f32 {
  var s = 0.0;
  for (var k = first; k < K; k += stride) { let e = x[t * K + k]; s += e * e; }
  return s;
}

// ---- GEMV: one workgroup computes GEMV_COLS outputs for up to GEMV_MAX_ROWS rows ----
// 64 threads = 8 groups of 8 lanes; group g computes GEMV1_OUTS consecutive outputs from n0 for
// every batch row. The lanes of a group read 8 consecutive vec4s of each weight row per step
// (128 contiguous bytes: coalesced on GPUs, one 8-wide SIMD load on llvmpipe), and each weight
// vec4 is read once for all rows: a step's 4 weight and `rows` activation loads feed 4 x rows
// dot products. The activations are staged in workgroup memory as vec4s, XS at a time. Lane l
// of a group sums the vec4s i = l (mod 8) of every row in order, and the lanes' sums are added in
// lane order: the partition and order of `gemv1`, so a row's outputs do not depend on the batch
// it is in (tests/overlap_decode_test.ts holds every sequence's logits to that).
const LANES = 8u;
const GEMV_COLS = 32u;    // outputs per workgroup (8 groups x GEMV1_OUTS)
const GEMV_MAX_ROWS = 8u; // batch rows; more use gemm
const XS = 128u;          // vec4s of each activation row staged per step
var<workgroup> partial: array<f32, 512>;      // [GEMV_MAX_ROWS][64]
var<workgroup> xs4: array<vec4<f32>, 1024>;   // [GEMV_MAX_ROWS][XS]

@compute @workgroup_size(64)
fn gemv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let g = tid / LANES;
  let lane = tid % LANES;
  let n0 = (wg.y * nwg.x + wg.x) * GEMV_COLS + g * GEMV1_OUTS;
  let rows = min(row_count(), GEMV_MAX_ROWS);
  let k4n = KP / 4u;
  // Rows past N read row N - 1 (their sums are never stored).
  let b0 = w_row(min(n0, N - 1u));
  let b1 = w_row(min(n0 + 1u, N - 1u));
  let b2 = w_row(min(n0 + 2u, N - 1u));
  let b3 = w_row(min(n0 + 3u, N - 1u));
  if (NORM_INPUT) {
    for (var t = 0u; t < rows; t++) { partial[t * 64u + tid] = sum_squares(t, tid, 64u); }
    workgroupBarrier();
    if (tid < rows) {
      var ss = 0.0;
      for (var i = 0u; i < 64u; i++) { ss += partial[tid * 64u + i]; }
      inv_rms[tid] = inverseSqrt(ss / f32(K) + EPS);
    }
  }
  // acc[t]: row t's sums of outputs n0 .. n0+3 (a loop of constant trip count over the rows,
  // so the accumulators stay in registers).
  var acc: array<vec4<f32>, 8>;
  for (var t = 0u; t < GEMV_MAX_ROWS; t++) { acc[t] = vec4<f32>(0.0); }
  for (var kb = 0u; kb < k4n; kb += XS) {
    let m = min(XS, k4n - kb);
    workgroupBarrier();
    for (var e = tid; e < rows * XS; e += 64u) {
      let t = e / XS;
      let i = e % XS;
      if (i < m) { xs4[t * XS + i] = x4(t, (kb + i) * 4u, t); }
    }
    workgroupBarrier();
    for (var i = lane; i < m; i += LANES) {
      let w0 = w4(b0, kb + i);
      let w1 = w4(b1, kb + i);
      let w2 = w4(b2, kb + i);
      let w3 = w4(b3, kb + i);
      for (var t = 0u; t < GEMV_MAX_ROWS; t++) {
        if (t < rows) {
          let xv = xs4[t * XS + i];
          acc[t] += vec4<f32>(dot(xv, w0), dot(xv, w1), dot(xv, w2), dot(xv, w3));
        }
      }
    }
  }
  // Output n0 + o of every row: the lanes' sums meet in `partial`; thread (g, lane) finishes
  // batch row `lane`.
  for (var o = 0u; o < GEMV1_OUTS; o++) {
    workgroupBarrier();
    for (var t = 0u; t < GEMV_MAX_ROWS; t++) { partial[t * 64u + tid] = acc[t][o]; }
    workgroupBarrier();
    if (lane < rows && n0 + o < N) {
      var s = 0.0;
      for (var l = 0u; l < LANES; l++) { s += partial[lane * 64u + g * LANES + l]; }
      store(lane, n0 + o, s);
    }
  }
}

// ---- GEMV1: one row, GEMV1_COLS outputs per workgroup, GEMV1_OUTS per lane group ----
// The layout of `gemv` for one row: each group computes GEMV1_OUTS consecutive outputs, so one
// activation vec4 read from workgroup memory serves that many weight vec4s (at batch 1 the
// activation loads, one per weight load with one output per group, bound the kernel on
// llvmpipe rather than the weights: the bench's gemv figures).
const GEMV1_OUTS = 4u;
const GEMV1_COLS = 32u;   // 8 groups x GEMV1_OUTS

@compute @workgroup_size(64)
fn gemv1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32,
         @builtin(num_workgroups) nwg: vec3<u32>) {
  // The host picks gemv1 for one row; none (no logits rows) leaves y alone, as gemv would.
  if (row_count() == 0u) { return; }
  let g = tid / LANES;
  let lane = tid % LANES;
  let n0 = (wg.y * nwg.x + wg.x) * GEMV1_COLS + g * GEMV1_OUTS;
  let k4n = KP / 4u;
  // Rows past N read row N - 1 (their sums are never stored).
  let b0 = w_row(min(n0, N - 1u));
  let b1 = w_row(min(n0 + 1u, N - 1u));
  let b2 = w_row(min(n0 + 2u, N - 1u));
  let b3 = w_row(min(n0 + 3u, N - 1u));
  if (NORM_INPUT) {
    partial[tid] = sum_squares(0u, tid, 64u);
    workgroupBarrier();
    if (tid == 0u) {
      var ss = 0.0;
      for (var i = 0u; i < 64u; i++) { ss += partial[i]; }
      inv_rms[0] = inverseSqrt(ss / f32(K) + EPS);
    }
  }
  var acc = vec4<f32>(0.0);
  for (var kb = 0u; kb < k4n; kb += XS) {
    let m = min(XS, k4n - kb);
    workgroupBarrier();
    for (var i = tid; i < m; i += 64u) { xs4[i] = x4(0u, (kb + i) * 4u, 0u); }
    workgroupBarrier();
    for (var i = lane; i < m; i += LANES) {
      let xv = xs4[i];
      acc += vec4<f32>(dot(xv, w4(b0, kb + i)), dot(xv, w4(b1, kb + i)),
                       dot(xv, w4(b2, kb + i)), dot(xv, w4(b3, kb + i)));
    }
  }
  workgroupBarrier();
  partial[tid] = acc.x;
  partial[64u + tid] = acc.y;
  partial[128u + tid] = acc.z;
  partial[192u + tid] = acc.w;
  workgroupBarrier();
  // Lane o of group g finishes output n0 + o.
  let n = n0 + lane;
  if (lane < GEMV1_OUTS && n < N) {
    var s = 0.0;
    for (var l = 0u; l < LANES; l++) { s += partial[lane * 64u + g * LANES + l]; }
    store(0u, n, s);
  }
}

// ---- GEMM_REG: 32x64 output tile per workgroup, 4 rows x 8 outputs per thread ----
// For adapters that run invocations as CPU SIMD lanes (llvmpipe): there every load from
// workgroup or storage memory is a per-lane gather costing about as much as a vec4 load, and
// `gemm`'s inner loop spends 8 scalar workgroup loads on 16 FMAs. Here each thread reads its
// 8 weight rows straight from storage as vec4s along k and its 4 input rows as vec4s from a
// stage of the tile's inputs (REG_K vec4s per row), and does 128 FMAs per 12 loads, with 32
// accumulators in registers. The stage is computed once per workgroup by all its threads: the
// fused inputs (RMSNorm's scaling, SwiGLU's silu(gate) * up) cost a few loads and an exp per
// element, which each of the 8 column threads of a row would otherwise redo. Measured in
// `deno task bench` (`gemm` vs `gemm_reg` on the same shapes; a prefill chunk by kernel).
const REG_ROWS = 32u;
const REG_COLS = 64u;
const REG_K = 32u; // vec4s of each input row per stage
var<workgroup> xt: array<vec4<f32>, 1024>; // [REG_ROWS][REG_K] the tile's inputs, one stage

@compute @workgroup_size(64)
fn gemm_reg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let rows = row_count();
  if (rows == 0u) { return; }
  let lr = (tid / 8u) * 4u; // the thread's first row within the tile (inv_rms index)
  let t0 = wg.x * REG_ROWS + lr;
  let n0 = wg.y * REG_COLS + (tid % 8u) * 8u;
  if (NORM_INPUT) {
    // 2 threads per tile row; partial is scratch.
    let r = tid / 2u;
    var ss = 0.0;
    if (wg.x * REG_ROWS + r < rows) { ss = sum_squares(wg.x * REG_ROWS + r, tid % 2u, 2u); }
    partial[tid] = ss;
    workgroupBarrier();
    if (tid < REG_ROWS) {
      inv_rms[tid] = inverseSqrt((partial[2u * tid] + partial[2u * tid + 1u]) / f32(K) + EPS);
    }
    workgroupBarrier();
  }
  var b: array<u32, 8>;
  for (var j = 0u; j < 8u; j++) { b[j] = w_row(min(n0 + j, N - 1u)); }
  // c<row>: outputs n0 .. n0+3, e<row>: n0+4 .. n0+7.
  var ca = vec4<f32>(0.0); var cb = vec4<f32>(0.0); var cc = vec4<f32>(0.0); var cd = vec4<f32>(0.0);
  var ea = vec4<f32>(0.0); var eb = vec4<f32>(0.0); var ec = vec4<f32>(0.0); var ed = vec4<f32>(0.0);
  let k4n = KP / 4u;
  for (var kb = 0u; kb < k4n; kb += REG_K) {
    let m = min(REG_K, k4n - kb);
    workgroupBarrier(); // the previous stage is read
    // Rows past the row count read the last one; their sums are never stored.
    for (var e = tid; e < REG_ROWS * REG_K; e += 64u) {
      let r = e / REG_K;
      let i = e % REG_K;
      if (i < m) { xt[e] = x4(min(wg.x * REG_ROWS + r, rows - 1u), (kb + i) * 4u, r); }
    }
    workgroupBarrier();
    for (var i = 0u; i < m; i++) {
      let k = kb + i;
      let w0 = w4(b[0], k); let w1 = w4(b[1], k); let w2 = w4(b[2], k); let w3 = w4(b[3], k);
      let w5 = w4(b[4], k); let w6 = w4(b[5], k); let w7 = w4(b[6], k); let w8 = w4(b[7], k);
      let xa = xt[lr * REG_K + i]; let xb = xt[(lr + 1u) * REG_K + i];
      let xc = xt[(lr + 2u) * REG_K + i]; let xd = xt[(lr + 3u) * REG_K + i];
      ca += vec4<f32>(dot(xa, w0), dot(xa, w1), dot(xa, w2), dot(xa, w3));
      cb += vec4<f32>(dot(xb, w0), dot(xb, w1), dot(xb, w2), dot(xb, w3));
      cc += vec4<f32>(dot(xc, w0), dot(xc, w1), dot(xc, w2), dot(xc, w3));
      cd += vec4<f32>(dot(xd, w0), dot(xd, w1), dot(xd, w2), dot(xd, w3));
      ea += vec4<f32>(dot(xa, w5), dot(xa, w6), dot(xa, w7), dot(xa, w8));
      eb += vec4<f32>(dot(xb, w5), dot(xb, w6), dot(xb, w7), dot(xb, w8));
      ec += vec4<f32>(dot(xc, w5), dot(xc, w6), dot(xc, w7), dot(xc, w8));
      ed += vec4<f32>(dot(xd, w5), dot(xd, w6), dot(xd, w7), dot(xd, w8));
    }
  }
  let lo = array<vec4<f32>, 4>(ca, cb, cc, cd);
  let hi = array<vec4<f32>, 4>(ea, eb, ec, ed);
  for (var i = 0u; i < 4u; i++) {
    if (t0 + i >= rows) { break; }
    for (var j = 0u; j < 4u; j++) {
      if (n0 + j < N) { store(t0 + i, n0 + j, lo[i][j]); }
      if (n0 + 4u + j < N) { store(t0 + i, n0 + 4u + j, hi[i][j]); }
    }
  }
}

// ---- GEMM: 64x64 output tile per workgroup, 16x16 threads, 4x4 outputs each ----
const TILE = 64u;
const TK = 16u;
var<workgroup> xs: array<f32, 1024>; // [TK][TILE]: x tile transposed (k-major)
var<workgroup> ws: array<f32, 1024>; // [TK][TILE]: w tile transposed (k-major)

@compute @workgroup_size(16, 16)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
  let rows = row_count();
  let n0 = wg.x * TILE;
  let t0 = wg.y * TILE;
  if (NORM_INPUT) {
    // 4 threads per tile row; xs is scratch until the main loop.
    let r = tid / 4u;
    var ss = 0.0;
    if (t0 + r < rows) { ss = sum_squares(t0 + r, tid % 4u, 4u); }
    xs[tid] = ss;
    workgroupBarrier();
    if (tid < TILE) {
      let total = xs[tid * 4u] + xs[tid * 4u + 1u] + xs[tid * 4u + 2u] + xs[tid * 4u + 3u];
      inv_rms[tid] = inverseSqrt(total / f32(K) + EPS);
    }
    workgroupBarrier();
  }
  var acc: array<f32, 16>;
  for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }
  for (var kb = 0u; kb < KP; kb += TK) {
    // 256 threads load 64 rows x 16 k of x and of w: one vec4 each.
    let r = tid / 4u;
    let kq = (tid % 4u) * 4u;
    let k = kb + kq;
    var xv = vec4<f32>(0.0);
    if (t0 + r < rows && k < K) { xv = x4(t0 + r, k, r); }
    var wv = vec4<f32>(0.0);
    if (n0 + r < N && k < KP) { wv = w4(w_row(n0 + r), k / 4u); }
    for (var i = 0u; i < 4u; i++) {
      xs[(kq + i) * TILE + r] = xv[i];
      ws[(kq + i) * TILE + r] = wv[i];
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
      let a = vec4<f32>(xs[kk * TILE + lid.y * 4u], xs[kk * TILE + lid.y * 4u + 1u],
                        xs[kk * TILE + lid.y * 4u + 2u], xs[kk * TILE + lid.y * 4u + 3u]);
      let b = vec4<f32>(ws[kk * TILE + lid.x * 4u], ws[kk * TILE + lid.x * 4u + 1u],
                        ws[kk * TILE + lid.x * 4u + 2u], ws[kk * TILE + lid.x * 4u + 3u]);
      for (var i = 0u; i < 4u; i++) {
        acc[i * 4u] += a[i] * b[0];
        acc[i * 4u + 1u] += a[i] * b[1];
        acc[i * 4u + 2u] += a[i] * b[2];
        acc[i * 4u + 3u] += a[i] * b[3];
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let t = t0 + lid.y * 4u + i;
    if (t >= rows) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + lid.x * 4u + j;
      if (n < N) { store(t, n, acc[i * 4u + j]); }
    }
  }
}
