// Our own safetensors reader: u64 little-endian header length, a JSON header
// `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {...}}`, then the raw
// little-endian tensor data (offsets are relative to the end of the header). F32, F16 and BF16
// tensors are converted to f32 on the host. Both a single `model.safetensors` and a sharded
// checkpoint (`model.safetensors.index.json` with a `weight_map`) are supported.
//
// Errors are ModelFormatError and always name the file and, where one is involved, the tensor.

import { type HostTensor, ModelFormatError, type WeightTensor } from "./types.ts";

/** Bytes per element of the dtypes we can convert. */
const DTYPE_SIZE: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };
const SOURCE_DTYPE: Record<string, HostTensor["sourceDtype"]> = {
  F32: "f32",
  F16: "f16",
  BF16: "bf16",
};
/** Element sizes of dtypes we recognise but do not convert (used only to validate offsets). */
const OTHER_DTYPE_SIZE: Record<string, number> = {
  F64: 8,
  I64: 8,
  U64: 8,
  I32: 4,
  U32: 4,
  I16: 2,
  U16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

/** Refuse absurd headers (the format's own reference implementation caps it at 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

/** One tensor's entry in a safetensors header. */
export interface SafetensorsEntry {
  name: string;
  /** As written in the file: "F32", "F16", "BF16", ... */
  dtype: string;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
  /** The file that holds it. */
  file: string;
}

function numel(shape: number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function shapeStr(shape: number[]): string {
  return `[${shape.join(", ")}]`;
}

let f16Table: Float32Array | null = null;

/** f32 value of every f16 bit pattern (256 KiB, built once). */
function halfTable(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    let v: number;
    if (exp === 0) v = frac * 2 ** -24;
    else if (exp === 31) v = frac === 0 ? Infinity : NaN;
    else v = (1 + frac / 1024) * 2 ** (exp - 15);
    t[h] = sign * v;
  }
  f16Table = t;
  return t;
}

/** Converts raw little-endian bytes of `dtype` to f32. `bytes` must start at a 4-byte-aligned
 * offset of its buffer when dtype is F32 (we always read into fresh buffers, so it does). */
export function toFloat32(bytes: Uint8Array, dtype: string): Float32Array {
  if (dtype === "F32") {
    if (bytes.byteOffset % 4 === 0) {
      return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    }
    return new Float32Array(bytes.slice().buffer);
  }
  const n = bytes.byteLength / 2;
  const src = bytes.byteOffset % 2 === 0
    ? new Uint16Array(bytes.buffer, bytes.byteOffset, n)
    : new Uint16Array(bytes.slice().buffer);
  const out = new Float32Array(n);
  if (dtype === "F16") {
    const t = halfTable();
    for (let i = 0; i < n; i++) out[i] = t[src[i]];
  } else if (dtype === "BF16") {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u[i] = src[i] << 16;
  } else {
    throw new Error(`toFloat32: unsupported dtype ${dtype}`);
  }
  return out;
}

/** f32 → f16 bits, round to nearest even (for writing test files). */
export function f32ToF16Bits(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = mant >>> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) {
    h++;
    if (h === 0x400) {
      h = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | h;
}

/** f32 → bf16 bits, round to nearest even. */
export function f32ToBf16Bits(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0];
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff)) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** A tensor to write with {@link encodeSafetensors}. */
export interface TensorToWrite {
  name: string;
  shape: number[];
  dtype: "F32" | "F16" | "BF16";
  data: ArrayLike<number>;
}

/** Serialises tensors into safetensors bytes (used by tests and tools). */
export function encodeSafetensors(
  tensors: TensorToWrite[],
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  for (const t of tensors) {
    const size = t.data.length * DTYPE_SIZE[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + size] };
    off += size;
  }
  let json = JSON.stringify(header);
  const pad = (8 - (new TextEncoder().encode(json).length % 8)) % 8;
  json += " ".repeat(pad);
  const hbytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hbytes.length + off);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, BigInt(hbytes.length), true);
  out.set(hbytes, 8);
  let p = 8 + hbytes.length;
  for (const t of tensors) {
    for (let i = 0; i < t.data.length; i++) {
      const x = t.data[i];
      if (t.dtype === "F32") {
        dv.setFloat32(p, x, true);
        p += 4;
      } else {
        dv.setUint16(p, t.dtype === "F16" ? f32ToF16Bits(x) : f32ToBf16Bits(x), true);
        p += 2;
      }
    }
  }
  return out;
}

async function readFully(file: Deno.FsFile, pos: number, into: Uint8Array, path: string) {
  await file.seek(pos, Deno.SeekMode.Start);
  let got = 0;
  while (got < into.length) {
    const n = await file.read(into.subarray(got));
    if (n === null) {
      throw new ModelFormatError(
        `${path}: unexpected end of file at byte ${
          pos + got
        } (wanted ${into.length} bytes at ${pos})`,
      );
    }
    got += n;
  }
}

/** Opens `path` for reading, turning "not found" into a ModelFormatError naming it. */
async function openFile(path: string, what: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ModelFormatError(`${path}: ${what} not found`);
    }
    throw new ModelFormatError(`${path}: cannot open ${what}: ${(e as Error).message}`);
  }
}

/** One open `.safetensors` file. Call {@link close} when done. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private file: Deno.FsFile,
    readonly size: number,
    readonly entries: Map<string, SafetensorsEntry>,
    readonly metadata: Record<string, string> | null,
  ) {}

  /** Opens a file and validates its header: every tensor's byte range must lie inside the file
   * and match its shape and dtype. */
  static async open(path: string): Promise<SafetensorsFile> {
    const file = await openFile(path, "safetensors file");
    try {
      const size = (await file.stat()).size;
      if (size < 8) {
        throw new ModelFormatError(
          `${path}: truncated safetensors file (${size} bytes, no header)`,
        );
      }
      const lenBytes = new Uint8Array(8);
      await readFully(file, 0, lenBytes, path);
      const hlen = new DataView(lenBytes.buffer).getBigUint64(0, true);
      if (hlen > BigInt(MAX_HEADER_BYTES) || Number(hlen) > size - 8) {
        throw new ModelFormatError(
          `${path}: safetensors header length ${hlen} exceeds the file (${size} bytes): ` +
            `truncated or not a safetensors file`,
        );
      }
      const hbytes = new Uint8Array(Number(hlen));
      await readFully(file, 8, hbytes, path);
      let header: Record<string, unknown>;
      try {
        header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(hbytes));
      } catch (e) {
        throw new ModelFormatError(`${path}: bad safetensors JSON header: ${(e as Error).message}`);
      }
      if (header === null || typeof header !== "object" || Array.isArray(header)) {
        throw new ModelFormatError(`${path}: safetensors header is not a JSON object`);
      }
      const dataStart = 8 + Number(hlen);
      const entries = new Map<string, SafetensorsEntry>();
      let metadata: Record<string, string> | null = null;
      for (const [name, raw] of Object.entries(header)) {
        if (name === "__metadata__") {
          metadata = raw as Record<string, string>;
          continue;
        }
        const r = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
        const bad = (why: string) =>
          new ModelFormatError(`${path}: tensor "${name}": bad header entry: ${why}`);
        if (typeof r?.dtype !== "string") throw bad("no dtype");
        if (
          !Array.isArray(r.shape) || !r.shape.every((d) => Number.isInteger(d) && d >= 0)
        ) throw bad("shape is not a list of non-negative integers");
        const off = r.data_offsets;
        if (
          !Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isInteger(d)) ||
          off[0] < 0 || off[1] < off[0]
        ) throw bad("data_offsets is not [begin, end] with 0 <= begin <= end");
        const shape = r.shape as number[];
        const begin = dataStart + off[0];
        const end = dataStart + off[1];
        if (end > size) {
          throw new ModelFormatError(
            `${path}: tensor "${name}": data_offsets [${off[0]}, ${off[1]}] run past the end of ` +
              `the file (data section is ${size - dataStart} bytes): the file is truncated`,
          );
        }
        const itemSize = DTYPE_SIZE[r.dtype] ?? OTHER_DTYPE_SIZE[r.dtype];
        if (itemSize !== undefined && (end - begin) !== numel(shape) * itemSize) {
          throw new ModelFormatError(
            `${path}: tensor "${name}": ${end - begin} data bytes do not match shape ` +
              `${shapeStr(shape)} of ${r.dtype} (${numel(shape) * itemSize} bytes)`,
          );
        }
        entries.set(name, { name, dtype: r.dtype, shape, begin, end, file: path });
      }
      return new SafetensorsFile(path, file, size, entries, metadata);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** Reads a tensor as f32. With `expectedShape`, a different shape is an error naming the file,
   * the tensor and both shapes. */
  async read(name: string, expectedShape?: number[]): Promise<HostTensor> {
    const e = this.entries.get(name);
    if (!e) throw new ModelFormatError(`${this.path}: tensor "${name}" is missing`);
    checkEntry(e, expectedShape);
    const bytes = new Uint8Array(e.end - e.begin);
    await readFully(this.file, e.begin, bytes, this.path);
    return {
      name,
      shape: e.shape.slice(),
      sourceDtype: SOURCE_DTYPE[e.dtype],
      data: toFloat32(bytes, e.dtype),
    };
  }

  #busy: Promise<unknown> = Promise.resolve();

  /** Raw bytes [begin, begin + length) of the file; reads on one handle are serialised. */
  readAt(begin: number, length: number): Promise<Uint8Array> {
    const run = this.#busy.then(async () => {
      const bytes = new Uint8Array(length);
      await readFully(this.file, begin, bytes, this.path);
      return bytes;
    });
    this.#busy = run.catch(() => {});
    return run;
  }

  close(): void {
    try {
      this.file.close();
    } catch {
      // already closed
    }
  }
}

/** Dtype and shape checks shared by single files and sharded sets. */
export function checkEntry(e: SafetensorsEntry, expectedShape?: number[]): void {
  if (!(e.dtype in DTYPE_SIZE)) {
    throw new ModelFormatError(
      `${e.file}: tensor "${e.name}": unsupported dtype ${e.dtype} (supported: F32, F16, BF16)`,
    );
  }
  if (
    expectedShape &&
    (expectedShape.length !== e.shape.length || expectedShape.some((d, i) => d !== e.shape[i]))
  ) {
    throw new ModelFormatError(
      `${e.file}: tensor "${e.name}": wrong shape: expected ${shapeStr(expectedShape)}, ` +
        `got ${shapeStr(e.shape)}`,
    );
  }
}

function join(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The tensors of a Hugging Face checkpoint directory: `model.safetensors`, or the shards listed
 * in `model.safetensors.index.json`. Shards are opened when first needed.
 */
export class SafetensorsSet {
  private open = new Map<string, SafetensorsFile>();

  private constructor(
    /** The file a missing tensor is reported against (the single file or the index). */
    readonly describedBy: string,
    /** tensor name → file path */
    private weightMap: Map<string, string>,
    private entries: Map<string, SafetensorsEntry> | null,
  ) {}

  /** Opens `dir/model.safetensors.index.json` if present, else `dir/model.safetensors`. */
  static async openDir(dir: string): Promise<SafetensorsSet> {
    const index = join(dir, "model.safetensors.index.json");
    if (await exists(index)) return await SafetensorsSet.openIndex(index);
    const single = join(dir, "model.safetensors");
    if (!(await exists(single))) {
      throw new ModelFormatError(
        `${dir}: no model.safetensors or model.safetensors.index.json found`,
      );
    }
    return await SafetensorsSet.openSingle(single);
  }

  static async openSingle(path: string): Promise<SafetensorsSet> {
    const f = await SafetensorsFile.open(path);
    const set = new SafetensorsSet(
      path,
      new Map([...f.entries.keys()].map((n) => [n, path])),
      new Map(f.entries),
    );
    set.open.set(path, f);
    return set;
  }

  /** A sharded checkpoint from its index JSON (`{"weight_map": {tensor: "shard file"}}`). */
  static async openIndex(indexPath: string): Promise<SafetensorsSet> {
    let text: string;
    try {
      text = await Deno.readTextFile(indexPath);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new ModelFormatError(`${indexPath}: safetensors index not found`);
      }
      throw e;
    }
    let idx: { weight_map?: Record<string, string> };
    try {
      idx = JSON.parse(text);
    } catch (e) {
      throw new ModelFormatError(`${indexPath}: bad JSON: ${(e as Error).message}`);
    }
    if (!idx || typeof idx.weight_map !== "object" || idx.weight_map === null) {
      throw new ModelFormatError(`${indexPath}: no "weight_map" object`);
    }
    const dir = indexPath.includes("/") ? indexPath.slice(0, indexPath.lastIndexOf("/")) : ".";
    const map = new Map<string, string>();
    for (const [name, shard] of Object.entries(idx.weight_map)) {
      if (typeof shard !== "string") {
        throw new ModelFormatError(`${indexPath}: tensor "${name}": weight_map value not a string`);
      }
      map.set(name, join(dir, shard));
    }
    return new SafetensorsSet(indexPath, map, null);
  }

  has(name: string): boolean {
    return this.weightMap.has(name);
  }

  names(): string[] {
    return [...this.weightMap.keys()];
  }

  private async fileFor(name: string): Promise<SafetensorsFile> {
    const path = this.weightMap.get(name);
    if (path === undefined) {
      throw new ModelFormatError(`${this.describedBy}: tensor "${name}" is missing`);
    }
    let f = this.open.get(path);
    if (!f) {
      f = await SafetensorsFile.open(path);
      this.open.set(path, f);
    }
    return f;
  }

  /** The header entry of a tensor (opens its shard). */
  async entry(name: string): Promise<SafetensorsEntry> {
    const cached = this.entries?.get(name);
    if (cached) return cached;
    const f = await this.fileFor(name);
    const e = f.entries.get(name);
    if (!e) {
      throw new ModelFormatError(
        `${f.path}: tensor "${name}" is missing (${this.describedBy} says it is in this shard)`,
      );
    }
    return e;
  }

  async read(name: string, expectedShape?: number[]): Promise<HostTensor> {
    const f = await this.fileFor(name);
    if (!f.entries.has(name)) await this.entry(name); // throws the shard-specific message
    return await f.read(name, expectedShape);
  }

  /**
   * A tensor read on demand: only its header entry is checked now; `readRaw` reads element
   * ranges from its shard later (the set must stay open until the last read).
   */
  async lazy(name: string, expectedShape?: number[]): Promise<WeightTensor> {
    const e = await this.entry(name);
    checkEntry(e, expectedShape);
    const item = DTYPE_SIZE[e.dtype];
    const count = numel(e.shape);
    return {
      name,
      shape: e.shape.slice(),
      sourceDtype: SOURCE_DTYPE[e.dtype],
      readRaw: async (offset, n) => {
        if (offset < 0 || n < 0 || offset + n > count) {
          throw new RangeError(
            `${e.file}: tensor "${name}": elements [${offset}, ${offset + n}) ` +
              `outside its ${count}`,
          );
        }
        return await (await this.fileFor(name)).readAt(e.begin + offset * item, n * item);
      },
    };
  }

  close(): void {
    for (const f of this.open.values()) f.close();
    this.open.clear();
  }
}
