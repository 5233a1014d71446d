// wgsl/stream_read.wgsl: the bandwidth reference of the bench (reads a buffer once).

import { grid, type Groups, kernel } from "./kernel.ts";

export const STREAM_READ_FILE = "stream_read.wgsl";

export interface StreamReadConstants {
  /** vec4 elements to read (buffer bytes / 16). */
  N_VEC4: number;
  /** Threads per workgroup (@workgroup_size(WG)). */
  WG: number;
  /** One contiguous block per workgroup instead of a grid stride. */
  CHUNKED: boolean;
}

export const STREAM_READ_BINDINGS = { src: 0, sink: 1 } as const;

export function streamRead(c: StreamReadConstants) {
  return kernel(STREAM_READ_FILE, "main", c, STREAM_READ_BINDINGS);
}

/** A 1-D grid of `workgroups` (at most 65535: more threads than vec4s is harmless). */
export function streamReadGroups(workgroups: number): Groups {
  return grid(Math.min(workgroups, 65535));
}
