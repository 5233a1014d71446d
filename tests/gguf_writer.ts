// The project's own small GGUF writer, for tests: builds a whole file in memory (test files are
// small) in exactly the layout model/gguf.ts reads (see the comment there): header, metadata
// key/values with explicit types, tensor infos, zero padding to the alignment, then each tensor's
// data at the next aligned offset. Tensor data is written as given — the writer does not check
// it against dims and type, so tests can build inconsistent files on purpose.

import { QUANT_BLOCKS, type QuantFormat } from "../gpu/kernels/matmul.ts";
import type { Rng } from "./kernel_harness.ts";

/** A scalar metadata value type. */
export type GgufScalarType =
  | "u8"
  | "i8"
  | "u16"
  | "i16"
  | "u32"
  | "i32"
  | "f32"
  | "bool"
  | "string"
  | "u64"
  | "i64"
  | "f64";

/** A metadata value with its type. Array elements are plain values of `elem`, or for
 * `elem: "array"` nested `{ elem, value }` arrays. */
export type GgufWriteValue =
  | { type: "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "f64"; value: number }
  | { type: "u64" | "i64"; value: number | bigint }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | GgufWriteArray;

/** An array value. */
export type GgufWriteArray =
  | { type: "array"; elem: GgufScalarType; value: (number | bigint | boolean | string)[] }
  | { type: "array"; elem: "array"; value: Omit<GgufWriteArray, "type">[] };

/** One tensor to write. */
export interface GgufWriteTensor {
  name: string;
  /** ggml order: dims[0] is the innermost dimension. */
  dims: number[];
  /** ggml type id. */
  type: number;
  data: Uint8Array;
}

export interface GgufWriteSpec {
  metadata?: [string, GgufWriteValue][];
  tensors?: GgufWriteTensor[];
  /** Data alignment. When given and `general.alignment` is not in metadata, a
   * `general.alignment` u32 entry is added first; when absent, metadata's value or 32. */
  alignment?: number;
  /** Version field to write (default 3; 2 has the same layout). */
  version?: number;
}

/** Where things ended up in an encoded file. */
export interface GgufLayout {
  bytes: Uint8Array;
  alignment: number;
  /** Offset just past the tensor infos (before padding). */
  infosEnd: number;
  /** Absolute offset of the data section. */
  dataOffset: number;
  /** Absolute offset of each tensor's data, in spec order. */
  tensorOffsets: number[];
  /** Absolute offset of each tensor info's u64 `offset` field (to patch in tests). */
  offsetFields: number[];
}

const TYPE_ID: Record<GgufScalarType | "array", number> = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
};

class ByteWriter {
  private buf = new Uint8Array(1024);
  private dv = new DataView(this.buf.buffer);
  len = 0;

  private reserve(n: number): number {
    if (this.len + n > this.buf.length) {
      const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
      next.set(this.buf.subarray(0, this.len));
      this.buf = next;
      this.dv = new DataView(next.buffer);
    }
    const at = this.len;
    this.len += n;
    return at;
  }
  /** Reserves `n` bytes at the end; returns the view to write them through (at len - n). The
   * reserve must happen before `this.dv` is read, since growing replaces it. */
  private at(n: number): DataView {
    this.reserve(n);
    return this.dv;
  }
  u8(v: number) {
    this.at(1).setUint8(this.len - 1, v);
  }
  i8(v: number) {
    this.at(1).setInt8(this.len - 1, v);
  }
  u16(v: number) {
    this.at(2).setUint16(this.len - 2, v, true);
  }
  i16(v: number) {
    this.at(2).setInt16(this.len - 2, v, true);
  }
  u32(v: number) {
    this.at(4).setUint32(this.len - 4, v, true);
  }
  i32(v: number) {
    this.at(4).setInt32(this.len - 4, v, true);
  }
  f32(v: number) {
    this.at(4).setFloat32(this.len - 4, v, true);
  }
  f64(v: number) {
    this.at(8).setFloat64(this.len - 8, v, true);
  }
  u64(v: number | bigint) {
    this.at(8).setBigUint64(this.len - 8, BigInt(v), true);
  }
  i64(v: number | bigint) {
    this.at(8).setBigInt64(this.len - 8, BigInt(v), true);
  }
  bytes(b: Uint8Array) {
    const at = this.reserve(b.length);
    this.buf.set(b, at);
  }
  string(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  padTo(alignment: number) {
    const pad = (alignment - (this.len % alignment)) % alignment;
    this.reserve(pad); // the buffer is zero-filled and never reused
  }
  result(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

function writeScalar(w: ByteWriter, type: GgufScalarType, v: number | bigint | boolean | string) {
  switch (type) {
    case "u8":
      return w.u8(v as number);
    case "i8":
      return w.i8(v as number);
    case "u16":
      return w.u16(v as number);
    case "i16":
      return w.i16(v as number);
    case "u32":
      return w.u32(v as number);
    case "i32":
      return w.i32(v as number);
    case "f32":
      return w.f32(v as number);
    case "f64":
      return w.f64(v as number);
    case "u64":
      return w.u64(v as number | bigint);
    case "i64":
      return w.i64(v as number | bigint);
    case "bool":
      return w.u8(v ? 1 : 0);
    case "string":
      return w.string(v as string);
  }
}

function writeArray(w: ByteWriter, a: Omit<GgufWriteArray, "type">) {
  w.u32(TYPE_ID[a.elem]);
  w.u64(a.value.length);
  if (a.elem === "array") {
    for (const inner of a.value as Omit<GgufWriteArray, "type">[]) writeArray(w, inner);
  } else {
    for (const v of a.value as (number | bigint | boolean | string)[]) writeScalar(w, a.elem, v);
  }
}

/** Encodes a GGUF file in memory. */
export function encodeGguf(spec: GgufWriteSpec): GgufLayout {
  const metadata = [...(spec.metadata ?? [])];
  const tensors = spec.tensors ?? [];
  const given = metadata.find(([k]) => k === "general.alignment")?.[1];
  let alignment = 32;
  if (given) {
    alignment = Number(given.value);
    if (spec.alignment !== undefined && spec.alignment !== alignment) {
      throw new Error(`alignment ${spec.alignment} disagrees with general.alignment ${alignment}`);
    }
  } else if (spec.alignment !== undefined) {
    alignment = spec.alignment;
    metadata.unshift(["general.alignment", { type: "u32", value: alignment }]);
  }
  if (!(alignment > 0)) throw new Error(`bad alignment ${alignment}`);

  const w = new ByteWriter();
  w.u32(0x46554747); // "GGUF"
  w.u32(spec.version ?? 3);
  w.u64(tensors.length);
  w.u64(metadata.length);
  for (const [key, v] of metadata) {
    w.string(key);
    w.u32(TYPE_ID[v.type]);
    if (v.type === "array") writeArray(w, v);
    else writeScalar(w, v.type, v.value);
  }

  const offsetFields: number[] = [];
  const rel: number[] = [];
  let at = 0;
  for (const t of tensors) {
    w.string(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(t.type);
    offsetFields.push(w.len);
    w.u64(at);
    rel.push(at);
    at = Math.ceil((at + t.data.length) / alignment) * alignment;
  }
  const infosEnd = w.len;
  w.padTo(alignment);
  const dataOffset = w.len;
  tensors.forEach((t, i) => {
    w.padTo(alignment);
    if (w.len !== dataOffset + rel[i]) throw new Error("writer layout bug");
    w.bytes(t.data);
  });
  return {
    bytes: w.result(),
    alignment,
    infosEnd,
    dataOffset,
    tensorOffsets: rel.map((r) => dataOffset + r),
    offsetFields,
  };
}

/** Writes a GGUF file to `path`; returns where things were placed. */
export async function writeGguf(path: string, spec: GgufWriteSpec): Promise<GgufLayout> {
  const layout = encodeGguf(spec);
  await Deno.writeFile(path, layout.bytes);
  return layout;
}

/** Random blocks of a GGUF format, their scales set to finite f16 values of a sensible size. */
export function randomBlocks(format: QuantFormat, k: number, rng: Rng): Uint8Array {
  const { elems, bytes } = QUANT_BLOCKS[format];
  const out = new Uint8Array((k / elems) * bytes);
  for (let i = 0; i < out.length; i++) out[i] = rng.int(256);
  const half = (at: number, v: number) => {
    const h = new Uint16Array(Float16Array.of(v).buffer)[0];
    out[at] = h & 255;
    out[at + 1] = h >> 8;
  };
  for (let b = 0; b < k / elems; b++) {
    const o = b * bytes;
    if (format === "q6_k") half(o + 208, rng.uniform(-0.01, 0.01));
    else if (format === "q4_k" || format === "q5_k") {
      half(o, rng.uniform(-0.01, 0.01));
      half(o + 2, rng.uniform(-0.05, 0.05));
    } else half(o, rng.uniform(-0.05, 0.05));
  }
  return out;
}

/** Runs `fn` with a fresh temporary directory, removed afterwards whatever happens. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir();
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
