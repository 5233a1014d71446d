// Our own GGUF container reader (versions 2 and 3, little-endian). It parses the header — the
// metadata key/values and the tensor infos — without loading any tensor data, then serves byte
// ranges of single tensors on demand (GgufReader). Decoding the block formats is gguf_blocks.ts's
// job; this module only needs their block sizes to know how many bytes each tensor takes.
//
// Layout (ggml's docs/gguf.md and gguf.cpp; all integers little-endian):
//   u32 magic "GGUF" (bytes 47 47 55 46), u32 version, u64 tensor_count, u64 metadata_kv_count,
//   metadata_kv_count x { string key, u32 value_type, value },
//   tensor_count x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset },
//   zero padding up to a multiple of `general.alignment` (default 32), the data section.
// A string is u64 byte length + UTF-8 bytes (no terminator); an array is u32 element type +
// u64 count + the elements. ne[0] is the innermost (contiguous) dimension. Tensor offsets are
// relative to the data section and multiples of the alignment. Version 1 (u32 lengths) is not
// supported; a big-endian file (version 3 written byte-swapped) is recognised and refused.
//
// Values typed u64/i64 are returned as `number` when they are safe integers and as `bigint`
// otherwise; structural u64s (counts, dims, offsets) must be safe integers or the file is refused.
//
// The header is read incrementally: the parser runs synchronously over a buffer holding a prefix
// of the file and, when it runs past the bytes read so far, the item being parsed (one metadata
// entry or one tensor info) is re-parsed after the buffer has grown (at least doubled). So a
// header with a 128k-token vocabulary (tens of MB) costs at most about twice its parse time, and
// nothing past the header is read. Truncation is detected against the file size before growing.
//
// Errors are GgufError (a ModelFormatError) and always name the file and what is wrong.

import { BLOCK_FORMATS, type GgmlType, ggmlTypeOf } from "./gguf_blocks.ts";
import { ModelFormatError } from "./types.ts";

/** A GGUF format problem; the message starts with the file's path. */
export class GgufError extends ModelFormatError {
  constructor(readonly path: string, what: string) {
    super(`${path}: ${what}`);
    this.name = "GgufError";
  }
}

/** A metadata value. Integers of every width and floats are `number`, except u64/i64 values that
 * are not safe integers (beyond ±(2^53-1)), which are `bigint`. Arrays are plain JS arrays. */
export type GgufValue = number | bigint | boolean | string | GgufValue[];

/** GGUF metadata value type names, indexed by their on-disk id (GGUF_METADATA_VALUE_TYPE_*). */
export const GGUF_VALUE_TYPES = [
  "u8",
  "i8",
  "u16",
  "i16",
  "u32",
  "i32",
  "f32",
  "bool",
  "string",
  "array",
  "u64",
  "i64",
  "f64",
] as const;

/** A metadata value type name (see {@link GGUF_VALUE_TYPES}). */
export type GgufValueType = typeof GGUF_VALUE_TYPES[number];

/** One tensor's header entry. */
export interface GgufTensorInfo {
  name: string;
  /** Dimensions in ggml order: dims[0] (ne[0]) is the innermost, contiguous one. */
  dims: number[];
  /** ggml type id (`enum ggml_type`) as stored in the file. */
  type: number;
  /** The type's name, e.g. "Q8_0". */
  typeName: GgmlType;
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  /** Bytes of data: elements / blockElems * blockBytes. */
  bytes: number;
  /** Number of elements: the product of dims (1 for zero dims). */
  elements: number;
}

/** A parsed GGUF header. */
export interface GgufFile {
  path: string;
  /** File size in bytes. */
  size: number;
  /** 2 or 3. */
  version: number;
  /** Metadata in file order. */
  metadata: Map<string, GgufValue>;
  /** Each key's stored type: a scalar type name, "array<elem>" (e.g. "array<string>") or, for
   * arrays of arrays, "array<array>". */
  metadataTypes: Map<string, string>;
  /** Tensor infos in file order. */
  tensors: GgufTensorInfo[];
  /** The same infos by name. */
  tensorsByName: Map<string, GgufTensorInfo>;
  /** `general.alignment`, or 32. */
  alignment: number;
  /** Absolute offset of the data section (end of the tensor infos, padded to `alignment`). */
  dataOffset: number;
}

const MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_DIMS. */
const MAX_DIMS = 4;
/** First read of a header; grown by doubling from there. */
const INITIAL_READ = 256 * 1024;
/** Refuse headers beyond this (a corrupt length would otherwise make us read a whole file). */
const MAX_HEADER_BYTES = 512 * 1024 * 1024;

const TYPE_BY_ID = new Map<number, GgmlType>(
  (Object.keys(BLOCK_FORMATS) as GgmlType[]).map((t) => [BLOCK_FORMATS[t].id, t]),
);

const utf8 = new TextDecoder(); // non-fatal: invalid UTF-8 becomes U+FFFD

const utf8Fatal = new TextDecoder("utf-8", { fatal: true });

/** Thrown inside the parser when the buffer holds fewer bytes than it needs (but the file has
 * them): `upTo` is the absolute file offset the buffer must reach. */
class NeedMore {
  constructor(readonly upTo: number) {}
}

/** Synchronous little-endian cursor over a growing prefix of the file. */
class HeaderParser {
  buf = new Uint8Array(0);
  dv = new DataView(this.buf.buffer);
  /** Bytes of the file held in buf. */
  len = 0;
  pos = 0;
  /** What is being parsed, for truncation errors. */
  ctx = "the header";

  constructor(readonly path: string, readonly fileSize: number, private fh: Deno.FsFile) {}

  fail(what: string): never {
    throw new GgufError(this.path, what);
  }

  /** Ensures `n` bytes at pos are available (throwing NeedMore or a truncation error). */
  need(n: number): void {
    const end = this.pos + n;
    if (end <= this.len) return;
    if (end > this.fileSize) {
      this.fail(
        `truncated header: ${this.ctx} needs bytes up to offset ${end} but the file has only ` +
          `${this.fileSize} bytes`,
      );
    }
    throw new NeedMore(end);
  }

  /** Grows the buffer to hold at least the first `upTo` bytes of the file. */
  async grow(upTo: number): Promise<void> {
    const doubled = Math.min(Math.max(this.len * 2, INITIAL_READ), MAX_HEADER_BYTES);
    const target = Math.min(this.fileSize, Math.max(upTo, doubled));
    if (target > MAX_HEADER_BYTES) {
      this.fail(
        `header larger than ${MAX_HEADER_BYTES} bytes while reading ${this.ctx} (corrupt file?)`,
      );
    }
    if (target <= this.len) return;
    const next = new Uint8Array(target);
    next.set(this.buf.subarray(0, this.len));
    await this.fh.seek(this.len, Deno.SeekMode.Start);
    let got = this.len;
    while (got < target) {
      const n = await this.fh.read(next.subarray(got, target));
      if (n === null) {
        this.fail(`file ended at ${got} bytes while reading the header (it was ${this.fileSize})`);
      }
      got += n;
    }
    this.buf = next;
    this.dv = new DataView(next.buffer);
    this.len = target;
  }

  /** Runs `fn` (which parses from pos), growing the buffer and retrying from the same position
   * until it has the bytes it needs. */
  async step<T>(fn: () => T): Promise<T> {
    const start = this.pos;
    for (;;) {
      try {
        return fn();
      } catch (e) {
        if (!(e instanceof NeedMore)) throw e;
        this.pos = start;
        await this.grow(e.upTo);
      }
    }
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++];
  }
  i8(): number {
    this.need(1);
    return this.dv.getInt8(this.pos++);
  }
  u16(): number {
    this.need(2);
    const v = this.dv.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  i16(): number {
    this.need(2);
    const v = this.dv.getInt16(this.pos, true);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  i32(): number {
    this.need(4);
    const v = this.dv.getInt32(this.pos, true);
    this.pos += 4;
    return v;
  }
  f32(): number {
    this.need(4);
    const v = this.dv.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }
  f64(): number {
    this.need(8);
    const v = this.dv.getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }
  /** u64 as a number when it is below 2^53, else a bigint. */
  u64(): number | bigint {
    this.need(8);
    const lo = this.dv.getUint32(this.pos, true);
    const hi = this.dv.getUint32(this.pos + 4, true);
    let v: number | bigint;
    if (hi < 0x200000) v = hi * 4294967296 + lo;
    else v = this.dv.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }
  /** i64 as a number when it is a safe integer, else a bigint. */
  i64(): number | bigint {
    this.need(8);
    const lo = this.dv.getUint32(this.pos, true);
    const hi = this.dv.getInt32(this.pos + 4, true);
    let v: number | bigint = NaN;
    // For |hi| <= 2^21 the arithmetic is exact, so the safety check is on the true value.
    if (hi >= -0x200000 && hi < 0x200000) v = hi * 4294967296 + lo;
    if (!Number.isSafeInteger(v)) v = this.dv.getBigInt64(this.pos, true);
    this.pos += 8;
    return v;
  }
  /** A structural u64 (count, dim, offset, length): must be a safe integer. */
  size(what: string): number {
    const v = this.u64();
    if (typeof v === "bigint") this.fail(`${what} ${v} is too large (corrupt file?)`);
    return v;
  }
  bool(): boolean {
    const at = this.pos;
    const b = this.u8();
    if (b > 1) this.fail(`${this.ctx}: bool value ${b} at offset ${at} is neither 0 nor 1`);
    return b === 1;
  }
  string(): string {
    this.need(8);
    const lo = this.dv.getUint32(this.pos, true);
    const hi = this.dv.getUint32(this.pos + 4, true);
    if (hi >= 0x200000) this.fail(`${this.ctx}: string length ${hi} * 2^32 + ${lo} is too large`);
    const n = hi * 4294967296 + lo;
    this.pos += 8;
    this.need(n);
    const start = this.pos;
    this.pos += n;
    return utf8.decode(this.buf.subarray(start, start + n));
  }

  /** Reads `count` strings into `out`. Decoding 100k+ short strings one TextDecoder call at a
   * time is slow, so the bytes of all of them are gathered into one buffer, decoded with one
   * call and sliced by their UTF-16 lengths (counted from the bytes). That is exact when the
   * whole buffer is valid UTF-8 and no string starts with a continuation byte (so no character
   * spans two strings); otherwise each string is decoded on its own. */
  strings(out: GgufValue[], count: number): void {
    const start = this.pos;
    // Pass 1: lengths and bounds (all a NeedMore retry repeats).
    let total = 0;
    for (let i = 0; i < count; i++) {
      this.need(8);
      const lo = this.dv.getUint32(this.pos, true);
      const hi = this.dv.getUint32(this.pos + 4, true);
      if (hi !== 0) this.fail(`${this.ctx}: string ${i} is too long (${hi} * 2^32 + ${lo} bytes)`);
      this.pos += 8;
      this.need(lo);
      this.pos += lo;
      total += lo;
    }
    const end = this.pos;
    // Pass 2: gather the bytes and each string's end in UTF-16 units.
    const b = this.buf;
    const dv = this.dv;
    const bytes = new Uint8Array(total);
    const ends = new Float64Array(count);
    let w = 0, units = 0, boundariesOk = true;
    for (let i = 0, p = start; i < count; i++) {
      const n = dv.getUint32(p, true);
      p += 8;
      if (n > 0 && (b[p] & 0xc0) === 0x80) boundariesOk = false;
      for (const e = p + n; p < e; p++) {
        const c = b[p];
        bytes[w++] = c;
        if ((c & 0xc0) !== 0x80) units += c >= 0xf0 ? 2 : 1;
      }
      ends[i] = units;
    }
    let all: string | undefined;
    if (boundariesOk) {
      try {
        all = utf8Fatal.decode(bytes);
      } catch {
        all = undefined;
      }
    }
    if (all !== undefined && all.length === units) {
      for (let i = 0, prev = 0; i < count; i++) {
        out[i] = all.slice(prev, ends[i]);
        prev = ends[i];
      }
    } else {
      this.pos = start;
      for (let i = 0; i < count; i++) out[i] = this.string();
      if (this.pos !== end) throw new Error("GGUF string array re-read mismatch");
    }
  }

  valueType(): GgufValueType {
    const at = this.pos;
    const t = this.u32();
    const name = GGUF_VALUE_TYPES[t];
    if (name === undefined) {
      this.fail(
        `${this.ctx}: unknown metadata value type ${t} at offset ${at} ` +
          `(known: ${GGUF_VALUE_TYPES.map((n, i) => `${i}=${n}`).join(", ")})`,
      );
    }
    return name;
  }

  /** One value of type `t`; returns it and its type description. */
  value(t: GgufValueType): [GgufValue, string] {
    switch (t) {
      case "u8":
        return [this.u8(), t];
      case "i8":
        return [this.i8(), t];
      case "u16":
        return [this.u16(), t];
      case "i16":
        return [this.i16(), t];
      case "u32":
        return [this.u32(), t];
      case "i32":
        return [this.i32(), t];
      case "f32":
        return [this.f32(), t];
      case "bool":
        return [this.bool(), t];
      case "string":
        return [this.string(), t];
      case "u64":
        return [this.u64(), t];
      case "i64":
        return [this.i64(), t];
      case "f64":
        return [this.f64(), t];
      case "array":
        return this.array();
    }
  }

  array(): [GgufValue[], string] {
    const elem = this.valueType();
    const count = this.size(`${this.ctx}: array length`);
    // Every element takes at least 1 byte (strings 8, arrays 12): refuse impossible counts
    // before looping over them.
    const minBytes = elem === "string" ? 8 : elem === "array" ? 12 : 1;
    if (count * minBytes > this.fileSize - this.pos) {
      this.fail(
        `truncated header: ${this.ctx} is an array of ${count} ${elem} values, more than the ` +
          `${this.fileSize - this.pos} bytes left in the file`,
      );
    }
    const out: GgufValue[] = new Array(count);
    switch (elem) {
      case "string":
        this.strings(out, count);
        break;
      case "f32":
        this.need(4 * count);
        for (let i = 0; i < count; i++, this.pos += 4) {
          out[i] = this.dv.getFloat32(this.pos, true);
        }
        break;
      case "i32":
        this.need(4 * count);
        for (let i = 0; i < count; i++, this.pos += 4) out[i] = this.dv.getInt32(this.pos, true);
        break;
      case "u32":
        this.need(4 * count);
        for (let i = 0; i < count; i++, this.pos += 4) out[i] = this.dv.getUint32(this.pos, true);
        break;
      case "array":
        for (let i = 0; i < count; i++) out[i] = this.array()[0];
        return [out, "array<array>"];
      default:
        for (let i = 0; i < count; i++) out[i] = this.value(elem)[0];
    }
    return [out, `array<${elem}>`];
  }
}

/** Opens `path` for reading, turning errors into a GgufError naming it. */
async function openFile(path: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new GgufError(path, "GGUF file not found");
    throw new GgufError(path, `cannot open GGUF file: ${(e as Error).message}`);
  }
}

async function parseHeader(path: string, fh: Deno.FsFile): Promise<GgufFile> {
  const size = (await fh.stat()).size;
  const p: HeaderParser = new HeaderParser(path, size, fh);
  await p.grow(Math.min(size, INITIAL_READ));

  if (size < 4 || p.dv.getUint32(0, true) !== MAGIC) {
    const head = Array.from(p.buf.subarray(0, Math.min(4, size)))
      .map((b) => b.toString(16).padStart(2, "0")).join(" ");
    throw new GgufError(
      path,
      `not a GGUF file: it starts with bytes [${head}], not the magic "GGUF" (47 47 55 46)`,
    );
  }
  p.pos = 4;
  p.ctx = "the version";
  const version = p.u32();
  if (version !== 2 && version !== 3) {
    const swapped = ((version & 0xff) << 24 | (version & 0xff00) << 8 | (version >>> 8) & 0xff00 |
      version >>> 24) >>> 0;
    if (swapped === 2 || swapped === 3) {
      throw new GgufError(path, `big-endian GGUF (version ${swapped}) is not supported`);
    }
    throw new GgufError(
      path,
      `unsupported GGUF version ${version} (supported: 2 and 3` +
        `${version === 1 ? "; version 1 used 32-bit lengths and is obsolete" : ""})`,
    );
  }
  p.ctx = "the tensor and metadata counts";
  const tensorCount = p.size("tensor count");
  const kvCount = p.size("metadata entry count");
  // Each metadata entry takes at least 13 bytes, each tensor info at least 24.
  if (kvCount * 13 + tensorCount * 24 > size - p.pos) {
    p.fail(
      `truncated header: it declares ${kvCount} metadata entries and ${tensorCount} tensors, ` +
        `which cannot fit in the ${size} bytes of the file`,
    );
  }

  const metadata = new Map<string, GgufValue>();
  const metadataTypes = new Map<string, string>();
  for (let i = 0; i < kvCount; i++) {
    await p.step(() => {
      p.ctx = `metadata entry ${i} of ${kvCount}`;
      const key = p.string();
      p.ctx = `metadata entry ${i} of ${kvCount} (${JSON.stringify(key)})`;
      if (metadata.has(key)) p.fail(`duplicate metadata key ${JSON.stringify(key)}`);
      const [value, type] = p.value(p.valueType());
      metadata.set(key, value);
      metadataTypes.set(key, type);
    });
  }

  let alignment = DEFAULT_ALIGNMENT;
  if (metadata.has("general.alignment")) {
    const a = metadata.get("general.alignment");
    if (typeof a !== "number" || !Number.isInteger(a) || a <= 0 || (a & (a - 1)) !== 0) {
      p.fail(
        `general.alignment must be a positive power of two, got ${String(a)} ` +
          `(${metadataTypes.get("general.alignment")})`,
      );
    }
    alignment = a;
  }

  interface RawInfo {
    name: string;
    dims: number[];
    type: number;
    rel: number;
  }
  const raw: RawInfo[] = [];
  for (let i = 0; i < tensorCount; i++) {
    raw.push(
      await p.step(() => {
        p.ctx = `tensor info ${i} of ${tensorCount}`;
        const name = p.string();
        p.ctx = `tensor info ${i} of ${tensorCount} (${JSON.stringify(name)})`;
        const nDims = p.u32();
        if (nDims > MAX_DIMS) p.fail(`tensor "${name}": ${nDims} dimensions (at most ${MAX_DIMS})`);
        const dims: number[] = [];
        for (let d = 0; d < nDims; d++) dims.push(p.size(`tensor "${name}": dimension ${d}`));
        const type = p.u32();
        const rel = p.size(`tensor "${name}": data offset`);
        return { name, dims, type, rel };
      }),
    );
  }
  const dataOffset = Math.ceil(p.pos / alignment) * alignment;

  const tensors: GgufTensorInfo[] = [];
  const tensorsByName = new Map<string, GgufTensorInfo>();
  for (const { name, dims, type, rel } of raw) {
    const t = `tensor "${name}"`;
    if (tensorsByName.has(name)) p.fail(`duplicate tensor name "${name}"`);
    let typeName = TYPE_BY_ID.get(type);
    if (typeName === undefined) {
      try {
        typeName = ggmlTypeOf(type); // throws, naming the id and the supported types
      } catch (e) {
        p.fail(`${t}: ${(e as Error).message}`);
      }
    }
    const { blockElems, blockBytes } = BLOCK_FORMATS[typeName];
    let elements = 1;
    for (const d of dims) elements *= d;
    if (!Number.isSafeInteger(elements)) p.fail(`${t}: dims [${dims}] have too many elements`);
    const ne0 = dims.length > 0 ? dims[0] : 1;
    if (ne0 % blockElems !== 0) {
      p.fail(
        `${t}: ne[0] = ${ne0} is not a multiple of the ${blockElems}-element ${typeName} block ` +
          `(dims [${dims}])`,
      );
    }
    const bytes = (elements / blockElems) * blockBytes;
    if (rel % alignment !== 0) {
      p.fail(`${t}: data offset ${rel} is not a multiple of the alignment ${alignment}`);
    }
    const offset = dataOffset + rel;
    if (!Number.isSafeInteger(offset + bytes) || offset + bytes > size) {
      p.fail(
        `${t} (${typeName} [${dims}]): its data [${offset}, ${offset + bytes}) extends past the ` +
          `end of the file (${size} bytes)`,
      );
    }
    const info: GgufTensorInfo = { name, dims, type, typeName, offset, bytes, elements };
    tensors.push(info);
    tensorsByName.set(name, info);
  }

  return {
    path,
    size,
    version,
    metadata,
    metadataTypes,
    tensors,
    tensorsByName,
    alignment,
    dataOffset,
  };
}

/** Parses the header of the GGUF file at `path` (reading only the header's bytes). */
export async function readGguf(path: string): Promise<GgufFile> {
  const fh = await openFile(path);
  try {
    return await parseHeader(path, fh);
  } finally {
    fh.close();
  }
}

/** An open GGUF file: its parsed header plus on-demand reads of tensor data. Reads are
 * serialized (they share one file position), so concurrent calls are safe. Call
 * {@link close} when done. */
export class GgufReader {
  private queue: Promise<unknown> = Promise.resolve();
  private pending = 0;
  private closed = false;

  private constructor(readonly file: GgufFile, private fh: Deno.FsFile) {}

  /** Opens `path` and parses its header. */
  static async open(path: string): Promise<GgufReader> {
    const fh = await openFile(path);
    try {
      return new GgufReader(await parseHeader(path, fh), fh);
    } catch (e) {
      fh.close();
      throw e;
    }
  }

  /** The info of the tensor called `name`; throws a GgufError if there is none. */
  tensor(name: string): GgufTensorInfo {
    const info = this.file.tensorsByName.get(name);
    if (!info) throw new GgufError(this.file.path, `no tensor named "${name}"`);
    return info;
  }

  /** Reads `length` bytes (default: to the end) of a tensor's data starting `start` bytes into
   * it. */
  read(info: GgufTensorInfo | string, start = 0, length?: number): Promise<Uint8Array> {
    const t = typeof info === "string" ? this.tensor(info) : info;
    const n = length ?? t.bytes - start;
    this.checkRange(t, start, n);
    return this.readInto(t, start, new Uint8Array(n));
  }

  /** Fills `dest` with a tensor's bytes from `start` bytes into it; returns `dest`. */
  readInto(info: GgufTensorInfo | string, start: number, dest: Uint8Array): Promise<Uint8Array> {
    const t = typeof info === "string" ? this.tensor(info) : info;
    this.checkRange(t, start, dest.length);
    if (this.closed) {
      return Promise.reject(new GgufError(this.file.path, `tensor "${t.name}": read after close`));
    }
    this.pending++;
    const job = this.queue.then(async () => {
      await this.fh.seek(t.offset + start, Deno.SeekMode.Start);
      let got = 0;
      while (got < dest.length) {
        const r = await this.fh.read(dest.subarray(got));
        if (r === null) {
          throw new GgufError(
            this.file.path,
            `tensor "${t.name}": file ended while reading its data (file changed since opened?)`,
          );
        }
        got += r;
      }
      return dest;
    });
    this.queue = job.catch(() => {}).finally(() => {
      if (--this.pending === 0 && this.closed) this.fh.close();
    });
    return job;
  }

  /** A tensor's data as consecutive chunks of at most `chunkBytes` bytes (fresh arrays). */
  async *chunks(info: GgufTensorInfo | string, chunkBytes = 8 << 20): AsyncGenerator<Uint8Array> {
    const t = typeof info === "string" ? this.tensor(info) : info;
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes <= 0) {
      throw new RangeError(`chunkBytes must be a positive integer, got ${chunkBytes}`);
    }
    for (let at = 0; at < t.bytes; at += chunkBytes) {
      yield await this.read(t, at, Math.min(chunkBytes, t.bytes - at));
    }
  }

  /** Closes the file (pending reads finish first). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.pending === 0) this.fh.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  private checkRange(t: GgufTensorInfo, start: number, n: number): void {
    if (
      !Number.isSafeInteger(start) || !Number.isSafeInteger(n) || start < 0 || n < 0 ||
      start + n > t.bytes
    ) {
      throw new GgufError(
        this.file.path,
        `tensor "${t.name}": byte range [${start}, ${start + n}) is outside its ${t.bytes} bytes`,
      );
    }
  }
}

/** Opens `path`, reads one tensor's bytes (or a range of them) and closes it again. */
export async function readGgufTensor(
  path: string,
  tensor: string,
  start = 0,
  length?: number,
): Promise<Uint8Array> {
  const r = await GgufReader.open(path);
  try {
    return await r.read(r.tensor(tensor), start, length);
  } finally {
    r.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Typed metadata access. The required variants throw a GgufError naming the key when it is
// missing or holds another type; the *Opt variants return undefined when it is missing (and still
// throw on a wrong type).

function typeError(f: GgufFile, key: string, want: string): never {
  const v = f.metadata.get(key);
  const shown = typeof v === "string"
    ? JSON.stringify(v.slice(0, 40))
    : Array.isArray(v)
    ? `${v.length} elements`
    : String(v);
  throw new GgufError(
    f.path,
    `metadata key "${key}" is ${f.metadataTypes.get(key)} (${shown}), expected ${want}`,
  );
}

function missing(f: GgufFile, key: string, want: string): never {
  throw new GgufError(f.path, `metadata key "${key}" (${want}) is missing`);
}

/** A string metadata value, or undefined when the key is absent. */
export function metaStringOpt(f: GgufFile, key: string): string | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== "string") typeError(f, key, "a string");
  return v;
}

/** A string metadata value. */
export function metaString(f: GgufFile, key: string): string {
  return metaStringOpt(f, key) ?? missing(f, key, "a string");
}

/** A numeric metadata value (any integer or float type; u64/i64 only when a safe integer), or
 * undefined when the key is absent. */
export function metaNumberOpt(f: GgufFile, key: string): number | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== "number") typeError(f, key, "a number (a safe integer if 64-bit)");
  return v;
}

/** A numeric metadata value (any integer or float type; u64/i64 only when a safe integer). */
export function metaNumber(f: GgufFile, key: string): number {
  return metaNumberOpt(f, key) ?? missing(f, key, "a number");
}

/** A bool metadata value, or undefined when the key is absent. */
export function metaBoolOpt(f: GgufFile, key: string): boolean | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== "boolean") typeError(f, key, "a bool");
  return v;
}

/** A bool metadata value. */
export function metaBool(f: GgufFile, key: string): boolean {
  return metaBoolOpt(f, key) ?? missing(f, key, "a bool");
}

/** An array metadata value (elements of any type), or undefined when the key is absent. */
export function metaArrayOpt(f: GgufFile, key: string): GgufValue[] | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) typeError(f, key, "an array");
  return v;
}

/** An array metadata value (elements of any type). */
export function metaArray(f: GgufFile, key: string): GgufValue[] {
  return metaArrayOpt(f, key) ?? missing(f, key, "an array");
}

/** An array of strings, or undefined when the key is absent. */
export function metaStringArrayOpt(f: GgufFile, key: string): string[] | undefined {
  const v = metaArrayOpt(f, key);
  if (v === undefined) return undefined;
  if (f.metadataTypes.get(key) !== "array<string>") typeError(f, key, "array<string>");
  return v as string[];
}

/** An array of strings. */
export function metaStringArray(f: GgufFile, key: string): string[] {
  return metaStringArrayOpt(f, key) ?? missing(f, key, "array<string>");
}

/** An array of numbers (any numeric element type; 64-bit elements must be safe integers), or
 * undefined when the key is absent. */
export function metaNumberArrayOpt(f: GgufFile, key: string): number[] | undefined {
  const v = metaArrayOpt(f, key);
  if (v === undefined) return undefined;
  for (let i = 0; i < v.length; i++) {
    if (typeof v[i] !== "number") {
      typeError(f, key, `an array of numbers (element ${i} is ${String(v[i])})`);
    }
  }
  return v as number[];
}

/** An array of numbers (any numeric element type; 64-bit elements must be safe integers). */
export function metaNumberArray(f: GgufFile, key: string): number[] {
  return metaNumberArrayOpt(f, key) ?? missing(f, key, "an array of numbers");
}
