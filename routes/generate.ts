// POST /v1/generate: zigzag's own generation endpoint. Greedy by default (as the CLI), with the
// timings and the request's KV-cache footprint in the answer.
//
// Request: {prompt: text | token ids, max_tokens = 16, temperature = 0, top_k, top_p, min_p, seed,
//           presence_penalty, frequency_penalty, repetition_penalty, logit_bias,
//           stop: string | id | (string | id)[], ignore_eos, logprobs: bool, stream: bool,
//           prompt_logprobs: 0..20}
// Answer:  {id, model, text, token_ids, finish_reason, stop_reason, usage, time_to_first_token_ms,
//           decode_tokens_per_s, queue_ms, e2e_ms, cache: {tokens, pages, retrieval_bytes,
//           streaming_bytes, bytes, full_attention_bytes, ratio_to_full}, logprobs?}
// Streamed: `data: {token_ids, text, logprobs?}` per readback, then the answer less text and
//           token_ids, then `data: [DONE]`.
// prompt_logprobs: k (vLLM's, issue 18): the answer (streamed: the final summary) adds
//           `prompt_logprobs`, aligned with the prompt's ids: null for the first token, then per
//           token {"<id>": {logprob, rank, decoded_token}} holding the prompt token and the k most
//           likely tokens there (k or k + 1 entries; rank 1 + the tokens scored above it), the
//           log-softmax of the raw logits, teacher-forced (Engine.promptLogprobs).
// n > 1: the answer (and each streamed chunk) is choice 0's as above, and the answer adds
//           `choices: [{index, text, token_ids, finish_reason, stop_reason, logprobs?}]`; streamed
//           chunks carry their choice's `index`. The prompt is prefilled once.

import type { Hono } from "hono";
import { z } from "zod";
import type { GenerationResult } from "../engine/request.ts";
import type { ServerContext } from "../server/context.ts";
import { MAX_PROMPT_TOP } from "../engine/engine.ts";
import { echoOrCancel, generatePromptLogprobs, scorePrompt } from "../server/echo.ts";
import * as gen from "../server/generation.ts";
import { postRoute } from "../server/route.ts";
import { fields, samplingFields, tokenId } from "../server/schemas.ts";

export const GenerateRequest = z.object({
  ...samplingFields,
  prompt: z.union([z.string(), z.array(tokenId).min(1)], {
    errorMap: () => ({ message: "expected a string or a non-empty array of token ids" }),
  }),
  stop: z.union([
    z.string(),
    tokenId,
    z.array(z.union([z.string(), tokenId], {
      errorMap: () => ({ message: "expected a string or a token id" }),
    })).max(64),
  ], {
    errorMap: () => ({ message: "expected a string, a token id or an array of them" }),
  }).nullish(),
  logprobs: z.boolean().nullish(),
  prompt_logprobs: z.number().int().min(0).max(MAX_PROMPT_TOP).nullish(),
  max_tokens: fields.maxTokens,
}).strict();

export function generateRoute(ctx: ServerContext): Hono {
  return postRoute(ctx, "/v1/generate", GenerateRequest, async (c, engine, body) => {
    const { n } = gen.choiceCounts(body);
    const promptIds = await gen.promptIds(ctx, engine, body.prompt, "prompt");
    const jobs = gen.startChoices(c, engine, body, {
      promptIds,
      maxTokens: body.max_tokens ?? 16,
      defaultTemperature: 0,
      promptField: "prompt",
    }, n);
    const k = body.prompt_logprobs;
    const promptLogprobs = k == null
      ? null
      : await echoOrCancel(jobs, async () =>
        generatePromptLogprobs(
          engine.tokenizer,
          promptIds,
          await scorePrompt(engine, promptIds, k, "prompt"),
        ));
    const id = gen.requestId("gen");
    const summary = (all: GenerationResult[]) => ({
      id,
      model: ctx.modelId,
      finish_reason: gen.finishReason(all[0]),
      stop_reason: all[0].stopReason,
      usage: gen.usage(all),
      time_to_first_token_ms: all[0].timeToFirstTokenMs,
      decode_tokens_per_s: all[0].decodeTokensPerS,
      queue_ms: all[0].queueMs,
      e2e_ms: all[0].e2eMs,
      cache: all[0].cache,
      ...(promptLogprobs ? { prompt_logprobs: promptLogprobs } : {}),
    });
    const lps = (l: number[]) => body.logprobs ? { logprobs: l } : {};
    if (body.stream) {
      return gen.streamJobs(c, jobs, {
        chunk: (ch, index) => [{
          ...(n > 1 ? { index } : {}),
          token_ids: ch.ids,
          text: ch.text,
          ...lps(ch.logprobs),
        }],
        end: (all) => [summary(all)],
      });
    }
    const all = await gen.resultsOf(jobs);
    const res = all[0];
    return c.json({
      ...summary(all),
      text: res.text,
      token_ids: res.ids,
      ...lps(res.logprobs),
      ...(n > 1
        ? {
          choices: all.map((r, index) => ({
            index,
            text: r.text,
            token_ids: r.ids,
            finish_reason: gen.finishReason(r),
            stop_reason: r.stopReason,
            ...lps(r.logprobs),
          })),
        }
        : {}),
    });
  });
}
