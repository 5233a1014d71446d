// wgsl/embed.wgsl: token embedding gather, one workgroup per token row and dispatch per row
// part of the table.

import { type Groups, kernel } from "./kernel.ts";

export const EMBED_FILE = "embed.wgsl";

export interface EmbedConstants {
  /** Model width (row length of x). */
  DIM: number;
  /** Row stride of the table (DIM, or DIM padded when the LM head shares it). */
  STRIDE: number;
  /** First token id of this row part of the table. */
  ROW_BASE: number;
  /** Token ids this part holds. */
  ROWS: number;
}

export const EMBED_BINDINGS = { fwd: 0, tokens: 1, table: 2, x: 3 } as const;

export function embed(c: EmbedConstants) {
  return kernel(EMBED_FILE, "main", c, EMBED_BINDINGS);
}

/** One workgroup per token row. */
export function embedGroups(rows: number): Groups {
  return [rows, 1, 1];
}
