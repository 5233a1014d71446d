// wgsl/embed.wgsl: token embedding gather, one workgroup per token row.

import { type Groups, kernel } from "./kernel.ts";

export const EMBED_FILE = "embed.wgsl";

export interface EmbedConstants {
  /** Model width (row length of the table and of x). */
  DIM: number;
}

export const EMBED_BINDINGS = { fwd: 0, tokens: 1, table: 2, x: 3 } as const;

export function embed(c: EmbedConstants) {
  return kernel(EMBED_FILE, "main", c, EMBED_BINDINGS);
}

/** One workgroup per token row. */
export function embedGroups(rows: number): Groups {
  return [rows, 1, 1];
}
