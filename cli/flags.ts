// Flags the tools share (`deno task generate`, `eval`, `bench`, `plan`), declared and read in one
// place so that each means the same everywhere: the streaming window, the precision, and the
// flags an engine is built from.

import {
  type EngineOptions,
  KV_DTYPES,
  type KvDtype,
  type Precision,
  WEIGHT_CHOICES,
} from "../engine/engine.ts";
import type { Args } from "../util/args.ts";

/** --sink N --recent N: the streaming window of a plan's streaming heads. */
export const WINDOW_FLAGS = ["sink", "recent"] as const;

/** --precision f16|f32. */
export const PRECISION_FLAG = "precision";

/** --kv-dtype f16|f32|int8|int4: how the KV cache stores keys and values. */
export const KV_DTYPE_FLAG = "kv-dtype";

/** --weights native|float|q8_0|q4_0: how matmul weights are stored. */
export const WEIGHTS_FLAG = "weights";

/** The flags `engineFlags` reads. */
export const ENGINE_FLAGS = [
  "model",
  "tokenizer",
  PRECISION_FLAG,
  KV_DTYPE_FLAG,
  WEIGHTS_FLAG,
  "plan",
  ...WINDOW_FLAGS,
  "kv-cache-mb",
  "max-model-len",
  "chunk",
  "decode-steps",
] as const;

/** The streaming window, each side undefined when not given. */
export function windowFlags(a: Args): { sink?: number; recent?: number } {
  return {
    sink: a.optionalNumber("sink", { integer: true, min: 0 }),
    recent: a.optionalNumber("recent", { integer: true, min: 1 }),
  };
}

export function precisionFlag(a: Args): Precision | undefined {
  return a.optionalChoice(PRECISION_FLAG, ["f16", "f32"] as const);
}

export function kvDtypeFlag(a: Args): KvDtype | undefined {
  return a.optionalChoice(KV_DTYPE_FLAG, KV_DTYPES);
}

/** An engine's options from ENGINE_FLAGS (--model required). */
export function engineFlags(a: Args): EngineOptions {
  const prefillChunk = a.optionalNumber("chunk", { integer: true, min: 1 });
  const decodeSteps = a.optionalNumber("decode-steps", { integer: true, min: 1, max: 64 });
  const model = a.string("model");
  const tokenizer = a.optionalString("tokenizer");
  const precision = precisionFlag(a);
  const kvDtype = kvDtypeFlag(a);
  const weights = a.optionalChoice(WEIGHTS_FLAG, WEIGHT_CHOICES);
  const plan = a.optionalString("plan");
  const window = windowFlags(a);
  const kvCacheMb = a.optionalNumber("kv-cache-mb", { min: 1 });
  const maxModelLen = a.optionalNumber("max-model-len", { integer: true, min: 2 });
  return {
    model,
    tokenizer,
    precision,
    kvDtype,
    weights,
    plan,
    ...window,
    kvCacheBytes: kvCacheMb === undefined ? undefined : kvCacheMb * (1 << 20),
    prefillChunk,
    decodeSteps,
    maxModelLen,
  };
}
