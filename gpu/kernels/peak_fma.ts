// wgsl/peak_fma.wgsl: the compute roof of the bench (independent FMA chains, no memory traffic).

import { grid, type Groups, kernel } from "./kernel.ts";

export const PEAK_FMA_FILE = "peak_fma.wgsl";

/** Independent vec4 chains per thread (the WGSL's `CHAINS`). */
export const PEAK_FMA_CHAINS = 8;

export interface PeakFmaConstants {
  /** Iterations of every chain. */
  ITERS: number;
  /** Threads per workgroup (@workgroup_size(WG)). */
  WG: number;
}

export const PEAK_FMA_BINDINGS = { sink: 0 } as const;

export function peakFma(c: PeakFmaConstants) {
  return kernel(PEAK_FMA_FILE, "main", c, PEAK_FMA_BINDINGS);
}

/** FLOPs of one dispatch of `workgroups` (a multiply and an add per lane of every FMA). */
export function peakFmaFlops(c: PeakFmaConstants, workgroups: number): number {
  return workgroups * c.WG * c.ITERS * PEAK_FMA_CHAINS * 4 * 2;
}

/** A 1-D grid of `workgroups` (at most 65535). */
export function peakFmaGroups(workgroups: number): Groups {
  return grid(Math.min(workgroups, 65535));
}
