// What the runner and the KV-cache manager read from a plan: per layer, which KV heads keep a
// full (paged) cache and which keep the sink + recent ring.

export type PlanMode = "full" | "streaming" | "duo" | "zigzag";

/** retrieval: every KV head full; streaming: every KV head sink+recent; mixed: a duo layer. */
export type LayerKind = "retrieval" | "streaming" | "mixed";

/** The cache a KV head keeps: the plan schema's head kinds (`HeadKindSchema`), and
 * "compensated", a streaming head that also keeps RazorAttention's compensation token (a plan's
 * `"compensation": true` makes every streaming head one). */
export type HeadKind = "retrieval" | "streaming" | "compensated";

/** A streaming head's window: the first `sink` positions and the last `recent` (the current one
 * included). Elastic (MoA's span min(alpha + beta N, N)): a query at position i sees the last
 * min(maxRecent, recent + floor(growth (i + 1))) positions, growth a multiple of 1 / GROWTH_UNITS
 * (resolve rounds it so, and the kernels compute the floor exactly). */
export interface Window {
  sink: number;
  recent: number;
  /** Recent positions gained per position of the sequence, in [0, 1) (absent: 0). */
  growth?: number;
  /** With growth: the most recent positions the window reaches (its ring's size). */
  maxRecent?: number;
}

/** Growth is kept in units of 1 / 65536 (the kernels' GROWTH_Q16). */
export const GROWTH_UNITS = 65536;

/** A window as the API and plan files spell it (snake_case; growth fields only when elastic). */
export function windowJson(
  w: Window,
): { sink: number; recent: number; growth?: number; max_recent?: number } {
  return w.growth
    ? { sink: w.sink, recent: w.recent, growth: w.growth, max_recent: w.maxRecent }
    : { sink: w.sink, recent: w.recent };
}

/** Recent positions a ring for `w` keeps: its largest window. */
export function ringRecent(w: Window): number {
  return w.growth ? w.maxRecent! : w.recent;
}

export interface LayerAttentionPlan {
  kind: LayerKind;
  /** Per KV head (index = head), the cache it keeps; the cache layout groups heads by it. */
  kvHeadKinds: HeadKind[];
  /** KV head indices (ascending) that keep the full cache. */
  retrievalKvHeads: number[];
  /** KV head indices (ascending) that keep only sink + recent tokens (and, compensated ones,
   * the compensation token). */
  streamingKvHeads: number[];
  /** Per KV head, its own window when the plan gives this layer (MoA-style) windows of its own;
   * absent: every streaming head uses the plan's sink and recent. Retrieval heads' entries are
   * the plan's and unused. */
  windows?: Window[];
}

export interface ResolvedPlan {
  mode: PlanMode;
  /** Attention-sink tokens kept by streaming heads (positions [0, sink)), unless their layer
   * has windows of its own. */
  sink: number;
  /** Most recent tokens kept by streaming heads, the current one included (likewise). */
  recent: number;
  /** Per layer its KV heads' kinds (a plan's `"compensation": true` made every streaming head
   * "compensated") and windows. */
  layers: LayerAttentionPlan[];
}

/** The window of KV head `kvHead` of layer `layer`: its layer's own, else the plan's. */
export function headWindow(plan: ResolvedPlan, layer: number, kvHead: number): Window {
  return plan.layers[layer].windows?.[kvHead] ?? { sink: plan.sink, recent: plan.recent };
}

/** Whether some layer's windows differ from the plan's sink and recent. */
export function hasOwnWindows(plan: ResolvedPlan): boolean {
  return plan.layers.some((l, i) =>
    l.streamingKvHeads.some((h) => {
      const w = headWindow(plan, i, h);
      return w.sink !== plan.sink || w.recent !== plan.recent || (w.growth ?? 0) > 0;
    })
  );
}

/** A layer's plan from the kind of each of its KV heads (and, optionally, each one's window). */
export function layerAttention(
  kvHeadKinds: readonly HeadKind[],
  windows?: readonly Window[],
): LayerAttentionPlan {
  const retrievalKvHeads: number[] = [];
  const streamingKvHeads: number[] = [];
  kvHeadKinds.forEach((k, h) => (k === "retrieval" ? retrievalKvHeads : streamingKvHeads).push(h));
  const kind: LayerKind = streamingKvHeads.length === 0
    ? "retrieval"
    : retrievalKvHeads.length === 0
    ? "streaming"
    : "mixed";
  return {
    kind,
    kvHeadKinds: [...kvHeadKinds],
    retrievalKvHeads,
    streamingKvHeads,
    ...(windows ? { windows: windows.map((w) => ({ ...w })) } : {}),
  };
}
