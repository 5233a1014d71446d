// The on-disk plan format: a JSON file that says, for one model shape, which layers (ZigzagAttention)
// or which KV heads (DuoAttention) keep the full KV cache. Everything else is streaming: attention
// sinks plus a recent window. `resolve.ts` turns a validated plan into the runner's ResolvedPlan.
//
// Example (zigzag):
// {
//   "version": 1,
//   "model": { "architecture": "LlamaForCausalLM", "num_layers": 32, "num_kv_heads": 8,
//              "head_dim": 128 },
//   "mode": "zigzag",
//   "layers": ["streaming", "retrieval", ...],          // num_layers entries
//   "sink": 64, "recent": 256,
//   "compensation": false,                               // optional: compensated streaming
//   "windows": [{ "sink": 64, "recent": 512 }, null, ...], // optional: per-layer windows
//   "provenance": { "method": "duo-import", "budget": 0.5, "source": "...", "criterion": "sum" },
//   "scores": { "kv_heads": [[...], ...], "layers": [...] }
// }

import { z } from "zod";

export const PLAN_VERSION = 1;

/** An error a user can act on: names the plan file (and field) involved. */
export class PlanError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PlanError";
  }
}

export const HeadKindSchema = z.enum(["retrieval", "streaming"]);
export type HeadKind = z.infer<typeof HeadKindSchema>;

export const ModelFingerprintSchema = z.object({
  architecture: z.string().min(1),
  num_layers: z.number().int().positive(),
  num_kv_heads: z.number().int().positive(),
  head_dim: z.number().int().positive(),
}).strict();
export type ModelFingerprint = z.infer<typeof ModelFingerprintSchema>;

export const LayerCriterionSchema = z.enum(["sum", "demoted"]);
export type LayerCriterion = z.infer<typeof LayerCriterionSchema>;

export const ProvenanceSchema = z.object({
  /** How the plan was made, e.g. "duo-import" or "builtin". */
  method: z.string().min(1),
  /** Fraction of KV heads (duo) or layers (zigzag) meant to be retrieval: 1 for full, 0 for
   * streaming. */
  budget: z.number().min(0).max(1),
  /** Where the numbers came from (a file path, a repository, "builtin"). */
  source: z.string(),
  /** How layers were ranked (zigzag); what `scores.layers` holds. */
  criterion: LayerCriterionSchema.optional(),
  /** ISO 8601 time the plan was written. */
  created: z.string().datetime({ offset: true }).optional(),
}).passthrough();

const finite = z.number().finite();

/** A streaming window of its own (MoA-style): attention sinks and recent tokens; elastic with
 * `growth` (MoA's beta: a query at position i sees min(max_recent, recent + floor(growth (i + 1)))
 * recent positions, growth rounded to a multiple of 1/65536) up to `max_recent` (its ring's
 * size). */
export const WindowSchema = z.object({
  sink: z.number().int().min(0),
  recent: z.number().int().min(1),
  growth: z.number().min(0).lt(1).optional(),
  max_recent: z.number().int().min(1).optional(),
}).strict().superRefine((w, ctx) => {
  const grows = (w.growth ?? 0) > 0;
  if (grows && w.max_recent === undefined) {
    ctx.addIssue({
      code: z.ZodIssueCode.custom,
      path: ["max_recent"],
      message: "required with growth (the ring's size)",
    });
  } else if (!grows && w.max_recent !== undefined) {
    ctx.addIssue({
      code: z.ZodIssueCode.custom,
      path: ["max_recent"],
      message: "only used with growth > 0",
    });
  } else if (grows && w.max_recent! < w.recent) {
    ctx.addIssue({
      code: z.ZodIssueCode.custom,
      path: ["max_recent"],
      message: `must be at least recent (${w.recent})`,
    });
  }
});

/** One layer's entry of `windows`: its streaming heads' window, one per KV head (duo plans; null
 * for retrieval heads), or null (a retrieval layer, or the plan's sink and recent). */
export const LayerWindowSchema = z.union([
  z.null(),
  WindowSchema,
  z.array(WindowSchema.nullable()),
]);

export const ScoresSchema = z.object({
  /** num_layers x num_kv_heads: the score each KV head was ranked by (DuoAttention gate values). */
  kv_heads: z.array(z.array(finite)).optional(),
  /** num_layers: the score each layer was ranked by (see provenance.criterion). */
  layers: z.array(finite).optional(),
}).strict();

const PlanBase = z.object({
  version: z.literal(PLAN_VERSION),
  model: ModelFingerprintSchema,
  mode: z.enum(["full", "streaming", "duo", "zigzag"]),
  /** zigzag only: one kind per layer. */
  layers: z.array(HeadKindSchema).optional(),
  /** duo only: one kind per layer and KV head. */
  heads: z.array(z.array(HeadKindSchema)).optional(),
  /** Attention-sink tokens streaming heads keep. */
  sink: z.number().int().min(0).default(64),
  /** Recent tokens streaming heads keep (the current one included). */
  recent: z.number().int().min(1).default(256),
  /** RazorAttention's compensation token: every streaming head also keeps the mean key and value
   * of the tokens that have left its window (cache kind "compensated"). */
  compensation: z.boolean().optional(),
  /** MoA-style per-layer windows (zigzag, duo and streaming plans): num_layers entries, each the
   * window of the layer's streaming heads, a list of one window per KV head (duo), or null (the
   * plan's sink and recent). Retrieval layers and heads take null. */
  windows: z.array(LayerWindowSchema).optional(),
  provenance: ProvenanceSchema,
  scores: ScoresSchema.optional(),
}).strict();

export const PlanSchema = PlanBase.superRefine((plan, ctx) => {
  const { num_layers: nLayers, num_kv_heads: nKvHeads } = plan.model;
  const issue = (path: (string | number)[], message: string) =>
    ctx.addIssue({ code: z.ZodIssueCode.custom, path, message });

  if (plan.mode === "zigzag") {
    if (plan.layers === undefined) issue(["layers"], "required when mode is zigzag");
    else if (plan.layers.length !== nLayers) {
      issue(["layers"], `has ${plan.layers.length} entries but model.num_layers is ${nLayers}`);
    }
  } else if (plan.layers !== undefined) {
    issue(["layers"], `only used with mode zigzag (mode is ${plan.mode})`);
  }

  if (plan.mode === "duo") {
    if (plan.heads === undefined) issue(["heads"], "required when mode is duo");
    else checkMatrix(plan.heads, ["heads"], nLayers, nKvHeads, issue);
  } else if (plan.heads !== undefined) {
    issue(["heads"], `only used with mode duo (mode is ${plan.mode})`);
  }

  if (plan.windows !== undefined) checkWindows(plan, issue);

  if (plan.scores?.kv_heads !== undefined) {
    checkMatrix(plan.scores.kv_heads, ["scores", "kv_heads"], nLayers, nKvHeads, issue);
  }
  if (plan.scores?.layers !== undefined && plan.scores.layers.length !== nLayers) {
    issue(
      ["scores", "layers"],
      `has ${plan.scores.layers.length} entries but model.num_layers is ${nLayers}`,
    );
  }
});

/** `windows`: one entry per layer, per-head lists only in duo plans, none for retrieval units. */
function checkWindows(
  plan: z.infer<typeof PlanBase>,
  issue: (path: (string | number)[], message: string) => void,
) {
  const windows = plan.windows!;
  const { num_layers: nLayers, num_kv_heads: nKvHeads } = plan.model;
  if (plan.mode === "full") {
    issue(["windows"], "a full plan has no streaming heads to give windows to");
    return;
  }
  if (windows.length !== nLayers) {
    issue(["windows"], `has ${windows.length} entries but model.num_layers is ${nLayers}`);
    return;
  }
  const kindOf = (l: number, h: number) =>
    plan.mode === "zigzag"
      ? plan.layers?.[l]
      : plan.mode === "duo"
      ? plan.heads?.[l]?.[h]
      : "streaming";
  windows.forEach((w, l) => {
    if (w === null) return;
    if (Array.isArray(w)) {
      if (plan.mode !== "duo") {
        issue(["windows", l], `per-KV-head windows need mode duo (mode is ${plan.mode})`);
      } else if (w.length !== nKvHeads) {
        issue(["windows", l], `has ${w.length} entries but model.num_kv_heads is ${nKvHeads}`);
      } else {
        w.forEach((hw, h) => {
          if (hw !== null && kindOf(l, h) === "retrieval") {
            issue(["windows", l, h], "is a retrieval head: it keeps every token, give it null");
          }
        });
      }
      return;
    }
    const heads = Array.from({ length: nKvHeads }, (_, h) => kindOf(l, h));
    if (heads.every((k) => k === "retrieval")) {
      issue(["windows", l], "is a retrieval layer: it keeps every token, give it null");
    }
  });
}

function checkMatrix(
  rows: unknown[][],
  path: (string | number)[],
  nLayers: number,
  nKvHeads: number,
  issue: (path: (string | number)[], message: string) => void,
) {
  if (rows.length !== nLayers) {
    issue(path, `has ${rows.length} rows but model.num_layers is ${nLayers}`);
    return;
  }
  rows.forEach((row, i) => {
    if (row.length !== nKvHeads) {
      issue([...path, i], `has ${row.length} entries but model.num_kv_heads is ${nKvHeads}`);
    }
  });
}

/** A validated plan, defaults applied. */
export type Plan = z.infer<typeof PlanSchema>;
/** What a plan file may contain before defaults are applied. */
export type PlanInput = z.input<typeof PlanSchema>;

/** `model.num_layers`, `heads[3][2]`, or `(root)`. */
export function formatIssuePath(path: (string | number)[]): string {
  let out = "";
  for (const part of path) {
    out += typeof part === "number" ? `[${part}]` : (out === "" ? part : `.${part}`);
  }
  return out === "" ? "(root)" : out;
}

/** One readable line per problem, at most a few, each naming the field. */
export function formatZodError(error: z.ZodError, maxIssues = 5): string {
  const issues = error.issues.slice(0, maxIssues).map((issue) =>
    `${formatIssuePath(issue.path)}: ${issue.message}`
  );
  const more = error.issues.length - issues.length;
  if (more > 0) issues.push(`(and ${more} more)`);
  return issues.join("; ");
}

/** The plan file does not exist. */
export class PlanFileNotFoundError extends PlanError {
  constructor(readonly path: string) {
    super(`plan file not found: ${path}`);
    this.name = "PlanFileNotFoundError";
  }
}

/** Validates a plan (a JSON string or an already parsed value); errors name the file and field. */
export function parsePlan(json: unknown, fileName: string): Plan {
  let value = json;
  if (typeof json === "string") {
    try {
      value = JSON.parse(json);
    } catch (e) {
      throw new PlanError(`${fileName}: not valid JSON: ${(e as Error).message}`);
    }
  }
  const result = PlanSchema.safeParse(value);
  if (!result.success) {
    throw new PlanError(`${fileName}: invalid plan: ${formatZodError(result.error)}`);
  }
  return result.data;
}

/** Reads and validates a plan file. */
export async function loadPlanFile(path: string): Promise<Plan> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new PlanFileNotFoundError(path);
    throw new PlanError(`cannot read plan file ${path}: ${(e as Error).message}`);
  }
  return parsePlan(text, path);
}

/** Validates and writes a plan as JSON (rows of matrices kept on one line each). */
export async function savePlan(path: string, plan: PlanInput): Promise<void> {
  const valid = parsePlan(plan, path);
  await Deno.writeTextFile(path, stringifyPlan(valid));
}

/** JSON laid out as `deno fmt` (line width 100) leaves it, so shipped plans pass `deno fmt --check`:
 * objects and arrays of arrays one entry per line; an array of numbers or strings on one line when
 * that line fits in 100 columns, else one entry per line. */
export function stringifyPlan(plan: Plan): string {
  return format(plan, "", 0, 0) + "\n";
}

const LINE_WIDTH = 100;

/** `lead`: columns before the value on its line; `trail`: columns after it (a comma). */
function format(value: unknown, indent: string, lead: number, trail: number): string {
  const inner = indent + "  ";
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    if (value.every((v) => v === null || typeof v !== "object")) {
      const line = `[${value.map((v) => JSON.stringify(v)).join(", ")}]`;
      if (lead + line.length + trail <= LINE_WIDTH) return line;
    }
    const items = value.map((v, i) =>
      inner + format(v, inner, inner.length, i < value.length - 1 ? 1 : 0)
    );
    return `[\n${items.join(",\n")}\n${indent}]`;
  }
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    if (entries.length === 0) return "{}";
    const body = entries.map(([k, v], i) => {
      const key = `${inner}${JSON.stringify(k)}: `;
      return key + format(v, inner, key.length, i < entries.length - 1 ? 1 : 0);
    });
    return `{\n${body.join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}
