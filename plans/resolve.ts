// Plan -> ResolvedPlan: checks that a plan was made for the model being served and expands it into
// per-layer retrieval / streaming KV head lists.

import type { ModelConfig } from "../model/types.ts";
import { loadPlanFile, parsePlan, type Plan, PlanError, PlanFileNotFoundError } from "./schema.ts";
import {
  GROWTH_UNITS,
  type HeadKind,
  layerAttention,
  type ResolvedPlan,
  type Window,
} from "./types.ts";

export interface SinkRecentOptions {
  /** Attention-sink tokens kept by streaming heads (default: the plan's, else 64). Given with a
   * plan that has per-layer windows, it replaces them: every layer gets the one window. */
  sink?: number;
  /** Recent tokens kept by streaming heads (default: the plan's, else 256); likewise. */
  recent?: number;
  /** Streaming heads keep the compensation token (default: the plan's, else false). */
  compensation?: boolean;
  /** A plan with per-layer windows keeps them (`sink` / `recent` set only its defaults): what an
   * eval of several plans at one window wants (default false). */
  keepWindows?: boolean;
}

export type BuiltinPlanName = "full" | "streaming";

function describeShape(layers: number, kvHeads: number, headDim: number): string {
  return `${layers} layers x ${kvHeads} KV heads (head_dim ${headDim})`;
}

/** Throws a PlanError unless the plan's model fingerprint matches the model. */
export function checkPlanFits(plan: Plan, config: ModelConfig, planName = "plan"): void {
  const m = plan.model;
  if (
    m.num_layers !== config.nLayers || m.num_kv_heads !== config.nKvHeads ||
    m.head_dim !== config.headDim
  ) {
    throw new PlanError(
      `${planName} is for ${describeShape(m.num_layers, m.num_kv_heads, m.head_dim)} but the ` +
        `model has ${describeShape(config.nLayers, config.nKvHeads, config.headDim)}`,
    );
  }
  if (m.architecture !== config.architecture) {
    throw new PlanError(
      `${planName} is for ${m.architecture} but the model is ${config.architecture} ` +
        `(both ${describeShape(m.num_layers, m.num_kv_heads, m.head_dim)})`,
    );
  }
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** Expands a validated plan for `config`; rejects a plan made for another model shape. */
export function resolvePlan(plan: Plan, config: ModelConfig, planName = "plan"): ResolvedPlan {
  checkPlanFits(plan, config, planName);
  const nLayers = config.nLayers;
  const nKvHeads = config.nKvHeads;
  let perLayer: HeadKind[][];
  switch (plan.mode) {
    case "full":
      perLayer = range(nLayers).map(() => Array(nKvHeads).fill("retrieval"));
      break;
    case "streaming":
      perLayer = range(nLayers).map(() => Array(nKvHeads).fill("streaming"));
      break;
    case "zigzag":
      // The schema guarantees `layers` has num_layers entries for zigzag.
      perLayer = plan.layers!.map((k) => Array(nKvHeads).fill(k));
      break;
    case "duo":
      perLayer = plan.heads!;
      break;
  }
  const compensation = plan.compensation ?? false;
  const streamingKind: HeadKind = compensation ? "compensated" : "streaming";
  const uniform: Window = { sink: plan.sink, recent: plan.recent };
  // A layer's entry of `windows` (null, one window, or one per KV head) as one window per head.
  const windowsOf = (l: number): Window[] | undefined => {
    const w = plan.windows?.[l];
    if (w === undefined || w === null) return undefined;
    return Array.from({ length: nKvHeads }, (_, h) => {
      const hw = (Array.isArray(w) ? w[h] : w) ?? null;
      if (hw === null) return uniform;
      const q = Math.min(GROWTH_UNITS - 1, Math.round((hw.growth ?? 0) * GROWTH_UNITS));
      // Growth as the kernels compute it: a whole number of 1/65536ths.
      return q > 0
        ? { sink: hw.sink, recent: hw.recent, growth: q / GROWTH_UNITS, maxRecent: hw.max_recent! }
        : { sink: hw.sink, recent: hw.recent };
    });
  };
  return {
    mode: plan.mode,
    sink: plan.sink,
    recent: plan.recent,
    layers: perLayer.map((kinds, l) =>
      layerAttention(kinds.map((k) => k === "streaming" ? streamingKind : k), windowsOf(l))
    ),
  };
}

/** The all-retrieval ("full") or all-streaming plan for a model. */
export function builtinPlan(
  name: BuiltinPlanName,
  config: ModelConfig,
  opts: SinkRecentOptions = {},
): Plan {
  return parsePlan({
    version: 1,
    model: {
      architecture: config.architecture,
      num_layers: config.nLayers,
      num_kv_heads: config.nKvHeads,
      head_dim: config.headDim,
    },
    mode: name,
    sink: opts.sink,
    recent: opts.recent,
    compensation: opts.compensation,
    provenance: { method: "builtin", budget: name === "full" ? 1 : 0, source: "builtin" },
  }, `builtin plan "${name}"`);
}

/**
 * Resolves a `--plan` style argument: `full`, `streaming`, or a path to a plan JSON file.
 * `opts.sink` / `opts.recent` / `opts.compensation`, when given, override the plan's values.
 */
export async function loadPlanArg(
  arg: string,
  config: ModelConfig,
  opts: SinkRecentOptions = {},
): Promise<ResolvedPlan> {
  let plan: Plan;
  let name: string;
  if (arg === "full" || arg === "streaming") {
    plan = builtinPlan(arg, config, opts);
    name = `builtin plan "${arg}"`;
  } else {
    try {
      plan = await loadPlanFile(arg);
    } catch (e) {
      if (e instanceof PlanFileNotFoundError) {
        throw new PlanError(
          `plan file not found: ${arg} (expected "full", "streaming" or a path to a plan JSON file)`,
        );
      }
      throw e;
    }
    name = `plan ${arg}`;
    if (opts.sink !== undefined || opts.recent !== undefined || opts.compensation !== undefined) {
      const uniform = !opts.keepWindows && (opts.sink !== undefined || opts.recent !== undefined);
      plan = parsePlan({
        ...plan,
        sink: opts.sink ?? plan.sink,
        recent: opts.recent ?? plan.recent,
        compensation: opts.compensation ?? plan.compensation,
        // --sink / --recent set every layer's window.
        windows: uniform ? undefined : plan.windows,
      }, arg);
    }
  }
  return resolvePlan(plan, config, name);
}
