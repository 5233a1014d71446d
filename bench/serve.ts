// `deno task bench --serve`: the engine's throughput as a server sees it. Aggregate decode
// tokens/s with 1, 4 and 16 concurrent greedy requests through the engine (continuous
// batching), and one sequence at --decode-steps 1 vs 8 (tokens per readback: Deno's ~11 ms
// readback floor dominates small models). Each figure is the median of several repetitions.
// The model is loaded once; each batch size and decode-step count gets its own engine over it.

import { Engine } from "../engine/engine.ts";
import { getGpu, resolvePrecision } from "../gpu/device.ts";
import { loadModel } from "../model/load.ts";
import { type Stat, stat } from "./stats.ts";

export interface ServeBenchOptions {
  model: string;
  precision?: "f16" | "f32";
  concurrency: number[];
  maxTokens: number;
  repeats: number;
  onProgress?: (done: number, total: number) => void;
}

export interface ServeBenchResult {
  model: string;
  precision: string;
  max_tokens: number;
  /** Aggregate generated tokens per second of wall time, per concurrency level. */
  concurrency: { requests: number; tokens_per_s: Stat }[];
  /** One sequence's decode tokens/s (first token to last) at 1 and 8 decode steps per readback. */
  decode_steps: { steps: number; tokens_per_s: Stat }[];
  /** tokens_per_s(8) / tokens_per_s(1), from the medians above (target >= 4). */
  steps_8_over_1: number;
}

export async function runServeBench(o: ServeBenchOptions): Promise<ServeBenchResult> {
  const model = await loadModel(o.model);
  const gpu = await getGpu();
  const precision = resolvePrecision(gpu, o.precision ?? "f32");
  const vocab = model.config.vocabSize;
  const prompt = (i: number) =>
    Array.from({ length: 8 }, (_, k) => 3 + ((i * 7 + k * 13) % (vocab - 3)));
  const total = (o.concurrency.length + 2) * o.repeats;
  let done = 0;
  const engines = new Map<string, Engine>();
  /** An engine decoding `requests` sequences together, `decodeSteps` tokens per readback. */
  const engineFor = async (requests: number, decodeSteps: number): Promise<Engine> => {
    const key = `${requests}x${decodeSteps}`;
    let e = engines.get(key);
    if (!e) {
      e = await Engine.create({ model, gpu, precision, maxBatch: requests, decodeSteps });
      engines.set(key, e);
    }
    return e;
  };
  /** Aggregate tokens/s over the wall time, and the mean per-request decode tokens/s (first
   * token to last, so the prefill and its readback are not counted). */
  const run = async (
    requests: number,
    decodeSteps: number,
  ): Promise<{ aggregate: number; decode: number }> => {
    const engine = await engineFor(requests, decodeSteps);
    const t0 = performance.now();
    const results = await Promise.all(Array.from({ length: requests }, (_, i) =>
      engine.generate({
        promptIds: prompt(i),
        maxTokens: o.maxTokens,
        sampling: { temperature: 0 },
        ignoreEos: true,
      })));
    const wall = (performance.now() - t0) / 1000;
    o.onProgress?.(++done, total);
    return {
      aggregate: results.reduce((a, r) => a + r.ids.length, 0) / wall,
      decode: results.reduce((a, r) => a + r.decodeTokensPerS, 0) / results.length,
    };
  };
  try {
    // Warm-up: pipelines and first-use allocations, for every engine the runs below use.
    for (const c of o.concurrency) await (await engineFor(c, 8)).warmUp();
    await (await engineFor(1, 1)).warmUp();
    await run(1, 8);
    const concurrency = [];
    for (const c of o.concurrency) {
      const samples = [];
      for (let r = 0; r < o.repeats; r++) samples.push((await run(c, 8)).aggregate);
      concurrency.push({ requests: c, tokens_per_s: stat(samples) });
    }
    const decodeSteps = [];
    for (const steps of [1, 8]) {
      const samples = [];
      for (let r = 0; r < o.repeats; r++) samples.push((await run(1, steps)).decode);
      decodeSteps.push({ steps, tokens_per_s: stat(samples) });
    }
    return {
      model: o.model,
      precision,
      max_tokens: o.maxTokens,
      concurrency,
      decode_steps: decodeSteps,
      steps_8_over_1: decodeSteps[1].tokens_per_s.median / decodeSteps[0].tokens_per_s.median,
    };
  } finally {
    for (const e of engines.values()) await e.close();
  }
}

/** A Markdown summary with the issue's target (decode steps 8 vs 1 >= 4x). */
export function serveMarkdown(r: ServeBenchResult): string {
  const f = (s: Stat) => `${s.median.toFixed(0)} (${s.min.toFixed(0)}-${s.max.toFixed(0)})`;
  return [
    `Serving throughput, \`${r.model}\` (${r.precision}), ${r.max_tokens} greedy tokens per request:`,
    "",
    "| concurrent requests | aggregate tokens/s, median (min-max) |",
    "| --- | --- |",
    ...r.concurrency.map((c) => `| ${c.requests} | ${f(c.tokens_per_s)} |`),
    "",
    "| decode steps per readback | one sequence, decode tokens/s |",
    "| --- | --- |",
    ...r.decode_steps.map((d) => `| ${d.steps} | ${f(d.tokens_per_s)} |`),
    "",
    `Decode steps 8 vs 1: ${r.steps_8_over_1.toFixed(2)}x (target >= 4x: ${
      r.steps_8_over_1 >= 4 ? "met" : `missed by ${(4 - r.steps_8_over_1).toFixed(2)}x`
    }).`,
  ].join("\n") + "\n";
}
