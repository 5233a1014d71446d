// Field schemas shared by the generation routes (each route's own schema lives beside it).
// `null` is accepted wherever a field is optional, as OpenAI's API does. Every object is
// `.strict()`: an unknown field (`temprature`) is a 400 naming it, not a setting silently ignored.

import { z } from "zod";
import {
  MAX_BIAS_VALUE,
  MAX_LOGIT_BIAS,
  MAX_PENALTY,
  MAX_REPETITION_PENALTY,
  MAX_TOP_LOGPROBS,
} from "../engine/request.ts";

export { MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS };

export const tokenId = z.number().int().min(0);

/** Most choices (`n`, `best_of`) one request may ask for. */
export const MAX_CHOICES = 64;

export const fields = {
  model: z.string().min(1).nullish(),
  maxTokens: z.number().int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  topP: z.number().gt(0).max(1).nullish(),
  /** -1 or 0: no top-k. */
  topK: z.number().int().min(-1).max(1 << 20).nullish(),
  minP: z.number().min(0).max(1).nullish(),
  seed: z.number().int().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER).nullish(),
  stop: z.union([z.string(), z.array(z.string()).max(16)], {
    errorMap: () => ({ message: "expected a string or an array of at most 16 strings" }),
  }).nullish(),
  stopTokenIds: z.array(tokenId).max(64).nullish(),
  stream: z.boolean().nullish(),
  streamOptions: z.object({ include_usage: z.boolean().nullish() }).strict().nullish(),
  ignoreEos: z.boolean().nullish(),
  /** Choices of one prompt (prefilled once; `seed + i` per choice when seeded). */
  n: z.number().int().min(1).max(MAX_CHOICES).nullish(),
  /** Candidates `n` is chosen from by cumulative log-probability (completions). */
  bestOf: z.number().int().min(1).max(MAX_CHOICES).nullish(),
  /** OpenAI's, over the generated tokens: logit -= presence * (count > 0). */
  presencePenalty: z.number().min(-MAX_PENALTY).max(MAX_PENALTY).nullish(),
  /** OpenAI's, over the generated tokens: logit -= frequency * count. */
  frequencyPenalty: z.number().min(-MAX_PENALTY).max(MAX_PENALTY).nullish(),
  /** vLLM / HF's, over the prompt's and the generated tokens: logit > 0 ? logit / p : logit * p. */
  repetitionPenalty: z.number().gt(0).max(MAX_REPETITION_PENALTY).nullish(),
  /** Token id (a decimal string) -> bias added to its logit, as OpenAI's (ids checked against
   * the vocabulary by server/generation.ts). */
  logitBias: z.record(z.number().min(-MAX_BIAS_VALUE).max(MAX_BIAS_VALUE)).refine(
    (v) => Object.keys(v).length <= MAX_LOGIT_BIAS,
    { message: `at most ${MAX_LOGIT_BIAS} entries` },
  ).nullish(),
  /** Top log-probabilities per token (completions' `logprobs`, chat's `top_logprobs`). */
  topLogprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
  user: z.string().nullish(),
};

/** The sampling fields every generation route takes, snake_case as in the API. */
export const samplingFields = {
  model: fields.model,
  max_tokens: fields.maxTokens,
  temperature: fields.temperature,
  top_p: fields.topP,
  top_k: fields.topK,
  min_p: fields.minP,
  seed: fields.seed,
  stop_token_ids: fields.stopTokenIds,
  ignore_eos: fields.ignoreEos,
  stream: fields.stream,
  stream_options: fields.streamOptions,
  presence_penalty: fields.presencePenalty,
  frequency_penalty: fields.frequencyPenalty,
  repetition_penalty: fields.repetitionPenalty,
  logit_bias: fields.logitBias,
  n: fields.n,
  user: fields.user,
};
