// Weight upload: converts one staged chunk of a checkpoint's raw values to the storage type W,
// written into a weight buffer from element `dst_offset`. The host only moves bytes (the rows a
// head reordering selects, column blocks, row padding); the dtype conversion runs here, so a
// bf16 checkpoint is never expanded on the host. Two elements per thread (one u32 of 16-bit
// values, two of f32): chunks and offsets hold an even number of elements.

override SRC_DTYPE: u32; // source dtype: 0 f32, 1 f16, 2 bf16

struct Convert {
  dst_offset: u32, // first element written in dst
  count: u32,      // elements in this chunk (even)
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Convert;
@group(0) @binding(1) var<storage, read> src: array<u32>;      // the chunk's raw bytes
@group(0) @binding(2) var<storage, read_write> dst: array<W>;  // the weight buffer

// Source elements 2i and 2i+1 as f32.
fn pair(i: u32) -> vec2<f32> {
  if (SRC_DTYPE == 0u) { return vec2<f32>(bitcast<f32>(src[2u * i]), bitcast<f32>(src[2u * i + 1u])); }
  let word = src[i];
  if (SRC_DTYPE == 1u) { return unpack2x16float(word); }
  // bf16 is the top half of an f32.
  return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
  let i = (wg.y * nwg.x + wg.x) * 256u + tid;
  if (2u * i >= params.count) { return; }
  let v = pair(i);
  dst[params.dst_offset + 2u * i] = W(v.x);
  dst[params.dst_offset + 2u * i + 1u] = W(v.y);
}
