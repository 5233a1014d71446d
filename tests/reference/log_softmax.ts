// The CPU log-softmax the sampler, prompt log-prob and scoring tests hold the GPU to: f64 sums,
// max-shifted so that large logits do not overflow.

/** log(sum(exp(l))) in f64. */
export function logSumExp(l: ArrayLike<number>): number {
  let mx = -Infinity;
  for (let i = 0; i < l.length; i++) mx = Math.max(mx, l[i]);
  let z = 0;
  for (let i = 0; i < l.length; i++) z += Math.exp(l[i] - mx);
  return mx + Math.log(z);
}
