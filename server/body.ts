// Request bodies: JSON, parsed with the route's zod schema; every failure is a 400 naming the field.
// The body must be declared `Content-Type: application/json` (415 otherwise): a cross-site page
// can POST text/plain or a form without a CORS preflight, but not JSON.

import type { Context } from "hono";
import type { z } from "zod";
import { ApiError, fromZod } from "./errors.ts";

/** 415 unless the request says `application/json` (UTF-8, the only charset JSON has). */
export function checkContentType(header: string | undefined): void {
  const fail = (why: string) =>
    new ApiError(
      415,
      `Content-Type: ${why}; send \`Content-Type: application/json\``,
      "invalid_request_error",
      "Content-Type",
      "unsupported_media_type",
    );
  if (header === undefined || header.trim() === "") throw fail("missing");
  const [type, ...params] = header.split(";").map((p) => p.trim());
  if (type.toLowerCase() !== "application/json") throw fail(`\`${type}\` is not supported`);
  for (const p of params) {
    const [name, value = ""] = p.split("=", 2).map((x) => x.trim());
    const charset = value.replace(/^"(.*)"$/, "$1").toLowerCase();
    if (name.toLowerCase() === "charset" && charset !== "utf-8" && charset !== "utf8") {
      throw fail(`charset \`${value}\` is not supported (JSON is UTF-8)`);
    }
  }
}

export async function parseBody<S extends z.ZodTypeAny>(
  c: Context,
  schema: S,
): Promise<z.infer<S>> {
  checkContentType(c.req.header("content-type"));
  let bytes: ArrayBuffer;
  try {
    bytes = await c.req.arrayBuffer();
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
  let text: string;
  try {
    // fatal: a broken byte sequence is an error, not a silent U+FFFD in the prompt.
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ApiError(
      400,
      "body: not valid UTF-8",
      "invalid_request_error",
      "body",
      "invalid_utf8",
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
  if (!r.success) throw fromZod(r.error, value, schema);
  return r.data;
}
