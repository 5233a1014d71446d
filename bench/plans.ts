// The four plans the bench compares, for any model shape:
//   full       every KV head keeps the whole (paged) cache;
//   duo        50% of the KV heads (budget) are retrieval heads, mixed inside layers the way the
//              published DuoAttention patterns are (29 to 32 of 32 layers mixed at 50%);
//   zigzag     50% of the layers are retrieval layers, every KV head of a layer of one kind;
//   streaming  every KV head keeps sink + recent.
//
// duo and zigzag come from a published gate file (`full_attention_heads.tsv`). When the model's
// layers x KV heads equal the file's, the file is imported as is (plans/duo_import.ts). Otherwise
// the pattern is resampled to the model's shape so that it stays as mixed as the original: layer l
// takes the source layer at the same relative depth, s(l) = floor((l + 0.5) * L_src / L); the duo
// plan at the same budget on the source gives that layer's retrieval fraction f(s), and layer l
// gets about f(s(l)) * H retrieval heads (largest-remainder rounding so that the total is exactly
// ceil(L * H * budget), the importer's count), chosen by the gates of the source heads at the same
// relative index. zigzag keeps the ceil(L * budget) layers whose source layers have the largest
// gate sums (the importer's default criterion). Without a gate file, a deterministic synthetic
// pattern is used: every layer mixed, ceil/floor of H * budget retrieval heads alternating by
// layer; zigzag takes every other layer.

import type { ModelConfig } from "../model/types.ts";
import {
  importDuo,
  parseGateTsv,
  retrievalCount,
  selectDuoHeads,
  selectZigzagLayers,
} from "../plans/duo_import.ts";
import { builtinPlan, resolvePlan } from "../plans/resolve.ts";
import { parsePlan, type Plan } from "../plans/schema.ts";
import type { ResolvedPlan } from "../plans/types.ts";

export const PLAN_NAMES = ["full", "duo", "zigzag", "streaming"] as const;
export type BenchPlanName = typeof PLAN_NAMES[number];

export interface PlanSummary {
  mode: string;
  sink: number;
  recent: number;
  /** Where the pattern came from: "builtin", "import:<dir>", "resampled:<dir>", "synthetic". */
  source: string;
  retrieval_kv_heads: number;
  streaming_kv_heads: number;
  mixed_layers: number;
  retrieval_layers: number[];
  /** Retrieval KV heads per layer. */
  retrieval_per_layer: number[];
}

export interface BenchPlans {
  plans: Record<BenchPlanName, ResolvedPlan>;
  summaries: Record<BenchPlanName, PlanSummary>;
}

export interface Resampled {
  /** duo: retrieval[layer][head]. */
  duo: boolean[][];
  /** zigzag: retrieval layers, ascending. */
  zigzag: number[];
}

/** A published gate pattern resampled to `layers` x `heads` (see the top of this file). */
export function resamplePattern(
  gates: number[][],
  layers: number,
  heads: number,
  budget: number,
): Resampled {
  const L = gates.length;
  const H = gates[0].length;
  const srcLayer = (l: number) => Math.min(L - 1, Math.floor(((l + 0.5) * L) / layers));
  const srcHead = (h: number) => Math.min(H - 1, Math.floor(((h + 0.5) * H) / heads));
  const srcDuo = selectDuoHeads(gates, budget);
  const want = Array.from(
    { length: layers },
    (_, l) => srcDuo[srcLayer(l)].filter(Boolean).length / H * heads,
  );
  const total = retrievalCount(layers * heads, budget);
  const count = want.map((w) => Math.min(heads, Math.floor(w)));
  let sum = count.reduce((a, b) => a + b, 0);
  while (sum !== total) {
    // Largest remainder first when adding, smallest when removing; ties: lower layer.
    let best = -1;
    for (let l = 0; l < layers; l++) {
      const ok = sum < total ? count[l] < heads : count[l] > 0;
      if (!ok) continue;
      const r = want[l] - count[l];
      if (best < 0 || (sum < total ? r > want[best] - count[best] : r < want[best] - count[best])) {
        best = l;
      }
    }
    count[best] += sum < total ? 1 : -1;
    sum += sum < total ? 1 : -1;
  }
  const duo = count.map((c, l) => {
    const row = gates[srcLayer(l)];
    const order = Array.from({ length: heads }, (_, h) => h)
      .sort((a, b) => row[srcHead(b)] - row[srcHead(a)] || a - b);
    const keep = new Set(order.slice(0, c));
    return Array.from({ length: heads }, (_, h) => keep.has(h));
  });
  const sums = Array.from(
    { length: layers },
    (_, l) => gates[srcLayer(l)].reduce((a, b) => a + b, 0),
  );
  return { duo, zigzag: selectZigzagLayers(sums, budget) };
}

/** A deterministic stand-in for published gates: see the top of this file. */
export function syntheticGates(layers: number, heads: number, budget: number): number[][] {
  return Array.from({ length: layers }, (_, l) => {
    const keep = Math.min(
      heads,
      Math.max(heads > 1 ? 1 : 0, Math.round(heads * budget + (l % 2 ? -0.01 : 0.01))),
    );
    // Retrieval heads rotate through the layer so their indices differ from layer to layer.
    return Array.from({ length: heads }, (_, h) => {
      const rank = (h + l) % heads;
      const g = rank < keep ? 0.9 - 0.01 * rank : 0.1 + 0.001 * rank;
      return l % 2 === 0 ? g + 0.0001 : g; // zigzag: even layers win ties
    });
  });
}

function fingerprint(c: ModelConfig) {
  return {
    architecture: c.architecture,
    num_layers: c.nLayers,
    num_kv_heads: c.nKvHeads,
    head_dim: c.headDim,
  };
}

function summarize(plan: ResolvedPlan, source: string): PlanSummary {
  const per = plan.layers.map((l) => l.retrievalKvHeads.length);
  return {
    mode: plan.mode,
    sink: plan.sink,
    recent: plan.recent,
    source,
    retrieval_kv_heads: per.reduce((a, b) => a + b, 0),
    streaming_kv_heads: plan.layers.reduce((a, l) => a + l.streamingKvHeads.length, 0),
    mixed_layers: plan.layers.filter((l) => l.kind === "mixed").length,
    retrieval_layers: plan.layers.flatMap((l, i) => (l.kind === "retrieval" ? [i] : [])),
    retrieval_per_layer: per,
  };
}

/**
 * The bench's plans for `config`. `patternDir` holds `full_attention_heads.tsv` (or is null for
 * the synthetic pattern).
 */
export function benchPlans(
  config: ModelConfig,
  o: { sink: number; recent: number; budget: number; patternDir: string | null },
): BenchPlans {
  const { sink, recent, budget } = o;
  let pattern: Resampled;
  let source: string;
  if (o.patternDir) {
    const tsvPath = `${o.patternDir}/full_attention_heads.tsv`;
    const src = parseGateTsv(Deno.readTextFileSync(tsvPath), tsvPath);
    const exact = src.length === config.nLayers && src[0].length === config.nKvHeads;
    const name = o.patternDir.replace(/\/+$/, "").split("/").pop()!;
    source = `${exact ? "import" : "resampled"}:${name}`;
    pattern = resamplePattern(src, config.nLayers, config.nKvHeads, budget);
    if (exact) {
      const tsv = Deno.readTextFileSync(tsvPath);
      const mk = (mode: "duo" | "zigzag") =>
        resolvePlan(
          parsePlan(
            {
              ...importDuo({
                tsv,
                tsvName: tsvPath,
                budget,
                mode,
                architecture: config.architecture,
                headDim: config.headDim,
              }),
              sink,
              recent,
            },
            tsvPath,
          ),
          config,
        );
      const duo = mk("duo");
      const zigzag = mk("zigzag");
      return assemble(config, sink, recent, duo, zigzag, source);
    }
  } else {
    const gates = syntheticGates(config.nLayers, config.nKvHeads, budget);
    source = "synthetic";
    const sums = gates.map((row) => row.reduce((a, b) => a + b, 0));
    pattern = { duo: selectDuoHeads(gates, budget), zigzag: selectZigzagLayers(sums, budget) };
  }
  const duoHeads = pattern.duo;
  const chosen = new Set(pattern.zigzag);
  const provenance = { method: "bench", budget, source };
  const duo = resolvePlan(
    parsePlan({
      version: 1,
      model: fingerprint(config),
      mode: "duo",
      heads: duoHeads.map((r) => r.map((k) => (k ? "retrieval" : "streaming"))),
      sink,
      recent,
      provenance,
    }, "bench duo plan"),
    config,
  );
  const zigzag = resolvePlan(
    parsePlan({
      version: 1,
      model: fingerprint(config),
      mode: "zigzag",
      layers: duoHeads.map((_, l) => (chosen.has(l) ? "retrieval" : "streaming")),
      sink,
      recent,
      provenance,
    }, "bench zigzag plan"),
    config,
  );
  return assemble(config, sink, recent, duo, zigzag, source);
}

function assemble(
  config: ModelConfig,
  sink: number,
  recent: number,
  duo: ResolvedPlan,
  zigzag: ResolvedPlan,
  source: string,
): BenchPlans {
  const builtin = (name: "full" | "streaming"): ResolvedPlan => {
    const p: Plan = builtinPlan(name, config, { sink, recent });
    return resolvePlan(p, config);
  };
  const plans = { full: builtin("full"), duo, zigzag, streaming: builtin("streaming") };
  return {
    plans,
    summaries: {
      full: summarize(plans.full, "builtin"),
      duo: summarize(duo, source),
      zigzag: summarize(zigzag, source),
      streaming: summarize(plans.streaming, "builtin"),
    },
  };
}
