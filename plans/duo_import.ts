// Turns DuoAttention's published gate values (`full_attention_heads.tsv`: num_layers lines of
// num_kv_heads tab-separated floats) into a plan.
//
// Budget rounding: a budget B keeps `ceil(N * B)` units as retrieval, where N is the number of KV
// heads (duo: num_layers * num_kv_heads) or of layers (zigzag: num_layers); the same rule for both
// modes, matching the ZigzagAttention prototype's `ceil(num_layers * budget)`. DuoAttention itself
// thresholds at `np.quantile(gates, 1 - B)` (ties broken by random noise); that keeps
// `floor(N*B + 1 - B)` heads, which equals `ceil(N * B)` whenever N * B is a whole number (as for
// every shipped plan). A budget in (0, 1] therefore always keeps at least one unit. N * B is
// rounded up only when it exceeds a whole number by more than 1e-9, so that 0.7 * 10 keeps 7.
//
// Ranking is deterministic. duo: higher gate first, then lower layer, then lower head.
// zigzag: higher layer score first, then lower layer. Layer scores (`criterion`):
//   sum      the sum of the layer's KV head gates (the default; reproduces the authors' saved set);
//   demoted  the sum of the gates of the layer's heads that the duo plan at the same budget keeps.

import {
  type LayerCriterion,
  type ModelFingerprint,
  parsePlan,
  type Plan,
  PlanError,
} from "./schema.ts";

/** The fields of DuoAttention's `config.json` the importer reads. */
export interface DuoConfig {
  sink_size?: number | null;
  recent_size?: number | null;
  /** When set, what DuoAttention deploys with instead of sink_size / recent_size. */
  deploy_sink_size?: number | null;
  deploy_recent_size?: number | null;
  /** e.g. "models/Mistral-7B-Instruct-v0.2"; used to guess the architecture. */
  model_name?: string | null;
}

export interface ImportDuoOptions {
  /** The text of `full_attention_heads.tsv`. */
  tsv: string;
  /** Name used in error messages about the TSV (default "full_attention_heads.tsv"). */
  tsvName?: string;
  /** DuoAttention's config.json, parsed; gives sink / recent (default 64 / 256). */
  config?: DuoConfig;
  /** Fraction of KV heads (duo) or layers (zigzag) kept as retrieval, in (0, 1]. */
  budget: number;
  mode: "duo" | "zigzag";
  /** Layer score (default "sum"); recorded as `scores.layers` in both modes. */
  criterion?: LayerCriterion;
  /** Default: guessed from config.model_name ("mistral" -> MistralForCausalLM, "llama" ->
   * LlamaForCausalLM), else an error. */
  architecture?: string;
  /** Default 128 (every model DuoAttention published patterns for). */
  headDim?: number;
  /** provenance.source (default: tsvName). */
  source?: string;
  /** provenance.created, ISO 8601 (default: omitted). */
  created?: string;
}

export const DEFAULT_SINK = 64;
export const DEFAULT_RECENT = 256;
export const DEFAULT_HEAD_DIM = 128;

const FLOAT = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** Parses the gate matrix; errors name the file and line. */
export function parseGateTsv(text: string, fileName = "full_attention_heads.tsv"): number[][] {
  const lines = text.split(/\r?\n/);
  while (lines.length > 0 && lines[lines.length - 1].trim() === "") lines.pop();
  if (lines.length === 0) throw new PlanError(`${fileName}: empty, expected a gate matrix`);
  const rows: number[][] = [];
  lines.forEach((line, i) => {
    const where = `${fileName}: line ${i + 1}`;
    const cells = line.trim() === "" ? [] : line.trim().split(/[\t ]+/);
    if (cells.length === 0) throw new PlanError(`${where}: empty line`);
    const row = cells.map((cell, j) => {
      if (!FLOAT.test(cell)) {
        throw new PlanError(`${where}, column ${j + 1}: not a number: ${JSON.stringify(cell)}`);
      }
      const v = Number(cell);
      if (!Number.isFinite(v)) {
        throw new PlanError(`${where}, column ${j + 1}: not a finite number: ${cell}`);
      }
      return v;
    });
    if (rows.length > 0 && row.length !== rows[0].length) {
      throw new PlanError(
        `${where}: has ${row.length} values but line 1 has ${rows[0].length} (ragged rows)`,
      );
    }
    rows.push(row);
  });
  return rows;
}

/** Parses DuoAttention's config.json text. */
export function parseDuoConfig(text: string, fileName = "config.json"): DuoConfig {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new PlanError(`${fileName}: not valid JSON: ${(e as Error).message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new PlanError(`${fileName}: expected a JSON object`);
  }
  const obj = value as Record<string, unknown>;
  const out: DuoConfig = {};
  for (
    const key of ["sink_size", "recent_size", "deploy_sink_size", "deploy_recent_size"] as const
  ) {
    const v = obj[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
      throw new PlanError(
        `${fileName}: ${key}: expected a non-negative integer, got ${JSON.stringify(v)}`,
      );
    }
    out[key] = v;
  }
  if (typeof obj.model_name === "string") out.model_name = obj.model_name;
  return out;
}

/** Checks a budget is in (0, 1]. */
export function checkBudget(budget: number): void {
  if (typeof budget !== "number" || !Number.isFinite(budget) || budget <= 0 || budget > 1) {
    throw new PlanError(`budget must be in (0, 1], got ${budget}`);
  }
}

/** How many of `total` units a budget keeps as retrieval: ceil(total * budget), see above. */
export function retrievalCount(total: number, budget: number): number {
  checkBudget(budget);
  return Math.min(total, Math.max(1, Math.ceil(total * budget - 1e-9)));
}

export interface KvHeadRef {
  layer: number;
  head: number;
  gate: number;
}

/** Every KV head, best first: higher gate, then lower layer, then lower head. */
export function rankKvHeads(gates: number[][]): KvHeadRef[] {
  const all: KvHeadRef[] = [];
  gates.forEach((row, layer) => row.forEach((gate, head) => all.push({ layer, head, gate })));
  return all.sort((a, b) => b.gate - a.gate || a.layer - b.layer || a.head - b.head);
}

/** duo: `selected[layer][head]` is true for the ceil(L*H*B) KV heads with the highest gates. */
export function selectDuoHeads(gates: number[][], budget: number): boolean[][] {
  const total = gates.reduce((n, row) => n + row.length, 0);
  const keep = rankKvHeads(gates).slice(0, retrievalCount(total, budget));
  const selected = gates.map((row) => row.map(() => false));
  for (const { layer, head } of keep) selected[layer][head] = true;
  return selected;
}

/** Per-layer score under a criterion (see the top of this file). */
export function layerScores(
  gates: number[][],
  criterion: LayerCriterion,
  budget: number,
): number[] {
  if (criterion === "sum") return gates.map((row) => row.reduce((s, g) => s + g, 0));
  const kept = selectDuoHeads(gates, budget);
  return gates.map((row, l) => row.reduce((s, g, h) => (kept[l][h] ? s + g : s), 0));
}

/** zigzag: the ceil(L*B) best layers by score (ties: lower layer first), ascending. */
export function selectZigzagLayers(scores: number[], budget: number): number[] {
  const order = scores.map((_, i) => i).sort((a, b) => scores[b] - scores[a] || a - b);
  return order.slice(0, retrievalCount(scores.length, budget)).sort((a, b) => a - b);
}

/** Guesses the Hugging Face architecture from DuoAttention's model_name. */
export function guessArchitecture(modelName: string | null | undefined): string | undefined {
  if (!modelName) return undefined;
  if (/mistral/i.test(modelName)) return "MistralForCausalLM";
  if (/llama/i.test(modelName)) return "LlamaForCausalLM";
  return undefined;
}

/** Builds a duo or zigzag plan from DuoAttention's gate values. */
export function importDuo(opts: ImportDuoOptions): Plan {
  const tsvName = opts.tsvName ?? "full_attention_heads.tsv";
  checkBudget(opts.budget);
  if (opts.mode !== "duo" && opts.mode !== "zigzag") {
    throw new PlanError(`mode must be "duo" or "zigzag", got ${JSON.stringify(opts.mode)}`);
  }
  const criterion = opts.criterion ?? "sum";
  if (criterion !== "sum" && criterion !== "demoted") {
    throw new PlanError(`criterion must be "sum" or "demoted", got ${JSON.stringify(criterion)}`);
  }
  const gates = parseGateTsv(opts.tsv, tsvName);
  const architecture = opts.architecture ?? guessArchitecture(opts.config?.model_name);
  if (architecture === undefined) {
    throw new PlanError(
      "architecture not given and not recognisable from the DuoAttention config's model_name; " +
        "pass it explicitly (e.g. LlamaForCausalLM)",
    );
  }
  const model: ModelFingerprint = {
    architecture,
    num_layers: gates.length,
    num_kv_heads: gates[0].length,
    head_dim: opts.headDim ?? DEFAULT_HEAD_DIM,
  };
  const cfg = opts.config ?? {};
  const sink = cfg.deploy_sink_size ?? cfg.sink_size ?? DEFAULT_SINK;
  const recent = cfg.deploy_recent_size ?? cfg.recent_size ?? DEFAULT_RECENT;
  const scores = layerScores(gates, criterion, opts.budget);

  const plan: Record<string, unknown> = { version: 1, model, mode: opts.mode };
  if (opts.mode === "duo") {
    plan.heads = selectDuoHeads(gates, opts.budget).map((row) =>
      row.map((r) => (r ? "retrieval" : "streaming"))
    );
  } else {
    const chosen = new Set(selectZigzagLayers(scores, opts.budget));
    plan.layers = gates.map((_, l) => (chosen.has(l) ? "retrieval" : "streaming"));
  }
  plan.sink = sink;
  plan.recent = recent;
  plan.provenance = {
    method: "duo-import",
    budget: opts.budget,
    source: opts.source ?? tsvName,
    criterion,
    ...(opts.created !== undefined ? { created: opts.created } : {}),
  };
  plan.scores = { kv_heads: gates, layers: scores };
  return parsePlan(plan, tsvName);
}
