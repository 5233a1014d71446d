// Streaming read: the bandwidth reference of `deno task bench` (bench/kernels.ts). Reads a large
// buffer once as vec4<f32> with many workgroups and keeps a sum so the loads cannot be dropped;
// nothing is written unless the sum hits an impossible value, so the traffic is reads only.
//
// Overrides:
//   N_VEC4    vec4 elements to read (buffer bytes / 16).
//   WG        threads per workgroup (default 256).
//   CHUNKED   false: grid-stride (thread i reads i, i + all threads, ...), the GPU-friendly layout;
//             true: workgroup g reads one contiguous block (prefetch-friendly on CPU adapters).
// Dispatch: a 1-D grid of up to 65535 workgroups (more threads than vec4s is harmless).

override N_VEC4: u32;
override WG: u32 = 256u;
override CHUNKED: bool = false;

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<f32>; // [workgroups * WG]

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(local_invocation_index) tid: u32,
        @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  var acc = vec4<f32>(0.0);
  if (CHUNKED) {
    let per = (N_VEC4 + nwg.x - 1u) / nwg.x;
    let start = wg.x * per;
    let end = min(start + per, N_VEC4);
    for (var i = start + tid; i < end; i += WG) { acc += src[i]; }
  } else {
    let stride = nwg.x * WG;
    for (var i = gid.x; i < N_VEC4; i += stride) { acc += src[i]; }
  }
  let s = acc.x + acc.y + acc.z + acc.w;
  if (s == 1.2345678e-30) { sink[gid.x] = s; } // never true for the bench's data
}
