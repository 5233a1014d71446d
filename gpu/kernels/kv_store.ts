// wgsl/kv_store.wgsl: writes a forward's fresh keys and values into one KV-cache part, compiled
// with the part's layout include (cache_layout.ts) and the KV dtype's codec; one workgroup per
// token row and cache head, one dispatch per shard of the part (each writes the rows its shard
// holds).

import { CACHE_LAYOUTS, type CachePartKernel } from "./cache_layout.ts";
import { type Groups, kernel } from "./kernel.ts";

export const KV_STORE_FILE = "kv_store.wgsl";

export interface KvStoreConstants {
  HEAD_DIM: number;
  /** Query heads of the model (offset of the keys in a fused row). */
  N_HEADS: number;
  N_KV_HEADS: number;
  /** First KV head held by this part. */
  KV_HEAD_BASE: number;
  /** KV heads held by this part. */
  CACHE_HEADS: number;
}

export function kvStore(c: KvStoreConstants, part: CachePartKernel) {
  const layout = CACHE_LAYOUTS[part.layout];
  return kernel(
    KV_STORE_FILE,
    "main",
    { ...c, ...part.constants },
    { fwd: 0, rows: 1, qkv: 2, kCache: 3, vCache: 4, shard: 9, ...layout.bindings },
    [layout.include],
    true,
  );
}

/** One workgroup per token row and cache head (each quantizes its head on its own). */
export function kvStoreGroups(rows: number, cacheHeads: number): Groups {
  return [rows, cacheHeads, 1];
}
