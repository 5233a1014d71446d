// POST /v1/generate: zigzag's own generation endpoint. Greedy by default (as the CLI), with the
// timings and the request's KV-cache footprint in the answer.
//
// Request: {prompt: text | token ids, max_tokens = 16, temperature = 0, top_k, top_p, min_p, seed,
//           stop: string | id | (string | id)[], ignore_eos, logprobs: bool, stream: bool}
// Answer:  {id, model, text, token_ids, finish_reason, stop_reason, usage, time_to_first_token_ms,
//           decode_tokens_per_s, queue_ms, e2e_ms, cache: {tokens, pages, retrieval_bytes,
//           streaming_bytes, bytes, full_attention_bytes, ratio_to_full}, logprobs?}
// Streamed: `data: {token_ids, text, logprobs?}` per readback, then the answer less text and
//           token_ids, then `data: [DONE]`.

import type { Hono } from "hono";
import { z } from "zod";
import type { GenerationResult } from "../engine/request.ts";
import type { ServerContext } from "../server/context.ts";
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
  max_tokens: fields.maxTokens,
}).strict();

export function generateRoute(ctx: ServerContext): Hono {
  return postRoute(ctx, "/v1/generate", GenerateRequest, async (c, engine, body) => {
    const job = gen.startGeneration(c, engine, body, {
      promptIds: await gen.promptIds(ctx, engine, body.prompt, "prompt"),
      maxTokens: body.max_tokens ?? 16,
      defaultTemperature: 0,
      promptField: "prompt",
    });
    const id = gen.requestId("gen");
    const summary = (res: GenerationResult) => ({
      id,
      model: ctx.modelId,
      finish_reason: gen.finishReason(res),
      stop_reason: res.stopReason,
      usage: gen.usage(res),
      time_to_first_token_ms: res.timeToFirstTokenMs,
      decode_tokens_per_s: res.decodeTokensPerS,
      queue_ms: res.queueMs,
      e2e_ms: res.e2eMs,
      cache: res.cache,
    });
    if (body.stream) {
      return gen.streamJob(c, job, {
        chunk: (ch) => [{
          token_ids: ch.ids,
          text: ch.text,
          ...(body.logprobs ? { logprobs: ch.logprobs } : {}),
        }],
        end: (res) => [summary(res)],
      });
    }
    const res = await gen.resultOf(job);
    return c.json({
      ...summary(res),
      text: res.text,
      token_ids: res.ids,
      ...(body.logprobs ? { logprobs: res.logprobs } : {}),
    });
  });
}
