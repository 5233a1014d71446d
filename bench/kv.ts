// KV-cache figures without a GPU: the cache manager's own accounting (cache/manager.ts, pure
// bookkeeping) and the closed form of CacheGeometry.

import { CacheGeometry, CacheLayout, type KvDtype } from "../cache/layout.ts";
import { type CacheStats, KvCacheManager } from "../cache/manager.ts";
import type { ModelConfig } from "../model/types.ts";
import type { ResolvedPlan } from "../plans/types.ts";

/** The manager's statistics for sequences of these lengths (each given its pages). */
export function managerStats(
  config: ModelConfig,
  plan: ResolvedPlan,
  kvDtype: KvDtype,
  lengths: number[],
  pageSize = 16,
): CacheStats {
  const g = new CacheGeometry(config, plan, kvDtype, pageSize);
  const used = g.usedBytes(lengths);
  // Exactly the rings, the pages these lengths take, and one spare page.
  const budget = lengths.length * g.ringBytes + used.retrieval + g.pageBytes;
  const m = new KvCacheManager(
    new CacheLayout(config, plan, {
      budgetBytes: budget,
      maxSeqs: Math.max(1, lengths.length),
      maxSeqLen: Math.max(1, ...lengths),
      kvDtype,
      pageSize,
    }),
  );
  for (const n of lengths) {
    const seq = m.open()!;
    m.reserve(seq, n);
    m.commit(seq, n);
  }
  return m.stats();
}

export interface Fit {
  /** Sequences that share the budget (each reserves its ring up front, as the manager does). */
  seqs: number;
  budget_bytes: number;
  /** Longest context each of `seqs` sequences can hold; null when unbounded or none. */
  max_context: number | null;
  /** Streaming-only plans hold any length in their rings. */
  unbounded: boolean;
}

/**
 * Closed form of the longest context that fits: the layout reserves `seqs` rings, makes
 * floor((budget - rings) / pageBytes) pages, and a sequence of n tokens takes ceil(n / pageSize).
 */
export function maxContextFit(g: CacheGeometry, budgetBytes: number, seqs: number): Fit {
  const rings = seqs * g.ringBytes;
  const base = { seqs, budget_bytes: budgetBytes };
  if (rings > budgetBytes) return { ...base, max_context: 0, unbounded: false };
  if (!g.paged) return { ...base, max_context: null, unbounded: true };
  const pages = Math.floor((budgetBytes - rings) / g.pageBytes);
  return { ...base, max_context: Math.floor(pages / seqs) * g.pageSize, unbounded: false };
}
