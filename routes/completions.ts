// POST /v1/completions in OpenAI's shape (legacy completions), streaming included.
//
// One prompt per request (text or token ids; a one-element array of either is accepted). `logprobs`
// is 0 or 1: the GPU sampler returns the sampled token's log-probability, not a top-k list, so
// `top_logprobs` holds just the sampled token. `n` choices share one prefill (prefix caching);
// `best_of` candidates are ranked by cumulative log-probability (not streamable). Not supported
// (400 naming the field): echo, suffix, penalties, logit_bias.

import type { Hono } from "hono";
import { z } from "zod";
import type { GenerationResult } from "../engine/request.ts";
import type { Tokenizer } from "../model/types.ts";
import type { ServerContext } from "../server/context.ts";
import { badField } from "../server/errors.ts";
import * as gen from "../server/generation.ts";
import { postRoute } from "../server/route.ts";
import { fields, samplingFields, tokenId } from "../server/schemas.ts";

const ids = z.array(tokenId).min(1);

export const CompletionRequest = z.object({
  ...samplingFields,
  prompt: z.union([z.string(), ids, z.array(z.string()), z.array(ids)], {
    errorMap: () => ({
      message: "expected a string, an array of token ids, or a one-element array of either",
    }),
  }),
  stop: fields.stop,
  logprobs: z.number().int().min(0).max(1, {
    message: "must be 0 or 1: only the sampled token's logprob is available",
  }).nullish(),
  echo: z.boolean().nullish().refine((v) => !v, { message: "echo is not supported" }),
  suffix: z.string().nullish().refine((v) => !v, { message: "suffix is not supported" }),
  best_of: fields.bestOf,
}).strict();

type Body = z.infer<typeof CompletionRequest>;

/** The single prompt of a request. */
function onePrompt(p: Body["prompt"]): string | number[] {
  if (typeof p === "string") return p;
  if (p.length > 0 && typeof p[0] === "number") return p as number[];
  if (p.length !== 1) {
    throw badField("prompt", `one prompt per request is supported, got ${p.length}`);
  }
  return p[0] as string | number[];
}

function logprobsOf(
  tok: Tokenizer | null,
  ids: number[],
  lps: number[],
  offsets: number[],
  top: boolean,
) {
  const tokens = ids.map((id) => gen.tokenText(tok, id));
  return {
    tokens,
    token_logprobs: lps,
    top_logprobs: top ? tokens.map((t, i) => ({ [t]: lps[i] })) : null,
    text_offset: offsets,
  };
}

export function completionsRoute(ctx: ServerContext): Hono {
  return postRoute(ctx, "/v1/completions", CompletionRequest, async (c, engine, body) => {
    const { n, bestOf } = gen.choiceCounts(body);
    const jobs = gen.startChoices(c, engine, body, {
      promptIds: await gen.promptIds(ctx, engine, onePrompt(body.prompt), "prompt"),
      maxTokens: body.max_tokens ?? 16,
      defaultTemperature: 1,
      promptField: "prompt",
    }, bestOf);
    const id = gen.requestId("cmpl");
    const created = Math.floor(Date.now() / 1000);
    const tok = engine.tokenizer;
    const wantLogprobs = body.logprobs != null;
    const top = (body.logprobs ?? 0) > 0;
    const head = { id, object: "text_completion", created, model: ctx.modelId };

    if (body.stream) {
      const includeUsage = body.stream_options?.include_usage ?? false;
      return gen.streamJobs(c, jobs, {
        chunk: (ch, index) => {
          return [{
            ...head,
            choices: [{
              index,
              text: ch.text,
              logprobs: wantLogprobs ? logprobsOf(tok, ch.ids, ch.logprobs, ch.offsets, top) : null,
              finish_reason: null,
            }],
            ...(includeUsage ? { usage: null } : {}),
          }];
        },
        end: (res: GenerationResult[]) => [
          ...res.map((r, index) => ({
            ...head,
            choices: [{ index, text: "", logprobs: null, finish_reason: gen.finishReason(r) }],
            ...(includeUsage ? { usage: null } : {}),
          })),
          ...(includeUsage ? [{ ...head, choices: [], usage: gen.usage(res) }] : []),
        ],
      });
    }
    const all = await gen.resultsOf(jobs);
    const chosen = bestOf > n ? gen.bestOf(all, n) : all;
    return c.json({
      ...head,
      choices: chosen.map((res, index) => ({
        index,
        text: res.text,
        logprobs: wantLogprobs
          ? logprobsOf(tok, res.ids, res.logprobs, res.textOffsets, top)
          : null,
        finish_reason: gen.finishReason(res),
        stop_reason: res.stopReason,
      })),
      // Every candidate's tokens were generated (OpenAI bills best_of's too).
      usage: gen.usage(all),
    });
  });
}
