// Token sampling on the GPU, one workgroup per logits row, so decode needs no logits readback.
// temperature == 0: greedy argmax (lowest index among equal maxima, as llama2.c).
// Otherwise: softmax(logits / temperature) restricted to the top_k largest logits (0 = all),
// the tokens whose probability is >= min_p times the largest, and the smallest top set holding
// top_p of the remaining mass; then one draw from a counter-based RNG keyed by (seed, position),
// so a request is reproducible whatever it is batched with.
// Thresholds are found by bisection over logit values; each probe is one pass over the row.

override VOCAB: u32;         // logits per row
override MAX_ROWS: u32;      // row stride of the output ring (rows per decode step)

struct Sampling {
  temperature: f32, // 0 = greedy
  top_p: f32,       // (0, 1]; 1 = off
  min_p: f32,       // [0, 1); 0 = off
  top_k: u32,       // 0 = off
  seed: u32,        // RNG key of the request
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> rows: array<Row>;
@group(0) @binding(2) var<storage, read> gather: array<u32>;      // logits row -> token row
@group(0) @binding(3) var<storage, read> params: array<Sampling>; // per logits row
@group(0) @binding(4) var<storage, read> logits: array<f32>;      // [n_logit_rows, VOCAB]
@group(0) @binding(5) var<storage, read_write> sampled: array<u32>;   // [step][MAX_ROWS] tokens
@group(0) @binding(6) var<storage, read_write> logprobs: array<f32>;  // [step][MAX_ROWS]
@group(0) @binding(7) var<storage, read> step: array<u32>;  // [0]: decode step within the submission

const T = 256u;
var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_u: array<u32, 256>;
var<workgroup> chosen: atomic<u32>;

fn sum_all(v: f32, tid: u32) -> f32 {
  red_f[tid] = v;
  workgroupBarrier();
  for (var k = T / 2u; k > 0u; k >>= 1u) {
    if (tid < k) { red_f[tid] += red_f[tid + k]; }
    workgroupBarrier();
  }
  let r = red_f[0];
  workgroupBarrier();
  return r;
}

fn max_all(v: f32, tid: u32) -> f32 {
  red_f[tid] = v;
  workgroupBarrier();
  for (var k = T / 2u; k > 0u; k >>= 1u) {
    if (tid < k) { red_f[tid] = max(red_f[tid], red_f[tid + k]); }
    workgroupBarrier();
  }
  let r = red_f[0];
  workgroupBarrier();
  return r;
}

fn count_all(v: u32, tid: u32) -> u32 {
  red_u[tid] = v;
  workgroupBarrier();
  for (var k = T / 2u; k > 0u; k >>= 1u) {
    if (tid < k) { red_u[tid] += red_u[tid + k]; }
    workgroupBarrier();
  }
  let r = red_u[0];
  workgroupBarrier();
  return r;
}

fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let r = wg.x;
  if (r >= fwd.n_logit_rows) { return; }
  let sp = params[r];
  let base = r * VOCAB;
  let chunk = (VOCAB + T - 1u) / T;
  let lo = min(tid * chunk, VOCAB);
  let hi = min(lo + chunk, VOCAB);

  // Largest logit (and its lowest index), and the softmax denominator for the logprob.
  var mx = -3.0e38;
  var arg = 0xffffffffu;
  var mn = 3.0e38;
  for (var i = lo; i < hi; i++) {
    let l = logits[base + i];
    if (l > mx) { mx = l; arg = i; }
    mn = min(mn, l);
  }
  let gmax = max_all(mx, tid);
  red_u[tid] = select(0xffffffffu, arg, mx == gmax);
  workgroupBarrier();
  for (var k = T / 2u; k > 0u; k >>= 1u) {
    if (tid < k) { red_u[tid] = min(red_u[tid], red_u[tid + k]); }
    workgroupBarrier();
  }
  let greedy = red_u[0];
  workgroupBarrier();
  let gmin = -max_all(-mn, tid);
  var z = 0.0;
  for (var i = lo; i < hi; i++) { z += exp(logits[base + i] - gmax); }
  let log_z = log(sum_all(z, tid)) + gmax;

  var token = greedy;
  if (sp.temperature > 0.0) {
    let inv_t = 1.0 / sp.temperature;
    // Tokens more than 104 T below the max have weight exp(-104) = 0 in f32 anyway; starting
    // the searches there keeps bisection meaningful when some logits are -inf or huge negative.
    var cut = max(gmin, gmax - 104.0 * sp.temperature);
    // Lower bound of kept logits from top_k: the k-th largest value, by bisection on counts.
    if (sp.top_k > 0u && sp.top_k < VOCAB) {
      var a = cut; // count(>= a) >= k, or every token of nonzero weight
      var b = gmax; // count(>= b) may be < k
      for (var it = 0u; it < 32u; it++) {
        let mid = 0.5 * (a + b);
        var c = 0u;
        for (var i = lo; i < hi; i++) { c += select(0u, 1u, logits[base + i] >= mid); }
        if (count_all(c, tid) >= sp.top_k) { a = mid; } else { b = mid; }
      }
      cut = a;
    }
    if (sp.min_p > 0.0) { cut = max(cut, gmax + sp.temperature * log(sp.min_p)); }
    // top_p: the highest cut whose kept mass is still >= top_p of the mass above `cut`.
    if (sp.top_p < 1.0) {
      var m_all = 0.0;
      for (var i = lo; i < hi; i++) {
        let l = logits[base + i];
        if (l >= cut) { m_all += exp((l - gmax) * inv_t); }
      }
      let want = sp.top_p * sum_all(m_all, tid);
      var a = cut;
      var b = gmax;
      for (var it = 0u; it < 32u; it++) {
        let mid = 0.5 * (a + b);
        var m = 0.0;
        for (var i = lo; i < hi; i++) {
          let l = logits[base + i];
          if (l >= mid) { m += exp((l - gmax) * inv_t); }
        }
        if (sum_all(m, tid) >= want) { a = mid; } else { b = mid; }
      }
      cut = a;
    }
    // One draw: prefix sums over contiguous chunks, in index order.
    var mine = 0.0;
    for (var i = lo; i < hi; i++) {
      let l = logits[base + i];
      if (l >= cut) { mine += exp((l - gmax) * inv_t); }
    }
    red_f[tid] = mine;
    if (tid == 0u) { atomicStore(&chosen, 0xffffffffu); }
    workgroupBarrier();
    if (tid == 0u) {
      var run = 0.0;
      for (var k = 0u; k < T; k++) { let v = red_f[k]; red_f[k] = run; run += v; }
      red_u[0] = bitcast<u32>(run);
    }
    workgroupBarrier();
    let total = bitcast<f32>(red_u[0]);
    let pos = rows[gather[r]].pos;
    let bits = pcg(pcg(sp.seed ^ 0x9e3779b9u) + pos);
    let u = f32(bits >> 8u) * (1.0 / 16777216.0) * total;
    var run = red_f[tid];
    if (u >= run && u < run + mine) {
      for (var i = lo; i < hi; i++) {
        let l = logits[base + i];
        if (l >= cut) {
          run += exp((l - gmax) * inv_t);
          if (u < run) { atomicMin(&chosen, i); break; }
        }
      }
    }
    workgroupBarrier();
    let c = atomicLoad(&chosen);
    if (c != 0xffffffffu) { token = c; }
  }
  if (tid == 0u) {
    sampled[step[0] * MAX_ROWS + r] = token;
    logprobs[step[0] * MAX_ROWS + r] = logits[base + token] - log_z;
  }
}
