// Request bodies: JSON, parsed with the route's zod schema; every failure is a 400 naming the field.

import type { Context } from "hono";
import type { z } from "zod";
import { ApiError, fromZod } from "./errors.ts";

export async function parseBody<S extends z.ZodTypeAny>(
  c: Context,
  schema: S,
): Promise<z.infer<S>> {
  let text: string;
  try {
    text = await c.req.text();
  } catch (e) {
    if (e instanceof ApiError) throw e;
    throw new ApiError(
      400,
      `body: cannot read the request body: ${(e as Error).message}`,
      "invalid_request_error",
      "body",
      "invalid_body",
    );
  }
  if (text.trim() === "") {
    throw new ApiError(
      400,
      "body: empty; expected a JSON object",
      "invalid_request_error",
      "body",
      "invalid_json",
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ApiError(
      400,
      `body: malformed JSON (${(e as Error).message})`,
      "invalid_request_error",
      "body",
      "invalid_json",
    );
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ApiError(
      400,
      "body: expected a JSON object",
      "invalid_request_error",
      "body",
      "invalid_json",
    );
  }
  const r = schema.safeParse(value);
  if (!r.success) throw fromZod(r.error, value);
  return r.data;
}
