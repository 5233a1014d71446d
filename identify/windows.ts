// MoA-style per-layer windows from a plan's own scores: under a KV byte budget, the streaming
// units (a zigzag plan's streaming layers, a duo plan's streaming KV heads) whose scores rank
// highest (the ones identification found most retrieval-like: for ablation, the ones whose
// switch to streaming hurt most) get a wider recent window, the lowest a narrower one.
//
// The rule (deterministic, rank-based so that it needs no calibration of the scores' scale): the
// n streaming units sorted by score ascending, unit of rank r gets
//   recent_r = R * F * (1 - s + 2 s r / (n - 1))
// (R the plan's recent, s the spread, F the budget), rounded so that the recents sum to exactly
// round(n R F); every unit keeps the plan's sink. With F = 1 the rings hold exactly the positions
// (and bytes) of the uniform plan's, so uniform vs per-layer compares plans at equal KV bytes.

import { type Plan, PlanError } from "../plans/schema.ts";

export interface ScoredWindowOptions {
  /** How far the windows spread around the plan's recent, in [0, 1): 0 keeps them uniform,
   * 0.5 ranges from 0.5 R to 1.5 R (default 0.5). */
  spread?: number;
  /** Total recent positions as a multiple of the uniform plan's (default 1: equal KV bytes). */
  budget?: number;
}

/** One streaming unit: a layer (head null: all its KV heads) or one KV head of a layer. */
interface Unit {
  layer: number;
  head: number | null;
  score: number;
}

/** Recents summing to `total` in proportion to `targets` (largest remainders), each >= 1. */
export function apportion(targets: number[], total: number): number[] {
  const floors = targets.map((t) => Math.max(1, Math.floor(t)));
  let left = total - floors.reduce((a, v) => a + v, 0);
  const order = targets.map((_, i) => i).sort((a, b) =>
    (targets[b] - Math.floor(targets[b])) - (targets[a] - Math.floor(targets[a])) || a - b
  );
  // Hand out what rounding down left, largest fractions first; take back (from the widest) what
  // the floor of 1 added.
  for (let i = 0; left > 0; i = (i + 1) % order.length, left--) floors[order[i]]++;
  const widest = targets.map((_, i) => i).sort((a, b) => floors[b] - floors[a] || a - b);
  for (let i = 0; left < 0; i = (i + 1) % widest.length) {
    if (floors[widest[i]] > 1) {
      floors[widest[i]]--;
      left++;
    }
  }
  return floors;
}

/** The plan with `windows` chosen from its scores (see the top of this file). */
export function scoredWindows(plan: Plan, opts: ScoredWindowOptions = {}): Plan {
  const spread = opts.spread ?? 0.5;
  const budget = opts.budget ?? 1;
  if (!(spread >= 0 && spread < 1)) throw new RangeError(`spread must be in [0, 1), got ${spread}`);
  if (!(budget > 0)) throw new RangeError(`budget must be > 0, got ${budget}`);
  const units: Unit[] = [];
  if (plan.mode === "zigzag" || plan.mode === "streaming") {
    const scores = plan.scores?.layers;
    if (!scores) throw new PlanError("per-layer windows need the plan's scores.layers");
    scores.forEach((score, layer) => {
      if (plan.mode === "streaming" || plan.layers![layer] === "streaming") {
        units.push({ layer, head: null, score });
      }
    });
  } else if (plan.mode === "duo") {
    const scores = plan.scores?.kv_heads;
    if (!scores) throw new PlanError("per-head windows need the plan's scores.kv_heads");
    plan.heads!.forEach((row, layer) =>
      row.forEach((k, head) => {
        if (k === "streaming") units.push({ layer, head, score: scores[layer][head] });
      })
    );
  } else {
    throw new PlanError("a full plan has no streaming heads to give windows to");
  }
  if (units.length === 0) return { ...plan, windows: undefined };
  const ranked = units.map((_, i) => i).sort((a, b) => units[a].score - units[b].score || a - b);
  const n = units.length;
  const base = plan.recent * budget;
  const targets = new Array<number>(n);
  ranked.forEach((u, r) => {
    targets[u] = n === 1 ? base : base * (1 - spread + (2 * spread * r) / (n - 1));
  });
  const recents = apportion(targets, Math.max(n, Math.round(n * base)));
  type W = { sink: number; recent: number };
  const windows: (W | (W | null)[] | null)[] = Array.from(
    { length: plan.model.num_layers },
    () => null,
  );
  units.forEach((u, i) => {
    const w = { sink: plan.sink, recent: recents[i] };
    if (u.head === null) {
      windows[u.layer] = w;
      return;
    }
    const row = (windows[u.layer] as (W | null)[] | null) ??
      Array.from({ length: plan.model.num_kv_heads }, () => null);
    row[u.head] = w;
    windows[u.layer] = row;
  });
  return {
    ...plan,
    windows,
    provenance: { ...plan.provenance, windows: { rule: "scored", spread, budget } },
  };
}
