// Prompt log-probabilities (teacher-forced): the log-softmax of each logits row at the token that
// follows it, and the row's k most likely tokens. The runner reduces each group of logits rows as
// it reads them back (`ModelRunner.evaluateLogprobs`), so a long prompt never holds vocab x length
// floats on the host: what comes back is one float per position and k (id, logprob) pairs.
//
// The reduction runs in f64: the row's maximum, then sum(exp(l - max)) in f64, and
// log p(t) = l[t] - max - log(sum).

/** Most top entries a prompt position reports (the OpenAI and vLLM limit). */
export const MAX_PROMPT_TOP = 20;

/** Teacher-forced log-probabilities of a prompt. */
export interface PromptLogprobs {
  /** Per prompt position: [0] = NaN (nothing predicts the first token), [i] = log p(ids[i] |
   * ids[<i]). */
  logprobs: Float32Array;
  /** Per position when topK > 0 ([0] empty): the topK most likely tokens, by logprob descending,
   * ties by lower id. null when topK is 0. */
  top: { ids: number[]; logprobs: number[] }[] | null;
  /** Per position, the prompt token's rank: 1 + the tokens whose logit is above its own ([0]
   * 0). */
  ranks: Uint32Array;
}

/**
 * Reduces the logits row at `off` (length `V`): the log-probability of `target` and the `k` most
 * likely tokens (by logprob descending, ties by lower id).
 */
export function reduceRow(
  logits: Float32Array,
  off: number,
  V: number,
  target: number,
  k: number,
): { logprob: number; rank: number; ids: number[]; logprobs: number[] } {
  let max = -Infinity;
  let above = 0;
  const own = logits[off + target];
  for (let v = 0; v < V; v++) {
    const x = logits[off + v];
    if (x > max) max = x;
    if (x > own) above++;
  }
  let sum = 0;
  for (let v = 0; v < V; v++) sum += Math.exp(logits[off + v] - max);
  const lse = max + Math.log(sum);
  // Top k by insertion into a short sorted list; ids arrive ascending, so an equal value goes after
  // those already there (ties by lower id).
  const ids: number[] = [];
  const vals: number[] = [];
  if (k > 0) {
    for (let v = 0; v < V; v++) {
      const x = logits[off + v];
      if (ids.length === k && !(x > vals[k - 1])) continue;
      let i = ids.length === k ? k - 1 : ids.length;
      while (i > 0 && x > vals[i - 1]) i--;
      if (ids.length === k) {
        ids.pop();
        vals.pop();
      }
      ids.splice(i, 0, v);
      vals.splice(i, 0, x);
    }
  }
  return {
    logprob: own - lse,
    rank: above + 1,
    ids,
    logprobs: vals.map((x) => x - lse),
  };
}

/** Checks a prompt's top-k count: an integer in [0, MAX_PROMPT_TOP]. */
export function checkTopK(k: number): number {
  if (!Number.isInteger(k) || k < 0 || k > MAX_PROMPT_TOP) {
    throw new RangeError(`topK must be an integer in [0, ${MAX_PROMPT_TOP}], got ${k}`);
  }
  return k;
}
