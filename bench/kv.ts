// KV-cache figures without a GPU: the manager's own accounting (gpu/kv_cache.ts) run against a
// stub device that allocates nothing, and the closed form of KvGeometry.

import type { Precision } from "../gpu/device.ts";
import { type CacheStats, KvCacheManager, KvGeometry } from "../gpu/kv_cache.ts";
import type { ModelConfig } from "../model/types.ts";
import type { ResolvedPlan } from "../plans/types.ts";

/** A GPUDevice stand-in for KvCacheManager: buffers are sized but never allocated. */
export function stubDevice(maxBinding = Number.MAX_SAFE_INTEGER): GPUDevice {
  const device = {
    limits: { maxStorageBufferBindingSize: maxBinding },
    createBuffer: (d: GPUBufferDescriptor) => ({ size: d.size, label: d.label, destroy() {} }),
    queue: { writeBuffer() {} },
  };
  return device as unknown as GPUDevice;
}

/** The manager's statistics for sequences of these lengths (each given its pages). */
export function managerStats(
  config: ModelConfig,
  plan: ResolvedPlan,
  kvDtype: Precision,
  lengths: number[],
  pageSize = 16,
): CacheStats {
  const g = new KvGeometry(config, plan, kvDtype, pageSize);
  const maxSeqLen = Math.max(1, ...lengths);
  const used = g.usedBytes(lengths);
  const budget = lengths.length * g.ringBytes + used.retrieval + g.pageBytes;
  const m = new KvCacheManager(stubDevice(), config, plan, {
    budgetBytes: budget,
    maxSeqs: Math.max(1, lengths.length),
    maxSeqLen,
    kvDtype,
    pageSize,
  });
  for (const n of lengths) {
    const seq = m.open()!;
    if (!m.ensure(seq, n)) throw new Error(`stub manager refused ${n} tokens`);
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
 * Closed form of the longest context that fits: the manager reserves `seqs` rings, makes
 * floor((budget - rings) / pageBytes) pages, and a sequence of n tokens takes ceil(n / pageSize).
 */
export function maxContextFit(g: KvGeometry, budgetBytes: number, seqs: number): Fit {
  const rings = seqs * g.ringBytes;
  const base = { seqs, budget_bytes: budgetBytes };
  if (rings > budgetBytes) return { ...base, max_context: 0, unbounded: false };
  if (g.retrievalHeads === 0) return { ...base, max_context: null, unbounded: true };
  const pages = Math.floor((budgetBytes - rings) / g.pageBytes);
  return { ...base, max_context: Math.floor(pages / seqs) * g.pageSize, unbounded: false };
}
