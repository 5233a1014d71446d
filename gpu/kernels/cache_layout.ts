// The KV-cache layouts' WGSL addressing includes: `wgsl/cache_<layout>.wgsl` for each
// `CacheKind.layout` (cache/kinds.ts). Each defines the same functions (cache_entry, sink_end,
// window_start, holds) and its own `override` constants, which come from
// `CacheLayout.constants(kind)`; the attention and KV-store kernels compile with the include of
// their part's layout. A layout may own binding 5 (the paged layout's page table).
//
// A new layout: its include in wgsl/, an entry here, and its kind's constants in cache/kinds.ts.

import type { CacheKind } from "../../cache/kinds.ts";

export type CacheLayoutName = CacheKind["layout"];

/** Bindings a layout adds to the kernels that include it. */
export interface LayoutBindings {
  readonly pageTable?: number;
}

export const CACHE_LAYOUTS: Readonly<
  Record<CacheLayoutName, { include: string; bindings: LayoutBindings }>
> = {
  paged: { include: "cache_paged.wgsl", bindings: { pageTable: 5 } },
  ring: { include: "cache_ring.wgsl", bindings: {} },
};

/** What the cache kernels need of one cache part: its layout and the layout's constants. */
export interface CachePartKernel {
  layout: CacheLayoutName;
  /** `CacheLayout.constants(kind)`: the include's `override` values by WGSL name. */
  constants: Readonly<Record<string, number | boolean>>;
  /** The kind keeps a compensation token (`CacheKind.compensated`; ring layout only): attention
   * compiles with comp_mean.wgsl and binds the rows' means, else with comp_none.wgsl. */
  compensated?: boolean;
}

/** The compensation include of a part's attention kernels, and the binding it adds. */
export function compensationInclude(part: CachePartKernel): {
  include: string;
  bindings: { compRows?: number };
} {
  if (!part.compensated) return { include: "comp_none.wgsl", bindings: {} };
  if (part.layout !== "ring") throw new Error("a compensation token needs the ring layout");
  return { include: "comp_mean.wgsl", bindings: { compRows: 10 } };
}
