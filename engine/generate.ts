// One sequence, start to finish: prefill the prompt, then decode `decodeSteps` tokens per
// readback until a stop token, a stop sequence of ids, or max_tokens. The server's scheduler
// batches many of these; the CLI and the tests run one.

import type { ModelRunner, SamplingParams } from "../gpu/runner.ts";

export type FinishReason = "stop" | "length";

export interface GenerateOptions {
  maxTokens: number;
  sampling: SamplingParams;
  /** Token ids that end generation (the model's EOS by default); not included in the output. */
  stopIds?: number[];
  /** Tokens decoded per readback (default: the runner's maximum). */
  decodeSteps?: number;
  /** Called with each batch of new tokens as it arrives. */
  onTokens?: (ids: number[]) => void;
}

export interface GenerateResult {
  ids: number[];
  logprobs: number[];
  finishReason: FinishReason;
  /** Milliseconds from start to the first token. */
  timeToFirstTokenMs: number;
  /** Milliseconds spent decoding after the first token. */
  decodeMs: number;
}

export async function generate(
  runner: ModelRunner,
  promptIds: number[],
  o: GenerateOptions,
): Promise<GenerateResult> {
  const stop = new Set(o.stopIds ?? runner.config.eosIds);
  const steps = Math.min(o.decodeSteps ?? runner.opts.maxDecodeSteps, runner.opts.maxDecodeSteps);
  const seq = runner.cache.open();
  if (!seq) throw new Error("no free sequence slot in the KV cache");
  const t0 = performance.now();
  const ids: number[] = [];
  const logprobs: number[] = [];
  let finishReason: FinishReason = "length";
  try {
    if (o.maxTokens <= 0) {
      return { ids, logprobs, finishReason, timeToFirstTokenMs: 0, decodeMs: 0 };
    }
    const first = await runner.prefill(seq, promptIds, o.sampling);
    const ttft = performance.now() - t0;
    // Appends tokens until a stop; returns true when generation is over.
    const take = (toks: number[], lps: number[]): boolean => {
      const fresh: number[] = [];
      for (let i = 0; i < toks.length; i++) {
        if (stop.has(toks[i])) {
          finishReason = "stop";
          break;
        }
        ids.push(toks[i]);
        logprobs.push(lps[i]);
        fresh.push(toks[i]);
        if (ids.length >= o.maxTokens) break;
      }
      if (fresh.length) o.onTokens?.(fresh);
      return finishReason === "stop" || ids.length >= o.maxTokens;
    };
    let over = take([first.token], [first.logprob]);
    const t1 = performance.now();
    while (!over) {
      const room = runner.maxSeqLen - seq.tokens;
      if (room < 1) break;
      const n = Math.min(steps, o.maxTokens - ids.length, room);
      const out = await runner.decode(
        [{ seq, token: ids[ids.length - 1], sampling: o.sampling }],
        n,
      );
      over = take(out.tokens[0], out.logprobs[0]);
    }
    return {
      ids,
      logprobs,
      finishReason,
      timeToFirstTokenMs: ttft,
      decodeMs: performance.now() - t1,
    };
  } finally {
    runner.cache.close(seq);
  }
}
