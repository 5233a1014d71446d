// POST /detokenize: token ids to text, as vLLM's endpoint: {tokens} -> {prompt}.

import { Hono } from "hono";
import { z } from "zod";
import { parseBody } from "../server/body.ts";
import type { ServerContext } from "../server/context.ts";
import { badField } from "../server/errors.ts";
import { checkModel, needTokenizer } from "../server/generation.ts";
import { fields, tokenId } from "../server/schemas.ts";

export const DetokenizeRequest = z.object({
  model: fields.model,
  tokens: z.array(tokenId),
});

export function detokenizeRoute(ctx: ServerContext): Hono {
  const app = new Hono();
  app.post("/detokenize", async (c) => {
    const r = ctx.engine();
    const body = await parseBody(c, DetokenizeRequest);
    checkModel(ctx, body.model);
    const tok = needTokenizer(r, "tokens");
    const vocab = r.session.model.config.vocabSize;
    const bad = body.tokens.findIndex((t) => t >= vocab);
    if (bad >= 0) {
      throw badField(
        `tokens[${bad}]`,
        `token id ${body.tokens[bad]} is outside the vocabulary (${vocab})`,
      );
    }
    return c.json({ prompt: tok.decode(body.tokens) });
  });
  return app;
}
