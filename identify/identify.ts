// `plan identify`: finds a model's retrieval layers (zigzag) or KV heads (duo) with forward passes
// only, and writes every score into the plan so that it can be re-thresholded later.
//
// Methods
// - ablate (default; GPU engine, `Engine.score`): for each layer (zigzag) or KV head (duo), the calibration set
//   runs with only that unit streaming (sink + recent) and is compared with full attention on the
//   answer rows: the deviation DuoAttention trains on (mean squared difference of the final-norm
//   hidden states) and the drop of the answers' log-probability. A unit's score is
//   0.5 * deviation / max deviation + 0.5 * drop / max drop (negative drops count as 0).
//   zigzag keeps the ceil(L*B) best layers, then evaluates the chosen plan itself (those layers
//   full, every other layer streaming) and tries swapping the weakest chosen layers with the
//   strongest unchosen ones, keeping the best swap while it lowers the plan's deviation, for at
//   most `rounds` rounds. With `headScores`, zigzag also ablates each KV head alone, as duo does,
//   to fill scores.kv_heads.
// - retrieval-score (Wu et al. 2024; CPU forward with attention probabilities): teacher-forced
//   needle decoding; each time a head's top-1 attended position lies in the needle sentence and
//   holds the answer token being produced, it earns 1/|answer|; averaged over needles.
// - razor (RazorAttention; CPU forward): random token sequences repeated 4 times; echo = the
//   attention a head pays to earlier occurrences of the current token, induction = to the tokens
//   that followed them; a head's score is max(echo, induction), both kept in the provenance.
// For the attention-pattern methods a KV head scores the max over its query heads and a layer the
// max over its KV heads (a layer is needed when any of its heads retrieves).

import { Engine, type Precision } from "../engine/engine.ts";
import { getGpu, type Gpu } from "../gpu/device.ts";
import { mulberry32 } from "../model/random.ts";
import type { LoadedModel } from "../model/types.ts";
import { retrievalCount, selectDuoHeads, selectZigzagLayers } from "../plans/duo_import.ts";
import { parsePlan, type Plan, type PlanInput } from "../plans/schema.ts";
import { layerAttention, type LayerAttentionPlan, type ResolvedPlan } from "../plans/types.ts";
import { answerRows, type CalibrationSample, calibrationSet, fillerText } from "./calibration.ts";
import { probeForward } from "./probe.ts";

export type IdentifyMethod = "ablate" | "retrieval-score" | "razor";
export const METHODS: readonly IdentifyMethod[] = ["ablate", "retrieval-score", "razor"];

export interface IdentifyOptions {
  method: IdentifyMethod;
  mode: "zigzag" | "duo";
  /** Fraction of layers (zigzag) or KV heads (duo) kept as retrieval, in (0, 1]. */
  budget: number;
  /** Calibration document lengths in tokens. */
  lengths: number[];
  /** Documents per length. */
  samples: number;
  seed: number;
  sink: number;
  recent: number;
  /** Needles per calibration document (default 1: the pass-key format). */
  needles?: number;
  /** Haystack text (default: built-in filler). */
  haystack?: string;
  /** Where the haystack came from, for the provenance (default "file"). */
  haystackName?: string;
  /** ablate: GPU precision (default f32). */
  precision?: Precision;
  /** ablate: prefill chunk (default 256). */
  chunk?: number;
  /** ablate, zigzag: swap rounds after the first choice (default 2; 0 = none). */
  rounds?: number;
  /** ablate, zigzag: chosen and unchosen layers considered per swap round (default 2 each). */
  swapCandidates?: number;
  /** ablate, zigzag: also ablate each KV head alone, for scores.kv_heads (duo always does). */
  headScores?: boolean;
  /** razor: repetitions of the random block (default 4). */
  repeats?: number;
  /** ablate: the device (default: the process's shared one). */
  gpu?: Gpu;
  /** provenance.source (default: the model's source). */
  source?: string;
  /** Progress in forward tokens. */
  onProgress?: (done: number, total: number, note: string) => void;
}

export interface IdentifyResult {
  plan: Plan;
  /** Tokens run through forward passes (GPU and CPU together). */
  forwardTokens: number;
  wallSeconds: number;
  /** Retrieval layers (zigzag) or layers holding a retrieval KV head (duo), ascending. */
  retrievalLayers: number[];
}

/** Everything `identify` computes before the plan is assembled. */
interface Scores {
  kvHeads?: number[][];
  layers: number[];
  /** zigzag: the chosen layers when the method chose them itself (ablate's refinement). */
  chosenLayers?: number[];
  layerScore: string;
  details: Record<string, unknown>;
}

class Tracker {
  done = 0;
  total = 0;
  constructor(private readonly cb?: IdentifyOptions["onProgress"]) {}
  plan(tokens: number) {
    this.total += tokens;
  }
  add(tokens: number, note: string) {
    this.done += tokens;
    this.cb?.(this.done, Math.max(this.total, this.done), note);
  }
}

export async function identify(model: LoadedModel, opts: IdentifyOptions): Promise<IdentifyResult> {
  const t0 = performance.now();
  const c = model.config;
  if (!(opts.budget > 0 && opts.budget <= 1)) {
    throw new RangeError(`budget must be in (0, 1], got ${opts.budget}`);
  }
  for (const n of opts.lengths) {
    if (!(Number.isInteger(n) && n > 0 && n <= c.maxSeqLen)) {
      throw new RangeError(
        `calibration length ${n} is outside the model's context (${c.maxSeqLen})`,
      );
    }
  }
  if (!(Number.isInteger(opts.samples) && opts.samples >= 1)) {
    throw new RangeError(`samples must be a positive integer`);
  }
  const tracker = new Tracker(opts.onProgress);
  let scores: Scores;
  let calibration: CalibrationSample[] = [];
  if (opts.method === "razor") {
    scores = razor(model, opts, tracker);
  } else {
    if (!model.tokenizer) throw new Error(`method ${opts.method} needs the model's tokenizer`);
    calibration = calibrationSet(model.tokenizer, {
      lengths: opts.lengths,
      samples: opts.samples,
      seed: opts.seed,
      needles: opts.needles ?? 1,
      haystack: opts.haystack,
    });
    scores = opts.method === "ablate"
      ? await ablate(model, opts, calibration, tracker)
      : retrievalScore(model, calibration, tracker);
  }

  // Selection.
  let layers: ("retrieval" | "streaming")[] | undefined;
  let heads: ("retrieval" | "streaming")[][] | undefined;
  let retrievalLayers: number[];
  if (opts.mode === "zigzag") {
    const chosen = scores.chosenLayers ?? selectZigzagLayers(scores.layers, opts.budget);
    layers = scores.layers.map((_, l) => (chosen.includes(l) ? "retrieval" : "streaming"));
    retrievalLayers = [...chosen].sort((a, b) => a - b);
  } else {
    const kv = scores.kvHeads!;
    const sel = selectDuoHeads(kv, opts.budget);
    heads = sel.map((row) => row.map((k) => (k ? "retrieval" : "streaming")));
    retrievalLayers = sel.flatMap((row, l) => (row.some((k) => k) ? [l] : []));
  }
  const wallSeconds = (performance.now() - t0) / 1000;
  const round = (x: number) => Number(x.toPrecision(6));
  const input: PlanInput = {
    version: 1,
    model: {
      architecture: c.architecture,
      num_layers: c.nLayers,
      num_kv_heads: c.nKvHeads,
      head_dim: c.headDim,
    },
    mode: opts.mode,
    layers,
    heads,
    sink: opts.sink,
    recent: opts.recent,
    provenance: {
      method: opts.method,
      budget: opts.budget,
      source: opts.source ?? model.source,
      created: new Date().toISOString(),
      layer_score: scores.layerScore,
      calibration: opts.method === "razor"
        ? { seed: opts.seed, samples: opts.samples, lengths: opts.lengths }
        : {
          seed: opts.seed,
          samples: opts.samples,
          lengths: opts.lengths,
          needles: opts.needles ?? 1,
          haystack: opts.haystack === undefined ? "builtin" : (opts.haystackName ?? "file"),
          documents: calibration.map((s) => s.tokens.length),
        },
      forward_tokens: tracker.done,
      wall_seconds: Number(wallSeconds.toFixed(1)),
      ...scores.details,
    },
    scores: {
      kv_heads: scores.kvHeads?.map((row) => row.map(round)),
      layers: scores.layers.map(round),
    },
  };
  const plan = parsePlan(input, "identified plan");
  return { plan, forwardTokens: tracker.done, wallSeconds, retrievalLayers };
}

// ---- ablate (GPU) ------------------------------------------------------------------------------

function resolvedPlan(
  nLayers: number,
  nKvHeads: number,
  sink: number,
  recent: number,
  streamingOf: (layer: number) => number[],
): ResolvedPlan {
  const layers: LayerAttentionPlan[] = Array.from({ length: nLayers }, (_, l) => {
    const str = streamingOf(l);
    return layerAttention(
      Array.from({ length: nKvHeads }, (_, h) => str.includes(h) ? "streaming" : "retrieval"),
    );
  });
  const mixed = layers.some((l) => l.kind === "mixed");
  const anyStreaming = layers.some((l) => l.streamingKvHeads.length > 0);
  return { mode: mixed ? "duo" : anyStreaming ? "zigzag" : "full", sink, recent, layers };
}

interface Outcome {
  /** Per sample, per answer row: final-norm hidden state. */
  hidden: Float32Array[][];
  /** Per sample, per answer row: log-probability of the answer token. */
  logprob: number[][];
}

function logSoftmaxAt(logits: Float32Array, target: number): number {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  return logits[target] - max - Math.log(sum);
}

function compare(ref: Outcome, o: Outcome): { deviation: number; drop: number } {
  let se = 0;
  let n = 0;
  let drop = 0;
  let m = 0;
  ref.hidden.forEach((rows, s) =>
    rows.forEach((h, r) => {
      const g = o.hidden[s][r];
      for (let i = 0; i < h.length; i++) se += (g[i] - h[i]) ** 2;
      n += h.length;
      drop += ref.logprob[s][r] - o.logprob[s][r];
      m++;
    })
  );
  return { deviation: se / Math.max(1, n), drop: drop / Math.max(1, m) };
}

async function ablate(
  model: LoadedModel,
  opts: IdentifyOptions,
  cal: CalibrationSample[],
  tracker: Tracker,
): Promise<Scores> {
  const c = model.config;
  const gpu = opts.gpu ?? await getGpu();
  const precision = opts.precision ?? "f32";
  const maxLen = Math.max(...cal.map((s) => s.tokens.length));
  const setTokens = cal.reduce((a, s) => a + s.tokens.length, 0);
  const bytesPerToken = 2 * c.nLayers * c.nKvHeads * c.headDim * (precision === "f16" ? 2 : 4);
  const rowsOf = cal.map(answerRows);
  const rounds = opts.rounds ?? 2;
  const m = opts.swapCandidates ?? 2;
  const layerUnits = Array.from({ length: c.nLayers }, (_, l) => ({ layer: l, heads: null }));
  const headUnits = Array.from(
    { length: c.nLayers * c.nKvHeads },
    (_, i) => ({ layer: Math.floor(i / c.nKvHeads), heads: [i % c.nKvHeads] }),
  );
  const units: { layer: number; heads: number[] | null }[] = [
    ...(opts.mode === "zigzag" ? layerUnits : []),
    ...(opts.mode === "duo" || opts.headScores ? headUnits : []),
  ];
  tracker.plan(setTokens * (1 + units.length));
  if (opts.mode === "zigzag" && rounds > 0) tracker.plan(setTokens * (1 + rounds * m * m));

  /** The calibration set scored under `plan`, one document at a time (one cache slot). */
  const run = async (plan: ResolvedPlan, note: string): Promise<Outcome> => {
    const engine = await Engine.create({
      model,
      gpu,
      precision,
      plan,
      prefillChunk: opts.chunk ?? 256,
      maxBatch: 32,
      maxSeqs: 1,
      decodeSteps: 1,
      kvCacheBytes: 2 * bytesPerToken * (maxLen + 64) + (1 << 20),
      maxModelLen: maxLen,
    });
    const out: Outcome = { hidden: [], logprob: [] };
    try {
      for (let s = 0; s < cal.length; s++) {
        const { rows, targets } = rowsOf[s];
        const r = await engine.score(cal[s].tokens, rows);
        out.hidden.push(r.hidden);
        out.logprob.push(r.logits.map((lg, i) => logSoftmaxAt(lg, targets[i])));
        tracker.add(cal[s].tokens.length, note);
      }
    } finally {
      await engine.close();
    }
    return out;
  };

  const sink = opts.sink;
  const recent = opts.recent;
  const ref = await run(resolvedPlan(c.nLayers, c.nKvHeads, sink, recent, () => []), "full");
  const deviation: number[] = [];
  const drop: number[] = [];
  for (const u of units) {
    const plan = resolvedPlan(
      c.nLayers,
      c.nKvHeads,
      sink,
      recent,
      (l) => (l === u.layer ? (u.heads ?? Array.from({ length: c.nKvHeads }, (_, h) => h)) : []),
    );
    const note = u.heads ? `layer ${u.layer} head ${u.heads[0]}` : `layer ${u.layer}`;
    const r = compare(ref, await run(plan, note));
    deviation.push(r.deviation);
    drop.push(r.drop);
  }
  /** 0.5 * deviation / max + 0.5 * max(drop, 0) / max over the units [from, to). */
  const scoresOf = (from: number, to: number) => {
    const dev = deviation.slice(from, to);
    const dr = drop.slice(from, to);
    const maxDev = Math.max(...dev, 0);
    const maxDrop = Math.max(...dr, 0);
    return dev.map((d, i) =>
      0.5 * (maxDev > 0 ? d / maxDev : 0) + 0.5 * (maxDrop > 0 ? Math.max(0, dr[i]) / maxDrop : 0)
    );
  };
  const round = (x: number) => Number(x.toPrecision(6));
  const nl = opts.mode === "zigzag" ? c.nLayers : 0;
  const headScore = units.length > nl ? scoresOf(nl, units.length) : null;
  const kvHeads = headScore
    ? Array.from(
      { length: c.nLayers },
      (_, l) => headScore.slice(l * c.nKvHeads, (l + 1) * c.nKvHeads),
    )
    : undefined;
  const headDetails = headScore
    ? {
      kv_head_deviation: chunk(deviation.slice(nl).map(round), c.nKvHeads),
      kv_head_logprob_drop: chunk(drop.slice(nl).map(round), c.nKvHeads),
    }
    : {};

  if (opts.mode === "duo") {
    return {
      kvHeads,
      layers: kvHeads!.map((row) => row.reduce((a, b) => a + b, 0)),
      layerScore: "sum of the layer's KV head ablation scores",
      details: { ablation: { unit: "kv_head", ...headDetails } },
    };
  }
  const unitScore = scoresOf(0, nl);

  // zigzag: choose, then refine by swapping while the chosen plan's own deviation falls.
  const k = retrievalCount(c.nLayers, opts.budget);
  let chosen = selectZigzagLayers(unitScore, opts.budget);
  const evaluated = new Map<string, { deviation: number; drop: number }>();
  const planDeviation = async (set: number[]) => {
    const key = [...set].sort((a, b) => a - b).join(",");
    let r = evaluated.get(key);
    if (!r) {
      const plan = resolvedPlan(
        c.nLayers,
        c.nKvHeads,
        sink,
        recent,
        (l) => (set.includes(l) ? [] : Array.from({ length: c.nKvHeads }, (_, h) => h)),
      );
      r = compare(ref, await run(plan, `plan ${key}`));
      evaluated.set(key, r);
    }
    return r;
  };
  const history: { layers: number[]; deviation: number; logprob_drop: number }[] = [];
  if (rounds > 0 && k < c.nLayers) {
    let current = await planDeviation(chosen);
    history.push({
      layers: [...chosen],
      deviation: round(current.deviation),
      logprob_drop: round(current.drop),
    });
    for (let r = 0; r < rounds; r++) {
      const outs = [...chosen].sort((a, b) => unitScore[a] - unitScore[b] || b - a).slice(0, m);
      const ins = unitScore.map((_, l) => l).filter((l) => !chosen.includes(l))
        .sort((a, b) => unitScore[b] - unitScore[a] || a - b).slice(0, m);
      let best: { set: number[]; deviation: number; drop: number } | null = null;
      for (const o of outs) {
        for (const i of ins) {
          const set = [...chosen.filter((l) => l !== o), i].sort((a, b) => a - b);
          const d = await planDeviation(set);
          if (!best || d.deviation < best.deviation) best = { set, ...d };
        }
      }
      if (!best || !(best.deviation < current.deviation)) break;
      chosen = best.set;
      current = best;
      history.push({
        layers: [...chosen],
        deviation: round(current.deviation),
        logprob_drop: round(current.drop),
      });
    }
  }
  return {
    kvHeads,
    layers: unitScore,
    chosenLayers: chosen,
    layerScore: "0.5 * deviation / max + 0.5 * log-prob drop / max, one layer streaming at a time",
    details: {
      ablation: {
        unit: "layer",
        deviation: deviation.slice(0, nl).map(round),
        logprob_drop: drop.slice(0, nl).map(round),
        refinement: history,
        ...headDetails,
      },
    },
  };
}

function chunk<T>(xs: T[], n: number): T[][] {
  return Array.from({ length: Math.ceil(xs.length / n) }, (_, i) => xs.slice(i * n, (i + 1) * n));
}

// ---- attention-pattern methods (CPU) ----------------------------------------------------------

/** Per layer and KV head: max over the group's query heads; per layer: max over KV heads. */
function aggregate(perHead: number[][], nKvHeads: number): { kv: number[][]; layers: number[] } {
  const kv = perHead.map((row) => {
    const group = row.length / nKvHeads;
    return Array.from(
      { length: nKvHeads },
      (_, h) => Math.max(...row.slice(h * group, (h + 1) * group)),
    );
  });
  return { kv, layers: kv.map((row) => Math.max(...row)) };
}

function retrievalScore(model: LoadedModel, cal: CalibrationSample[], tracker: Tracker): Scores {
  const c = model.config;
  const score = Array.from({ length: c.nLayers }, () => new Array<number>(c.nHeads).fill(0));
  let needles = 0;
  tracker.plan(cal.reduce((a, s) => a + s.tokens.length, 0));
  for (const s of cal) {
    // row -> (needle span, target token, weight 1/|answer|)
    const info = new Map<number, { span: [number, number]; target: number; w: number }>();
    for (const a of s.answers) {
      const n = a.span[1] - a.span[0];
      for (let k = a.span[0]; k < a.span[1]; k++) {
        info.set(k - 1, { span: s.needles[a.needle].span, target: s.tokens[k], w: 1 / n });
      }
      needles++;
    }
    probeForward(c, model.weights, s.tokens, {
      rows: [...info.keys()],
      onAttention: (l, h, row, probs) => {
        let best = 0;
        for (let j = 1; j < probs.length; j++) if (probs[j] > probs[best]) best = j;
        const it = info.get(row)!;
        if (best >= it.span[0] && best < it.span[1] && s.tokens[best] === it.target) {
          score[l][h] += it.w;
        }
      },
    });
    tracker.add(s.tokens.length, `retrieval-score ${s.tokens.length} tokens`);
  }
  const perHead = score.map((row) => row.map((v) => v / Math.max(1, needles)));
  const { kv, layers } = aggregate(perHead, c.nKvHeads);
  const round = (x: number) => Number(x.toPrecision(6));
  return {
    kvHeads: kv,
    layers,
    layerScore: "max over KV heads of the retrieval score (Wu et al.; KV head = max over group)",
    details: { retrieval_score: { query_heads: perHead.map((r) => r.map(round)), needles } },
  };
}

function razor(model: LoadedModel, opts: IdentifyOptions, tracker: Tracker): Scores {
  const c = model.config;
  const repeats = opts.repeats ?? 4;
  const n = Math.max(2, Math.min(256, Math.floor((Math.min(...opts.lengths) - 1) / repeats)));
  // Tokens to draw from: those the tokenizer uses for ordinary text, else the whole vocabulary
  // less the special ids.
  let pool: number[];
  const specials = new Set([c.bosId, ...c.eosIds]);
  if (model.tokenizer) {
    const ids = new Set(model.tokenizer.encode(fillerText(opts.seed, 20000)));
    pool = [...ids].filter((t) => !specials.has(t) && t < c.vocabSize).sort((a, b) => a - b);
  } else {
    pool = Array.from({ length: c.vocabSize }, (_, i) => i).filter((t) => !specials.has(t));
  }
  const echo = Array.from({ length: c.nLayers }, () => new Array<number>(c.nHeads).fill(0));
  const induction = Array.from({ length: c.nLayers }, () => new Array<number>(c.nHeads).fill(0));
  let count = 0;
  const seqs = opts.samples;
  tracker.plan(seqs * (1 + repeats * n));
  for (let s = 0; s < seqs; s++) {
    const r = mulberry32((opts.seed * 7919 + s * 104729 + 17) >>> 0);
    const block = Array.from({ length: n }, () => pool[Math.floor(r() * pool.length)]);
    const tokens = [c.bosId >= 0 ? c.bosId : pool[0]];
    for (let k = 0; k < repeats; k++) tokens.push(...block);
    const rows = Array.from({ length: (repeats - 1) * n }, (_, i) => 1 + n + i);
    probeForward(c, model.weights, tokens, {
      rows,
      onAttention: (l, h, row, probs) => {
        const tok = tokens[row];
        let e = 0;
        let ind = 0;
        for (let j = 1; j < row; j++) {
          if (tokens[j] === tok) e += probs[j];
          if (tokens[j - 1] === tok) ind += probs[j];
        }
        echo[l][h] += e;
        induction[l][h] += ind;
      },
    });
    count += rows.length;
    tracker.add(tokens.length, `razor sequence ${s + 1}/${seqs}`);
  }
  const norm = (m: number[][]) => m.map((row) => row.map((v) => v / Math.max(1, count)));
  const e = norm(echo);
  const ind = norm(induction);
  const perHead = e.map((row, l) => row.map((v, h) => Math.max(v, ind[l][h])));
  const { kv, layers } = aggregate(perHead, c.nKvHeads);
  const round = (x: number) => Number(x.toPrecision(6));
  return {
    kvHeads: kv,
    layers,
    layerScore:
      "max over KV heads of max(echo, induction) (RazorAttention; KV head = max over group)",
    details: {
      razor: {
        block: n,
        repeats,
        echo: e.map((r) => r.map(round)),
        induction: ind.map((r) => r.map(round)),
      },
    },
  };
}
