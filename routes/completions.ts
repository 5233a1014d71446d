// POST /v1/completions in OpenAI's shape (legacy completions), streaming included.
//
// One prompt per request (text or token ids; a one-element array of either is accepted).
// `logprobs: k` (0..20, vLLM's limit) returns the sampled tokens' log-probabilities and, per token,
// the k most likely tokens (`top_logprobs`, from the GPU sampler; ties by lower id); all are
// log-softmax of the raw model logits, before logit_bias, penalties and temperature (vLLM's
// default). `n` choices share one prefill (prefix caching);
// `best_of` candidates are ranked by cumulative log-probability (not streamable).
// `echo: true` (issue 18, server/echo.ts) puts the prompt's text (as its ids decode) before each
// choice's text and, with `logprobs: k`, the prompt's tokens before its logprobs: token_logprobs
// null for the first token, top_logprobs null there and the k most likely tokens elsewhere
// (Engine.promptLogprobs, teacher-forced), text_offset from the start of the echoed prompt;
// streamed, each choice's first event carries the prompt. `max_tokens: 0` is allowed only with
// echo (the prompt alone, finish_reason "length"). Not supported (400 naming the field): suffix.
// Penalties and logit_bias: server/schemas.ts.

import type { Hono } from "hono";
import { z } from "zod";
import type { GenerationResult } from "../engine/request.ts";
import type { Tokenizer } from "../model/types.ts";
import type { ServerContext } from "../server/context.ts";
import {
  echoOnly,
  echoOrCancel,
  echoPrompt,
  echoTokenizer,
  shiftOffsets,
  withEcho,
} from "../server/echo.ts";
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
  logprobs: fields.topLogprobs,
  // 0 only with echo (the handler checks): the prompt's text and log-probs alone.
  max_tokens: z.number().int().min(0).nullish(),
  echo: z.boolean().nullish(),
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
  /** Per token, the sampler's top [id, logprob] list (else just the token itself). */
  topLists?: [number, number][][],
) {
  const tokens = ids.map((id) => gen.tokenText(tok, id));
  const topOf = (t: string, i: number) =>
    topLists?.[i]
      ? Object.fromEntries(topLists[i].map(([id, lp]) => [gen.tokenText(tok, id), lp]))
      : { [t]: lps[i] };
  return {
    tokens,
    token_logprobs: lps,
    top_logprobs: top ? tokens.map(topOf) : null,
    text_offset: offsets,
  };
}

export function completionsRoute(ctx: ServerContext): Hono {
  return postRoute(ctx, "/v1/completions", CompletionRequest, async (c, engine, body) => {
    const { n, bestOf } = gen.choiceCounts(body);
    const promptIds = await gen.promptIds(ctx, engine, onePrompt(body.prompt), "prompt");
    const echoTok = echoTokenizer(engine, body);
    const jobs = body.max_tokens === 0 ? [] : gen.startChoices(c, engine, body, {
      promptIds,
      maxTokens: body.max_tokens ?? 16,
      defaultTemperature: 1,
      promptField: "prompt",
      topLogprobs: body.logprobs ?? 0,
    }, bestOf);
    const echo = echoTok
      ? await echoOrCancel(
        jobs,
        () => echoPrompt(engine, echoTok, promptIds, body.logprobs ?? null),
      )
      : null;
    const id = gen.requestId("cmpl");
    const created = Math.floor(Date.now() / 1000);
    const tok = engine.tokenizer;
    const wantLogprobs = body.logprobs != null;
    const top = (body.logprobs ?? 0) > 0;
    const head = { id, object: "text_completion", created, model: ctx.modelId };

    if (echo && jobs.length === 0 && !body.stream) {
      return c.json({ ...head, ...echoOnly(echo, n, promptIds.length) });
    }

    if (body.stream) {
      const includeUsage = body.stream_options?.include_usage ?? false;
      // With echo each choice's first event is the prompt (and its logprobs).
      const echoed = new Set<number>();
      const echoEvent = (index: number) => {
        if (!echo || echoed.has(index)) return [];
        echoed.add(index);
        return [{
          ...head,
          choices: [{ index, text: echo.text, logprobs: echo.logprobs, finish_reason: null }],
          ...(includeUsage ? { usage: null } : {}),
        }];
      };
      if (echo && jobs.length === 0) {
        const only = echoOnly(echo, n, promptIds.length);
        return gen.streamJobs(c, [], {
          chunk: () => [],
          end: () => [
            ...only.choices.flatMap((ch) => [
              ...echoEvent(ch.index),
              {
                ...head,
                choices: [{ index: ch.index, text: "", logprobs: null, finish_reason: "length" }],
                ...(includeUsage ? { usage: null } : {}),
              },
            ]),
            ...(includeUsage ? [{ ...head, choices: [], usage: only.usage }] : []),
          ],
        });
      }
      const shift = echo?.text.length ?? 0;
      return gen.streamJobs(c, jobs, {
        chunk: (ch, index) => {
          return [...echoEvent(index), {
            ...head,
            choices: [{
              index,
              text: ch.text,
              logprobs: shiftOffsets(
                wantLogprobs
                  ? logprobsOf(tok, ch.ids, ch.logprobs, ch.offsets, top, ch.topLogprobs)
                  : null,
                shift,
              ),
              finish_reason: null,
            }],
            ...(includeUsage ? { usage: null } : {}),
          }];
        },
        end: (res: GenerationResult[]) => [
          ...res.flatMap((r, index) => [...echoEvent(index), {
            ...head,
            choices: [{ index, text: "", logprobs: null, finish_reason: gen.finishReason(r) }],
            ...(includeUsage ? { usage: null } : {}),
          }]),
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
        ...withEcho(
          echo,
          res.text,
          wantLogprobs
            ? logprobsOf(tok, res.ids, res.logprobs, res.textOffsets, top, res.topLogprobs)
            : null,
        ),
        finish_reason: gen.finishReason(res),
        stop_reason: res.stopReason,
      })),
      // Every candidate's tokens were generated (OpenAI bills best_of's too).
      usage: gen.usage(all),
    });
  });
}
