// Compensation include "none" of attention.wgsl: the part keeps no compensation token (pages,
// plain streaming rings). comp_mean.wgsl defines the same names:
//   COMPENSATED            whether attention starts each query's softmax from the token;
//   comp_count(i)          tokens it stands for at query position i;
//   comp_k4(r, ch, d)      dims d .. d+3 of the mean key row r's query sees for cache head ch;
//   comp_v(r, ch, d)       dim d of the mean value.

const COMPENSATED = false;

fn comp_count(i: u32) -> u32 { return 0u; }
fn comp_k4(r: u32, ch: u32, d: u32) -> vec4<f32> { return vec4<f32>(0.0); }
fn comp_v(r: u32, ch: u32, d: u32) -> f32 { return 0.0; }
