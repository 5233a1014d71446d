// Flags the tools share (`deno task generate`, `eval`, `bench`, `plan`), declared and read in one
// place so that each means the same everywhere: the streaming window, the precision, the flags an
// engine is built from, and the sampling flags (checked against the ranges the server's API takes).

import {
  type EngineOptions,
  KV_DTYPES,
  type KvDtype,
  type Precision,
  WEIGHT_CHOICES,
} from "../engine/engine.ts";
import {
  MAX_BIAS_VALUE,
  MAX_LOGIT_BIAS,
  MAX_PENALTY,
  MAX_REPETITION_PENALTY,
  MAX_TOP_LOGPROBS,
  type SamplingParams,
} from "../engine/request.ts";
import { type Args, CliError } from "../util/args.ts";

/** --sink N --recent N: the streaming window of a plan's streaming heads. */
export const WINDOW_FLAGS = ["sink", "recent"] as const;

/** --precision f16|f32. */
export const PRECISION_FLAG = "precision";

/** --kv-dtype f16|f32|int8|int4: how the KV cache stores keys and values. */
export const KV_DTYPE_FLAG = "kv-dtype";

/** --weights native|float|q8_0|q4_0: how matmul weights are stored. */
export const WEIGHTS_FLAG = "weights";

/** --compensation: the plan's streaming heads keep RazorAttention's compensation token. */
export const COMPENSATION_FLAG = "compensation";

/** The boolean flags `engineFlags` reads. */
export const ENGINE_BOOLEANS = [COMPENSATION_FLAG] as const;

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

/** An engine's options from ENGINE_FLAGS and ENGINE_BOOLEANS (--model required). */
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
    ...(a.boolean(COMPENSATION_FLAG) ? { compensation: true } : {}),
    kvCacheBytes: kvCacheMb === undefined ? undefined : kvCacheMb * (1 << 20),
    prefillChunk,
    decodeSteps,
    maxModelLen,
  };
}

/** The flags `samplingFlags` reads. */
export const SAMPLING_FLAGS = [
  "temperature",
  "top-k",
  "top-p",
  "min-p",
  "seed",
  "presence-penalty",
  "frequency-penalty",
  "repetition-penalty",
  "logit-bias",
  "top-logprobs",
] as const;

/**
 * Sampling from SAMPLING_FLAGS: greedy and seed 0 unless given (reproducible; the server draws a
 * seed). Penalties, logit_bias values and --top-logprobs take the server's ranges; logit_bias ids
 * are checked against the vocabulary by `checkLogitBias` once the model is loaded.
 */
export function samplingFlags(a: Args): SamplingParams {
  const s: SamplingParams = {
    temperature: a.optionalNumber("temperature", { min: 0 }) ?? 0,
    seed: a.optionalNumber("seed", { integer: true, min: 0 }) ?? 0,
  };
  const topK = a.optionalNumber("top-k", { integer: true, min: 0 });
  const topP = a.optionalNumber("top-p", { min: 0, max: 1 });
  const minP = a.optionalNumber("min-p", { min: 0, max: 1 });
  if (topK !== undefined) s.topK = topK;
  if (topP !== undefined) s.topP = topP;
  if (minP !== undefined) s.minP = minP;
  const penalty = { min: -MAX_PENALTY, max: MAX_PENALTY };
  const presence = a.optionalNumber("presence-penalty", penalty);
  const frequency = a.optionalNumber("frequency-penalty", penalty);
  const repetition = a.optionalNumber("repetition-penalty", {
    above: 0,
    max: MAX_REPETITION_PENALTY,
  });
  const bias = logitBiasFlag(a.optionalString("logit-bias"));
  const top = a.optionalNumber("top-logprobs", { integer: true, min: 0, max: MAX_TOP_LOGPROBS });
  // As the server's samplingOf: a setting that changes nothing is left out.
  if (presence) s.presencePenalty = presence;
  if (frequency) s.frequencyPenalty = frequency;
  if (repetition !== undefined && repetition !== 1) s.repetitionPenalty = repetition;
  if (bias) s.logitBias = bias;
  if (top) s.topLogprobs = top;
  return s;
}

/**
 * `--logit-bias ID:BIAS,ID:BIAS` as [id, bias] pairs: at most MAX_LOGIT_BIAS entries, each id
 * once, each bias in [-MAX_BIAS_VALUE, MAX_BIAS_VALUE]; zero biases are dropped (undefined when
 * none is left or the flag is absent).
 */
export function logitBiasFlag(
  raw: string | undefined,
  flag = "logit-bias",
): [number, number][] | undefined {
  if (raw === undefined) return undefined;
  const entries = raw.split(",");
  if (entries.length > MAX_LOGIT_BIAS) {
    throw new CliError(`--${flag}: at most ${MAX_LOGIT_BIAS} entries, got ${entries.length}`);
  }
  const byId = new Map<number, number>();
  for (const entry of entries) {
    const m = /^\s*(\d+)\s*:\s*(\S+)\s*$/.exec(entry);
    const id = m ? Number(m[1]) : NaN;
    const bias = m ? Number(m[2]) : NaN;
    if (!m || !Number.isSafeInteger(id) || !Number.isFinite(bias)) {
      throw new CliError(
        `--${flag} must be comma-separated ID:BIAS pairs (e.g. 300:5,7:-100), got ` +
          JSON.stringify(entry.trim()),
      );
    }
    if (Math.abs(bias) > MAX_BIAS_VALUE) {
      throw new CliError(
        `--${flag}: the bias of token ${id} must lie in [-${MAX_BIAS_VALUE}, ${MAX_BIAS_VALUE}], ` +
          `got ${m[2]}`,
      );
    }
    if (byId.has(id)) throw new CliError(`--${flag}: token ${id} is given twice`);
    byId.set(id, bias);
  }
  const out = [...byId].filter(([, bias]) => bias !== 0);
  return out.length ? out : undefined;
}

/** Refuses a --logit-bias id outside the vocabulary. */
export function checkLogitBias(s: SamplingParams, vocab: number, flag = "logit-bias"): void {
  const bad = s.logitBias?.find(([id]) => id >= vocab);
  if (bad) {
    throw new CliError(`--${flag}: token ${bad[0]} is outside the vocabulary (${vocab})`);
  }
}
