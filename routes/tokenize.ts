// POST /tokenize: text (or chat messages, rendered with the chat template) to token ids, as vLLM's
// endpoint: {prompt, add_special_tokens = true} or {messages, add_generation_prompt = true}
// -> {tokens, count, max_model_len}.

import { Hono } from "hono";
import { z } from "zod";
import { parseBody } from "../server/body.ts";
import type { ServerContext } from "../server/context.ts";
import { badField } from "../server/errors.ts";
import { checkModel, needTokenizer } from "../server/generation.ts";
import { fields } from "../server/schemas.ts";

export const TokenizeRequest = z.object({
  model: fields.model,
  prompt: z.string().nullish(),
  add_special_tokens: z.boolean().nullish(),
  messages: z.array(z.object({ role: z.string(), content: z.string() })).min(1).nullish(),
  add_generation_prompt: z.boolean().nullish(),
});

export function tokenizeRoute(ctx: ServerContext): Hono {
  const app = new Hono();
  app.post("/tokenize", async (c) => {
    const r = ctx.engine();
    const body = await parseBody(c, TokenizeRequest);
    checkModel(ctx, body.model);
    if ((body.prompt == null) === (body.messages == null)) {
      throw badField("prompt", "give exactly one of prompt and messages", "missing_field");
    }
    let tokens: number[];
    if (body.prompt != null) {
      const tok = needTokenizer(r, "prompt");
      tokens = tok.encode(body.prompt, { addSpecialTokens: body.add_special_tokens ?? true });
    } else {
      needTokenizer(r, "messages");
      if (!r.chat) throw badField("messages", "the model has no chat template", "no_chat_template");
      tokens = r.chat.encode(body.messages!, body.add_generation_prompt ?? true);
    }
    return c.json({ tokens, count: tokens.length, max_model_len: r.session.runner.maxSeqLen });
  });
  return app;
}
