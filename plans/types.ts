// What the runner and the KV-cache manager read from a plan: per layer, which KV heads keep a
// full (paged) cache and which keep the sink + recent ring.

export type PlanMode = "full" | "streaming" | "duo" | "zigzag";

/** retrieval: every KV head full; streaming: every KV head sink+recent; mixed: a duo layer. */
export type LayerKind = "retrieval" | "streaming" | "mixed";

/** The cache a KV head keeps: the plan schema's head kinds (`HeadKindSchema`), and
 * "compensated", a streaming head that also keeps RazorAttention's compensation token (a plan's
 * `"compensation": true` makes every streaming head one). */
export type HeadKind = "retrieval" | "streaming" | "compensated";

export interface LayerAttentionPlan {
  kind: LayerKind;
  /** Per KV head (index = head), the cache it keeps; the cache layout groups heads by it. */
  kvHeadKinds: HeadKind[];
  /** KV head indices (ascending) that keep the full cache. */
  retrievalKvHeads: number[];
  /** KV head indices (ascending) that keep only sink + recent tokens (and, compensated ones,
   * the compensation token). */
  streamingKvHeads: number[];
}

export interface ResolvedPlan {
  mode: PlanMode;
  /** Attention-sink tokens kept by streaming heads (positions [0, sink)). */
  sink: number;
  /** Most recent tokens kept by streaming heads, the current one included. */
  recent: number;
  /** The streaming heads are "compensated": each keeps a compensation token too (what
   * `kvHeadKinds` says; default false). */
  compensation?: boolean;
  layers: LayerAttentionPlan[];
}

/** A layer's plan from the kind of each of its KV heads. */
export function layerAttention(kvHeadKinds: readonly HeadKind[]): LayerAttentionPlan {
  const retrievalKvHeads: number[] = [];
  const streamingKvHeads: number[] = [];
  kvHeadKinds.forEach((k, h) => (k === "retrieval" ? retrievalKvHeads : streamingKvHeads).push(h));
  const kind: LayerKind = streamingKvHeads.length === 0
    ? "retrieval"
    : retrievalKvHeads.length === 0
    ? "streaming"
    : "mixed";
  return { kind, kvHeadKinds: [...kvHeadKinds], retrievalKvHeads, streamingKvHeads };
}
