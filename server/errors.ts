// Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}. Every 4xx names the
// field at fault in `param` and at the start of `message`.

import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import {
  ZodArray,
  ZodDefault,
  ZodEffects,
  type ZodError,
  type ZodIssue,
  ZodNullable,
  ZodObject,
  ZodOptional,
  type ZodRawShape,
  ZodRecord,
  type ZodTypeAny,
  ZodUnion,
} from "zod";

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
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

/** Levenshtein distance, case-insensitive (`maxTokens` is one edit from `max_tokens`). */
function editDistance(a: string, b: string): number {
  a = a.toLowerCase();
  b = b.toLowerCase();
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

/** The candidate nearest to `word`, if one is close enough to be a likely typo. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  const limit = Math.max(2, Math.floor(word.length / 3));
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = editDistance(word, c);
    if (d <= limit && d < bestD) [best, bestD] = [c, d];
  }
  return best;
}

/** The object schemas that can sit at `path` in `schema` (several where a union branches). */
function objectsAt(
  schema: ZodTypeAny,
  path: readonly (string | number)[],
): ZodObject<ZodRawShape>[] {
  const s = schema;
  if (s instanceof ZodOptional || s instanceof ZodNullable) return objectsAt(s.unwrap(), path);
  if (s instanceof ZodDefault) return objectsAt(s.removeDefault(), path);
  if (s instanceof ZodEffects) return objectsAt(s.innerType(), path);
  if (s instanceof ZodUnion) {
    return (s.options as ZodTypeAny[]).flatMap((o) => objectsAt(o, path));
  }
  if (path.length === 0) return s instanceof ZodObject ? [s] : [];
  const [p, ...rest] = path;
  if (s instanceof ZodArray && typeof p === "number") return objectsAt(s.element, rest);
  if (s instanceof ZodRecord) return objectsAt(s.valueSchema, rest);
  if (s instanceof ZodObject && typeof p === "string") {
    const field = s.shape[p];
    return field ? objectsAt(field, rest) : [];
  }
  return [];
}

/** A 400 for a field a strict object does not know, with the likely intended one. */
function unknownField(
  issue: ZodIssue & { code: "unrecognized_keys" },
  input: unknown,
  schema: ZodTypeAny | undefined,
): ApiError {
  const key = issue.keys[0];
  const param = fieldPath([...issue.path, key]);
  // Suggest only fields the request does not already set.
  const given = valueAt(input, issue.path);
  const known = schema
    ? [...new Set(objectsAt(schema, issue.path).flatMap((o) => Object.keys(o.shape)))]
      .filter((k) => given === null || typeof given !== "object" || !(k in given))
    : [];
  const hint = closest(key, known);
  const more = issue.keys.length > 1
    ? ` (also unknown: ${issue.keys.slice(1).map((k) => `\`${k}\``).join(", ")})`
    : "";
  return new ApiError(
    400,
    `${param}: unknown field${hint ? `; did you mean \`${hint}\`?` : ""}${more}`,
    "invalid_request_error",
    param,
    "unknown_field",
  );
}

function isMissing(issue: ZodIssue, input: unknown): boolean {
  return (issue.code === "invalid_type" && issue.received === "undefined") ||
    (issue.path.length > 0 && input !== undefined && valueAt(input, issue.path) === undefined);
}

/** How deep an issue names its field (an unknown key names one below its object's path). */
function depth(issue: ZodIssue): number {
  return issue.path.length + (issue.code === "unrecognized_keys" ? 1 : 0);
}

/**
 * The first zod issue as a 400 naming its field; `input` is the parsed body, `schema` the one it
 * was parsed with (for suggesting a known field in place of an unknown one).
 */
export function fromZod(err: ZodError, input?: unknown, schema?: ZodTypeAny): ApiError {
  let issue = err.issues[0];
  // A misspelt field usually also leaves a required one missing; the misspelling is the news.
  const unknown = err.issues.find((i) => i.code === "unrecognized_keys");
  if (unknown && isMissing(issue, input)) issue = unknown;
  // For a union, report the issue of the member the value matched furthest (deepest path), and
  // there, again, an unknown field before a missing one.
  let best: ZodIssue = issue;
  if (issue.code === "invalid_union") {
    for (const ue of issue.unionErrors) {
      for (const i of ue.issues) {
        const d = depth(i) - depth(best);
        if (d > 0 || (d === 0 && i.code === "unrecognized_keys" && isMissing(best, input))) {
          best = i;
        }
      }
    }
  }
  if (best.code === "unrecognized_keys") return unknownField(best, input, schema);
  const param = fieldPath(best.path) || "body";
  const missing = isMissing(best, input);
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
