// GPU buffers that know their shape and element type.

export type Dtype = "f32" | "f16" | "u32";

const BYTES: Record<Dtype, number> = { f32: 4, f16: 2, u32: 4 };

export class GpuTensor {
  constructor(
    readonly buffer: GPUBuffer,
    readonly shape: number[],
    readonly dtype: Dtype,
  ) {}

  get elements(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get bytes(): number {
    return this.elements * BYTES[this.dtype];
  }
}

export const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/** Storage bindings must be a multiple of 4 bytes and non-empty. */
function paddedSize(bytes: number): number {
  return Math.max(4, Math.ceil(bytes / 4) * 4);
}

export function createTensor(
  device: GPUDevice,
  shape: number[],
  dtype: Dtype,
  label: string,
  usage = STORAGE,
): GpuTensor {
  const elements = shape.reduce((a, b) => a * b, 1);
  const buffer = device.createBuffer({ label, size: paddedSize(elements * BYTES[dtype]), usage });
  return new GpuTensor(buffer, shape, dtype);
}

/** Converts f32 values to the storage type (f16 rounds to nearest even). */
export function encode(data: Float32Array, dtype: "f32" | "f16"): ArrayBuffer {
  if (dtype === "f32") return new Float32Array(data).buffer;
  return new Float16Array(data).buffer;
}

/**
 * Uploads a host matrix [rows, cols] with each row zero-padded to `padTo` columns (matmul
 * loads weight rows as vec4).
 */
export function uploadMatrix(
  device: GPUDevice,
  data: Float32Array,
  rows: number,
  cols: number,
  dtype: "f32" | "f16",
  label: string,
  padTo = 1,
): GpuTensor {
  const stride = Math.ceil(cols / padTo) * padTo;
  let src = data;
  if (stride !== cols) {
    src = new Float32Array(rows * stride);
    for (let r = 0; r < rows; r++) src.set(data.subarray(r * cols, (r + 1) * cols), r * stride);
  }
  const t = createTensor(device, [rows, stride], dtype, label);
  const bytes = encode(src, dtype);
  device.queue.writeBuffer(t.buffer, 0, bytes, 0, Math.floor(bytes.byteLength / 4) * 4);
  if (bytes.byteLength % 4) {
    // Odd f16 count: write the last element padded to a full word.
    const tail = new Uint8Array(4);
    tail.set(new Uint8Array(bytes, bytes.byteLength - 2));
    device.queue.writeBuffer(t.buffer, bytes.byteLength - 2, tail);
  }
  return t;
}

/** Buffer prefixes copied into one MAP_READ staging buffer by an encoder (`stageRead`), to be
 * read back once that encoder is submitted (`readStaged`). */
export interface StagedRead {
  staging: GPUBuffer;
  /** Bytes of each part, and where each starts in `staging` (4-byte aligned). */
  bytes: number[];
  offsets: number[];
}

/** Records on `enc` the copies of several buffer prefixes into one new staging buffer. */
export function stageRead(
  device: GPUDevice,
  enc: GPUCommandEncoder,
  parts: { buffer: GPUBuffer; bytes: number }[],
): StagedRead {
  const sizes = parts.map((p) => Math.ceil(p.bytes / 4) * 4);
  const offsets = sizes.map((_, i) => sizes.slice(0, i).reduce((a, b) => a + b, 0));
  const staging = device.createBuffer({
    size: sizes.reduce((a, b) => a + b, 0),
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  parts.forEach((p, i) => enc.copyBufferToBuffer(p.buffer, 0, staging, offsets[i], sizes[i]));
  return { staging, bytes: parts.map((p) => p.bytes), offsets };
}

/**
 * Maps a staged read, after the encoder that recorded it was submitted, and returns each part's
 * bytes; the staging buffer is destroyed either way. The map is requested within this call (in
 * Deno 2.9 the mapAsync call itself returns once the GPU has finished the work queued so far,
 * and its promise ~10 ms later): work submitted right after the call overlaps that wait.
 */
export function readStaged(s: StagedRead): Promise<ArrayBuffer[]> {
  return s.staging.mapAsync(GPUMapMode.READ).then(() => {
    const all = s.staging.getMappedRange();
    const out = s.bytes.map((n, i) => all.slice(s.offsets[i], s.offsets[i] + n));
    s.staging.unmap();
    return out;
  }).finally(() => s.staging.destroy());
}

/** Copies several buffer prefixes to the host in one round trip (one staging buffer, one map). */
export function readBuffers(
  device: GPUDevice,
  parts: { buffer: GPUBuffer; bytes: number }[],
): Promise<ArrayBuffer[]> {
  const enc = device.createCommandEncoder();
  const staged = stageRead(device, enc, parts);
  device.queue.submit([enc.finish()]);
  return readStaged(staged);
}

/** Copies a buffer prefix to the host (one ~11 ms round trip in Deno 2.9: call rarely). */
export async function readBuffer(
  device: GPUDevice,
  src: GPUBuffer,
  byteLength: number,
): Promise<ArrayBuffer> {
  return (await readBuffers(device, [{ buffer: src, bytes: byteLength }]))[0];
}
