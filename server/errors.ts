// Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}. Every 4xx names the
// field at fault in `param` and at the start of `message`.

import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { ZodError, ZodIssue } from "zod";

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "not_found_error"
  | "rate_limit_error"
  | "service_unavailable"
  | "server_error";

export class ApiError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    message: string,
    readonly type: ErrorType = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** A 400 about one field: "field: why". */
export function badField(param: string, why: string, code = "invalid_value"): ApiError {
  return new ApiError(400, `${param}: ${why}`, "invalid_request_error", param, code);
}

export function errorBody(e: ApiError) {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

export function sendError(c: Context, e: ApiError): Response {
  for (const [k, v] of Object.entries(e.headers)) c.header(k, v);
  return c.json(errorBody(e), e.status);
}

/** `messages[0].content` from a zod path. */
export function fieldPath(path: readonly (string | number)[]): string {
  let s = "";
  for (const p of path) s += typeof p === "number" ? `[${p}]` : s === "" ? p : `.${p}`;
  return s;
}

function describeIssue(issue: ZodIssue): string {
  switch (issue.code) {
    case "invalid_type":
      return issue.received === "undefined"
        ? "is required"
        : `expected ${issue.expected}, got ${issue.received}`;
    case "too_small":
      if (issue.type === "array") return `must have at least ${issue.minimum} item(s)`;
      if (issue.type === "string") return `must be at least ${issue.minimum} character(s)`;
      return `must be ${issue.inclusive ? "at least" : "greater than"} ${issue.minimum}`;
    case "too_big":
      if (issue.type === "array") return `must have at most ${issue.maximum} item(s)`;
      if (issue.type === "string") return `must be at most ${issue.maximum} character(s)`;
      return `must be ${issue.inclusive ? "at most" : "less than"} ${issue.maximum}`;
    case "invalid_union":
      return issue.message === "Invalid input" ? "has the wrong type or shape" : issue.message;
    default:
      return issue.message.charAt(0).toLowerCase() + issue.message.slice(1);
  }
}

function valueAt(input: unknown, path: readonly (string | number)[]): unknown {
  let v = input;
  for (const p of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<string | number, unknown>)[p];
  }
  return v;
}

/** The first zod issue as a 400 naming its field; `input` is the parsed body. */
export function fromZod(err: ZodError, input?: unknown): ApiError {
  const issue = err.issues[0];
  // For a union, report the issue of the member the value matched furthest (deepest path).
  let best: ZodIssue = issue;
  if (issue.code === "invalid_union") {
    for (const ue of issue.unionErrors) {
      for (const i of ue.issues) {
        if (i.path.length > best.path.length) best = i;
      }
    }
  }
  const param = fieldPath(best.path) || "body";
  const missing = (best.code === "invalid_type" && best.received === "undefined") ||
    (best.path.length > 0 && input !== undefined && valueAt(input, best.path) === undefined);
  const code = missing
    ? "missing_field"
    : best.code === "too_big" || best.code === "too_small"
    ? "out_of_range"
    : "invalid_value";
  return new ApiError(
    400,
    `${param}: ${missing ? "is required" : describeIssue(best)}`,
    "invalid_request_error",
    param,
    code,
  );
}
