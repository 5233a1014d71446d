// What the runner and the KV-cache manager read from a plan: per layer, which KV heads keep a
// full (paged) cache and which keep the sink + recent ring.

export type PlanMode = "full" | "streaming" | "duo" | "zigzag";

/** retrieval: every KV head full; streaming: every KV head sink+recent; mixed: a duo layer. */
export type LayerKind = "retrieval" | "streaming" | "mixed";

export interface LayerAttentionPlan {
  kind: LayerKind;
  /** KV head indices (ascending) that keep the full cache. */
  retrievalKvHeads: number[];
  /** KV head indices (ascending) that keep only sink + recent tokens. */
  streamingKvHeads: number[];
}

export interface ResolvedPlan {
  mode: PlanMode;
  /** Attention-sink tokens kept by streaming heads (positions [0, sink)). */
  sink: number;
  /** Most recent tokens kept by streaming heads, the current one included. */
  recent: number;
  layers: LayerAttentionPlan[];
}
