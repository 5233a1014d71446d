// `deno task bench --serve`: the engine's throughput as a server sees it. Aggregate decode
// tokens/s with 1, 4 and 16 concurrent greedy requests through the engine (continuous
// batching), and one sequence at --decode-steps 1 vs 8 (tokens per readback: Deno's ~11 ms
// readback floor dominates small models), with and without overlapped decode (the next steps
// queued before a readback is awaited), beside its GPU-bound rate. Each figure is the median of
// several repetitions; the one-sequence runs are interleaved.
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
  /** One sequence's decode tokens/s (first token to last) at 1 and 8 decode steps per readback,
   * overlapped decode on and off. */
  decode_steps: { steps: number | "auto"; overlap: boolean; tokens_per_s: Stat }[];
  /** What `--decode-steps auto` chose at warm-up, and its timing. */
  auto: { steps: number; step_ms: number; readback_wait_ms: number; of_gpu_bound: number };
  /** tokens_per_s(8) / tokens_per_s(1), overlap off, from the medians above (target >= 4). */
  steps_8_over_1: number;
  /** The readback's cost and the GPU-bound step time, solved from the overlap-off medians at 1
   * and 8 steps (ms per token = step + readback / steps: the two-count slope). */
  readback_ms: number;
  gpu_step_ms: number;
  /** 1000 / gpu_step_ms: what one sequence would decode with readbacks free. */
  gpu_bound_tokens_per_s: number;
  /** Per steps per readback: overlapped tokens/s over the GPU-bound rate (target >= 0.85 at the
   * default 8), and over the same steps without overlap. */
  overlap: { steps: number; of_gpu_bound: number; over_plain: number }[];
}

export async function runServeBench(o: ServeBenchOptions): Promise<ServeBenchResult> {
  const model = await loadModel(o.model);
  const gpu = await getGpu();
  const precision = resolvePrecision(gpu, o.precision ?? "f32");
  const vocab = model.config.vocabSize;
  const prompt = (i: number) =>
    Array.from({ length: 8 }, (_, k) => 3 + ((i * 7 + k * 13) % (vocab - 3)));
  const total = (o.concurrency.length + 5) * o.repeats;
  let done = 0;
  const engines = new Map<string, Engine>();
  /** An engine decoding `requests` sequences together, `decodeSteps` tokens per readback. */
  const engineFor = async (
    requests: number,
    decodeSteps: number | "auto",
    overlapDecode = true,
  ): Promise<Engine> => {
    const key = `${requests}x${decodeSteps}x${overlapDecode}`;
    let e = engines.get(key);
    if (!e) {
      e = await Engine.create({
        model,
        gpu,
        precision,
        maxBatch: requests,
        decodeSteps,
        overlapDecode,
      });
      engines.set(key, e);
    }
    return e;
  };
  /** Aggregate tokens/s over the wall time, and the mean per-request decode tokens/s (first
   * token to last, so the prefill and its readback are not counted). */
  const run = async (
    requests: number,
    decodeSteps: number | "auto",
    overlap = true,
  ): Promise<{ aggregate: number; decode: number }> => {
    const engine = await engineFor(requests, decodeSteps, overlap);
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
    const single: { steps: number | "auto"; overlap: boolean }[] = [
      ...[1, 8].flatMap((steps) => [false, true].map((overlap) => ({ steps, overlap }))),
      { steps: "auto", overlap: true },
    ];
    for (const c of single) await (await engineFor(1, c.steps, c.overlap)).warmUp();
    await run(1, 8);
    const concurrency = [];
    for (const c of o.concurrency) {
      const samples = [];
      for (let r = 0; r < o.repeats; r++) samples.push((await run(c, 8)).aggregate);
      concurrency.push({ requests: c, tokens_per_s: stat(samples) });
    }
    // Interleaved, so drift on the adapter hits every configuration alike.
    const samples: number[][] = single.map(() => []);
    for (let r = 0; r < o.repeats; r++) {
      for (const [i, c] of single.entries()) {
        samples[i].push((await run(1, c.steps, c.overlap)).decode);
      }
    }
    const decodeSteps = single.map((c, i) => ({ ...c, tokens_per_s: stat(samples[i]) }));
    const rate = (steps: number | "auto", overlap: boolean) =>
      decodeSteps.find((d) => d.steps === steps && d.overlap === overlap)!.tokens_per_s.median;
    // ms/token = step + readback / steps, at 1 and 8 steps without overlap.
    const p1 = 1000 / rate(1, false);
    const p8 = 1000 / rate(8, false);
    const readback = (p1 - p8) * 8 / 7;
    const step = p1 - readback;
    const timing = (await engineFor(1, "auto")).stepTiming!;
    return {
      model: o.model,
      precision,
      max_tokens: o.maxTokens,
      concurrency,
      decode_steps: decodeSteps,
      steps_8_over_1: rate(8, false) / rate(1, false),
      readback_ms: readback,
      gpu_step_ms: step,
      gpu_bound_tokens_per_s: 1000 / step,
      auto: {
        steps: timing.steps,
        step_ms: timing.stepMs,
        readback_wait_ms: timing.readbackWaitMs,
        of_gpu_bound: rate("auto", true) * step / 1000,
      },
      overlap: [1, 8].map((steps) => ({
        steps,
        of_gpu_bound: rate(steps, true) * step / 1000,
        over_plain: rate(steps, true) / rate(steps, false),
      })),
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
    "| decode steps per readback | overlapped decode | one sequence, decode tokens/s |",
    "| --- | --- | --- |",
    ...r.decode_steps.map((d) =>
      `| ${d.steps} | ${d.overlap ? "on" : "off"} | ${f(d.tokens_per_s)} |`
    ),
    "",
    `Decode steps 8 vs 1 (overlap off): ${r.steps_8_over_1.toFixed(2)}x (target >= 4x: ${
      r.steps_8_over_1 >= 4 ? "met" : `missed by ${(4 - r.steps_8_over_1).toFixed(2)}x`
    }).`,
    "",
    `GPU-bound rate (two-count slope of the overlap-off medians: ${r.gpu_step_ms.toFixed(2)} ms ` +
    `per step, ${r.readback_ms.toFixed(1)} ms per readback): ` +
    `${r.gpu_bound_tokens_per_s.toFixed(0)} tokens/s.`,
    "",
    "| steps per readback | overlapped / GPU-bound (target >= 0.85 at 8) | overlapped / plain |",
    "| --- | --- | --- |",
    ...r.overlap.map((x) =>
      `| ${x.steps} | ${x.of_gpu_bound.toFixed(3)} | ${x.over_plain.toFixed(2)}x |`
    ),
    "",
    `\`--decode-steps auto\` chose ${r.auto.steps} steps per readback at warm-up (it timed ` +
    `${r.auto.step_ms.toFixed(2)} ms per step, ${r.auto.readback_wait_ms.toFixed(1)} ms per ` +
    `readback): ${r.auto.of_gpu_bound.toFixed(3)} of the GPU-bound rate, overlapped.`,
  ].join("\n") + "\n";
}
