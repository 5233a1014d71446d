// Every WGSL kernel against a plain-TypeScript computation (f64 accumulation), in both storage
// precisions (W/KV = f32, and f16 when the adapter has shader-f16), on seeded random inputs.
//
// Tolerances. The kernels compute in f32 whatever the storage type, so each reference is computed
// from the *stored* values (f16-rounded where the kernel reads f16) and the comparison measures
// only the kernel's own f32 arithmetic; u = 2^-24 is the f32 unit roundoff. Against unrounded
// inputs an f16 kernel would differ by a further 2^-11 relative per stored operand (up to
// 2^-11 * sum|x w| for a dot product, ~2^-11 * sqrt(K) * rms in practice), far too loose to see an
// off-by-one index; comparing to the rounded inputs keeps f16 tests as sharp as f32 ones.
//  - pure data movement (embed, kv_store, decode_step, rmsnorm's gather): exact;
//  - dot products of n terms: |err| <= gamma_(n+c) * sum|terms|, gamma_m ~ m u (Higham's bound for
//    any summation order, so tree reductions and FMAs are covered);
//  - kernels with exp / cos / inverseSqrt: WGSL's accuracy of those builtins (see each test).

import assert from "node:assert/strict";
import { type GpuTensor, uploadMatrix } from "../gpu/buffers.ts";
import type { ScalarType } from "../gpu/pipelines.ts";
import {
  assertClose,
  KernelHarness,
  Rng,
  type RowSpec,
  stored,
  U16,
  U32,
} from "./kernel_harness.ts";

const harness = await KernelHarness.create();
const h = harness as KernelHarness;
/** Without a WebGPU adapter these tests are reported as ignored. WebGPU keeps device handles and
 * async polling alive across tests, so the sanitizers are off. */
const gpuTest = { ignore: harness === null, sanitizeResources: false, sanitizeOps: false };
const precisions: ScalarType[] = harness?.precisions ?? ["f32"];

/** Written into output buffers beforehand: elements a kernel must not touch keep it. */
const SENTINEL = -777.25;

/** With KERNELS_VERBOSE=1, prints how close each comparison came to its tolerance (err / tol). */
const VERBOSE = (() => {
  try {
    return Deno.env.get("KERNELS_VERBOSE") === "1";
  } catch {
    return false;
  }
})();
function margin(what: string, ratio: number): void {
  if (VERBOSE) console.log(`  ${what}: worst err/tol = ${ratio.toExponential(2)}`);
}

/** Runs `fn` once per storage precision as test steps, releasing buffers after each. */
async function perPrecision(
  t: Deno.TestContext,
  fn: (p: ScalarType) => Promise<void>,
): Promise<void> {
  for (const p of precisions) {
    await t.step({
      name: p,
      sanitizeOps: false,
      sanitizeResources: false,
      fn: async () => {
        try {
          await fn(p);
        } finally {
          h.release();
        }
      },
    });
  }
}

// ---- embed ----------------------------------------------------------------------------------

Deno.test("embed.wgsl gathers table rows", gpuTest, async (t) => {
  await perPrecision(t, async (p) => {
    const rng = new Rng(101);
    const VOCAB = 50, DIM = 100; // DIM not a multiple of the 64 threads
    const table = rng.array(VOCAB * DIM);
    const tokens = [7, 0, 49, 7, 23];
    const n = tokens.length;
    const x = h.filled((n + 1) * DIM, SENTINEL);
    // One workgroup more than n_rows: the extra row must be left alone.
    await h.dispatch(
      { file: "embed.wgsl", W: p, KV: p, constants: { DIM } },
      [h.forward({ nRows: n }), h.upload([...tokens, 1], "u32"), h.upload(table, p), x],
      [n + 1, 1, 1],
    );
    const tab = stored(table, p);
    const want = new Float32Array((n + 1) * DIM).fill(SENTINEL);
    tokens.forEach((tok, r) => want.set(tab.subarray(tok * DIM, (tok + 1) * DIM), r * DIM));
    // f16 -> f32 is exact: the gather must be bit-exact.
    assert.deepEqual(await h.readF32(x), want);
  });
});

// ---- rmsnorm --------------------------------------------------------------------------------

function rmsnormRef(x: Float32Array, w: Float32Array, dim: number, src: number, eps: number) {
  let ss = 0;
  for (let i = 0; i < dim; i++) ss += x[src * dim + i] ** 2;
  const inv = 1 / Math.sqrt(ss / dim + eps);
  return Array.from({ length: dim }, (_, i) => x[src * dim + i] * inv * w[i]);
}

Deno.test("rmsnorm.wgsl, plain and GATHER", gpuTest, async (t) => {
  // Relative error per element: the sum of squares is a serial sum of <= DIM/64 terms per thread
  // then a 6-level tree, so <= (DIM/64 + 7) u relative (~7e-7 at DIM = 300); inverseSqrt is
  // within 2 ULP (WGSL); then two f32 products. Together < 1e-6; 4e-6 allows for llvmpipe's
  // inverseSqrt being an approximation refined by one Newton step.
  const REL = 4e-6;
  await perPrecision(t, async (p) => {
    const rng = new Rng(202);
    const DIM = 300, EPS = 1e-5, N = 5;
    const x = rng.array(N * DIM, -2, 2);
    const w = rng.array(DIM, 0.5, 1.5);
    const ws = stored(w, p);
    const spec = (gather: boolean) => ({
      file: "rmsnorm.wgsl",
      W: p,
      KV: p,
      constants: { DIM, EPS, GATHER: gather },
    });
    const xb = h.upload(x);
    const wb = h.upload(w, p);

    { // plain
      const y = h.filled((N + 1) * DIM, SENTINEL);
      await h.dispatch(
        spec(false),
        [h.forward({ nRows: N, nLogitRows: 2 }), xb, wb, h.upload([0], "u32"), y],
        [N + 1, 1, 1],
      );
      const want = new Float32Array((N + 1) * DIM).fill(SENTINEL);
      for (let r = 0; r < N; r++) want.set(rmsnormRef(x, ws, DIM, r, EPS), r * DIM);
      const what = `rmsnorm ${p}`;
      margin(what, assertClose(await h.readF32(y), want, (i) => REL * Math.abs(want[i]), what));
    }
    { // GATHER: n_logit_rows rows read through the gather
      const gather = [4, 0, 2];
      const y = h.filled((gather.length + 1) * DIM, SENTINEL);
      await h.dispatch(
        spec(true),
        [h.forward({ nRows: N, nLogitRows: gather.length }), xb, wb, h.upload(gather, "u32"), y],
        [gather.length + 1, 1, 1],
      );
      const want = new Float32Array((gather.length + 1) * DIM).fill(SENTINEL);
      gather.forEach((src, r) => want.set(rmsnormRef(x, ws, DIM, src, EPS), r * DIM));
      const what = `rmsnorm GATHER ${p}`;
      margin(what, assertClose(await h.readF32(y), want, (i) => REL * Math.abs(want[i]), what));
    }
  });
});

// ---- rope -----------------------------------------------------------------------------------

Deno.test("rope.wgsl, INTERLEAVED and rotate-half", gpuTest, async (t) => {
  // The kernel's contract is an f32 angle pos * inv_freq (as PyTorch and llama2.c compute it),
  // then cos/sin of it. The reference rounds the angle the same way and evaluates cos/sin in f64,
  // so what remains is the builtins' error at arguments up to ~4100 rad. WGSL promises 2^-11
  // absolute only on [-pi, pi]; implementations reduce the range first (an f32 reduction of a
  // 4096-rad argument loses ~2^-12 of it), so each rotated value may be off by
  // |x0| e_c + |x1| e_s with e <= 2^-10, plus 2 u relative for the products.
  const TRIG = 2 ** -10;
  await perPrecision(t, async (p) => {
    for (const headDim of [8, 64, 128]) {
      for (const interleaved of [true, false]) {
        const rng = new Rng(300 + headDim);
        const NH = 4, NKV = 2, stride = (NH + 2 * NKV) * headDim;
        const positions = [0, 1, 17, 1000, 2999, 4095];
        const n = positions.length;
        const qkv = rng.array((n + 1) * stride, -2, 2);
        const half = headDim / 2;
        // inv_freq as the runner computes it for theta = 500000, and one scaled pair (Llama-3).
        const invFreq = Float32Array.from(
          { length: half },
          (_, i) => Math.fround(1 / Math.fround(500000 ** Math.fround((2 * i) / headDim))),
        );
        invFreq[half - 1] /= 8;
        const buf = h.upload(qkv);
        await h.dispatch(
          {
            file: "rope.wgsl",
            W: p,
            KV: p,
            constants: {
              HEAD_DIM: headDim,
              N_HEADS: NH,
              N_KV_HEADS: NKV,
              ROW_STRIDE: stride,
              INTERLEAVED: interleaved,
            },
          },
          [
            h.forward({ nRows: n }),
            h.rows(positions.map((pos) => ({ slot: 0, pos, firstRow: 0, nSeqRows: n }))),
            h.upload(invFreq),
            buf,
          ],
          [n + 1, 1, 1], // the extra row (>= n_rows) must stay as it was
        );
        const want = Float64Array.from(qkv);
        const tol = new Float64Array(want.length);
        for (let r = 0; r < n; r++) {
          for (let head = 0; head < NH + NKV; head++) {
            const base = r * stride + head * headDim;
            for (let i = 0; i < half; i++) {
              const angle = Math.fround(positions[r] * invFreq[i]);
              const c = Math.cos(angle), s = Math.sin(angle);
              const a = interleaved ? base + 2 * i : base + i;
              const b = interleaved ? a + 1 : a + half;
              const x0 = qkv[a], x1 = qkv[b];
              want[a] = x0 * c - x1 * s;
              want[b] = x0 * s + x1 * c;
              tol[a] = tol[b] = (TRIG + 4 * U32) * (Math.abs(x0) + Math.abs(x1));
            }
          }
        }
        const what = `rope ${p} head_dim ${headDim} ${interleaved ? "interleaved" : "half"}`;
        margin(what, assertClose(await h.readF32(buf), want, (i) => tol[i], what));
      }
    }
  });
});

// ---- swiglu ---------------------------------------------------------------------------------

Deno.test("swiglu.wgsl", gpuTest, async (t) => {
  // silu(g) * u = g / (1 + exp(-g)) * u: exp within (3 + 2|g|) ULP (WGSL), the division within
  // 2.5 ULP, one add and one product: for |g| <= 8 under 30 u relative; 64 u allows for
  // llvmpipe's exp. The inputs include |g| = 90 (exp overflows to inf or underflows to 0).
  const REL = 64 * U32;
  await perPrecision(t, async (p) => {
    const rng = new Rng(404);
    const HIDDEN = 100, N = 7;
    const gu = rng.array(N * 2 * HIDDEN, -8, 8);
    gu[5] = 90;
    gu[6] = -90;
    const h0 = h.filled(N * HIDDEN + 50, SENTINEL);
    // A 2-D grid (the runner splits counts over 65535 into y): 2 x 2 x 256 threads >= 700.
    await h.dispatch(
      { file: "swiglu.wgsl", W: p, KV: p, constants: { HIDDEN } },
      [h.forward({ nRows: N }), h.upload(gu), h0],
      [2, 2, 1],
    );
    const want = new Float64Array(N * HIDDEN + 50).fill(SENTINEL);
    for (let r = 0; r < N; r++) {
      for (let j = 0; j < HIDDEN; j++) {
        const g = gu[r * 2 * HIDDEN + j];
        want[r * HIDDEN + j] = g / (1 + Math.exp(-g)) * gu[r * 2 * HIDDEN + HIDDEN + j];
      }
    }
    const what = `swiglu ${p}`;
    margin(
      what,
      assertClose(await h.readF32(h0), want, (i) => REL * Math.abs(want[i]) + 1e-30, what),
    );
  });
});

// ---- matmul ---------------------------------------------------------------------------------

interface MatmulCase {
  entry: "gemv" | "gemm";
  N: number;
  K: number;
  /** Rows computed (n_rows, or n_logit_rows with LOGIT_ROWS). */
  T: number;
  accumulate?: boolean;
  bias?: boolean;
  logitRows?: boolean;
  /** Workgroup grid; default as the runner dispatches. */
  groups?: [number, number, number];
}

const MATMUL_CASES: MatmulCase[] = [
  // gemv: 1..8 rows, K = 37 padded to KP = 40, N = 67 (not a multiple of the 4 columns).
  ...[1, 2, 3, 5, 8].map((T): MatmulCase => ({ entry: "gemv", N: 67, K: 37, T })),
  { entry: "gemv", N: 67, K: 37, T: 3, accumulate: true, bias: true },
  { entry: "gemv", N: 67, K: 37, T: 8, logitRows: true, bias: true },
  // 2-D grid (wg.y * nwg.x + wg.x): 9 x 2 workgroups cover 17 x 4 >= 67 columns.
  { entry: "gemv", N: 67, K: 37, T: 4, groups: [9, 2, 1] },
  // K/4 = 75 vec4s per row: more than the 64 threads, so each thread loops.
  { entry: "gemv", N: 130, K: 300, T: 6, accumulate: true },
  // gemm: rows > 8, not multiples of the 64-row tile; K = 37 not a multiple of TK = 16.
  ...[9, 65, 130].map((T): MatmulCase => ({ entry: "gemm", N: 67, K: 37, T })),
  { entry: "gemm", N: 67, K: 37, T: 3 },
  { entry: "gemm", N: 130, K: 300, T: 65, accumulate: true, bias: true },
  { entry: "gemm", N: 67, K: 37, T: 9, logitRows: true },
  { entry: "gemm", N: 5, K: 6, T: 70, bias: true },
];

Deno.test("matmul.wgsl gemv and gemm", gpuTest, async (t) => {
  // Each output is a sum of K products plus bias and the accumulated value, all f32 from exact
  // inputs (f16 weights convert exactly): |err| <= gamma_(K+3) * (sum_k |x w| + |b| + |y0|) with
  // gamma_m = m u / (1 - m u), for any summation order.
  await perPrecision(t, async (p) => {
    for (const c of MATMUL_CASES) {
      const rng = new Rng(500 + c.N + c.K + c.T);
      const KP = Math.ceil(c.K / 4) * 4;
      // LOGIT_ROWS: n_rows is larger than the rows to compute; those must be left alone.
      const nRows = c.logitRows ? c.T + 5 : c.T;
      const allRows = nRows + 2; // y has rows past the computed ones
      const x = rng.array(allRows * c.K);
      const w = rng.array(c.N * c.K);
      const bias = rng.array(c.N);
      const y0 = c.accumulate ? rng.array(allRows * c.N) : new Float32Array(allRows * c.N).fill(
        SENTINEL,
      );
      const wt = h.adopt(uploadMatrix(h.device, w, c.N, c.K, p, "w", 4));
      assert.deepEqual(wt.shape, [c.N, KP]);
      const y = h.upload(y0);
      const groups: [number, number, number] = c.groups ??
        (c.entry === "gemv"
          ? [Math.ceil(c.N / 4), 1, 1]
          : [Math.ceil(c.N / 64), Math.ceil(c.T / 64), 1]);
      await h.dispatch(
        {
          file: "matmul.wgsl",
          entry: c.entry,
          W: p,
          KV: p,
          constants: {
            N: c.N,
            K: c.K,
            KP,
            ACCUMULATE: c.accumulate ?? false,
            HAS_BIAS: c.bias ?? false,
            LOGIT_ROWS: c.logitRows ?? false,
          },
        },
        [
          h.forward({ nRows, nLogitRows: c.logitRows ? c.T : 1 }),
          h.upload(x),
          wt,
          h.upload(c.bias ? bias : [0]),
          y,
        ],
        groups,
      );
      const ws = stored(w, p);
      const want = Float64Array.from(y0);
      const tol = new Float64Array(want.length);
      for (let r = 0; r < c.T; r++) {
        for (let n = 0; n < c.N; n++) {
          let s = 0, mag = 0;
          for (let k = 0; k < c.K; k++) {
            s += x[r * c.K + k] * ws[n * c.K + k];
            mag += Math.abs(x[r * c.K + k] * ws[n * c.K + k]);
          }
          if (c.bias) {
            s += bias[n];
            mag += Math.abs(bias[n]);
          }
          if (c.accumulate) {
            s += y0[r * c.N + n];
            mag += Math.abs(y0[r * c.N + n]);
          }
          const m = c.K + 3;
          want[r * c.N + n] = s;
          tol[r * c.N + n] = (m * U32 / (1 - m * U32)) * mag;
        }
      }
      const what = `${c.entry} ${p} N=${c.N} K=${c.K} T=${c.T}` +
        `${c.accumulate ? " ACCUMULATE" : ""}${c.bias ? " HAS_BIAS" : ""}` +
        `${c.logitRows ? " LOGIT_ROWS" : ""}${c.groups ? ` grid ${c.groups}` : ""}`;
      margin(what, assertClose(await h.readF32(y), want, (i) => tol[i], what));
    }
  });
});
