// wgsl/convert.wgsl: a staged chunk of raw checkpoint values (f32, f16 or bf16) converted to the
// weight storage type, into a weight buffer at an element offset (gpu/weights.ts streams every
// weight through it when the checkpoint's dtype is not the run precision).

import type { SourceDtype } from "../../model/types.ts";
import { grid, type Groups, kernel } from "./kernel.ts";

export const CONVERT_FILE = "convert.wgsl";

/** Threads of one workgroup; each converts two elements. */
export const CONVERT_WORKGROUP = 256;

export const SRC_DTYPES: Record<SourceDtype, number> = { f32: 0, f16: 1, bf16: 2 };

export interface ConvertConstants {
  /** Source dtype code (SRC_DTYPES). */
  SRC_DTYPE: number;
}

export const CONVERT_BINDINGS = { params: 0, src: 1, dst: 2 } as const;

/** struct Convert: 4 u32 (dst_offset, count, pad, pad). */
export const CONVERT_PARAMS_BYTES = 16;

export function convert(src: SourceDtype) {
  return kernel(CONVERT_FILE, "main", { SRC_DTYPE: SRC_DTYPES[src] }, CONVERT_BINDINGS);
}

export function encodeConvert(dstOffset: number, count: number): Uint32Array<ArrayBuffer> {
  return new Uint32Array([dstOffset, count, 0, 0]);
}

/** One thread per two elements. */
export function convertGroups(count: number): Groups {
  return grid(Math.ceil(count / 2 / CONVERT_WORKGROUP));
}
