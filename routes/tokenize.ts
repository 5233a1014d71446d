// POST /tokenize: text (or chat messages, rendered with the chat template) to token ids, as vLLM's
// endpoint: {prompt, add_special_tokens = true} or {messages, add_generation_prompt = true}
// -> {tokens, count, max_model_len}.

import type { Hono } from "hono";
import { z } from "zod";
import type { ServerContext } from "../server/context.ts";
import { badField } from "../server/errors.ts";
import { needTokenizer, postRoute } from "../server/route.ts";
import { fields } from "../server/schemas.ts";

export const TokenizeRequest = z.object({
  model: fields.model,
  prompt: z.string().nullish(),
  add_special_tokens: z.boolean().nullish(),
  messages: z.array(z.object({ role: z.string(), content: z.string() }).strict()).min(1).nullish(),
  add_generation_prompt: z.boolean().nullish(),
}).strict();

export function tokenizeRoute(ctx: ServerContext): Hono {
  return postRoute(ctx, "/tokenize", TokenizeRequest, async (c, engine, body) => {
    if ((body.prompt == null) === (body.messages == null)) {
      throw badField("prompt", "give exactly one of prompt and messages", "missing_field");
    }
    let tokens: number[];
    if (body.prompt != null) {
      needTokenizer(engine, "prompt");
      tokens = await ctx.prompts!.encode(body.prompt, "prompt", {
        addSpecialTokens: body.add_special_tokens ?? true,
      });
    } else {
      needTokenizer(engine, "messages");
      if (!ctx.chat) {
        throw badField("messages", "the model has no chat template", "no_chat_template");
      }
      tokens = await ctx.prompts!.encodeChat(
        ctx.chat,
        body.messages!,
        body.add_generation_prompt ?? true,
        "messages",
      );
    }
    return c.json({ tokens, count: tokens.length, max_model_len: engine.limits.context });
  });
}
