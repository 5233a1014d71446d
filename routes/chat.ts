// POST /v1/chat/completions in OpenAI's shape, streaming included.
//
// Messages are rendered with the model's chat template (tokenizer_config.json /
// chat_template.jinja) or the server's --chat-template file; a model with neither answers 400.
// Message content is a string or an array of text parts. `logprobs: true` returns the sampled
// tokens' log-probabilities and, with `top_logprobs: k` (0..20), each token's k most likely
// tokens (from the GPU sampler; ties by lower id). All are log-softmax of the raw model logits,
// before logit_bias, penalties and temperature (vLLM's default).

import type { Hono } from "hono";
import { z } from "zod";
import type { GenerationResult } from "../engine/request.ts";
import type { ChatMessage, Tokenizer } from "../model/types.ts";
import type { ServerContext } from "../server/context.ts";
import { badField } from "../server/errors.ts";
import * as gen from "../server/generation.ts";
import { needTokenizer, postRoute } from "../server/route.ts";
import { fields, samplingFields } from "../server/schemas.ts";

const TextPart = z.object({
  type: z.literal("text", {
    errorMap: () => ({ message: "only text content parts are supported" }),
  }),
  text: z.string(),
}).strict();

const Message = z.object({
  role: z.enum(["system", "user", "assistant", "tool", "developer"]),
  content: z.union([z.string(), z.array(TextPart)], {
    errorMap: () => ({ message: "expected a string or an array of text parts" }),
  }).nullish(),
  name: z.string().nullish(),
  // OpenAI's other message fields, so that a client replaying a conversation is not refused for
  // them; tool calls themselves are not supported.
  refusal: z.string().nullish(),
  tool_call_id: z.string().nullish(),
  tool_calls: z.array(z.unknown()).nullish().refine((v) => !v?.length, {
    message: "tool calling is not supported",
  }),
}).strict();

export const ChatRequest = z.object({
  ...samplingFields,
  messages: z.array(Message).min(1),
  max_completion_tokens: fields.maxTokens,
  stop: fields.stop,
  logprobs: z.boolean().nullish(),
  top_logprobs: fields.topLogprobs,
  add_generation_prompt: z.boolean().nullish(),
  tools: z.array(z.unknown()).nullish().refine((v) => !v?.length, {
    message: "tool calling is not supported",
  }),
  // A literal rather than a refine: {type: "json_schema", json_schema} then names `type` as
  // unsupported before `json_schema` as unknown (fromZod reports the first issue).
  response_format: z.object({
    type: z.literal("text", {
      errorMap: () => ({ message: 'only response_format {type: "text"} is supported' }),
    }),
  }).strict().nullish(),
}).strict();

type Body = z.infer<typeof ChatRequest>;

function messagesOf(body: Body): ChatMessage[] {
  return body.messages.map((m) => ({
    role: m.role,
    content: typeof m.content === "string"
      ? m.content
      : (m.content ?? []).map((p) => p.text).join(""),
  }));
}

function logprobsOf(
  tok: Tokenizer | null,
  ids: number[],
  lps: number[],
  top: [number, number][][] | undefined,
) {
  const enc = new TextEncoder();
  const entry = (id: number, logprob: number) => {
    const token = gen.tokenText(tok, id);
    return { token, logprob, bytes: Array.from(enc.encode(token)) };
  };
  return {
    content: ids.map((id, i) => ({
      ...entry(id, lps[i]),
      top_logprobs: (top?.[i] ?? []).map(([t, lp]) => entry(t, lp)),
    })),
  };
}

export function chatRoute(ctx: ServerContext): Hono {
  return postRoute(ctx, "/v1/chat/completions", ChatRequest, async (c, engine, body) => {
    const tok = needTokenizer(engine, "messages");
    const chat = ctx.chat;
    if (!chat) {
      throw badField(
        "messages",
        `the model \`${ctx.modelId}\` has no chat template (none in tokenizer_config.json or ` +
          "chat_template.jinja): start the server with --chat-template FILE, or use /v1/completions",
        "no_chat_template",
      );
    }
    const prompt = await ctx.prompts!.encodeChat(
      chat,
      messagesOf(body),
      body.add_generation_prompt ?? true,
      "messages",
    );
    const { n } = gen.choiceCounts(body);
    // Without a limit: as much as the context (and the KV pool) leaves.
    const jobs = gen.startChoices(c, engine, body, {
      promptIds: prompt,
      maxTokens: body.max_completion_tokens ?? body.max_tokens ??
        Math.max(1, engine.limits.maxNewTokens(prompt.length)),
      defaultTemperature: 1,
      promptField: "messages",
      topLogprobs: body.logprobs ? body.top_logprobs ?? 0 : 0,
    }, n);
    const id = gen.requestId("chatcmpl");
    const created = Math.floor(Date.now() / 1000);
    const head = { id, object: "chat.completion.chunk", created, model: ctx.modelId };

    if (body.stream) {
      const includeUsage = body.stream_options?.include_usage ?? false;
      const u = includeUsage ? { usage: null } : {};
      // OpenAI's stream opens each choice with a chunk carrying only the role.
      const roleChunk = (index: number) => ({
        ...head,
        choices: [{
          index,
          delta: { role: "assistant", content: "" },
          logprobs: null,
          finish_reason: null,
        }],
        ...u,
      });
      const opened = new Set<number>();
      return gen.streamJobs(c, jobs, {
        chunk: (ch, index) => {
          const out = [];
          if (!opened.has(index)) {
            opened.add(index);
            out.push(roleChunk(index));
          }
          if (ch.text !== "" || (body.logprobs && ch.ids.length)) {
            out.push({
              ...head,
              choices: [{
                index,
                delta: { content: ch.text },
                logprobs: body.logprobs
                  ? logprobsOf(tok, ch.ids, ch.logprobs, ch.topLogprobs)
                  : null,
                finish_reason: null,
              }],
              ...u,
            });
          }
          return out;
        },
        end: (res: GenerationResult[]) => [
          ...res.flatMap((r, index) => [
            ...(opened.has(index) ? [] : [roleChunk(index)]),
            {
              ...head,
              choices: [{
                index,
                delta: {},
                logprobs: null,
                finish_reason: gen.finishReason(r),
              }],
              ...u,
            },
          ]),
          ...(includeUsage ? [{ ...head, choices: [], usage: gen.usage(res) }] : []),
        ],
      });
    }
    const all = await gen.resultsOf(jobs);
    return c.json({
      id,
      object: "chat.completion",
      created,
      model: ctx.modelId,
      choices: all.map((res, index) => ({
        index,
        message: { role: "assistant", content: res.text },
        logprobs: body.logprobs ? logprobsOf(tok, res.ids, res.logprobs, res.topLogprobs) : null,
        finish_reason: gen.finishReason(res),
        stop_reason: res.stopReason,
      })),
      usage: gen.usage(all),
    });
  });
}
