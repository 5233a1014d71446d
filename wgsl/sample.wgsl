// Token sampling on the GPU, one workgroup per logits row, so decode needs no logits readback.
// temperature == 0: greedy argmax (lowest index among equal maxima, as llama2.c).
// Otherwise: softmax(logits / temperature) restricted to the top_k largest logits (0 = all),
// the tokens whose probability is >= min_p times the largest, and the smallest top set holding
// top_p of the remaining mass; then one draw from a counter-based RNG keyed by (seed, position),
// so a request is reproducible whatever it is batched with.
// Thresholds are found by bisection over logit values; each probe is one pass over the row.
//
// Before sampling, the row's logits are copied into `work` and adjusted in vLLM's order:
// logit_bias added, then the repetition penalty (HF/vLLM: tokens seen in the prompt or generated
// so far: logit > 0 ? logit / p : logit * p), then the frequency and presence penalties (OpenAI:
// logit -= frequency * count + presence * (count > 0), counts over generated tokens). The counts
// live on the GPU, one u32 per (sequence slot, token): bit 31 = seen in the prompt (the host
// fills it at the prompt's sampling prefill), bits 0..30 = times generated (this kernel adds the
// token it samples), so decode steps chained in one submission need no readback.
// Log-probabilities (the sampled token's and the top-k list) are always the log-softmax of the
// raw model logits, before bias, penalties and temperature (vLLM's default "raw_logprobs").

override VOCAB: u32;         // logits per row
override MAX_ROWS: u32;      // row stride of the output ring (rows per decode step)
override MAX_BIAS: u32;      // logit_bias entries per row (stride of `bias`)
override MAX_TOP: u32;       // top-logprob entries per row and step (stride of `top`)

struct Sampling {
  temperature: f32, // 0 = greedy
  top_p: f32,       // (0, 1]; 1 = off
  min_p: f32,       // [0, 1); 0 = off
  top_k: u32,       // 0 = off
  seed: u32,        // RNG key of the request
  presence: f32,    // presence penalty; 0 = off
  frequency: f32,   // frequency penalty; 0 = off
  repetition: f32,  // repetition penalty; 1 = off
  n_bias: u32,      // logit_bias entries of this row in `bias` (distinct ids < VOCAB)
  n_top: u32,       // top-logprob entries to write (<= MAX_TOP); 0 = none
  counted: u32,     // 1: read penalties from and count sampled tokens into this slot's counts
  _pad0: u32,
}

@group(0) @binding(0) var<uniform> fwd: Forward;
@group(0) @binding(1) var<storage, read> rows: array<Row>;
@group(0) @binding(2) var<storage, read> gather: array<u32>;      // logits row -> token row
@group(0) @binding(3) var<storage, read> params: array<Sampling>; // per logits row
@group(0) @binding(4) var<storage, read> logits: array<f32>;      // [n_logit_rows, VOCAB]
@group(0) @binding(5) var<storage, read_write> sampled: array<u32>;   // [step][MAX_ROWS] tokens
@group(0) @binding(6) var<storage, read_write> logprobs: array<f32>;  // [step][MAX_ROWS]
@group(0) @binding(7) var<storage, read> step: array<u32>;  // [0]: decode step within the submission
@group(0) @binding(8) var<storage, read_write> work: array<f32>;    // [n_logit_rows, VOCAB] adjusted
@group(0) @binding(9) var<storage, read_write> counts: array<u32>;  // [sequence slot, VOCAB]
@group(0) @binding(10) var<storage, read> bias: array<vec2<u32>>;   // [row, MAX_BIAS] (id, f32 bits)
@group(0) @binding(11) var<storage, read_write> top: array<vec2<u32>>; // [step][MAX_ROWS][MAX_TOP]

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

  let slot = rows[gather[r]].slot;
  let cbase = slot * VOCAB;

  // The raw logits' max (for the log-softmax), and a copy to adjust.
  var rmx = -3.0e38;
  for (var i = lo; i < hi; i++) {
    let l = logits[base + i];
    rmx = max(rmx, l);
    work[base + i] = l;
  }
  let raw_max = max_all(rmx, tid);
  storageBarrier();
  for (var e = tid; e < sp.n_bias; e += T) {
    let b = bias[r * MAX_BIAS + e];
    work[base + b.x] += bitcast<f32>(b.y);
  }
  storageBarrier();
  workgroupBarrier();

  // Penalties, then the largest adjusted logit (and its lowest index) and the smallest.
  var mx = -3.0e38;
  var arg = 0xffffffffu;
  var mn = 3.0e38;
  for (var i = lo; i < hi; i++) {
    var l = work[base + i];
    if (sp.counted != 0u) {
      let c = counts[cbase + i];
      let n = c & 0x7fffffffu;
      if (c != 0u && sp.repetition != 1.0) {
        l = select(l * sp.repetition, l / sp.repetition, l > 0.0);
      }
      l -= sp.frequency * f32(n) + select(0.0, sp.presence, n > 0u);
      work[base + i] = l;
    }
    if (l > mx) { mx = l; arg = i; }
    mn = min(mn, l);
  }
  storageBarrier();
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
  for (var i = lo; i < hi; i++) { z += exp(logits[base + i] - raw_max); }
  let log_z = log(sum_all(z, tid)) + raw_max;

  // Top log-probabilities of the raw logits: n_top passes, each the best (largest logit, then
  // lowest id) after the previous entry in that order.
  var pv = 0.0;
  var pi = 0u;
  for (var j = 0u; j < sp.n_top; j++) {
    var bv = -3.0e38;
    var bi = 0xffffffffu;
    for (var i = lo; i < hi; i++) {
      let l = logits[base + i];
      let after = j == 0u || l < pv || (l == pv && i > pi);
      if (after && (l > bv || (bi == 0xffffffffu && l >= bv))) { bv = l; bi = i; }
    }
    let tv = max_all(select(-3.0e38, bv, bi != 0xffffffffu), tid);
    red_u[tid] = select(0xffffffffu, bi, bi != 0xffffffffu && bv == tv);
    workgroupBarrier();
    for (var k = T / 2u; k > 0u; k >>= 1u) {
      if (tid < k) { red_u[tid] = min(red_u[tid], red_u[tid + k]); }
      workgroupBarrier();
    }
    let ti = red_u[0];
    workgroupBarrier();
    if (tid == 0u) {
      let o = (step[0] * MAX_ROWS + r) * MAX_TOP + j;
      top[o] = vec2<u32>(ti, bitcast<u32>(tv - log_z));
    }
    pv = tv;
    pi = ti;
  }

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
        for (var i = lo; i < hi; i++) { c += select(0u, 1u, work[base + i] >= mid); }
        if (count_all(c, tid) >= sp.top_k) { a = mid; } else { b = mid; }
      }
      cut = a;
    }
    if (sp.min_p > 0.0) { cut = max(cut, gmax + sp.temperature * log(sp.min_p)); }
    // top_p: the highest cut whose kept mass is still >= top_p of the mass above `cut`.
    if (sp.top_p < 1.0) {
      var m_all = 0.0;
      for (var i = lo; i < hi; i++) {
        let l = work[base + i];
        if (l >= cut) { m_all += exp((l - gmax) * inv_t); }
      }
      let want = sp.top_p * sum_all(m_all, tid);
      var a = cut;
      var b = gmax;
      for (var it = 0u; it < 32u; it++) {
        let mid = 0.5 * (a + b);
        var m = 0.0;
        for (var i = lo; i < hi; i++) {
          let l = work[base + i];
          if (l >= mid) { m += exp((l - gmax) * inv_t); }
        }
        if (sum_all(m, tid) >= want) { a = mid; } else { b = mid; }
      }
      cut = a;
    }
    // One draw: prefix sums over contiguous chunks, in index order.
    var mine = 0.0;
    for (var i = lo; i < hi; i++) {
      let l = work[base + i];
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
        let l = work[base + i];
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
    if (sp.counted != 0u) { counts[cbase + token] += 1u; }
  }
}
