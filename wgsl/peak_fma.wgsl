// Peak FMA: the compute roof of `deno task bench` (bench/kernels.ts), beside the streaming read
// (the bandwidth roof). Every thread runs CHAINS independent vec4<W> fused multiply-add chains
// for ITERS iterations, enough independent work to hide FMA latency; it touches no memory until
// the end, and writes only if its sum hits an impossible value, so the loop cannot be dropped.
// The multiplier (0.999) and addend keep every chain bounded (it converges to 0.1), in f16 too.
// W is the precision under test (f32 or f16, the storage-type alias of gpu/pipelines.ts).
//
// FLOPs of one dispatch: threads x ITERS x CHAINS x 4 lanes x 2 (a multiply and an add).
//
// Overrides:
//   ITERS   iterations of every chain.
//   WG      threads per workgroup (default 256).
// Dispatch: a 1-D grid of workgroups; every thread does the same work.

override ITERS: u32;
override WG: u32 = 256u;

const CHAINS = 8u;

@group(0) @binding(0) var<storage, read_write> sink: array<f32>; // [workgroups * WG]

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  // Start values depend on the thread, so nothing folds at compile time.
  let s = W(f32(gid.x & 63u) * 1.0e-3);
  let m = vec4<W>(W(0.999));
  let c = vec4<W>(W(1.0e-4));
  var a0 = vec4<W>(s, s + W(0.01), s + W(0.02), s + W(0.03));
  var a1 = a0 + vec4<W>(W(0.04));
  var a2 = a0 + vec4<W>(W(0.08));
  var a3 = a0 + vec4<W>(W(0.12));
  var a4 = a0 + vec4<W>(W(0.16));
  var a5 = a0 + vec4<W>(W(0.20));
  var a6 = a0 + vec4<W>(W(0.24));
  var a7 = a0 + vec4<W>(W(0.28));
  for (var i = 0u; i < ITERS; i++) {
    a0 = fma(a0, m, c);
    a1 = fma(a1, m, c);
    a2 = fma(a2, m, c);
    a3 = fma(a3, m, c);
    a4 = fma(a4, m, c);
    a5 = fma(a5, m, c);
    a6 = fma(a6, m, c);
    a7 = fma(a7, m, c);
  }
  let t = vec4<f32>((a0 + a1) + (a2 + a3)) + vec4<f32>((a4 + a5) + (a6 + a7));
  let v = t.x + t.y + t.z + t.w;
  if (v == 1.2345678e-30) { sink[gid.x] = v; } // never true: the chains stay near 0.1
}
