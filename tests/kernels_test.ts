// Every WGSL kernel against a plain-TypeScript computation (f64 accumulation), in both storage
// precisions (W/KV = f32, and f16 when the adapter has shader-f16), on seeded random inputs.
//
// Tolerances. The kernels compute in f32 whatever the storage type, so each reference is computed
// from the *stored* values (f16-rounded where the kernel reads f16) and the comparison measures
// only the kernel's own f32 arithmetic; u = 2^-24 is the f32 unit roundoff. Against unrounded
// inputs an f16 kernel would differ by a further 2^-11 relative per stored operand (up to
// 2^-11 * sum|x w| for a dot product, ~2^-11 * sqrt(K) * rms in practice), far too loose to see an
// off-by-one index; comparing to the rounded inputs keeps f16 tests as sharp as f32 ones.
//  - pure data movement (embed, decode_step, kv_store in f32): exact; an f32 -> f16 store is
//    within one f16 ULP (WGSL lets the conversion pick either neighbour);
//  - dot products of n terms: |err| <= gamma_(n+c) * sum|terms|, gamma_m ~ m u (Higham's bound for
//    any summation order, so tree reductions and FMAs are covered);
//  - kernels with exp / cos / inverseSqrt: WGSL's accuracy of those builtins (see each test).

import assert from "node:assert/strict";
import { logSumExp } from "./reference/log_softmax.ts";
import { CACHE_KINDS, RetrievalPages, StreamingRing } from "../cache/kinds.ts";
import { uploadMatrix } from "../gpu/buffers.ts";
import { ATTENTION_FILE, ATTENTION_GEOMETRY } from "../gpu/kernels/attention.ts";
import { CACHE_LAYOUTS } from "../gpu/kernels/cache_layout.ts";
import { FORWARD_BYTES, ROW_WORDS } from "../gpu/kernels/common.ts";
import { DECODE_STEP_FILE, DECODE_STEP_MAX_ROWS, decodeStep } from "../gpu/kernels/decode_step.ts";
import { embed } from "../gpu/kernels/embed.ts";
import { kvStore, kvStoreGroups } from "../gpu/kernels/kv_store.ts";
import {
  matmul,
  MATMUL_FILE,
  MATMUL_GEOMETRY,
  type MatmulEntry,
  matmulGroups,
  packQuantRow,
  type QuantFormat,
  quantRowWords,
} from "../gpu/kernels/matmul.ts";
import { randomBlocks } from "./gguf_writer.ts";
import { dequantizeRow, type GgmlType, quantizeQ4_0, quantizeQ8_0 } from "../model/gguf_blocks.ts";
import { rmsnorm } from "../gpu/kernels/rmsnorm.ts";
import { rope } from "../gpu/kernels/rope.ts";
import {
  encodeSampling,
  MAX_LOGIT_BIAS,
  MAX_TOP_LOGPROBS,
  sample,
  SAMPLE_FILE,
  SAMPLING_BYTES,
  type SamplingParams,
} from "../gpu/kernels/sample.ts";
import { type ScalarType, wgslFile } from "../gpu/pipelines.ts";
import {
  assertClose,
  call,
  KernelHarness,
  Rng,
  type RowSpec,
  SENTINEL,
  stored,
  U16,
  U32,
} from "./kernel_harness.ts";
import { ATTENTION_CASES, checkAttention } from "./attention_reference.ts";

const harness = await KernelHarness.create();
const h = harness as KernelHarness;
/** Without a WebGPU adapter these tests are reported as ignored. WebGPU keeps device handles and
 * async polling alive across tests, so the sanitizers are off. */
const gpuTest = { ignore: harness === null, sanitizeResources: false, sanitizeOps: false };

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

// ---- kernel contracts ------------------------------------------------------------------------

/** The value of `const NAME = <n>u;` in a WGSL file. */
function wgslConst(file: string, name: string): number {
  const m = wgslFile(file).match(new RegExp(`\\bconst ${name} = (\\d+)u;`));
  assert.ok(m, `${file} declares no const ${name}`);
  return Number(m[1]);
}

/** The fields of a WGSL struct. */
function structFields(file: string, name: string): string[] {
  const m = wgslFile(file).match(new RegExp(`struct ${name} \\{([^}]*)\\}`));
  assert.ok(m, `${file} declares no struct ${name}`);
  return m[1].split("\n").map((l) => l.replace(/\/\/.*/, "").trim()).filter((l) => l !== "");
}

Deno.test("kernel families: TypeScript geometry and layouts agree with the WGSL", () => {
  for (const [name, value] of Object.entries(MATMUL_GEOMETRY)) {
    assert.equal(wgslConst(MATMUL_FILE, name), value, `matmul ${name}`);
  }
  const { MAX_HEAD_DIM, ...attention } = ATTENTION_GEOMETRY;
  for (const [name, value] of Object.entries(attention)) {
    assert.equal(wgslConst(ATTENTION_FILE, name), value, `attention ${name}`);
  }
  // The prefill staging tile holds BK keys of at most MAX_HEAD_DIM dims (vec4s).
  const kvs = wgslFile(ATTENTION_FILE).match(/var<workgroup> kv_s: array<vec4<f32>, (\d+)>/);
  assert.equal(Number(kvs?.[1]), ATTENTION_GEOMETRY.BK * (MAX_HEAD_DIM / 4));
  // decode_step advances each row with one thread of its single workgroup.
  assert.match(
    wgslFile(DECODE_STEP_FILE),
    new RegExp(`@workgroup_size\\(${DECODE_STEP_MAX_ROWS}\\)`),
  );
  // Structs of 4-byte fields, laid out by gpu/kernels/common.ts and sample.ts.
  assert.equal(structFields("common.wgsl", "Forward").length * 4, FORWARD_BYTES);
  assert.equal(structFields("common.wgsl", "Row").length, ROW_WORDS);
  assert.equal(structFields(SAMPLE_FILE, "Sampling").length * 4, SAMPLING_BYTES);
  // Every cache kind's layout include defines the same functions and exactly the overrides the
  // kind's constants name; attention.wgsl and kv_store.wgsl know no layout of their own.
  const params = { pageSize: 16, sink: 4, recent: 8 };
  const sizes = { maxPagesPerSeq: 1, unitsPerShard: 1, shards: 1 };
  for (const { make } of CACHE_KINDS) {
    const kind = make(params);
    const src = wgslFile(CACHE_LAYOUTS[kind.layout].include);
    for (
      const fn of [
        "cache_shard",
        "cache_entry",
        "first_shard",
        "last_shard",
        "shard_holds_any",
        "sink_end",
        "window_start",
        "holds",
      ]
    ) {
      assert.match(src, new RegExp(`\\bfn ${fn}\\(`), `${kind.layout}: fn ${fn}`);
    }
    const overrides = [...src.matchAll(/^override (\w+)/gm)].map((m) => m[1]).sort();
    assert.deepEqual(overrides, Object.keys(kind.constants(sizes)).sort(), kind.layout);
    assert.ok(overrides.includes("CACHE_SHARDS"), `${kind.layout}: CACHE_SHARDS`);
  }
  for (const file of [ATTENTION_FILE, "kv_store.wgsl"]) {
    const code = wgslFile(file).replace(/\/\/.*$/gm, "");
    assert.doesNotMatch(code, /\b(STREAMING|SINK|RECENT|PAGE_SIZE|MAX_PAGES|page_table)\b/, file);
  }
});

// ---- embed ----------------------------------------------------------------------------------

Deno.test("embed.wgsl gathers table rows, over row parts of a padded table", gpuTest, async (t) => {
  await h.perPrecision(t, async (p) => {
    const rng = new Rng(101);
    const VOCAB = 50, DIM = 100; // DIM not a multiple of the 64 threads
    const STRIDE = 104; // rows padded as the tied LM head stores them
    const table = rng.array(VOCAB * STRIDE);
    const tokens = [7, 0, 49, 7, 23, 20, 19];
    const n = tokens.length;
    const x = h.filled((n + 1) * DIM, SENTINEL);
    const fwd = h.forward({ nRows: n });
    const tokenBuf = h.upload([...tokens, 1], "u32");
    // Two parts, [0, 20) and [20, 50), one dispatch each; one workgroup more than n_rows: the
    // extra row must be left alone.
    for (const [base, rows] of [[0, 20], [20, 30]]) {
      await h.dispatch(
        p,
        embed({ DIM, STRIDE, ROW_BASE: base, ROWS: rows }),
        {
          fwd,
          tokens: tokenBuf,
          table: h.upload(table.subarray(base * STRIDE, (base + rows) * STRIDE), p),
          x,
        },
        [n + 1, 1, 1],
      );
    }
    const tab = stored(table, p);
    const want = new Float32Array((n + 1) * DIM).fill(SENTINEL);
    tokens.forEach((tok, r) => want.set(tab.subarray(tok * STRIDE, tok * STRIDE + DIM), r * DIM));
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

Deno.test("rmsnorm.wgsl (final norm, gathered rows)", gpuTest, async (t) => {
  // Relative error per element: the sum of squares is a serial sum of <= DIM/64 terms per thread
  // then a 6-level tree, so <= (DIM/64 + 7) u relative (~7e-7 at DIM = 300); inverseSqrt is
  // within 2 ULP (WGSL); then two f32 products. Together < 1e-6; 4e-6 allows for llvmpipe's
  // inverseSqrt being an approximation refined by one Newton step.
  const REL = 4e-6;
  await h.perPrecision(t, async (p) => {
    const rng = new Rng(202);
    const DIM = 300, EPS = 1e-5, N = 5;
    const x = rng.array(N * DIM, -2, 2);
    const w = rng.array(DIM, 0.5, 1.5);
    const ws = stored(w, p);
    const kernel = rmsnorm({ DIM, EPS });
    const xb = h.upload(x);
    const wb = h.upload(w, p);

    { // n_logit_rows rows read through the gather; one extra workgroup must write nothing
      const gather = [4, 0, 2];
      const y = h.filled((gather.length + 1) * DIM, SENTINEL);
      await h.dispatch(
        p,
        kernel,
        {
          fwd: h.forward({ nRows: N, nLogitRows: gather.length }),
          x: xb,
          weight: wb,
          gather: h.upload(gather, "u32"),
          y,
        },
        [gather.length + 1, 1, 1],
      );
      const want = new Float32Array((gather.length + 1) * DIM).fill(SENTINEL);
      gather.forEach((src, r) => want.set(rmsnormRef(x, ws, DIM, src, EPS), r * DIM));
      const what = `rmsnorm ${p}`;
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
  await h.perPrecision(t, async (p) => {
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
          p,
          rope({
            HEAD_DIM: headDim,
            N_HEADS: NH,
            N_KV_HEADS: NKV,
            ROW_STRIDE: stride,
            INTERLEAVED: interleaved,
          }),
          {
            fwd: h.forward({ nRows: n }),
            rows: h.rows(positions.map((pos) => ({ slot: 0, pos, firstRow: 0, nSeqRows: n }))),
            invFreq: h.upload(invFreq),
            qkv: buf,
          },
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

// ---- matmul ---------------------------------------------------------------------------------

interface MatmulCase {
  entry: MatmulEntry;
  N: number;
  K: number;
  /** Rows computed (n_rows, or n_logit_rows with LOGIT_ROWS). */
  T: number;
  accumulate?: boolean;
  bias?: boolean;
  logitRows?: boolean;
  /** NORM_INPUT: the input is rmsnorm(x) * norm_w. */
  norm?: boolean;
  /** SWIGLU_INPUT: x is [rows, 2K] gate|up and the input is silu(gate) * up. */
  swiglu?: boolean;
  /** Workgroup grid; default as the runner dispatches. */
  groups?: [number, number, number];
  /** Row parts the weight is split into (one dispatch each); default 1. */
  parts?: number;
  /** Quantized weights (wgsl/w_<format>.wgsl): K a multiple of the format's block. */
  format?: QuantFormat;
}

const MATMUL_CASES: MatmulCase[] = [
  // gemv: 1..8 rows, K = 37 padded to KP = 40, N = 67 (not a multiple of the 8 columns).
  ...[1, 2, 3, 5, 8].map((T): MatmulCase => ({ entry: "gemv", N: 67, K: 37, T })),
  { entry: "gemv", N: 67, K: 37, T: 3, accumulate: true, bias: true },
  { entry: "gemv", N: 67, K: 37, T: 8, logitRows: true, bias: true },
  // 2-D grid (wg.y * nwg.x + wg.x): 5 x 2 workgroups cover 10 x 8 >= 67 columns.
  { entry: "gemv", N: 67, K: 37, T: 4, groups: [5, 2, 1] },
  // K/4 = 75 vec4s per row: more than the 64 threads, so each thread loops.
  { entry: "gemv", N: 130, K: 300, T: 6, accumulate: true },
  // K/4 = 301 vec4s: three activation stages of 128 vec4s, the last partial; 1 row and 7.
  { entry: "gemv", N: 19, K: 1203, T: 1, bias: true },
  { entry: "gemv", N: 19, K: 1203, T: 7, accumulate: true },
  // gemv1 (one row, 4 outputs per lane group): N = 67 not a multiple of its 32 columns (the last
  // group's rows past N read row N - 1 and store nothing), a 2-D grid of 2 x 2 >= 3 workgroups,
  // K = 1203 in three stages, fused inputs, row parts of 23 and 34, quantized weights.
  { entry: "gemv1", N: 67, K: 37, T: 1 },
  { entry: "gemv1", N: 67, K: 37, T: 1, accumulate: true, bias: true },
  { entry: "gemv1", N: 67, K: 37, T: 1, logitRows: true, bias: true },
  { entry: "gemv1", N: 67, K: 37, T: 1, groups: [2, 2, 1] },
  { entry: "gemv1", N: 130, K: 300, T: 1, accumulate: true },
  { entry: "gemv1", N: 19, K: 1203, T: 1, bias: true },
  { entry: "gemv1", N: 67, K: 37, T: 1, norm: true, bias: true },
  { entry: "gemv1", N: 19, K: 1203, T: 1, norm: true },
  { entry: "gemv1", N: 19, K: 1203, T: 1, swiglu: true, accumulate: true },
  { entry: "gemv1", N: 67, K: 37, T: 1, parts: 3, bias: true, accumulate: true },
  { entry: "gemv1", N: 67, K: 300, T: 1, parts: 2, norm: true },
  ...(["q8_0", "q4_0", "q5_0", "q4_k", "q6_k"] as const).map((format): MatmulCase => ({
    entry: "gemv1",
    N: 67,
    K: format.endsWith("_k") ? 768 : 1216,
    T: 1,
    norm: true,
    bias: true,
    format,
  })),
  // gemm: rows > 8, not multiples of the 64-row tile; K = 37 not a multiple of TK = 16.
  ...[9, 65, 130].map((T): MatmulCase => ({ entry: "gemm", N: 67, K: 37, T })),
  { entry: "gemm", N: 67, K: 37, T: 3 },
  { entry: "gemm", N: 130, K: 300, T: 65, accumulate: true, bias: true },
  { entry: "gemm", N: 67, K: 37, T: 9, logitRows: true },
  { entry: "gemm", N: 5, K: 6, T: 70, bias: true },
  // Fused inputs: RMSNorm (q|k|v, gate|up) and SwiGLU (down), in both entry points; K = 1203
  // spans several GEMV activation stages; K = 37 has a partial vec4.
  { entry: "gemv", N: 67, K: 37, T: 1, norm: true, bias: true },
  { entry: "gemv", N: 19, K: 1203, T: 5, norm: true },
  { entry: "gemv", N: 67, K: 37, T: 3, swiglu: true, accumulate: true },
  { entry: "gemv", N: 19, K: 1203, T: 1, swiglu: true },
  { entry: "gemm", N: 67, K: 37, T: 70, norm: true },
  { entry: "gemm", N: 130, K: 300, T: 9, swiglu: true, accumulate: true },
  // Row-split weights: parts of 23 (not a multiple of GEMV_COLS) and 64+ columns (gemm tiles).
  { entry: "gemv", N: 67, K: 37, T: 3, parts: 3, bias: true, accumulate: true },
  { entry: "gemv", N: 67, K: 37, T: 1, parts: 2, norm: true },
  { entry: "gemm", N: 130, K: 300, T: 65, parts: 2, bias: true, norm: true },
  { entry: "gemm", N: 130, K: 300, T: 9, parts: 3, swiglu: true, accumulate: true },
  // Quantized weights: K = 96 (3 blocks: an odd scale count, a half-used scale word), K = 1216
  // (38 blocks; 304 vec4s: three activation stages), fused inputs, row parts.
  ...(["q8_0", "q4_0"] as const).flatMap((format): MatmulCase[] => [
    ...[1, 3, 8].map((T): MatmulCase => ({ entry: "gemv", N: 67, K: 96, T, format })),
    { entry: "gemv", N: 19, K: 1216, T: 2, norm: true, bias: true, format },
    { entry: "gemv", N: 67, K: 96, T: 3, parts: 3, swiglu: true, accumulate: true, format },
    { entry: "gemm", N: 67, K: 96, T: 70, norm: true, format },
    { entry: "gemm", N: 130, K: 1216, T: 9, parts: 2, accumulate: true, bias: true, format },
  ]),
  // The formats GGUF files bring (random blocks): Q5_0 at K = 96, the K-quants at K = 512 (two
  // super-blocks; every sub-block, half and scale position) and 768 with fused inputs.
  ...(["q5_0", "q4_k", "q5_k", "q6_k"] as const).flatMap((format): MatmulCase[] => {
    const K = format === "q5_0" ? 96 : 512;
    return [
      { entry: "gemv", N: 67, K, T: 1, format },
      { entry: "gemv", N: 19, K: K === 96 ? 1216 : 768, T: 3, norm: true, bias: true, format },
      { entry: "gemm", N: 67, K, T: 70, swiglu: true, accumulate: true, format },
    ];
  }),
];

// gemm_reg (the CPU adapters' prefill GEMM) on every gemm case: rows not multiples of its 32-row
// tile, N = 67 and 130 not multiples of its 64 columns (a thread's 8 outputs cut at N), fused
// inputs, row parts and every weight format.
MATMUL_CASES.push(
  ...MATMUL_CASES.filter((c) => c.entry === "gemm").map((c): MatmulCase => ({
    ...c,
    entry: "gemm_reg",
  })),
);

/** silu(g) * u as f64. */
function swiglu(g: number, u: number): number {
  return g / (1 + Math.exp(-g)) * u;
}

Deno.test("matmul.wgsl gemv and gemm", gpuTest, async (t) => {
  // Each output is a sum of K products plus bias and the accumulated value, all f32 from exact
  // inputs (f16 weights convert exactly; a quantized weight d * q, or d * (q - 8), is exact in
  // f32: an 11-bit f16 d times an integer of at most 8 bits), against the CPU dequantization of
  // the same blocks (model/gguf_blocks.ts dequantizeRow): |err| <= gamma_(K+3) * (sum_k |x w| +
  // |b| + |y0|) with gamma_m = m u / (1 - m u), for any summation order.
  await h.perPrecision(t, async (p) => {
    for (const c of MATMUL_CASES) {
      const rng = new Rng(500 + c.N + c.K + c.T);
      const KP = Math.ceil(c.K / 4) * 4;
      // LOGIT_ROWS: n_rows is larger than the rows to compute; those must be left alone.
      const nRows = c.logitRows ? c.T + 5 : c.T;
      const allRows = nRows + 2; // y has rows past the computed ones
      // x: the stored activations ([rows, 2K] for SWIGLU_INPUT); in: the matmul's input.
      const xWidth = c.swiglu ? 2 * c.K : c.K;
      const x = c.swiglu ? rng.array(allRows * xWidth, -4, 4) : rng.array(allRows * xWidth);
      const normW = rng.array(c.K, 0.5, 1.5);
      const normWs = stored(normW, p);
      const EPS = 1e-5;
      const inp = new Float64Array(allRows * c.K);
      for (let r = 0; r < allRows; r++) {
        let inv = 1;
        if (c.norm) {
          let ss = 0;
          for (let k = 0; k < c.K; k++) ss += x[r * xWidth + k] ** 2;
          inv = 1 / Math.sqrt(ss / c.K + EPS);
        }
        for (let k = 0; k < c.K; k++) {
          inp[r * c.K + k] = c.swiglu
            ? swiglu(x[r * xWidth + k], x[r * xWidth + c.K + k])
            : x[r * c.K + k] * (c.norm ? inv * normWs[k] : 1);
        }
      }
      // Each input element carries its own rounding: RMSNorm's sum of K squares, inverseSqrt
      // (2 ULP) and two products; SwiGLU's exp ((3 + 2|g|) ULP with |g| <= 4), division and
      // product. Both stay under (K + 16) u relative, added to the matmul bound below.
      const inputRel = c.norm || c.swiglu ? (c.K + 16) * U32 : 0;
      const w = rng.array(c.N * c.K);
      // Quantized: each row to GGUF blocks, packed as the kernel reads them; the reference
      // multiplies by the CPU decoder's values of those blocks.
      let ws: Float32Array = stored(w, p);
      let packed: Uint32Array | null = null;
      const rowWords = c.format ? quantRowWords(c.format, c.K) : 0;
      if (c.format) {
        const type = c.format.toUpperCase() as GgmlType;
        const quantize = c.format === "q8_0"
          ? quantizeQ8_0
          : c.format === "q4_0"
          ? quantizeQ4_0
          : (x: Float32Array) => randomBlocks(c.format!, x.length, rng);
        packed = new Uint32Array(c.N * rowWords);
        ws = new Float32Array(c.N * c.K);
        for (let n = 0; n < c.N; n++) {
          const blocks = quantize(w.subarray(n * c.K, (n + 1) * c.K));
          packQuantRow(c.format, blocks, c.K, packed, n * rowWords);
          ws.set(dequantizeRow(type, blocks, c.K), n * c.K);
        }
      }
      const bias = rng.array(c.N);
      // Without ACCUMULATE y starts as the sentinel, so rows not computed must keep it.
      const y0 = c.accumulate
        ? rng.array(allRows * c.N)
        : new Float32Array(allRows * c.N).fill(SENTINEL);
      const y = h.upload(y0);
      const xt = h.upload(x);
      const bt = h.upload(c.bias ? bias : [0]);
      const nt = h.upload(normW, p);
      // A weight split into row parts (gpu/weights.ts): one dispatch per part, each writing its
      // columns [N_OFFSET, N_OFFSET + part rows) of the whole-width y.
      const parts = c.parts ?? 1;
      const per = Math.ceil(c.N / parts);
      for (let n0 = 0; n0 < c.N; n0 += per) {
        const rows = Math.min(per, c.N - n0);
        const wt = packed
          ? h.upload(packed.subarray(n0 * rowWords, (n0 + rows) * rowWords), "u32", "wq")
          : h.adopt(
            uploadMatrix(h.device, w.subarray(n0 * c.K, (n0 + rows) * c.K), rows, c.K, p, "w", 4),
          );
        if (!packed) assert.deepEqual(wt.shape, [rows, KP]);
        const groups = c.groups ?? matmulGroups(c.entry, rows, c.T);
        await h.dispatch(
          p,
          matmul(c.entry, {
            N: rows,
            N_OFFSET: n0,
            Y_STRIDE: c.N,
            K: c.K,
            KP,
            ACCUMULATE: c.accumulate ?? false,
            HAS_BIAS: c.bias ?? false,
            LOGIT_ROWS: c.logitRows ?? false,
            NORM_INPUT: c.norm ?? false,
            EPS,
            SWIGLU_INPUT: c.swiglu ?? false,
          }, c.format ?? "float"),
          {
            fwd: h.forward({ nRows, nLogitRows: c.logitRows ? c.T : 1 }),
            x: xt,
            w: wt,
            bias: bt,
            y,
            normW: nt,
          },
          groups,
        );
      }
      const want = Float64Array.from(y0);
      const tol = new Float64Array(want.length);
      for (let r = 0; r < c.T; r++) {
        for (let n = 0; n < c.N; n++) {
          let s = 0, mag = 0;
          for (let k = 0; k < c.K; k++) {
            s += inp[r * c.K + k] * ws[n * c.K + k];
            mag += Math.abs(inp[r * c.K + k] * ws[n * c.K + k]);
          }
          const inMag = mag;
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
          tol[r * c.N + n] = (m * U32 / (1 - m * U32)) * mag + inputRel * inMag;
        }
      }
      const what = `${c.entry} ${p} N=${c.N} K=${c.K} T=${c.T}` +
        `${c.accumulate ? " ACCUMULATE" : ""}${c.bias ? " HAS_BIAS" : ""}` +
        `${c.logitRows ? " LOGIT_ROWS" : ""}${c.norm ? " NORM_INPUT" : ""}` +
        `${c.swiglu ? " SWIGLU_INPUT" : ""}${c.groups ? ` grid ${c.groups}` : ""}` +
        `${c.parts ? ` ${c.parts} parts` : ""}${c.format ? ` ${c.format}` : ""}`;
      margin(what, assertClose(await h.readF32(y), want, (i) => tol[i], what));
    }
  });
});

// Batch invariance: a sequence's logits must not depend on the batch it decodes in (the engine
// batches and re-batches sequences freely), so `gemv` must give each row exactly what `gemv1`
// gives it alone: same k partition per lane, same order of the lanes' sums.
Deno.test(
  "matmul.wgsl gemv: each row's outputs are gemv1's alone, bit for bit",
  gpuTest,
  async (t) => {
    const cases: { N: number; K: number; norm?: boolean; swiglu?: boolean; format?: "q4_0" }[] = [
      { N: 67, K: 1203, norm: true }, // three activation stages, a partial vec4, N cut in a group
      { N: 130, K: 300, swiglu: true },
      { N: 67, K: 1216, norm: true, format: "q4_0" },
    ];
    await h.perPrecision(t, async (p) => {
      for (const c of cases) {
        const rng = new Rng(900 + c.N + c.K);
        const KP = Math.ceil(c.K / 4) * 4;
        const width = c.swiglu ? 2 * c.K : c.K;
        const x = rng.array(8 * width);
        const w = rng.array(c.N * c.K);
        let wt;
        if (c.format) {
          const words = quantRowWords(c.format, c.K);
          const packed = new Uint32Array(c.N * words);
          for (let n = 0; n < c.N; n++) {
            packQuantRow(
              c.format,
              quantizeQ4_0(w.subarray(n * c.K, (n + 1) * c.K)),
              c.K,
              packed,
              n * words,
            );
          }
          wt = h.upload(packed, "u32", "wq");
        } else {
          wt = h.adopt(uploadMatrix(h.device, w, c.N, c.K, p, "w", 4));
        }
        const normW = h.upload(rng.array(c.K, 0.5, 1.5), p);
        const run = async (entry: "gemv" | "gemv1", rows: Float32Array, T: number) => {
          const y = h.filled(T * c.N, SENTINEL);
          await h.dispatch(
            p,
            matmul(entry, {
              N: c.N,
              N_OFFSET: 0,
              Y_STRIDE: c.N,
              K: c.K,
              KP,
              ACCUMULATE: false,
              HAS_BIAS: false,
              LOGIT_ROWS: false,
              NORM_INPUT: c.norm ?? false,
              EPS: 1e-5,
              SWIGLU_INPUT: c.swiglu ?? false,
            }, c.format ?? "float"),
            {
              fwd: h.forward({ nRows: T }),
              x: h.upload(rows),
              w: wt,
              bias: h.upload([0]),
              y,
              normW,
            },
            matmulGroups(entry, c.N, T),
          );
          return await h.readF32(y);
        };
        const alone = [];
        for (let r = 0; r < 8; r++) {
          alone.push(await run("gemv1", x.subarray(r * width, (r + 1) * width), 1));
        }
        for (const T of [2, 5, 8]) {
          const batch = await run("gemv", x.subarray(0, T * width), T);
          for (let r = 0; r < T; r++) {
            assert.deepEqual(
              batch.subarray(r * c.N, (r + 1) * c.N),
              alone[r],
              `${p} N=${c.N} K=${c.K}${c.format ? ` ${c.format}` : ""}: row ${r} of ${T}`,
            );
          }
        }
      }
    });
  },
);

// ---- attention ------------------------------------------------------------------------------

Deno.test("attention.wgsl prefill, decode and merge", gpuTest, async (t) => {
  await h.perPrecision(t, async (p) => {
    for (const c of ATTENTION_CASES) {
      const rng = new Rng(600 + c.headDim + c.nHeads + (c.streaming?.recent ?? 0));
      for (const r of await checkAttention(h, p, c, rng)) margin(r.what, r.ratio);
    }
  });
});

// ---- kv_store -------------------------------------------------------------------------------

/** f32 -> KV conversion: exact for f32; for f16 WGSL allows either neighbour of the value, so
 * within one f16 ULP (<= 2^-10 relative, or 2^-24 absolute among subnormals). */
function kvTol(p: ScalarType, x: number): number {
  return p === "f32" ? 0 : Math.max(2 * U16 * Math.abs(x), 2 ** -24);
}

Deno.test("kv_store.wgsl, paged and ring", gpuTest, async (t) => {
  await h.perPrecision(t, async (p) => {
    const rng = new Rng(700);

    { // paged: KV heads [1, 3) of 3 into a cache of 2 heads, a chunk and a decode batch
      const HD = 64, NH = 6, NKV = 3, BASE = 1, CH = 2, PS = 4, MAXP = 8, SLOTS = 4;
      const stride = (NH + 2 * NKV) * HD;
      const nPages = SLOTS * MAXP;
      const pageTable = Uint32Array.from(rng.permutation(nPages));
      const k = h.filled(nPages * PS * CH * HD, SENTINEL, p);
      const v = h.filled(nPages * PS * CH * HD, SENTINEL, p);
      const wantK = new Float64Array(nPages * PS * CH * HD).fill(SENTINEL);
      const wantV = Float64Array.from(wantK);
      const tolK = new Float64Array(wantK.length), tolV = new Float64Array(wantK.length);
      const forwards: RowSpec[][] = [
        // a chunk of 10 rows of slot 1 from position 5 (crosses pages 1, 2, 3)
        Array.from({ length: 10 }, (_, r) => ({ slot: 1, pos: 5 + r, firstRow: 0, nSeqRows: 10 })),
        // a decode batch over slots 0, 2, 3
        [{ slot: 0, pos: 3 }, { slot: 2, pos: 17 }, { slot: 3, pos: 31 }].map((s, r) => ({
          ...s,
          firstRow: r,
          nSeqRows: 1,
        })),
      ];
      const pt = h.upload(pageTable, "u32");
      for (const rows of forwards) {
        const qkv = rng.array(rows.length * stride);
        const pages = new RetrievalPages(PS);
        await h.dispatch(
          p,
          kvStore(
            { HEAD_DIM: HD, N_HEADS: NH, N_KV_HEADS: NKV, KV_HEAD_BASE: BASE, CACHE_HEADS: CH },
            {
              layout: pages.layout,
              constants: pages.constants({
                maxPagesPerSeq: MAXP,
                unitsPerShard: nPages,
                shards: 1,
              }),
            },
          ),
          {
            fwd: h.forward({ nRows: rows.length }),
            rows: h.rows(rows),
            qkv: h.upload(qkv),
            kCache: k,
            vCache: v,
            pageTable: pt,
            shard: h.shard(0),
          },
          kvStoreGroups(rows.length + 1, CH),
        );
        for (const [r, row] of rows.entries()) {
          const page = pageTable[row.slot * MAXP + Math.floor(row.pos / PS)];
          const dst = (page * PS + (row.pos % PS)) * CH * HD;
          for (let e = 0; e < CH * HD; e++) {
            const kx = qkv[r * stride + (NH + BASE) * HD + e];
            const vx = qkv[r * stride + (NH + NKV + BASE) * HD + e];
            wantK[dst + e] = kx;
            wantV[dst + e] = vx;
            tolK[dst + e] = kvTol(p, kx);
            tolV[dst + e] = kvTol(p, vx);
          }
        }
      }
      assertClose(await h.readF32(k), wantK, (i) => tolK[i], `kv_store paged ${p} keys`);
      assertClose(await h.readF32(v), wantV, (i) => tolV[i], `kv_store paged ${p} values`);
    }

    { // ring: sink 4 + recent 16, KV head 1 of 2
      const HD = 8, NH = 4, NKV = 2, BASE = 1, CH = 1, SINK = 4, RECENT = 16, SLOTS = 4;
      const ring = SINK + RECENT;
      const stride = (NH + 2 * NKV) * HD;
      const size = SLOTS * ring * CH * HD;
      const k = h.filled(size, SENTINEL, p);
      const v = h.filled(size, SENTINEL, p);
      const wantK = new Float64Array(size).fill(SENTINEL);
      const wantV = Float64Array.from(wantK);
      const tolK = new Float64Array(size), tolV = new Float64Array(size);
      const seq = (slot: number, pos0: number, n: number, first: number): RowSpec[] =>
        Array.from(
          { length: n },
          (_, r) => ({ slot, pos: pos0 + r, firstRow: first, nSeqRows: n }),
        );
      const forwards: RowSpec[][] = [
        // Two sequences in one forward, both longer than RECENT: slot 0 from position 2 (rows at
        // positions 2, 3 go to the sink; of 4..41 only the last 16 are kept) and slot 1 from
        // position 100 (the ring wraps), its rows starting at row 40.
        [...seq(0, 2, 40, 0), ...seq(1, 100, 20, 40)],
        // A decode batch: every row is its sequence's last, so it is always written.
        [...seq(2, 7, 1, 0), ...seq(3, 50, 1, 1)],
      ];
      for (const rows of forwards) {
        const qkv = rng.array(rows.length * stride);
        const kind = new StreamingRing(SINK, RECENT);
        await h.dispatch(
          p,
          kvStore(
            { HEAD_DIM: HD, N_HEADS: NH, N_KV_HEADS: NKV, KV_HEAD_BASE: BASE, CACHE_HEADS: CH },
            {
              layout: kind.layout,
              constants: kind.constants({ maxPagesPerSeq: 1, unitsPerShard: SLOTS, shards: 1 }),
            },
          ),
          {
            fwd: h.forward({ nRows: rows.length }),
            rows: h.rows(rows),
            qkv: h.upload(qkv),
            kCache: k,
            vCache: v,
            shard: h.shard(0),
          },
          kvStoreGroups(rows.length, CH),
        );
        for (const [r, row] of rows.entries()) {
          const last = row.pos - (r - row.firstRow) + row.nSeqRows - 1;
          if (!(row.pos < SINK || last - row.pos < RECENT)) continue;
          const s = row.pos < SINK ? row.pos : SINK + ((row.pos - SINK) % RECENT);
          const dst = (row.slot * ring + s) * CH * HD;
          for (let e = 0; e < CH * HD; e++) {
            const kx = qkv[r * stride + (NH + BASE) * HD + e];
            const vx = qkv[r * stride + (NH + NKV + BASE) * HD + e];
            wantK[dst + e] = kx;
            wantV[dst + e] = vx;
            tolK[dst + e] = kvTol(p, kx);
            tolV[dst + e] = kvTol(p, vx);
          }
        }
      }
      // Every one of slot 0's sink entries 2, 3 and all 16 recent entries, and all of slot 1's
      // recent entries, were written; its sink entries 0, 1 and slot 1's sink were not.
      assert.equal(wantK.filter((x) => x !== SENTINEL).length, (2 + 16 + 16 + 2) * HD);
      assertClose(await h.readF32(k), wantK, (i) => tolK[i], `kv_store ring ${p} keys`);
      assertClose(await h.readF32(v), wantV, (i) => tolV[i], `kv_store ring ${p} values`);
    }
  });
});

// ---- decode_step ----------------------------------------------------------------------------

Deno.test("decode_step.wgsl chains decode steps", gpuTest, async (t) => {
  await h.perPrecision(t, async (p) => {
    const MAX_ROWS = 6, N = 4, STEPS = 3;
    const rows: RowSpec[] = Array.from({ length: MAX_ROWS }, (_, r) => ({
      slot: 10 + r,
      pos: 100 * r + 7,
      firstRow: r,
      nSeqRows: 1,
    }));
    const rowsBuf = h.rows(rows);
    const tokens = h.upload([1, 2, 3, 4, 5, 6], "u32");
    const sampled = h.upload(Array.from({ length: STEPS * MAX_ROWS }, (_, i) => 1000 + i), "u32");
    const step = h.upload([1], "u32");
    const fwd = h.forward({ nRows: N, nLogitRows: N });
    // Two steps in one submission, as the runner records them, starting at step 1.
    const d = call(
      decodeStep({ MAX_ROWS }),
      { fwd, rows: rowsBuf, tokens, sampled, step },
      [1, 1, 1],
    );
    await h.run(p, [d, d]);
    assert.deepEqual([...await h.readU32(step)], [3]);
    // Rows < n_rows take the token sampled at step 2; the others keep theirs.
    assert.deepEqual([...await h.readU32(tokens)], [1012, 1013, 1014, 1015, 5, 6]);
    const want = rows.flatMap((r, i) => [r.slot, r.pos + (i < N ? 2 : 0), r.firstRow, r.nSeqRows]);
    assert.deepEqual([...await h.readU32(rowsBuf)], want);
  });
});

// ---- sample ---------------------------------------------------------------------------------

type Sampling = SamplingParams;

/** sample.wgsl's counter-based RNG: PCG hash of (hash of the seed) + position. */
function pcg(v: number): number {
  const s = (Math.imul(v, 747796405) + 2891336453) >>> 0;
  const w = Math.imul(((s >>> ((s >>> 28) + 4)) ^ s) >>> 0, 277803737) >>> 0;
  return ((w >>> 22) ^ w) >>> 0;
}

function uniformDraw(seed: number, pos: number): number {
  const bits = pcg((pcg((seed ^ 0x9e3779b9) >>> 0) + pos) >>> 0);
  return (bits >>> 8) / 16777216;
}

function argmaxFirst(l: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < l.length; i++) if (l[i] > l[best]) best = i;
  return best;
}

/**
 * The documented sampler on the host: the kept set (top_k largest, p >= min_p * p_max, then the
 * smallest top set with top_p of the remaining mass) and one inverse-CDF draw in index order.
 * `ambiguous`: the draw or a threshold lies so close to a boundary (1e-5 of the mass, or a
 * logit within 1e-4 of the min_p cut) that f32 rounding in the kernel may legitimately decide
 * the other way.
 */
function sampleRef(
  l: Float32Array,
  s: Sampling,
  pos: number,
): { token: number; kept: Set<number>; ambiguous: boolean } {
  const greedy = argmaxFirst(l);
  if (s.temperature === 0) return { token: greedy, kept: new Set([greedy]), ambiguous: false };
  const V = l.length, T = s.temperature, gmax = l[greedy];
  const sorted = [...l].sort((a, b) => b - a);
  let cut = -Infinity;
  let ambiguous = false;
  if (s.topK && s.topK < V) cut = sorted[s.topK - 1];
  if (s.minP) {
    const c = gmax + T * Math.log(s.minP);
    if (l.some((x) => Math.abs(x - c) < 1e-4)) ambiguous = true;
    cut = Math.max(cut, c);
  }
  const w = (x: number) => Math.exp((x - gmax) / T);
  if (s.topP !== undefined && s.topP < 1) {
    const kept = sorted.filter((x) => x >= cut);
    const mass = kept.reduce((a, x) => a + w(x), 0);
    const want = s.topP * mass;
    let cum = 0;
    for (const x of kept) {
      cum += w(x);
      if (Math.abs(cum - want) < 1e-5 * mass) ambiguous = true;
      if (cum >= want) {
        cut = x;
        break;
      }
    }
  }
  const kept = new Set<number>();
  let total = 0;
  for (let i = 0; i < V; i++) {
    if (l[i] >= cut) {
      kept.add(i);
      total += w(l[i]);
    }
  }
  const u = uniformDraw(s.seed ?? 0, pos) * total;
  let run = 0, token = -1;
  for (let i = 0; i < V; i++) {
    if (!kept.has(i)) continue;
    run += w(l[i]);
    if (Math.abs(run - u) < 1e-5 * total) ambiguous = true;
    if (token < 0 && u < run) token = i;
  }
  return { token, kept, ambiguous };
}

/** Runs sample.wgsl over `logits` rows [n, vocab]; logits row r reads token row gather[r]. */
async function runSampler(
  p: ScalarType,
  vocab: number,
  logits: Float32Array,
  params: Sampling[],
  tokenRows: RowSpec[],
  gather: number[],
  o: { maxRows?: number; step?: number } = {},
): Promise<{ tokens: Uint32Array; logprobs: Float32Array }> {
  const n = params.length;
  const maxRows = o.maxRows ?? n;
  const step = o.step ?? 0;
  const sampled = h.filled((step + 1) * maxRows, 0xdeadbeef, "u32");
  const logprobs = h.filled((step + 1) * maxRows, SENTINEL);
  await h.dispatch(
    p,
    sample({
      VOCAB: vocab,
      MAX_ROWS: maxRows,
      MAX_BIAS: MAX_LOGIT_BIAS,
      MAX_TOP: MAX_TOP_LOGPROBS,
    }),
    {
      fwd: h.forward({ nRows: tokenRows.length, nLogitRows: n }),
      rows: h.rows(tokenRows),
      gather: h.upload(gather, "u32"),
      params: h.upload(new Uint32Array(encodeSampling(params)), "u32"),
      logits: h.upload(logits),
      sampled,
      logprobs,
      step: h.upload([step], "u32"),
      // No penalties, bias or top logprobs here (tests/sampling_test.ts covers them).
      work: h.filled(n * vocab, 0),
      counts: h.filled(Math.max(...tokenRows.map((r) => r.slot)) + 1, 0, "u32"),
      bias: h.filled(2, 0, "u32"),
      top: h.filled(2, 0, "u32"),
    },
    [n + 1, 1, 1], // one workgroup past n_logit_rows, which must do nothing
  );
  const tokens = await h.readU32(sampled);
  const lps = await h.readF32(logprobs);
  // Only this step's n entries were written.
  for (let i = 0; i < tokens.length; i++) {
    if (i >= step * maxRows && i < step * maxRows + n) continue;
    assert.equal(tokens[i], 0xdeadbeef, `sampled[${i}] written`);
    assert.equal(lps[i], SENTINEL, `logprobs[${i}] written`);
  }
  return {
    tokens: tokens.slice(step * maxRows, step * maxRows + n),
    logprobs: lps.slice(step * maxRows, step * maxRows + n),
  };
}

/** Token rows at the given positions (slots arbitrary), with gather = identity. */
function tokenRowsAt(positions: number[]): { rows: RowSpec[]; gather: number[] } {
  return {
    rows: positions.map((pos, r) => ({ slot: r % 7, pos, firstRow: r, nSeqRows: 1 })),
    gather: positions.map((_, r) => r),
  };
}

Deno.test("sample.wgsl", gpuTest, async (t) => {
  // logprob = logit - log(sum exp(logit - max)) - max, in f32: the sum of V terms (a serial run
  // per thread, then an 8-level tree) is within (V/256 + 9) u relative, each exp within
  // (3 + 2|x|) ULP with |x| <= the logit range (16 here): ~5e-6 relative in all, so <= 5e-6
  // absolute after the log; the log adds 2^-21 absolute, and the two f32 additions round
  // by u times their operands.
  const lpTol = (l: number, lz: number) => 1e-5 + 4 * U32 * (Math.abs(l) + Math.abs(lz));
  const V = 1000; // 4 logits per thread, the last threads' chunks empty
  await h.perPrecision(t, async (p) => {
    const rng = new Rng(800);
    const randomLogits = (n: number) => rng.array(n * V, -8, 8);

    { // greedy: lowest index among equal maxima (in one thread's chunk and across threads)
      const logits = randomLogits(5);
      const set = (r: number, i: number, x: number) => logits[r * V + i] = x;
      set(0, 10, 9), set(0, 500, 9); // across threads: 10
      set(1, 999, 9); // the very last logit
      set(2, 6, 9), set(2, 5, 9), set(2, 700, 9); // within a thread's chunk [4, 8): 5
      logits.fill(-3, 3 * V, 4 * V); // all equal: 0
      set(4, 0, 9), set(4, 1, 9); // first two: 0
      const params = Array.from({ length: 5 }, () => ({ temperature: 0 }));
      const { rows, gather } = tokenRowsAt([3, 4, 5, 6, 7]);
      const got = await runSampler(p, V, logits, params, rows, gather, { maxRows: 7, step: 2 });
      assert.deepEqual([...got.tokens], [10, 999, 5, 0, 0]);
      for (let r = 0; r < 5; r++) {
        const row = logits.subarray(r * V, (r + 1) * V);
        const lz = logSumExp(row);
        const want = row[got.tokens[r]] - lz;
        assert.ok(
          Math.abs(got.logprobs[r] - want) <= lpTol(row[got.tokens[r]], lz),
          `logprob row ${r}: ${got.logprobs[r]} vs ${want}`,
        );
      }
    }

    { // the same draws as the host sampler, row by row, over a mix of settings
      const settings: Sampling[] = [
        { temperature: 0 },
        { temperature: 1 },
        { temperature: 0.7, topK: 1 },
        { temperature: 1.3, topK: 5 },
        { temperature: 2, topK: 40 },
        { temperature: 1, topP: 0.7 },
        { temperature: 0.5, topP: 0.95 },
        { temperature: 0.9, minP: 0.2 },
        { temperature: 1.1, topK: 40, topP: 0.9, minP: 0.05 },
      ];
      const n = 9 * 16;
      const params = Array.from({ length: n }, (_, r) => ({
        ...settings[r % settings.length],
        seed: rng.int(2 ** 32),
      }));
      const positions = Array.from({ length: n }, () => rng.int(100000));
      // Logit rows read token rows through a shuffled gather.
      const perm = rng.permutation(n);
      const rows = perm.map((r) => ({ slot: r % 5, pos: positions[r], firstRow: 0, nSeqRows: 1 }));
      const gather = Array.from({ length: n }, (_, r) => perm.indexOf(r));
      const logits = randomLogits(n);
      const got = await runSampler(p, V, logits, params, rows, gather);
      let ambiguous = 0;
      for (let r = 0; r < n; r++) {
        const row = logits.subarray(r * V, (r + 1) * V);
        const ref = sampleRef(row, params[r], positions[r]);
        const what = `row ${r} ${JSON.stringify(params[r])} pos ${positions[r]}`;
        assert.ok(ref.kept.has(got.tokens[r]), `${what}: token ${got.tokens[r]} not kept`);
        if (ref.ambiguous) ambiguous++;
        else assert.equal(got.tokens[r], ref.token, what);
        const lz = logSumExp(row);
        const want = row[got.tokens[r]] - lz;
        assert.ok(
          Math.abs(got.logprobs[r] - want) <= lpTol(row[got.tokens[r]], lz),
          `${what}: logprob ${got.logprobs[r]} vs ${want}`,
        );
      }
      assert.ok(ambiguous <= n / 20, `${ambiguous} of ${n} draws too close to call`);
      if (VERBOSE) console.log(`  sample ${p}: ${n - ambiguous} of ${n} draws matched exactly`);
    }

    { // properties over many positions of one logits vector
      const n = 256;
      const base = rng.array(V, -4, 4);
      const order = [...base.keys()].sort((a, b) => base[b] - base[a]);
      // A clear maximum: min_p 0.999 at temperature 1 keeps logits >= max - 0.001.
      base[order[0]] = base[order[1]] + 0.5;
      const logits = new Float32Array(n * V);
      for (let r = 0; r < n; r++) logits.set(base, r * V);
      const { rows, gather } = tokenRowsAt(Array.from({ length: n }, (_, r) => 17 * r + 5));
      const pMax = 1 / base.reduce((a, x) => a + Math.exp(x - base[order[0]]), 0);
      const cases: [string, Sampling, (tok: number[]) => void][] = [
        ["top_k 1 is greedy", { temperature: 1.5, topK: 1 }, (tok) => {
          assert.ok(tok.every((x) => x === order[0]));
        }],
        ["top_k 5 draws among the top 5, more than one of them", {
          temperature: 3,
          topK: 5,
        }, (tok) => {
          const top = new Set(order.slice(0, 5));
          assert.ok(tok.every((x) => top.has(x)), `${tok.filter((x) => !top.has(x))}`);
          assert.ok(new Set(tok).size > 1);
        }],
        ["top_p below p_max picks the max", { temperature: 1, topP: pMax / 2 }, (tok) => {
          assert.ok(tok.every((x) => x === order[0]));
        }],
        ["min_p 0.999 picks the max", { temperature: 1, minP: 0.999 }, (tok) => {
          assert.ok(tok.every((x) => x === order[0]));
        }],
        ["plain sampling draws widely", { temperature: 1 }, (tok) => {
          assert.ok(new Set(tok).size > 20);
        }],
      ];
      for (const [what, s, check] of cases) {
        const params = Array.from({ length: n }, () => ({ ...s, seed: 1234 }));
        const got = await runSampler(p, V, logits, params, rows, gather);
        try {
          check([...got.tokens]);
        } catch (e) {
          throw new Error(`${what}: ${(e as Error).message}`);
        }
      }
    }

    { // reproducible: the same seed and position give the same token, whatever the row
      const n = 64;
      const base = rng.array(V, -2, 2);
      const logits = new Float32Array(n * V);
      for (let r = 0; r < n; r++) logits.set(base, r * V);
      // Logit rows 2i and 2i+1 read different token rows (different slots) at one position.
      const rows: RowSpec[] = Array.from({ length: n }, (_, r) => ({
        slot: r,
        pos: 1000 + (r >> 1),
        firstRow: r,
        nSeqRows: 1,
      }));
      const gather = rows.map((_, r) => r);
      const params = Array.from({ length: n }, () => ({ temperature: 1.5, seed: 99 }));
      const a = await runSampler(p, V, logits, params, rows, gather);
      for (let r = 0; r < n; r += 2) assert.equal(a.tokens[r], a.tokens[r + 1]);
      // Positions differ between pairs: the draws do too.
      assert.ok(new Set(a.tokens).size > 8);
      // Again in another batch order: the same tokens.
      const rev = [...Array(n).keys()].reverse();
      const b = await runSampler(
        p,
        V,
        new Float32Array(logits),
        params,
        rev.map((r) => rows[r]),
        rev.map((_, i) => i),
      );
      assert.deepEqual([...b.tokens].reverse(), [...a.tokens]);
      // Another seed: other tokens.
      const c = await runSampler(
        p,
        V,
        logits,
        params.map((s) => ({ ...s, seed: 100 })),
        rows,
        gather,
      );
      assert.notDeepEqual([...c.tokens], [...a.tokens]);
    }

    { // distribution: empirical frequencies over many positions match softmax(logits / T)
      const base = [1.0, 0.5, -0.3, 2.0, 0.0, -1.0, 1.5, 0.2];
      const T = 0.7, N = 4096;
      for (const s of [{ temperature: T }, { temperature: T, topK: 3 }]) {
        const kept = s.topK
          ? [...base.keys()].sort((a, b) => base[b] - base[a]).slice(0, s.topK)
          : [...base.keys()];
        const wts = base.map((x, i) => kept.includes(i) ? Math.exp(x / T) : 0);
        const z = wts.reduce((a, b) => a + b, 0);
        const prob = wts.map((x) => x / z);
        const logits = new Float32Array(N * 8);
        for (let r = 0; r < N; r++) logits.set(base, r * 8);
        const { rows, gather } = tokenRowsAt([...Array(N).keys()]);
        const params = Array.from({ length: N }, () => ({ ...s, seed: 4242 }));
        const got = await runSampler(p, 8, logits, params, rows, gather);
        const counts = new Array(8).fill(0);
        for (const tok of got.tokens) counts[tok]++;
        // Pearson's chi-square over the kept tokens, kept.length - 1 degrees of freedom: 7 or 2.
        // Thresholds at p = 1e-4 (29.9 and 18.4): a correct sampler fails for fewer than 1 in
        // 10^4 seeds (the draw is deterministic, so this seed passes or fails for good); a
        // sampler off by 2 percentage points on one token would give chi^2 of about
        // N 0.02^2 / p ~ 10-60. Tokens outside the kept set must never be drawn.
        let chi2 = 0;
        for (let i = 0; i < 8; i++) {
          if (prob[i] === 0) assert.equal(counts[i], 0, `token ${i} outside top_k drawn`);
          else chi2 += (counts[i] - N * prob[i]) ** 2 / (N * prob[i]);
        }
        const limit = kept.length === 8 ? 29.9 : 18.4;
        const freq = counts.map((c) => (c / N).toFixed(4)).join(" ");
        const want = prob.map((x) => x.toFixed(4)).join(" ");
        assert.ok(chi2 < limit, `chi^2 ${chi2.toFixed(1)} >= ${limit}: got ${freq}, want ${want}`);
        // And each frequency within 4.5 standard errors sqrt(p (1 - p) / N) (<= 0.035).
        for (let i = 0; i < 8; i++) {
          const se = Math.sqrt(prob[i] * (1 - prob[i]) / N);
          assert.ok(Math.abs(counts[i] / N - prob[i]) <= 4.5 * se + 1e-9, `token ${i}: ${freq}`);
        }
        margin(
          `sample ${p} distribution ${JSON.stringify(s)} chi^2 ${chi2.toFixed(2)}`,
          chi2 / limit,
        );
      }
    }
  });
});

Deno.test("sample.wgsl: top_k and top_p with a -inf or huge negative logit", gpuTest, async (t) => {
  // A masked logit (-inf, or a large negative stand-in such as -1e30) must not disable the
  // filters. The bisections of sample.wgsl start from the smallest logit: with -inf every
  // midpoint is -inf, and with -1e30 32 halvings leave a step of ~1e21, so all tokens stay kept.
  await h.perPrecision(t, async (p) => {
    const V = 16, n = 64;
    const rng = new Rng(900);
    const base = rng.array(V, -4, 4);
    const order = [...base.keys()].sort((a, b) => base[b] - base[a]);
    const masked = order[V - 1]; // the smallest logit becomes the masked one
    const logits = new Float32Array(n * V);
    for (let r = 0; r < n; r++) {
      logits.set(base, r * V);
      logits[r * V + masked] = r % 2 ? -Infinity : -1e30;
    }
    const { rows, gather } = tokenRowsAt(Array.from({ length: n }, (_, r) => 3 * r));
    const pMax = 1 /
      base.reduce((a, x, i) => i === masked ? a : a + Math.exp(x - base[order[0]]), 0);
    for (
      const [s, allowed] of [
        [{ temperature: 2, topK: 2 }, order.slice(0, 2)],
        [{ temperature: 1, topP: pMax / 2 }, [order[0]]],
      ] as [Sampling, number[]][]
    ) {
      const params = Array.from({ length: n }, () => ({ ...s, seed: 5 }));
      const got = await runSampler(p, V, logits, params, rows, gather);
      const bad = [...got.tokens].map((tok, r) => [r, tok]).filter(([, tok]) =>
        !allowed.includes(tok)
      );
      assert.deepEqual(
        bad,
        [],
        `${JSON.stringify(s)}: [row, token] drawn outside ${allowed} (odd rows -inf, even -1e30)`,
      );
    }
  });
});
