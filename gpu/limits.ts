// Failing loudly: every buffer is checked against the adapter's limits before anything is built,
// and GPU validation errors become exceptions instead of silently wrong output.
//
// A binding larger than `maxStorageBufferBindingSize` is a validation error in WebGPU: the
// dispatch does not run, the error only reaches the uncaptured-error handler, and the output
// buffer keeps whatever it held. So buffers are planned first (`checkBufferPlan`), building and
// the first forward run inside a validation error scope (`withValidation`), and any error that
// escapes a scope later is recorded on the device (`ValidationWatch`) and thrown at the next
// readback.

/** A buffer zigzag will create, and whether it is bound whole (or only in windows). */
export interface PlannedBuffer {
  /** What it holds, e.g. "wqkv L3" or "kv retrieval k L0 shard 1". */
  name: string;
  bytes: number;
  /** Bound as one storage binding (false: split into windows, each checked separately). */
  bound: boolean;
}

export class GpuLimitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GpuLimitError";
  }
}

export class GpuValidationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GpuValidationError";
  }
}

function mib(bytes: number): string {
  return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
}

/**
 * Throws naming every buffer that exceeds `maxBufferSize`, or `maxStorageBufferBindingSize` when
 * it is bound whole.
 */
export function checkBufferPlan(limits: GPUSupportedLimits, plan: PlannedBuffer[]): void {
  const bad: string[] = [];
  for (const b of plan) {
    if (b.bytes > limits.maxBufferSize) {
      bad.push(
        `${b.name} needs ${mib(b.bytes)}, over maxBufferSize (${mib(limits.maxBufferSize)})`,
      );
    } else if (b.bound && b.bytes > limits.maxStorageBufferBindingSize) {
      bad.push(
        `${b.name} needs one ${mib(b.bytes)} binding, over maxStorageBufferBindingSize ` +
          `(${mib(limits.maxStorageBufferBindingSize)})`,
      );
    }
  }
  if (bad.length > 0) {
    throw new GpuLimitError(
      `${bad.length} buffer(s) do not fit this adapter: ${bad.slice(0, 4).join("; ")}` +
        (bad.length > 4 ? `; and ${bad.length - 4} more` : ""),
    );
  }
}

/** Runs `fn` inside a validation error scope; a validation error becomes a GpuValidationError. */
export async function withValidation<T>(
  device: GPUDevice,
  what: string,
  fn: () => Promise<T> | T,
): Promise<T> {
  device.pushErrorScope("validation");
  let out: T;
  try {
    out = await fn();
  } catch (e) {
    await device.popErrorScope();
    throw e;
  }
  const err = await device.popErrorScope();
  if (err) throw new GpuValidationError(`${what}: GPU validation error: ${err.message}`);
  return out;
}

/**
 * Records validation errors no scope caught (the device's uncaptured-error event), so that the
 * next readback throws instead of returning what a failed dispatch left behind.
 */
export class ValidationWatch {
  #errors: string[] = [];

  constructor(device: GPUDevice) {
    device.addEventListener("uncapturederror", (e) => {
      this.#errors.push((e as GPUUncapturedErrorEvent).error.message);
    });
  }

  /** Throws (once per error) when an uncaptured error happened since the last check. */
  check(what: string): void {
    if (this.#errors.length === 0) return;
    const msgs = this.#errors.splice(0);
    throw new GpuValidationError(
      `${what}: GPU validation error: ${msgs[0]}` +
        (msgs.length > 1 ? ` (and ${msgs.length - 1} more)` : ""),
    );
  }
}
