// POST /detokenize: token ids to text, as vLLM's endpoint: {tokens} -> {prompt}.

import type { Hono } from "hono";
import { z } from "zod";
import type { ServerContext } from "../server/context.ts";
import { checkTokenIds, needTokenizer, postRoute } from "../server/route.ts";
import { fields, tokenId } from "../server/schemas.ts";

export const DetokenizeRequest = z.object({
  model: fields.model,
  tokens: z.array(tokenId),
}).strict();

export function detokenizeRoute(ctx: ServerContext): Hono {
  return postRoute(ctx, "/detokenize", DetokenizeRequest, (c, engine, body) => {
    const tok = needTokenizer(engine, "tokens");
    checkTokenIds(engine, body.tokens, "tokens");
    return c.json({ prompt: tok.decode(body.tokens) });
  });
}
