// wgsl/common.wgsl on the TypeScript side: the `Forward` uniform and the `Row` records every
// kernel of a forward reads, and the `CacheShard` uniform of the cache kernels, laid out once here
// for the runner and the kernel tests.

/** struct Forward: per-forward values that change between submissions. */
export interface ForwardParams {
  /** Token rows in this forward (prefill chunk length or decode batch). */
  rows: number;
  /** Rows whose logits are computed. */
  logitRows: number;
  /** Key splits of split-K decode attention. */
  splits: number;
  /** Visible keys per split (a multiple of SPLIT_KEYS). */
  keysPerSplit: number;
}

export const FORWARD_BYTES = 16;

export function encodeForward(f: ForwardParams): Uint32Array<ArrayBuffer> {
  return new Uint32Array([f.rows, f.logitRows, f.keysPerSplit, f.splits]);
}

/** struct CacheShard: which shard of a cache part a dispatch binds (a uniform buffer of 16
 * bytes, the smallest uniform binding every adapter takes). */
export const CACHE_SHARD_BYTES = 16;

export function encodeCacheShard(index: number): Uint32Array<ArrayBuffer> {
  return new Uint32Array([index, 0, 0, 0]);
}

/** struct Row: one token row of a forward. */
export interface RowParams {
  /** Sequence slot: page-table row and ring index. */
  slot: number;
  /** Absolute position of the token in its sequence. */
  pos: number;
  /** Row index of this sequence's first token in this forward. */
  firstRow: number;
  /** Rows this sequence has in this forward. */
  nSeqRows: number;
}

export const ROW_WORDS = 4;

export function encodeRows(rows: readonly RowParams[]): Uint32Array<ArrayBuffer> {
  const out = new Uint32Array(rows.length * ROW_WORDS);
  rows.forEach((r, i) => out.set([r.slot, r.pos, r.firstRow, r.nSeqRows], i * ROW_WORDS));
  return out;
}
