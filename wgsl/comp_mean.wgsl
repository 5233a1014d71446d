// Compensation include "mean" of attention.wgsl (cache kind "compensated", after the ring
// layout include): RazorAttention's compensation token. For a query at position i the keys the
// window has dropped, positions [SINK, i + 1 - RECENT), count c = dropped(i), enter as one key:
// the mean key with logit q.k_mean * SCALE + ln(c), carrying the mean value, as if they were c
// keys all equal to it. compensation.wgsl computes each row's means before the attention runs;
// comp_none.wgsl documents the names.

const COMPENSATED = true;

// [rows][CACHE_HEADS][2][HEAD_DIM]: per row of the forward, its query's mean key then mean value.
@group(0) @binding(10) var<storage, read> comp_rows: array<f32>;

fn comp_count(i: u32) -> u32 { return dropped(i); }

fn comp_k4(r: u32, ch: u32, d: u32) -> vec4<f32> {
  let b = (r * CACHE_HEADS + ch) * 2u * HEAD_DIM + d;
  return vec4<f32>(comp_rows[b], comp_rows[b + 1u], comp_rows[b + 2u], comp_rows[b + 3u]);
}

fn comp_v(r: u32, ch: u32, d: u32) -> f32 {
  return comp_rows[(r * CACHE_HEADS + ch) * 2u * HEAD_DIM + HEAD_DIM + d];
}
