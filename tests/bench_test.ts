// `deno task bench` on a tiny shape (a few seconds): the outputs exist, the JSON has its schema,
// and every ratio is the quotient of the two measured numbers it names. Also the bench's
// GPU-free pieces: the closed-form fits against the cache manager, the Llama-3-8B figure, the
// resampled plans and the README section tool.

import assert from "node:assert/strict";
import { CacheGeometry, CacheLayout } from "../cache/layout.ts";
import { KvCacheManager } from "../cache/manager.ts";
import { PRESETS, tinyConfig } from "../model/random.ts";
import { llama3Capacity, managerStats, maxContextFit } from "../bench/kv.ts";
import { gemvMatrices, weightBytes, weightBytesRow } from "../bench/model_bench.ts";
import { benchPlans, resamplePattern } from "../bench/plans.ts";
import { prefillAttentionId } from "../bench/report.ts";
import { END, replaceSection, START } from "../bench/readme.ts";
import { multiKeyDocument } from "../identify/calibration.ts";
import { loadTokenizer } from "../model/load.ts";
import { lineChart, niceTicks } from "../util/svg.ts";
import { parseGateTsv } from "../plans/duo_import.ts";
import { resolvePlan } from "../plans/resolve.ts";
import { loadPlanFile } from "../plans/schema.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const PATTERN = `${ROOT}../shared/duo-patterns/Llama-3-8B-Instruct-Gradient-1048k`;

/** Resolves `a.b[2].c` (written independently of bench/report.ts's resolver). */
function lookup(root: unknown, path: string): unknown {
  let cur: unknown = root;
  for (const seg of path.split(".")) {
    const m = seg.match(/^([^[\]]+)((?:\[\d+\])*)$/);
    assert.ok(m, `bad path segment ${seg} in ${path}`);
    cur = (cur as Record<string, unknown>)[m[1]];
    for (const idx of m[2].matchAll(/\[(\d+)\]/g)) cur = (cur as unknown[])[Number(idx[1])];
  }
  return cur;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

function checkStat(s: unknown, where: string, n?: number) {
  const st = s as { median: number; min: number; max: number; spread: number; samples: number[] };
  assert.ok(Array.isArray(st.samples) && st.samples.length > 0, `${where}: samples`);
  if (n !== undefined) assert.equal(st.samples.length, n, `${where}: ${n} samples`);
  assert.ok(st.samples.every((x) => typeof x === "number" && isFinite(x)), `${where}: finite`);
  assert.equal(st.median, median(st.samples), `${where}: median of the samples`);
  assert.equal(st.min, Math.min(...st.samples), `${where}: min`);
  assert.equal(st.max, Math.max(...st.samples), `${where}: max`);
}

Deno.test("bench: tiny run writes JSON, Markdown and SVG; ratios are quotients of measurements", async () => {
  const out = await Deno.makeTempDir({ prefix: "zigzag-bench-" });
  const reps = 2;
  const args = [
    "run",
    "-A",
    "bench/bench.ts",
    "--quick",
    "--preset",
    "tiny",
    "--contexts",
    "48,96",
    "--prefill-contexts",
    "48,96",
    "--linearity-contexts",
    "96,144",
    "--sink",
    "4",
    "--recent",
    "16",
    "--reps",
    String(reps),
    "--steps",
    "1,2",
    "--kernels",
    "--kernel-shapes",
    "64x40,48x64",
    "--gemm-rows",
    "16",
    "--attention-context",
    "96",
    "--attention-long-context",
    "192",
    "--reference-mb",
    "1",
    "--kv-cache-mb",
    "1",
    "--duo-pattern",
    "synthetic",
    "--out",
    out,
  ];
  const res = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(res.stderr);
  assert.equal(res.code, 0, `bench failed:\n${stderr}`);
  for (const f of ["bench.json", "bench.md", "decode.svg", "kv.svg", "prefill.svg"]) {
    assert.ok((await Deno.stat(`${out}/${f}`)).size > 0, `${f} written`);
  }
  const r = JSON.parse(await Deno.readTextFile(`${out}/bench.json`));

  // schema
  assert.equal(r.schema, "zigzag-bench/1");
  assert.equal(typeof r.adapter.name, "string");
  assert.equal(typeof r.adapter.timestamp_query, "boolean");
  assert.equal(r.versions.deno, Deno.version.deno);
  assert.ok(["f16", "f32"].includes(r.options.precision));
  assert.deepEqual(r.options.contexts, [48, 96]);
  assert.deepEqual(Object.keys(r.plans).sort(), ["duo", "full", "streaming", "zigzag"]);
  assert.ok(r.plans.duo.mixed_layers > 0, "duo layers are mixed");
  assert.equal(r.plans.zigzag.mixed_layers, 0, "zigzag layers are exclusive");
  checkStat(r.reference.readback_ms, "readback");
  checkStat(r.reference.stream_read.best.gbps, "stream");
  checkStat(r.reference.copy.gbps, "copy");
  assert.ok(r.reference.stream_read.variants.length >= 2);
  // The compute roof: f32 always (f16 beside it on shader-f16 adapters); FLOPs are the closed
  // form of the kernel's work, and the GEMM kernels are reported against the f32 roof.
  const fma32 = r.reference.fma.find((x: { dtype: string }) => x.dtype === "f32");
  assert.ok(fma32, "an f32 FMA roof");
  checkStat(fma32.best.gflops, "fma f32");
  for (const v of fma32.variants) {
    assert.equal(v.flops, v.workgroups * v.workgroup_size * v.iters * 8 * 4 * 2);
  }
  assert.ok(
    r.ratios.some((x: { id: string; den_ref: string }) =>
      x.id.startsWith("compute.") && x.den_ref.startsWith("reference.fma[")
    ),
    "kernels against the FMA roof",
  );
  // Matmul and attention arithmetic is f32 whatever the storage: always the f32 roof.
  const f32Roof = `reference.fma[${r.reference.fma.indexOf(fma32)}].best.gflops.median`;
  for (const x of r.ratios.filter((y: { id: string }) => y.id.startsWith("compute."))) {
    assert.equal(x.den_ref, f32Roof, `${x.id} against the f32 roof`);
  }
  assert.equal(r.cells.length, 9); // 4 plans x 2 contexts + streaming prefill at 144
  for (const [i, c] of r.cells.entries()) {
    const w = `cells[${i}]`;
    if (c.context === 144) {
      assert.equal(c.plan, "streaming");
      checkStat(c.prefill_ms, `${w}.prefill_ms`, reps);
      assert.deepEqual(c.decode, []);
      continue;
    }
    assert.ok(["full", "duo", "zigzag", "streaming"].includes(c.plan));
    checkStat(c.prefill_ms, `${w}.prefill_ms`, reps);
    if (r.adapter.timestamp_query) {
      // The last chunk's kernels: prefill attention and the prefill GEMM (96 rows > 8) among them.
      const k = c.prefill_kernels_ms;
      assert.ok(k["attention.wgsl:prefill"] > 0, `${w}: prefill attention timed`);
      assert.ok(
        Object.keys(k).some((n) => /^matmul\.wgsl:gemm/.test(n) && k[n] > 0),
        `${w}: ${Object.keys(k)}`,
      );
      assert.ok(!Object.keys(k).some((n) => n.startsWith("sample.wgsl")), "no head or sampler");
    }
    assert.deepEqual(c.decode.map((d: { batch: number }) => d.batch), [1, 8]);
    for (const d of c.decode) {
      checkStat(d.ms_per_token, `${w} decode b${d.batch}`, reps);
      checkStat(d.ms_per_token_amortised, `${w} decode amortised`, reps);
      assert.equal(d.gbps, d.bytes_per_step / (d.ms_per_token.median * 1e6));
      assert.ok(d.kv_bytes > 0);
    }
    assert.equal(c.kv.bytes, c.kv.closed_form_bytes, `${w}: manager bytes = closed form`);
    assert.equal(c.kv.ratio_to_full, c.kv.bytes / c.kv.full_attention_bytes);
  }
  const full = r.cells.find((c: { plan: string; context: number }) =>
    c.plan === "full" && c.context === 96
  );
  const zig = r.cells.find((c: { plan: string; context: number }) =>
    c.plan === "zigzag" && c.context === 96
  );
  assert.ok(zig.kv.bytes < full.kv.bytes);
  // Per shape: matmul.wgsl gemv at rows 1 and 8 per dtype, and q8_0 / q4_0 where k is whole
  // blocks of 32 (48x64, not 64x40), interleaved; both GEMM entries per dtype.
  const nd = r.adapter.shader_f16 ? 2 : 1;
  const wRef = r.adapter.shader_f16 ? "f16" : "f32";
  assert.equal(r.kernels.length, 2 * 4 * nd + 2 * 2);
  assert.deepEqual(
    r.kernels.filter((k: { kind: string }) => k.kind === "gemm").map((
      k: { kernel: string; n: number; dtype: string },
    ) => `${k.n}:${k.dtype}:${k.kernel}`).sort(),
    [48, 64].flatMap((n) =>
      (r.adapter.shader_f16 ? ["f16", "f32"] : ["f32"]).flatMap((d) =>
        ["gemm", "gemm_reg"].map((e) => `${n}:${d}:matmul.wgsl:${e}`)
      )
    ).sort(),
  );
  for (const k of r.kernels) checkStat(k.gbps, `kernel ${k.kind}`);
  const quantKernels = r.kernels.filter((k: { format: string }) => k.format !== "float");
  assert.deepEqual(
    quantKernels.map((k: { n: number; k: number; rows: number; format: string; dtype: string }) =>
      `${k.n}x${k.k}:${k.rows}:${k.format}:${k.dtype}`
    ),
    ["48x64:1:q8_0", "48x64:1:q4_0", "48x64:8:q8_0", "48x64:8:q4_0"].map((x) => `${x}:${wRef}`),
  );
  // Weight bytes as stored: 48 rows of 64 weights, 2 blocks: q8_0 16 + 1 words, q4_0 8 + 1.
  for (const k of quantKernels) {
    assert.equal(k.weight_bytes, 48 * (k.format === "q8_0" ? 17 : 9) * 4);
    const id = `gemv.b${k.rows}.${k.format}/${wRef}.48x64`;
    const x = r.ratios.find((y: { id: string }) => y.id === id);
    assert.ok(x, `ratio ${id} present`);
    const j = r.kernels.findIndex((y: { n: number; rows: number; format: string; dtype: string }) =>
      y.n === 48 && y.rows === k.rows && y.format === "float" && y.dtype === wRef
    );
    assert.equal(x.den_ref, `kernels[${j}].ms.median`);
    assert.ok(x.paired, `${id}: paired samples (interleaved)`);
  }
  // At 96 and the long context 192, per batch 1 and 8: the float caches, int8 and int4,
  // interleaved (same sample counts).
  const kvs = [...(r.adapter.shader_f16 ? ["f16"] : []), "f32", "int8", "int4"];
  assert.deepEqual(
    r.attention.map((x: { rows: number; kv_dtype: string; context: number }) =>
      `${x.context}:${x.rows}:${x.kv_dtype}`
    ),
    [96, 192].flatMap((c) => [1, 8].flatMap((b) => kvs.map((kv) => `${c}:${b}:${kv}`))),
  );
  // Bytes of one (position, KV head) entry at head_dim 16, scales included, by hand.
  const entry: Record<string, number> = { f16: 32, f32: 64, int8: 16 + 4, int4: 8 + 4 };
  for (const x of r.attention) {
    checkStat(x.gbps, "attention", r.reference.copy.gbps.samples.length);
    assert.equal(x.kv_bytes, x.rows * x.context * 2 * 2 * entry[x.kv_dtype]);
    const bw = `bw.attention.${x.kv_dtype}.r${x.rows}@${x.context}/stream`;
    assert.ok(r.ratios.some((y: { id: string }) => y.id === bw), `ratio ${bw} present`);
    assert.equal(x.dtype, x.kv_dtype === "f32" ? "f32" : r.adapter.shader_f16 ? "f16" : "f32");
  }
  // Prefill attention: the last chunk of the prompt, full and streaming; FLOPs by hand from the
  // keys each row sees (rows [96 - R, 96) with R = min(chunk, 96)).
  assert.deepEqual(r.prefill_attention.map((x: { layout: string }) => x.layout), ["paged", "ring"]);
  for (const x of r.prefill_attention) {
    checkStat(x.gflops, "prefill attention", r.reference.copy.gbps.samples.length);
    assert.equal(x.context, 96);
    let keys = 0;
    for (let i = 96 - x.rows; i < 96; i++) {
      keys += x.layout === "paged" ? i + 1 : Math.min(x.sink, i + 1) +
        Math.min(i + 1 - Math.min(x.sink, i + 1), x.recent);
    }
    assert.equal(x.flops, 4 * x.head_dim * x.heads * keys);
    const id = `compute.${prefillAttentionId(x)}/fma`;
    assert.ok(r.ratios.some((y: { id: string }) => y.id === id), `ratio ${id} present`);
    const t = r.targets.find((y: { id: string }) => y.id === `kernels.${id}`);
    assert.equal(t?.target, 0.4);
  }
  assert.ok(r.fits.length >= 4);
  // The method texts are filled in: no template placeholder left over.
  for (const [k, v] of Object.entries(r.method)) assert.doesNotMatch(v as string, /\$\{/, k);
  assert.match(r.method.kernels, /over the last chunk \(96 rows\) of a 96-token prompt/);

  // every ratio: value = num / den, and num, den are the numbers at the paths it names
  assert.ok(r.ratios.length > 20);
  const ids = new Set<string>();
  for (const x of r.ratios) {
    assert.ok(!ids.has(x.id), `ratio ${x.id} unique`);
    ids.add(x.id);
    assert.equal(x.num, lookup(r, x.num_ref), `${x.id}: num is ${x.num_ref}`);
    assert.equal(x.den, lookup(r, x.den_ref), `${x.id}: den is ${x.den_ref}`);
    assert.equal(x.value, x.num / x.den, `${x.id}: value = num / den`);
    if (x.paired) {
      const a = lookup(r, x.num_ref.replace(/\.median$/, ".samples")) as number[];
      const b = lookup(r, x.den_ref.replace(/\.median$/, ".samples")) as number[];
      assert.deepEqual(x.paired.samples, a.map((v, i) => v / b[i]), `${x.id}: paired`);
    }
  }
  for (
    const id of ["decode.b1.zigzag/full@96", "decode.b8.zigzag/duo@96", "prefill.zigzag/full@96"]
  ) {
    assert.ok(ids.has(id), `ratio ${id} present`);
  }
  const decodeRatio = r.ratios.find((x: { id: string }) => x.id === "decode.b8.zigzag/full@96");
  assert.equal(decodeRatio.num, zig.decode[1].ms_per_token.median);
  assert.equal(decodeRatio.den, full.decode[1].ms_per_token.median);

  const ref = r.adapter.shader_f16 ? "f16" : "f32";
  for (const b of [1, 8]) {
    for (const kv of ["int8", "int4"]) {
      const id = `attn.b${b}.${kv}/${ref}@96`;
      const x = r.ratios.find((y: { id: string }) => y.id === id);
      assert.ok(x, `ratio ${id} present`);
      const i = r.attention.findIndex((y: { rows: number; kv_dtype: string }) =>
        y.rows === b && y.kv_dtype === kv
      );
      assert.equal(x.num_ref, `attention[${i}].ms.median`);
      assert.ok(x.paired, `${id}: paired samples (interleaved)`);
      const t = r.targets.find((y: { id: string }) => y.id === `attention.b${b}.${kv}`);
      assert.equal(t.ratio_id, id);
      assert.equal(t.target, kv === "int4" ? 0.45 : 0.65);
    }
  }

  // Quantized weights: the GEMV bytes of a decode step by format, by hand for the tiny shapes
  // (dim 64, hidden 160, q 64, kv 32, 2 layers, vocab 256; every matrix's K is whole blocks, the
  // tied LM head read as its quantized copy; the embedding is not a GEMV) and Llama-3-8B's.
  // A row of K weights: f16 2K bytes, q8_0 (K/4 + ceil(K/64)) words, q4_0 (K/8 + ceil(K/64)).
  const rowBytes = (fmt: string, k: number) =>
    fmt === "float" ? 2 * k : 4 * ((fmt === "q8_0" ? k / 4 : k / 8) + Math.ceil(k / 64));
  const stepBytes = (
    fmt: string,
    c: { dim: number; hidden: number; qkv: number; q: number; vocab: number; layers: number },
  ) =>
    c.layers * ((c.qkv + 2 * c.hidden) * rowBytes(fmt, c.dim) + c.dim * rowBytes(fmt, c.q) +
        c.dim * rowBytes(fmt, c.hidden)) + c.vocab * rowBytes(fmt, c.dim);
  const shapes = {
    run: { dim: 64, hidden: 160, qkv: 128, q: 64, vocab: 256, layers: 2 },
    "llama-3-8b": { dim: 4096, hidden: 14336, qkv: 6144, q: 4096, vocab: 128256, layers: 32 },
  };
  assert.deepEqual(r.weights.formats, ["float", "q8_0", "q4_0"]);
  assert.deepEqual(
    r.weights.bytes.map((x: { model: string; format: string }) => `${x.model}:${x.format}`),
    ["run", "llama-3-8b"].flatMap((m) => ["float", "q8_0", "q4_0"].map((f) => `${m}:${f}`)),
  );
  for (const x of r.weights.bytes) {
    const c = shapes[x.model as keyof typeof shapes];
    assert.equal(x.bytes, stepBytes(x.format, c), `${x.model} ${x.format}: bytes by hand`);
    assert.equal(
      x.params,
      c.layers * (c.qkv * c.dim + c.dim * c.q + 3 * c.hidden * c.dim) +
        c.vocab * c.dim,
    );
    assert.equal(x.quantized_matrices, x.format === "float" ? 0 : 4 * c.layers + 1);
    if (x.format === "float") continue;
    const id = `weights.bytes.${x.model}.${x.format}/f16`;
    const ratio = r.ratios.find((y: { id: string }) => y.id === id);
    assert.ok(ratio, `ratio ${id} present`);
    assert.equal(ratio.value, stepBytes(x.format, c) / stepBytes("float", c));
    const t = r.targets.find((y: { id: string }) =>
      y.id === `weights.bytes.${x.model}.${x.format}`
    );
    assert.equal(t.ratio_id, id);
    assert.equal(t.target, x.format === "q4_0" ? 0.3 : 0.55);
    assert.equal(t.met, true);
  }
  // Llama-3-8B: every K is a multiple of 64, so exactly 4.5 / 16 and 8.5 / 16 of f16.
  const l3Ratio = (f: string) =>
    r.ratios.find((y: { id: string }) => y.id === `weights.bytes.llama-3-8b.${f}/f16`).value;
  assert.equal(l3Ratio("q4_0"), 9 / 32);
  assert.equal(l3Ratio("q8_0"), 17 / 32);
  // Decode with quantized weights: the zigzag runner again, at the longest decode context of
  // the run (96: 4096 is not reached), every batch, paired with the float runner's samples.
  assert.equal(r.weights.plan, "zigzag");
  assert.equal(r.weights.context, 96);
  assert.deepEqual(
    r.weights.cells.map((c: { plan: string; weights: string; context: number }) =>
      `${c.plan}:${c.weights}:${c.context}`
    ),
    ["zigzag:q8_0:96", "zigzag:q4_0:96"],
  );
  const zi = r.cells.findIndex((c: { plan: string; context: number }) =>
    c.plan === "zigzag" && c.context === 96
  );
  for (const [i, c] of r.weights.cells.entries()) {
    assert.equal(c.prefill_ms, null);
    assert.deepEqual(c.kv, r.cells[zi].kv, "same plan, same KV");
    assert.deepEqual(c.decode.map((d: { batch: number }) => d.batch), [1, 8]);
    for (const [j, d] of c.decode.entries()) {
      checkStat(d.ms_per_token, `weights ${c.weights} b${d.batch}`, reps);
      assert.equal(d.gbps, d.bytes_per_step / (d.ms_per_token.median * 1e6));
      // The step reads the quantized matrices instead of the float ones, the same KV.
      const ref = r.cells[zi].decode[j];
      const q = r.weights.bytes.find((x: { model: string; format: string }) =>
        x.model === "run" && x.format === c.weights
      );
      const f = r.weights.bytes.find((x: { model: string; format: string }) =>
        x.model === "run" && x.format === "float"
      );
      const floatBytes = r.options.precision === "f16" ? f.bytes : 2 * f.bytes;
      assert.equal(ref.bytes_per_step - d.bytes_per_step, floatBytes - q.bytes);
      const id = `weights.decode.b${d.batch}.zigzag.${c.weights}/float@96`;
      const x = r.ratios.find((y: { id: string }) => y.id === id);
      assert.ok(x, `ratio ${id} present`);
      assert.equal(x.num_ref, `weights.cells[${i}].decode[${j}].ms_per_token.median`);
      assert.equal(x.den_ref, `cells[${zi}].decode[${j}].ms_per_token.median`);
      assert.ok(x.paired, `${id}: paired samples (same rotation)`);
      if (c.weights === "q4_0") {
        const t = r.targets.find((y: { id: string }) => y.id === `weights.decode.b${d.batch}.q4_0`);
        assert.equal(t.ratio_id, id);
        assert.equal(t.target, 0.6);
      }
    }
  }

  // The capacity figure (closed form, also in --quick runs): the rows and their target.
  assert.deepEqual(
    r.capacity.rows.map((x: { plan: string; kv_dtype: string }) => `${x.plan}:${x.kv_dtype}`),
    ["zigzag50:int4", "duo50:int4", "full:int4", "zigzag50:f16", "full:f16"],
  );
  const capTarget = r.targets.find((x: { id: string }) => x.id === "capacity.zigzag50.int4");
  assert.equal(capTarget.value_ref, "capacity.rows[0].max_context");
  assert.equal(capTarget.target, 4_194_304);

  // targets: the value is the named ratio (or, for linearity, its exponent), or the figure at
  // value_ref
  for (const t of r.targets) {
    if (t.value === null) continue;
    if (t.value_ref) {
      assert.equal(t.value, lookup(r, t.value_ref), `target ${t.id}: value at ${t.value_ref}`);
      assert.equal(t.met, t.op === "<=" ? t.value <= t.target : t.value >= t.target);
      continue;
    }
    const ratio = r.ratios.find((x: { id: string }) => x.id === t.ratio_id);
    assert.ok(ratio, `target ${t.id} names ratio ${t.ratio_id}`);
    assert.equal(t.value, ratio.value, `target ${t.id}`);
    assert.equal(t.met, t.op === "<=" ? t.value <= t.target : t.value >= t.target);
  }
  assert.ok(r.issue3.llama3_8b_32k.ratio_to_full <= 0.52);
  // The streaming-prefill growth figures come from the cells' medians.
  const sp = r.issue3.streaming_prefill;
  assert.deepEqual(sp.contexts, [48, 96, 144]);
  sp.contexts.forEach((n: number, i: number) => {
    const cell = r.cells.find((c: { plan: string; context: number }) =>
      c.plan === "streaming" && c.context === n
    );
    assert.equal(sp.ms[i], cell.prefill_ms.median);
    if (i > 0) {
      assert.equal(
        sp.marginal_ms_per_token[i - 1],
        (sp.ms[i] - sp.ms[i - 1]) / (n - sp.contexts[i - 1]),
      );
    }
  });
  assert.ok(ids.has("prefill.streaming.marginal_growth"));

  const md = await Deno.readTextFile(`${out}/bench.md`);
  assert.ok(md.includes(r.adapter.name));
  assert.ok(md.includes("Targets"));
  assert.ok(md.includes("DuoAttention, published"));
  assert.ok(md.includes("Quantized weights"));
  assert.match(await Deno.readTextFile(`${out}/decode.svg`), /^<svg[^>]*>[\s\S]*<\/svg>\s*$/);
  await Deno.remove(out, { recursive: true });
});

Deno.test("bench: GEMV bytes per decode step by weight format (the runner's buffer plan)", () => {
  // dim 40 (K of wqkv, w_gate_up and the LM head not whole blocks: they stay float), q 64 and
  // hidden 96 (wo and w_down quantized).
  const c = tinyConfig({
    dim: 40,
    nHeads: 4,
    headDim: 16,
    nKvHeads: 2,
    hiddenDim: 96,
    vocabSize: 100,
  });
  const f16 = gemvMatrices(c, "f16");
  assert.deepEqual(f16.map((m) => m.name.split(" ")[0]), [
    "lm_head",
    ...Array.from({ length: c.nLayers }, () => ["wqkv", "wo", "w_gate_up", "w_down"]).flat(),
  ]);
  for (const fmt of ["q8_0", "q4_0"] as const) {
    const q = gemvMatrices(c, "f16", fmt);
    const words = (k: number) => (fmt === "q8_0" ? k / 4 : k / 8) + Math.ceil(k / 64);
    const want: Record<string, [string, number]> = {
      lm_head: ["float", 100 * 40 * 2],
      wqkv: ["float", 128 * 40 * 2],
      wo: [fmt, 40 * words(64) * 4],
      w_gate_up: ["float", 192 * 40 * 2],
      w_down: [fmt, 40 * words(96) * 4],
    };
    for (const m of q) {
      const [format, bytes] = want[m.name.split(" ")[0]];
      assert.deepEqual([m.format, m.bytes], [format, bytes], m.name);
    }
    const row = weightBytesRow("t", "t", c, fmt);
    assert.equal(row.bytes, weightBytes(c, "f16", fmt));
    assert.equal(row.quantized_matrices, 2 * c.nLayers);
    assert.equal(row.bits_per_weight, (8 * row.bytes) / row.params);
  }
  // f32 float matrices: twice f16's; rows padded to 4 elements.
  assert.equal(weightBytes(c, "f32"), 2 * weightBytes(c, "f16"));
  const odd = tinyConfig({ dim: 36, nHeads: 2, headDim: 18, nKvHeads: 1, hiddenDim: 50 });
  assert.equal(
    gemvMatrices(odd, "f16").find((m) => m.name.startsWith("w_down"))!.bytes,
    36 * 52 * 2,
  );
});

Deno.test("bench: longest context that fits = what the cache manager admits", () => {
  const c = tinyConfig({ nLayers: 4, nKvHeads: 2, nHeads: 4 });
  const plans = benchPlans(c, { sink: 4, recent: 12, budget: 0.5, patternDir: null });
  for (const name of ["full", "duo", "zigzag"] as const) {
    for (const seqs of [1, 3]) {
      const g = new CacheGeometry(c, plans.plans[name], "f16");
      const budget = 50_000 + seqs * g.ringBytes;
      const fit = maxContextFit(g, budget, seqs);
      assert.ok(fit.max_context! > 0);
      const m = new KvCacheManager(
        new CacheLayout(c, plans.plans[name], {
          budgetBytes: budget,
          maxSeqs: seqs,
          maxSeqLen: 1 << 20,
          kvDtype: "f16",
        }),
      );
      const all = Array.from({ length: seqs }, () => m.open()!);
      for (const s of all) assert.ok(m.ensure(s, fit.max_context!), `${name}: fits`);
      assert.ok(!m.ensure(all[0], fit.max_context! + 1), `${name}: one more token does not`);
    }
  }
  const s = maxContextFit(new CacheGeometry(c, plans.plans.streaming, "f16"), 1 << 20, 8);
  assert.equal(s.unbounded, true);
});

Deno.test("bench: Llama-3-8B at 32k, 50% zigzag holds <= 0.52x the full KV bytes", () => {
  const c = PRESETS["llama-3-8b"];
  let dir: string | null = PATTERN;
  try {
    Deno.statSync(`${PATTERN}/full_attention_heads.tsv`);
  } catch {
    dir = null;
  }
  const p = benchPlans(c, { sink: 64, recent: 256, budget: 0.5, patternDir: dir });
  assert.equal(p.summaries.zigzag.retrieval_layers.length, 16);
  const st = managerStats(c, p.plans.zigzag, "f16", [32768]);
  const used = new CacheGeometry(c, p.plans.zigzag, "f16").usedBytes([32768]);
  assert.equal(st.total.bytes_used, used.retrieval + used.streaming);
  assert.equal(st.full_attention_bytes, 32768 * 2 * 32 * 8 * 128 * 2);
  // 16 retrieval layers hold everything; 16 streaming layers 320 tokens.
  assert.equal(st.total.bytes_used, (32768 * 16 + 320 * 16) * 2 * 8 * 128 * 2);
  assert.ok(st.ratio_to_full <= 0.52);
});

Deno.test("bench: Llama-3-8B-Gradient-4194k in 80 GiB, zigzag 50% + int4 KV + q4 weights", async () => {
  const cap = await llama3Capacity();
  const c = PRESETS["llama-3-8b"];
  const budget = 80 * 2 ** 30;
  assert.equal(cap.budget_bytes, budget);
  // Q4_0: 18 bytes per 32 weights of every linear layer; f16 embedding and LM head; f32 norms.
  const linear = 32 * (4096 * 4096 * 2 + 1024 * 4096 * 2 + 14336 * 4096 * 3);
  assert.equal(cap.weights.linear_params, linear);
  const weights = (linear / 32) * 18 + 2 * 128256 * 4096 * 2 + (2 * 32 + 1) * 4096 * 4;
  assert.equal(cap.weights.total_bytes, weights);
  const plan = resolvePlan(
    await loadPlanFile(`${ROOT}plans/shipped/llama-3-8b-instruct-gradient-4194k.zigzag50.json`),
    c,
  );
  // The shipped plan is exactly 50% of the layers: 16 retrieval layers x 8 KV heads x K and V x
  // (64 bytes of nibbles + one (scale, zero) word) per token.
  assert.equal(plan.layers.filter((l) => l.kind === "retrieval").length, 16);
  assert.equal(plan.layers.filter((l) => l.kind === "streaming").length, 16);
  const perToken = 16 * 8 * 2 * (64 + 4);
  const ring = 16 * 8 * 2 * (64 + 4) * (plan.sink + plan.recent);
  for (const x of cap.rows) {
    assert.ok(x.total_bytes <= budget, `${x.plan} ${x.kv_dtype}: fits`);
    assert.equal(x.total_bytes, x.weight_bytes + x.activation_bytes + x.kv_bytes);
    assert.equal(x.weight_bytes, weights);
    assert.ok(x.activation_bytes > 0 && x.activation_bytes < 64 * 2 ** 20);
    assert.ok(x.kv_budget_bytes <= budget - weights - x.activation_bytes);
    assert.equal(x.max_context % 16, 0);
  }
  const z = cap.rows[0];
  assert.deepEqual([z.plan, z.kv_dtype], ["zigzag50", "int4"]);
  assert.equal(z.kv_bytes_per_token, perToken);
  assert.equal(z.ring_bytes, ring);
  const g = new CacheGeometry(c, plan, "int4");
  assert.equal(z.max_context, maxContextFit(g, z.kv_budget_bytes, 1).max_context);
  assert.equal(z.max_context, Math.floor((z.kv_budget_bytes - ring) / (16 * perToken)) * 16);
  // The K/V shards the runner would allocate are the closed form's rings and pages.
  assert.equal(z.kv_bytes, ring + (z.max_context / 16) * 16 * perToken);
  // One more page does not fit with the weights and activations.
  assert.ok(weights + z.activation_bytes + z.kv_bytes + 16 * perToken > budget);
  assert.ok(z.max_context >= 4_194_304, `${z.max_context} tokens`);
  // DuoAttention 50% keeps as many KV heads (128 of 256): the same bytes per token.
  assert.equal(cap.rows[1].kv_bytes_per_token, perToken);
  // Full attention holds twice the bytes per token; f16 four times int4's (~3.76x with scales).
  const full = cap.rows[2];
  assert.equal(full.kv_bytes_per_token, 32 * 8 * 2 * 68);
  assert.ok(full.max_context < z.max_context / 1.99 && full.max_context > z.max_context / 2.01);
  assert.equal(cap.rows[3].kv_bytes_per_token, 16 * 8 * 2 * 256);
  assert.equal(cap.duo_published.max_context, 3_300_000);
});

Deno.test("bench: resampled DuoAttention patterns keep the budget and stay mixed", () => {
  let tsv: string;
  try {
    tsv = Deno.readTextFileSync(`${PATTERN}/full_attention_heads.tsv`);
  } catch {
    return; // the shared patterns are not here
  }
  const gates = parseGateTsv(tsv);
  for (const [L, H] of [[30, 3], [24, 2], [16, 8], [2, 3], [5, 4]]) {
    const p = resamplePattern(gates, L, H, 0.5);
    const kept = p.duo.flat().filter(Boolean).length;
    assert.equal(kept, Math.ceil(L * H * 0.5), `${L}x${H}: duo budget`);
    assert.equal(p.zigzag.length, Math.ceil(L * 0.5), `${L}x${H}: zigzag budget`);
    const mixed = p.duo.filter((row) => row.some(Boolean) && !row.every(Boolean)).length;
    assert.ok(mixed >= 0.8 * L, `${L}x${H}: ${mixed} of ${L} layers mixed`);
  }
  // The model of the file itself: imported as is.
  const c = { ...PRESETS["llama-3-8b"] };
  const p = benchPlans(c, { sink: 64, recent: 256, budget: 0.5, patternDir: PATTERN });
  assert.equal(p.summaries.duo.source, "import:Llama-3-8B-Instruct-Gradient-1048k");
  assert.equal(p.summaries.duo.retrieval_kv_heads, 128);
});

Deno.test("bench-readme: replaces only the text between the markers", () => {
  const readme = `# x\n\nintro\n\n${START}\nold\n${END}\n\nafter\n`;
  const next = replaceSection(readme, "NEW TABLE");
  assert.equal(next, `# x\n\nintro\n\n${START}\nNEW TABLE\n${END}\n\nafter\n`);
  assert.equal(replaceSection(next, "NEW TABLE"), next);
  assert.throws(() => replaceSection("# no markers\n", "x"), /bench:start/);
});

Deno.test("bench svg: ticks and a well-formed chart", () => {
  assert.deepEqual(niceTicks(9.3), [0, 2, 4, 6, 8, 10]);
  assert.ok(
    lineChart({ title: "", xLabel: "", yLabel: "", series: [{ name: "a", points: [[1024, 1]] }] })
      .includes(">1024</text>"),
    "context ticks print as integers",
  );
  const svg = lineChart({
    title: "t <&>",
    xLabel: "x",
    yLabel: "y",
    logX: true,
    series: [{ name: "a", points: [[1024, 1], [2048, 3]] }, { name: "b", points: [[1024, 2]] }],
  });
  assert.match(svg, /^<svg /);
  assert.ok(svg.includes("t &lt;&amp;&gt;"));
  assert.equal((svg.match(/<path /g) ?? []).length, 1);
  assert.equal((svg.match(/<circle /g) ?? []).length, 3);
});

Deno.test("multiKeyDocument (eval multikey, bench --serve prefix): questions share the document", async () => {
  const tok = await loadTokenizer(`${ROOT}../shared/models/passkey-llama`);
  const doc = multiKeyDocument(tok, { documentTokens: 600, keys: 4, seed: 3 });
  // The document is built from whole filler sentences, so it lands a little under the request.
  assert.ok(doc.tokens <= 600 && doc.tokens >= 500, `document of ${doc.tokens} tokens`);
  assert.equal(doc.asks.length, 4);
  assert.equal(new Set(doc.asks.map((a) => a.name)).size, 4, "four different names");
  const docIds = tok.encode(doc.document);
  for (const a of doc.asks) {
    assert.ok(doc.document.includes(a.value), `the code for ${a.name} is in the document`);
    // Every page but the one the question starts in is shared: the prompt begins with the
    // document's tokens (all but the last, which may merge with the question's first piece).
    assert.deepEqual(a.prompt.slice(0, docIds.length - 1), docIds.slice(0, -1), a.name);
    assert.ok(a.prompt.length > docIds.length, "the question adds tokens");
  }
  assert.deepEqual(multiKeyDocument(tok, { documentTokens: 600, keys: 4, seed: 3 }), doc);
});

Deno.test("bench: --full-depth and --layers together are a CLI error naming both", async () => {
  const res = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "bench/bench.ts", "--quick", "--full-depth", "--layers", "3"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(res.stderr);
  assert.equal(res.code, 2, stderr);
  assert.match(stderr, /--full-depth and --layers/);
});
