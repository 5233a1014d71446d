// deno task bench --scale [--scale-only context,load,logits,million] [--scale-dir DIR]
//   [--layers N] [--kv-cache-mb a,b] [--kv-dtype f16|f32] [--precision f16|f32]
//   [--load-kv-cache-mb N] [--load-max-model-len N] [--decode-tokens N] [--prompt-tokens N] [--no-warm-up]
//   [--logits-vocab N] [--logits-ffn N] [--million-tokens N] [--million-vocab N]
//   [--million-ffn N] [--million-reps N] [--seed N] [--out DIR]
//
// The scale bench (issue 11): what zigzag does with 8B layouts and million-token contexts. Four
// steps, each runnable alone (--scale-only) and each reported ok/failed with its error (a failing
// step never hides the others; the process exits 1 when any step that ran failed):
//
//  context  pure TypeScript: for each fake preset with shipped plans (model/fake_checkpoint.ts
//           PRESET_PLANS, plus Llama-3-8B with full attention), each plan and full attention, the
//           longest context one sequence gets for each --kv-cache-mb (default 16384,65536), from
//           CacheGeometry's byte formula (bench/kv.ts maxContextFit), cross-checked against the
//           pages a CacheLayout of that budget makes and against `bytes()` at that length.
//  load     writes (once: reused from --scale-dir when its config matches) a random-weight
//           `llama3-8b-1048k` bf16 sharded checkpoint of --layers layers (default 32, ~16 GB),
//           times `cat shards > /dev/null` twice, then in a child process loads it with the
//           engine (--precision, the shipped Gradient-1048k zigzag plan, its first --layers layers
//           when fewer) and reports load seconds, peak RSS (VmHWM), the GPU bytes of weights + KV,
//           and decode ms/token. Targets: peak RSS <= GPU bytes + 1.5 GiB; load <= 1.5 x cat.
//  logits   a 2-layer `llama3-8b` checkpoint (vocab 128256 x 4096: the embedding and LM head are
//           1 GB each in f16): GPU logits of every position of a short prompt (Engine.score) vs
//           the memory-light streaming CPU reference (bench/scale_reference.ts).
//  million  a 2-layer `llama3-8b-1048k` model whose layer 0 keeps the full (paged) cache and
//           layer 1 the sink + recent ring (kinds taken from the shipped Gradient-1048k plan), a
//           cache pool sized for --million-tokens (default 1,048,576) positions, one sequence
//           holding every page of them, keys planted at two far positions of the retrieval layer
//           (made to match the decode query strongly), and one decode step at the last position:
//           its logits vs the CPU reference over the same sparse cache (see millionChild). It
//           drives the runner (createRunner, runner.decode) of a real model rather than the
//           attention kernel, so how the kernels are dispatched over the pool's shards is not its
//           business; the one place it knows the pool's memory layout is plantKv.
//
// GPU steps run in child processes (`deno run -A bench/scale.ts --child STEP`): a clean peak RSS
// for the load, and a crash or an out-of-memory kill of one step is reported as that step's
// failure. Writes scale.json and scale.md to bench/results/ (or --out); steps not run this time
// keep their previous results there (each says when it ran).

import { CacheGeometry, CacheLayout, type KvDtype } from "../cache/layout.ts";
import { KvCacheManager, type SeqCache } from "../cache/manager.ts";
import { createRunner, Engine } from "../engine/engine.ts";
import { getGpu, type Precision, resolvePrecision } from "../gpu/device.ts";
import { GREEDY, type ModelRunner } from "../gpu/runner.ts";
import {
  FAKE_PRESETS,
  type FakeDtype,
  fakeHfConfig,
  PRESET_PLANS,
  writeFakeCheckpoint,
} from "../model/fake_checkpoint.ts";
import { openHfModel, parseHfConfig, readHfConfig } from "../model/hf.ts";
import { mulberry32 } from "../model/random.ts";
import type { AnyTensor, LoadedModel, ModelConfig } from "../model/types.ts";
import { builtinPlan, loadPlanArg, resolvePlan } from "../plans/resolve.ts";
import { loadPlanFile, parsePlan, type Plan } from "../plans/schema.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import { CliError, intList, parseArgs, runMain } from "../util/args.ts";
import { pathExists } from "../util/fs.ts";
import { progress } from "../util/progress.ts";
import { denoFmt } from "../util/fmt.ts";
import { maxContextFit } from "./kv.ts";
import {
  compareLogits,
  type LogitsComparison,
  type SparseCache,
  type StoredKey,
  StreamingReference,
} from "./scale_reference.ts";

export const SCALE_SCHEMA = "zigzag-scale/1";
export const SCALE_STEPS = ["context", "load", "logits", "million"] as const;
export type ScaleStep = typeof SCALE_STEPS[number];

const SCALE_TS = new URL("./scale.ts", import.meta.url).pathname;
const OUT = new URL("./results/", import.meta.url).pathname;
const SHIPPED = new URL("../plans/shipped/", import.meta.url).pathname;
const GRADIENT_PLAN = `${SHIPPED}llama-3-8b-instruct-gradient-1048k.zigzag50.json`;
const GIB = 2 ** 30;
const MIB = 2 ** 20;
/** Unit roundoff of f16. */
const U16 = 2 ** -11;
/**
 * Logits tolerance, relative to max |logit|: 8 f16 unit roundoffs (3.9e-3). The GPU stores the
 * weights in f16 (these bf16 values convert exactly, but for subnormals: <= 2^-25 absolute) and
 * the KV cache in f16, and computes in f32; the CPU reference computes in f64 from the same
 * weights. A path that rounded activations to f16 at each of a few stages would be off by a
 * few u16 of max |logit| (errors of a 4096-term dot product add up as a random walk, far below
 * the coherent max logit); a real fault (a wrong row, page, split, rotation or mask) is off by
 * O(1). The argmax must agree unless the reference's top two are closer than the tolerance.
 */
export const LOGITS_TOL = 8 * U16;

export const USAGE = `usage: deno task bench --scale [--scale-only ${SCALE_STEPS.join(",")}]
  [--scale-dir DIR] [--layers N] [--kv-cache-mb a,b] [--kv-dtype f16|f32] [--precision f16|f32]
  [--load-kv-cache-mb N] [--load-max-model-len N] [--decode-tokens N] [--prompt-tokens N] [--no-warm-up]
  [--logits-vocab N] [--logits-ffn N] [--million-tokens N] [--million-vocab N] [--million-ffn N]
  [--million-reps N] [--seed N] [--out DIR]`;

// ---- results ----------------------------------------------------------------------------------

export interface Target {
  name: string;
  value: number;
  limit: number;
  unit: string;
  pass: boolean;
}

export interface StepResult {
  status: "ok" | "failed";
  /** The command line of the run that measured it (steps of earlier runs are kept). */
  command?: string[];
  error?: string;
  ran_at: string;
  elapsed_s: number;
  figures: Record<string, unknown>;
  targets: Target[];
  notes: string[];
}

export interface ScaleResult {
  schema: typeof SCALE_SCHEMA;
  created: string;
  command: string[];
  versions: typeof Deno.version;
  adapter: string | null;
  host: { os: string; arch: string; cpus: number; mem_total_bytes: number | null };
  steps: Partial<Record<ScaleStep, StepResult>>;
}

function message(e: unknown): string {
  return e instanceof Error ? `${e.name !== "Error" ? e.name + ": " : ""}${e.message}` : String(e);
}

function round(x: number, digits = 3): number {
  return Number.isFinite(x) ? +x.toFixed(digits) : x;
}

// ---- host figures -----------------------------------------------------------------------------

/** A field of /proc/<pid>/status in bytes (VmHWM: peak RSS; VmRSS: now), null if unreadable. */
export function procStatusBytes(field: "VmHWM" | "VmRSS", pid: number | "self" = "self") {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/status`);
    const m = text.match(new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, "m"));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

function memTotal(): number | null {
  try {
    const m = Deno.readTextFileSync("/proc/meminfo").match(/^MemTotal:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

async function adapterName(): Promise<string | null> {
  try {
    const a = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
    return a ? a.info.description || a.info.device || "unknown adapter" : null;
  } catch {
    return null;
  }
}

// ---- checkpoints ------------------------------------------------------------------------------

export interface CheckpointSpec {
  preset: string;
  layers: number;
  dtype: FakeDtype;
  seed: number;
  /** config.json fields changed (a shrunk vocabulary or FFN). */
  overrides: Record<string, number>;
}

interface CheckpointInfo {
  dir: string;
  shards: string[];
  total_bytes: number;
  /** False when an earlier run's files were reused. */
  written: boolean;
  write_s: number | null;
}

const MARKER = "zigzag-scale.json";

/** The directory of a checkpoint spec under the scale dir (one per distinct config). */
export function checkpointDir(root: string, s: CheckpointSpec): string {
  const extra = Object.keys(s.overrides).sort().map((k) => `-${k}${s.overrides[k]}`).join("");
  return `${root.replace(/\/$/, "")}/${s.preset}-L${s.layers}-${s.dtype}-s${s.seed}${extra}`;
}

/** The checkpoint of `spec`: reused when its marker matches and every shard has its size, else
 * written (the marker last, so an interrupted write is never reused). */
export async function ensureCheckpoint(
  root: string,
  spec: CheckpointSpec,
): Promise<CheckpointInfo> {
  const dir = checkpointDir(root, spec);
  const want = JSON.stringify(spec);
  try {
    const m = JSON.parse(await Deno.readTextFile(`${dir}/${MARKER}`));
    if (JSON.stringify(m.spec) === want) {
      const shards = m.shards as { file: string; bytes: number }[];
      const ok = shards.every((s) => {
        try {
          return Deno.statSync(`${dir}/${s.file}`).size === s.bytes;
        } catch {
          return false;
        }
      });
      if (ok) {
        return {
          dir,
          shards: shards.map((s) => `${dir}/${s.file}`),
          total_bytes: m.total_bytes,
          written: false,
          write_s: null,
        };
      }
    }
  } catch { /* absent or unreadable: write it */ }
  await Deno.remove(`${dir}/${MARKER}`).catch(() => {});
  const bar = progress(`writing ${spec.preset} x${spec.layers} to ${dir}`);
  const t0 = performance.now();
  const ck = await writeFakeCheckpoint(dir, {
    preset: spec.preset,
    layers: spec.layers,
    dtype: spec.dtype,
    seed: spec.seed,
    overrides: spec.overrides,
    onProgress: (d, t) => bar.update(d, t, `${(d / 1e9).toFixed(2)} GB`),
  });
  const writeS = (performance.now() - t0) / 1000;
  bar.done();
  const shards = ck.shards.map((file) => ({ file, bytes: Deno.statSync(`${dir}/${file}`).size }));
  await Deno.writeTextFile(
    `${dir}/${MARKER}`,
    JSON.stringify({ spec, shards, total_bytes: ck.totalBytes, write_s: writeS }, null, 2) + "\n",
  );
  return {
    dir,
    shards: shards.map((s) => `${dir}/${s.file}`),
    total_bytes: ck.totalBytes,
    written: true,
    write_s: writeS,
  };
}

/** Seconds `cat files > /dev/null` takes. */
async function timeCat(files: string[]): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command("cat", { args: files, stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) throw new Error(`cat failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  return (performance.now() - t0) / 1000;
}

// ---- plans ------------------------------------------------------------------------------------

/** The zigzag plan `file` keeping only `kinds` as the layer list (a smaller model's plan). */
function planWithLayers(p: Plan, kinds: Plan["layers"] & object, file: string): Plan {
  return parsePlan({
    version: p.version,
    model: { ...p.model, num_layers: kinds.length },
    mode: "zigzag",
    layers: kinds,
    sink: p.sink,
    recent: p.recent,
    provenance: { ...p.provenance, source: `${p.provenance.source} (layers of ${file})` },
  }, file);
}

/** The shipped Gradient-1048k zigzag plan for a model of `config.nLayers` layers: itself at 32,
 * its first N layers below. */
async function loadStepPlan(config: ModelConfig): Promise<{ plan: ResolvedPlan; note: string }> {
  const p = await loadPlanFile(GRADIENT_PLAN);
  const n = config.nLayers;
  if (n === p.model.num_layers) {
    return { plan: resolvePlan(p, config, GRADIENT_PLAN), note: "the shipped plan as it is" };
  }
  if (n > p.model.num_layers) throw new Error(`the shipped plan has only ${p.model.num_layers}`);
  const kinds = p.layers!.slice(0, n);
  return {
    plan: resolvePlan(planWithLayers(p, kinds, GRADIENT_PLAN), config, GRADIENT_PLAN),
    note: `the shipped plan's first ${n} layers (${kinds.join(", ")})`,
  };
}

/** The million step's plan: layer 0 the shipped plan's first retrieval layer, the others its
 * first layers (for 2 layers: retrieval, streaming). */
async function millionPlan(config: ModelConfig): Promise<{ plan: ResolvedPlan; note: string }> {
  const p = await loadPlanFile(GRADIENT_PLAN);
  const first = p.layers!.indexOf("retrieval");
  const kinds = [p.layers![first], ...p.layers!.slice(0, config.nLayers - 1)];
  const src = [first, ...kinds.slice(1).map((_, i) => i)];
  return {
    plan: resolvePlan(planWithLayers(p, kinds, GRADIENT_PLAN), config, GRADIENT_PLAN),
    note: `kinds of the shipped Gradient-1048k plan's layers ${src.join(", ")}: ${
      kinds.join(", ")
    } (sink ${p.sink}, recent ${p.recent})`,
  };
}

// ---- step 1: context (no GPU) -----------------------------------------------------------------

interface ContextRow {
  preset: string;
  plan: string;
  retrieval_layers: number;
  retrieval_kv_heads: number;
  streaming_kv_heads: number;
  page_bytes: number;
  ring_bytes: number;
  model_context: number;
  /** Bytes one sequence of the model's whole context holds (the byte formula). */
  model_context_bytes: number;
  fits: {
    budget_mb: number;
    max_context: number | null;
    unbounded: boolean;
    /** numPages * pageSize of the CacheLayout the engine would build at this budget. */
    layout_context: number | null;
    bytes_at_max: number | null;
    covers_model_context: boolean;
  }[];
}

/** Every (preset, plan) the context table lists: presets with shipped plans, and Llama-3-8B. */
async function contextPlans() {
  const out: { preset: string; config: ModelConfig; name: string; plan: ResolvedPlan }[] = [];
  for (const preset of Object.keys(FAKE_PRESETS)) {
    const shipped = PRESET_PLANS[preset] ?? [];
    if (shipped.length === 0 && preset !== "llama3-8b") continue;
    const config = parseHfConfig(fakeHfConfig({ preset }), `${preset}/config.json`);
    out.push({
      preset,
      config,
      name: "full",
      plan: resolvePlan(builtinPlan("full", config), config),
    });
    for (const base of shipped) {
      for (const kind of ["zigzag50", "duo50"]) {
        const file = `${SHIPPED}${base}.${kind}.json`;
        if (!pathExists(file)) continue;
        out.push({
          preset,
          config,
          name: `${base}.${kind}`,
          plan: await loadPlanArg(file, config),
        });
      }
    }
  }
  return out;
}

export async function contextStep(budgetsMb: number[], kvDtype: KvDtype) {
  const plans = await contextPlans();
  const bar = progress("scale: context");
  const rows: ContextRow[] = [];
  const mismatches: string[] = [];
  for (const [i, p] of plans.entries()) {
    bar.update(i, plans.length, `${p.preset} ${p.name}`);
    const g = new CacheGeometry(p.config, p.plan, kvDtype);
    const row: ContextRow = {
      preset: p.preset,
      plan: p.name,
      retrieval_layers: p.plan.layers.filter((l) => l.kind === "retrieval").length,
      retrieval_kv_heads: g.retrievalHeads,
      streaming_kv_heads: g.streamingHeads,
      page_bytes: g.pageBytes,
      ring_bytes: g.ringBytes,
      model_context: p.config.maxSeqLen,
      model_context_bytes: g.usedBytes([p.config.maxSeqLen]).total,
      fits: [],
    };
    for (const mbs of budgetsMb) {
      const budget = mbs * MIB;
      const fit = maxContextFit(g, budget, 1);
      let layoutContext: number | null = null;
      try {
        const layout = new CacheLayout(p.config, p.plan, {
          budgetBytes: budget,
          maxSeqs: 1,
          maxSeqLen: 2 ** 30,
          kvDtype,
        });
        layoutContext = layout.paged ? layout.numPages * layout.pageSize : null;
      } catch {
        layoutContext = 0;
      }
      let bytesAtMax: number | null = null;
      if (fit.max_context !== null) {
        bytesAtMax = g.usedBytes([fit.max_context]).total;
        const over = g.usedBytes([fit.max_context + g.pageSize]).total;
        if (bytesAtMax > budget || (fit.max_context > 0 && over <= budget)) {
          mismatches.push(
            `${p.preset} ${p.name} @ ${mbs} MiB: bytes(${fit.max_context}) = ${bytesAtMax}, ` +
              `bytes(+1 page) = ${over}, budget ${budget}`,
          );
        }
      }
      if (layoutContext !== fit.max_context) {
        mismatches.push(
          `${p.preset} ${p.name} @ ${mbs} MiB: closed form ${fit.max_context}, ` +
            `CacheLayout ${layoutContext}`,
        );
      }
      row.fits.push({
        budget_mb: mbs,
        max_context: fit.max_context,
        unbounded: fit.unbounded,
        layout_context: layoutContext,
        bytes_at_max: bytesAtMax,
        covers_model_context: fit.unbounded || (fit.max_context ?? 0) >= p.config.maxSeqLen,
      });
    }
    rows.push(row);
  }
  bar.done();
  if (mismatches.length) {
    throw Object.assign(
      new Error(`the closed form disagrees with the cache: ${mismatches.slice(0, 3).join("; ")}`),
      { figures: { kv_dtype: kvDtype, budgets_mb: budgetsMb, rows } },
    );
  }
  return { kv_dtype: kvDtype, budgets_mb: budgetsMb, page_size: 16, rows };
}

// ---- child processes --------------------------------------------------------------------------

interface ChildOutcome {
  ok: boolean;
  error?: string;
  figures: Record<string, unknown>;
}

/** Runs `--child step` with `spec`; its result, or its exit status and the peak RSS seen. */
async function runChild(step: string, spec: Record<string, unknown>): Promise<ChildOutcome> {
  const tmp = await Deno.makeTempDir({ prefix: "zigzag-scale-child-" });
  const specFile = `${tmp}/spec.json`;
  const resultFile = `${tmp}/result.json`;
  await Deno.writeTextFile(specFile, JSON.stringify(spec));
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCALE_TS, "--child", step, "--spec", specFile, "--result", resultFile],
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  // Peak RSS seen from outside, in case the child dies before it can report its own.
  let polledPeak = 0;
  const poll = setInterval(() => {
    polledPeak = Math.max(polledPeak, procStatusBytes("VmHWM", child.pid) ?? 0);
  }, 250);
  const status = await child.status;
  clearInterval(poll);
  try {
    const r = JSON.parse(await Deno.readTextFile(resultFile)) as ChildOutcome;
    r.figures = { ...r.figures, child_peak_rss_polled_bytes: polledPeak || null };
    if (!status.success && r.ok) {
      return { ok: false, error: `child exited with code ${status.code}`, figures: r.figures };
    }
    return r;
  } catch {
    const how = status.signal ? `was killed by ${status.signal}` : `exited with ${status.code}`;
    return {
      ok: false,
      error: `the child process ${how} before reporting${
        status.signal === "SIGKILL" ? " (out of memory?)" : ""
      }; peak RSS seen ${(polledPeak / GIB).toFixed(2)} GiB`,
      figures: { child_peak_rss_polled_bytes: polledPeak || null },
    };
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

/** Bytes the GPU holds for the weights: every matrix in the storage precision with rows padded
 * to 4 columns (gpu/weights.ts), the embedding and the LM head (counted twice when tied: an
 * upper bound), and the norms. */
export function gpuWeightBytes(c: ModelConfig, precision: Precision): number {
  const bpe = precision === "f16" ? 2 : 4;
  const pad = (k: number) => Math.ceil(k / 4) * 4;
  const q = c.nHeads * c.headDim;
  const kv = c.nKvHeads * c.headDim;
  const layer = (q + 2 * kv) * pad(c.dim) + c.dim * pad(q) + 2 * c.hiddenDim * pad(c.dim) +
    c.dim * pad(c.hiddenDim) + 2 * c.dim + (c.qkvBias ? q + 2 * kv : 0);
  return bpe * (c.nLayers * layer + c.vocabSize * c.dim + c.vocabSize * pad(c.dim) + c.dim);
}

/** KV bytes a layout allocates: every part's K and V, and the page table. */
function kvGpuBytes(layout: CacheLayout): number {
  return layout.reservedBytes().total + layout.maxSeqs * layout.maxPagesPerSeq * 4;
}

function promptIds(config: ModelConfig, n: number, seed: number): number[] {
  const rng = mulberry32(seed * 7919 + 17);
  const ids = Array.from({ length: n }, () => Math.floor(rng() * config.vocabSize));
  if (config.bosId >= 0 && config.bosId < config.vocabSize) ids[0] = config.bosId;
  return ids;
}

// ---- step 2: load (child) ---------------------------------------------------------------------

interface LoadSpec {
  dir: string;
  precision: Precision;
  kv_cache_mb: number;
  max_model_len: number;
  decode_tokens: number;
  prompt_tokens: number;
  /** Run Engine.warmUp before the timed request (false: llvmpipe at 32 layers, where one
   * forward takes minutes; the decode figure then includes no compilation, which the runner
   * does at build time, but the first forward's page faults). */
  warm_up: boolean;
  seed: number;
}

async function loadChild(s: LoadSpec, f: Record<string, unknown>): Promise<void> {
  const config = await readHfConfig(s.dir);
  const { plan, note } = await loadStepPlan(config);
  f.plan = note;
  f.rss_before_load_bytes = procStatusBytes("VmHWM");
  const gpu = await getGpu();
  f.adapter = gpu.adapterName;
  const precision = resolvePrecision(gpu, s.precision);
  f.precision = precision;
  const t0 = performance.now();
  const engine = await Engine.create({
    model: s.dir,
    gpu,
    precision,
    plan,
    kvCacheBytes: s.kv_cache_mb * MIB,
    maxModelLen: s.max_model_len,
  });
  try {
    f.load_s = (performance.now() - t0) / 1000;
    f.peak_rss_after_load_bytes = procStatusBytes("VmHWM");
    f.rss_after_load_bytes = procStatusBytes("VmRSS");
    f.gpu_weight_bytes = gpuWeightBytes(config, precision);
    f.gpu_kv_bytes = kvGpuBytes(engine.layout);
    f.gpu_bytes = (f.gpu_weight_bytes as number) + (f.gpu_kv_bytes as number);
    if (s.warm_up) {
      const t1 = performance.now();
      await engine.warmUp();
      f.warm_up_s = (performance.now() - t1) / 1000;
    }
    const res = await engine.generate({
      promptIds: promptIds(config, s.prompt_tokens, s.seed),
      maxTokens: s.decode_tokens + 1,
      sampling: GREEDY,
      ignoreEos: true,
    });
    const n = res.ids.length - 1;
    f.prompt_tokens = s.prompt_tokens;
    f.decode_tokens = n;
    f.time_to_first_token_ms = res.timeToFirstTokenMs;
    f.decode_ms_per_token = n > 0 ? res.decodeMs / n : null;
  } finally {
    await engine.close();
  }
  f.peak_rss_bytes = procStatusBytes("VmHWM");
}

// ---- step 3: logits (child) -------------------------------------------------------------------

interface LogitsSpec {
  dir: string;
  precision: Precision;
  prompt_tokens: number;
  seed: number;
}

async function logitsChild(s: LogitsSpec, f: Record<string, unknown>): Promise<void> {
  const config = await readHfConfig(s.dir);
  const prompt = promptIds(config, s.prompt_tokens, s.seed);
  f.prompt = prompt;
  const gpu = await getGpu();
  f.adapter = gpu.adapterName;
  const precision = resolvePrecision(gpu, s.precision);
  f.precision = precision;
  let t0 = performance.now();
  const engine = await Engine.create({
    model: s.dir,
    gpu,
    precision,
    plan: "full",
    kvCacheBytes: 64 * MIB,
    maxModelLen: 256,
    maxBatch: 8,
    prefillChunk: 64,
  });
  let gpuLogits: Float32Array[];
  try {
    f.load_s = (performance.now() - t0) / 1000;
    t0 = performance.now();
    gpuLogits = (await engine.score(prompt, prompt.map((_, i) => i))).logits;
    f.gpu_score_s = (performance.now() - t0) / 1000;
  } finally {
    await engine.close();
  }
  const m = await openHfModel(s.dir, { noTokenizer: true });
  try {
    const bar = progress("scale: CPU reference (streaming)");
    const ref = new StreamingReference(m.config, m.weights, {
      onProgress: (d, t, note) => bar.update(d, t, note),
    });
    t0 = performance.now();
    const cpu = await ref.prefill(prompt);
    bar.done();
    f.cpu_reference_s = (performance.now() - t0) / 1000;
    f.cpu_reference_peak_rss_bytes = procStatusBytes("VmHWM");
    checkLogits(f, gpuLogits, cpu, prompt.map((_, i) => `position ${i}`));
  } finally {
    m.close();
  }
}

/** Compares rows of logits; records the figures and throws when out of tolerance. */
function checkLogits(
  f: Record<string, unknown>,
  gpu: Float32Array[],
  cpu: Float32Array[],
  labels: string[],
): void {
  const rows = gpu.map((g, i) => ({ row: labels[i], ...compareLogits(g, cpu[i]) }));
  const worst = Math.max(...rows.map((r) => Number.isNaN(r.rel_diff) ? Infinity : r.rel_diff));
  const badArgmax = rows.filter((r) => !r.argmax_agree && r.top2_gap_rel > LOGITS_TOL);
  f.rows = rows.map((r) => roundComparison(r));
  f.max_rel_diff = worst;
  f.tolerance_rel = LOGITS_TOL;
  f.argmax_agree = `${rows.filter((r) => r.argmax_agree).length}/${rows.length}`;
  if (!(worst <= LOGITS_TOL) || badArgmax.length > 0) {
    throw new Error(
      `GPU logits differ from the CPU reference: max |diff| / max |logit| = ${
        worst.toExponential(2)
      } (tolerance ${LOGITS_TOL.toExponential(2)}), argmax agrees on ${f.argmax_agree} rows`,
    );
  }
}

function roundComparison(r: LogitsComparison & { row: string }) {
  return {
    ...r,
    max_abs_diff: +r.max_abs_diff.toPrecision(4),
    max_abs_logit: +r.max_abs_logit.toPrecision(6),
    rel_diff: +r.rel_diff.toPrecision(4),
    top2_gap_rel: +r.top2_gap_rel.toPrecision(4),
  };
}

// ---- step 4: million (child) ------------------------------------------------------------------

interface MillionSpec {
  dir: string;
  precision: Precision;
  tokens: number;
  reps: number;
  seed: number;
}

/** A key planted in the cache: made to score `score` against the decode query of one head. */
interface Plant extends StoredKey {
  layer: number;
  kvHead: number;
  queryHead: number;
  score: number;
}

/** The positions and scores keys are planted at, for a decode at position `p`. */
export function plantPositions(p: number): { pos: number; score: number }[] {
  const a = Math.min(1000, Math.floor(p / 8));
  const b = Math.min(p - 1, Math.floor((p * 3) / 4) + 7);
  return [{ pos: a, score: 24 }, { pos: b, score: 23 }];
}

/** Positions a query at `i` sees in a layer's KV head of this kind (the current one included). */
function visibleCount(plan: ResolvedPlan, layer: number, kvHead: number, i: number): number {
  if (plan.layers[layer].kvHeadKinds[kvHead] === "retrieval") return i + 1;
  const sinkEnd = Math.min(plan.sink, i + 1);
  const windowStart = Math.max(sinkEnd, i + 1 - plan.recent);
  return sinkEnd + (i + 1 - windowStart);
}

/**
 * The cache a decode at `pos` sees: zero K and V everywhere (nothing was ever computed; WebGPU
 * zero-fills buffers) but for keys planted in every retrieval KV head: each is the query of one
 * of the head's query heads scaled to score `score` (24 and 23: against ~1M zero keys of score 0
 * they carry the softmax, in a ratio e:1), with random values in [-1, 1); all rounded to the KV
 * precision. With `plant` false the same cache without them (what a kernel that missed the far
 * pages would see).
 */
class PlantedCache implements SparseCache {
  readonly plants: Plant[] = [];
  #made = new Map<string, Plant[]>();

  constructor(
    readonly config: ModelConfig,
    readonly plan: ResolvedPlan,
    readonly pos: number,
    readonly kvDtype: Precision,
    readonly seed: number,
    readonly plant: boolean,
  ) {}

  #round(x: ArrayLike<number>): Float32Array {
    return this.kvDtype === "f16"
      ? Float32Array.from(Float16Array.from(x as ArrayLike<number>))
      : Float32Array.from(x);
  }

  #planted(layer: number, kvHead: number): boolean {
    return this.plant && this.plan.layers[layer].kvHeadKinds[kvHead] === "retrieval";
  }

  keys(layer: number, kvHead: number, q: Float64Array): StoredKey[] {
    if (!this.#planted(layer, kvHead)) return [];
    const key = `${layer}/${kvHead}`;
    let made = this.#made.get(key);
    if (!made) {
      const c = this.config;
      const hd = c.headDim;
      const group = c.nHeads / c.nKvHeads;
      const h = kvHead * group + (kvHead % group);
      const qh = q.subarray(h * hd, (h + 1) * hd);
      let qq = 0;
      for (let d = 0; d < hd; d++) qq += qh[d] * qh[d];
      const rng = mulberry32(this.seed * 1000003 + layer * 101 + kvHead);
      made = plantPositions(this.pos).map(({ pos, score }) => {
        const k = this.#round(Array.from(qh, (x) => x * score * Math.sqrt(hd) / qq));
        const v = this.#round(Array.from({ length: hd }, () => rng() * 2 - 1));
        return { layer, kvHead, queryHead: h, score, pos, k, v };
      });
      this.#made.set(key, made);
      this.plants.push(...made);
    }
    return made;
  }

  zeros(layer: number, kvHead: number): number {
    const planted = this.#planted(layer, kvHead) ? plantPositions(this.pos).length : 0;
    return visibleCount(this.plan, layer, kvHead, this.pos) - 1 - planted;
  }
}

/**
 * Writes planted keys and values into the runner's KV buffers where the cache kernels read
 * position `pos` of the sequence: page seq.pages[pos / pageSize], in shard page / pagesPerShard
 * at local page page % pagesPerShard (cache_paged.wgsl `cache_entry`), cache head = the KV
 * head's index in its part. The one place the bench knows the pool's memory layout.
 */
function plantKv(runner: ModelRunner, seq: SeqCache, plants: Plant[]): void {
  const g = runner.layout;
  const hd = g.config.headDim;
  for (const p of plants) {
    const part = runner.kv.layers[p.layer].find((x) =>
      x.kind.paged && x.kvHeads.includes(p.kvHead)
    );
    if (!part) throw new Error(`layer ${p.layer} KV head ${p.kvHead} has no paged part`);
    const ch = part.kvHeads.indexOf(p.kvHead);
    const page = seq.pages[Math.floor(p.pos / g.pageSize)];
    const { unitsPerShard } = g.shards(part.kind);
    const shard = part.shards[Math.floor(page / unitsPerShard)];
    const local = page % unitsPerShard;
    const elem = ((local * g.pageSize + (p.pos % g.pageSize)) * part.heads + ch) * hd;
    const bytes = (x: ArrayLike<number>) =>
      g.bytesPerElement === 2
        ? new Uint8Array(Float16Array.from(x as ArrayLike<number>).buffer)
        : new Uint8Array(Float32Array.from(x).buffer);
    runner.device.queue.writeBuffer(shard.k, elem * g.bytesPerElement, bytes(p.k));
    runner.device.queue.writeBuffer(shard.v, elem * g.bytesPerElement, bytes(p.v));
  }
}

async function millionChild(s: MillionSpec, f: Record<string, unknown>): Promise<void> {
  const config = await readHfConfig(s.dir);
  const { plan, note } = await millionPlan(config);
  f.plan = note;
  const T = s.tokens;
  const P = T - 1;
  f.sequence_tokens = T;
  f.decode_position = P;
  const gpu = await getGpu();
  f.adapter = gpu.adapterName;
  const precision = resolvePrecision(gpu, s.precision);
  f.precision = precision;
  // A budget of exactly one ring and the pages of T positions.
  const g = new CacheGeometry(config, plan, precision);
  const budget = g.ringBytes + g.pagesFor(T) * g.pageBytes;
  f.kv_budget_bytes = budget;
  const m = await openHfModel(s.dir, { noTokenizer: true });
  try {
    const model: LoadedModel<AnyTensor> = {
      source: s.dir,
      config: m.config,
      weights: m.weights,
      tokenizer: null,
    };
    let t0 = performance.now();
    const runner = await createRunner(gpu, model, plan, {
      precision,
      kvCacheBytes: budget,
      maxBatch: 1,
      maxSeqs: 1,
      maxModelLen: T,
      prefillChunk: 16,
      decodeSteps: 1,
      // Exactly one ring: no prefix-cache snapshots.
      prefixCache: false,
    });
    try {
      f.load_s = (performance.now() - t0) / 1000;
      const layout = runner.layout;
      const retrieval = layout.kind("retrieval");
      f.pool_pages = layout.numPages;
      f.pool_tokens = layout.numPages * layout.pageSize;
      f.retrieval_shards = layout.shards(retrieval).count;
      f.gpu_kv_bytes = kvGpuBytes(layout);
      const cache = new KvCacheManager(layout);
      const seq = cache.open()!;
      cache.reserve(seq, T);
      cache.commit(seq, P);
      f.pages_assigned = seq.pages.length;
      const token = 12345 % config.vocabSize;
      f.token = token;

      const bar = progress("scale: CPU reference at the far position");
      const refOpts = { onProgress: (d: number, t: number, n: string) => bar.update(d, t, n) };
      const planted = new PlantedCache(config, plan, P, precision, s.seed, true);
      t0 = performance.now();
      const ref = new StreamingReference(config, m.weights, refOpts);
      const cpu = await ref.decode(token, P, planted);
      const cpuBare = await ref.decode(
        token,
        P,
        new PlantedCache(config, plan, P, precision, s.seed, false),
      );
      bar.done();
      f.cpu_reference_s = (performance.now() - t0) / 1000;
      f.plants = planted.plants.map((p) => ({
        layer: p.layer,
        kv_head: p.kvHead,
        query_head: p.queryHead,
        pos: p.pos,
        page: seq.pages[Math.floor(p.pos / layout.pageSize)],
        score: p.score,
      }));
      plantKv(runner, seq, planted.plants);

      const at: SeqCache = { id: seq.id, slot: seq.slot, pages: seq.pages, tokens: P };
      const ms: number[] = [];
      let logits: Float32Array | null = null;
      for (let r = 0; r < s.reps; r++) {
        t0 = performance.now();
        const out = await runner.decode([{ seq: at, token, sampling: GREEDY }], 1, {
          readLogits: true,
        });
        ms.push(performance.now() - t0);
        logits ??= out.logits![0];
      }
      f.decode_ms = ms.map((x) => round(x, 1));
      f.peak_rss_bytes = procStatusBytes("VmHWM");
      // The planted keys must matter far more than the tolerance, or the check proves nothing.
      const sens = compareLogits(cpuBare, cpu);
      f.planted_effect_rel = +sens.rel_diff.toPrecision(4);
      f.gpu_vs_unplanted_rel = +compareLogits(logits!, cpuBare).rel_diff.toPrecision(4);
      checkLogits(f, [logits!], [cpu], [`position ${P}`]);
      if (!(sens.rel_diff > 10 * LOGITS_TOL)) {
        throw new Error(
          `the planted keys move the reference logits by only ${
            sens.rel_diff.toExponential(2)
          } of max |logit|: the check cannot tell whether the far pages were read`,
        );
      }
    } finally {
      runner.destroy();
    }
  } finally {
    m.close();
  }
}

/** `--child STEP --spec FILE --result FILE`: runs one GPU step, writes its outcome. */
async function childMain(step: string, specFile: string, resultFile: string): Promise<number> {
  const spec = JSON.parse(await Deno.readTextFile(specFile));
  const figures: Record<string, unknown> = {};
  let outcome: ChildOutcome;
  try {
    if (step === "load") await loadChild(spec, figures);
    else if (step === "logits") await logitsChild(spec, figures);
    else if (step === "million") await millionChild(spec, figures);
    else throw new CliError(`--child: unknown step ${step}`);
    outcome = { ok: true, figures };
  } catch (e) {
    outcome = { ok: false, error: message(e), figures };
  }
  figures.peak_rss_bytes ??= procStatusBytes("VmHWM");
  await Deno.writeTextFile(resultFile, JSON.stringify(outcome));
  return outcome.ok ? 0 : 1;
}

// ---- the parent: steps, report ----------------------------------------------------------------

interface ScaleOptions {
  steps: ScaleStep[];
  scaleDir: string;
  layers: number;
  budgetsMb: number[];
  kvDtype: KvDtype;
  precision: Precision;
  loadKvMb: number;
  loadMaxModelLen: number;
  decodeTokens: number;
  promptTokens: number;
  warmUp: boolean;
  logitsOverrides: Record<string, number>;
  millionTokens: number;
  millionOverrides: Record<string, number>;
  millionReps: number;
  seed: number;
  out: string;
}

/** The figures of a step; `figures` on a thrown error are kept (what it had measured). */
async function runStep(
  fn: () => Promise<{ figures: Record<string, unknown>; targets?: Target[]; notes?: string[] }>,
): Promise<StepResult> {
  const t0 = performance.now();
  const ranAt = new Date().toISOString();
  try {
    const r = await fn();
    return {
      status: "ok",
      ran_at: ranAt,
      elapsed_s: round((performance.now() - t0) / 1000, 1),
      figures: r.figures,
      targets: r.targets ?? [],
      notes: r.notes ?? [],
    };
  } catch (e) {
    const extra = e as { figures?: Record<string, unknown>; notes?: string[] };
    return {
      status: "failed",
      error: message(e),
      ran_at: ranAt,
      elapsed_s: round((performance.now() - t0) / 1000, 1),
      figures: extra.figures ?? {},
      targets: [],
      notes: extra.notes ?? [],
    };
  }
}

/** A child's outcome as a step: figures kept either way, its error thrown on failure. */
function childFigures(o: ChildOutcome, notes: string[], base: Record<string, unknown> = {}) {
  const figures = { ...base, ...o.figures };
  if (!o.ok) throw Object.assign(new Error(o.error), { figures, notes });
  return figures;
}

async function loadStep(o: ScaleOptions): Promise<StepResult> {
  return await runStep(async () => {
    const notes: string[] = [];
    const spec: CheckpointSpec = {
      preset: "llama3-8b-1048k",
      layers: o.layers,
      dtype: "bf16",
      seed: o.seed,
      overrides: {},
    };
    const ck = await ensureCheckpoint(o.scaleDir, spec);
    const base: Record<string, unknown> = {
      checkpoint: ck.dir,
      layers: o.layers,
      shards: ck.shards.length,
      checkpoint_bytes: ck.total_bytes,
      checkpoint_written: ck.written,
      checkpoint_write_s: ck.write_s === null ? null : round(ck.write_s, 1),
    };
    if (o.layers !== 32) notes.push(`--layers ${o.layers}: the full model has 32 layers.`);
    const bar = progress("scale: cat shards > /dev/null");
    bar.update(0, 2, "first");
    const first = await timeCat(ck.shards);
    bar.update(1, 2, "second");
    const second = await timeCat(ck.shards);
    bar.done();
    base.cat_first_s = round(first);
    base.cat_warm_s = round(second);
    base.cat_warm_gbps = round(ck.total_bytes / second / 1e9, 2);
    if (ck.written) {
      notes.push(
        "The checkpoint was written in this run: the first cat read it from the page cache.",
      );
    }
    const out = await runChild(
      "load",
      {
        dir: ck.dir,
        precision: o.precision,
        kv_cache_mb: o.loadKvMb,
        max_model_len: o.loadMaxModelLen,
        decode_tokens: o.decodeTokens,
        prompt_tokens: o.promptTokens,
        warm_up: o.warmUp,
        seed: o.seed,
      } satisfies LoadSpec,
    );
    const figures = childFigures(out, notes, base);
    // The target is the load's (the issue's "loads with peak RSS <= ..."); the peak after the
    // first forwards, which adds the adapter's own working memory, is reported beside it.
    const peak = (figures.peak_rss_after_load_bytes ?? figures.peak_rss_bytes) as number;
    const peakEnd = figures.peak_rss_bytes as number;
    const gpuBytes = figures.gpu_bytes as number;
    const loadS = figures.load_s as number;
    const targets: Target[] = [
      {
        name: "peak RSS while loading <= GPU bytes (weights + KV) + 1.5 GiB",
        value: peak / GIB,
        limit: (gpuBytes + 1.5 * GIB) / GIB,
        unit: "GiB",
        pass: peak <= gpuBytes + 1.5 * GIB,
      },
      {
        name: "peak RSS at the end (after decoding) <= GPU bytes + 1.5 GiB",
        value: peakEnd / GIB,
        limit: (gpuBytes + 1.5 * GIB) / GIB,
        unit: "GiB",
        pass: peakEnd <= gpuBytes + 1.5 * GIB,
      },
      {
        name: "load s <= 1.5 x cat s (warm)",
        value: loadS,
        limit: 1.5 * second,
        unit: "s",
        pass: loadS <= 1.5 * second,
      },
    ];
    return { figures, targets, notes };
  });
}

/**
 * A step that runs `child` on a 2-layer bf16 checkpoint of `preset` (written once, then reused):
 * `childSpec` gets the checkpoint's directory; `flags` name the options that shrank it.
 */
async function checkpointChildStep(
  o: ScaleOptions,
  preset: string,
  overrides: Record<string, number>,
  flags: string,
  child: string,
  childSpec: (dir: string) => Record<string, unknown>,
  notes: string[] = [],
): Promise<StepResult> {
  return await runStep(async () => {
    const spec: CheckpointSpec = { preset, layers: 2, dtype: "bf16", seed: o.seed, overrides };
    if (Object.keys(overrides).length) {
      notes.unshift(`Shrunk: ${JSON.stringify(overrides)} (${flags}).`);
    }
    const ck = await ensureCheckpoint(o.scaleDir, spec);
    const out = await runChild(child, childSpec(ck.dir));
    const figures = childFigures(out, notes, { checkpoint: ck.dir, overrides });
    return { figures, notes };
  });
}

function logitsStep(o: ScaleOptions): Promise<StepResult> {
  return checkpointChildStep(
    o,
    "llama3-8b",
    o.logitsOverrides,
    "--logits-vocab / --logits-ffn",
    "logits",
    (dir) => ({
      dir,
      precision: o.precision,
      prompt_tokens: o.promptTokens,
      seed: o.seed,
    } satisfies LogitsSpec),
  );
}

function millionStep(o: ScaleOptions): Promise<StepResult> {
  return checkpointChildStep(
    o,
    "llama3-8b-1048k",
    o.millionOverrides,
    "--million-vocab / --million-ffn",
    "million",
    (dir) => ({
      dir,
      precision: o.precision,
      tokens: o.millionTokens,
      reps: o.millionReps,
      seed: o.seed,
    } satisfies MillionSpec),
    o.millionTokens !== 1 << 20 ? [`--million-tokens ${o.millionTokens}.`] : [],
  );
}

// ---- Markdown ---------------------------------------------------------------------------------

function gib(b: unknown): string {
  return typeof b === "number" ? `${(b / GIB).toFixed(2)} GiB` : "-";
}

function num(x: unknown, digits = 2): string {
  return typeof x === "number"
    ? x.toFixed(digits)
    : x === null || x === undefined
    ? "-"
    : String(x);
}

function tokens(n: number | null): string {
  if (n === null) return "unbounded";
  return n >= 1 << 20
    ? `${(n / (1 << 20)).toFixed(2)}M`
    : n >= 1024
    ? `${(n / 1024).toFixed(1)}K`
    : `${n}`;
}

function table(head: string[], rows: string[][]): string {
  return [
    `| ${head.join(" | ")} |`,
    `| ${head.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ].join("\n");
}

function stepHeader(name: string, s: StepResult, now: string): string[] {
  const when = s.ran_at < now ? ` (from an earlier run, ${s.ran_at})` : "";
  const out = [`## ${name}: ${s.status}${when}`, ""];
  if (s.command) out.push(`Measured by \`${s.command.join(" ")}\`.`, "");
  if (s.error) out.push(`Error: ${s.error.replaceAll("|", "\\|")}`, "");
  for (const n of s.notes) out.push(`- ${n}`);
  if (s.notes.length) out.push("");
  return out;
}

export function renderScaleMarkdown(r: ScaleResult, now: string): string {
  const out: string[] = [
    "# zigzag scale bench",
    "",
    `Adapter: ${
      r.adapter ?? "none"
    }; Deno ${r.versions.deno} (V8 ${r.versions.v8}); ${r.host.os} ` +
    `${r.host.arch}, ${r.host.cpus} CPUs, ${gib(r.host.mem_total_bytes)} RAM; ${r.created}.`,
    "",
    `Command: \`${r.command.join(" ")}\``,
    "",
  ];
  const targets = SCALE_STEPS.flatMap((k) => (r.steps[k]?.targets ?? []).map((t) => ({ k, t })));
  const statusRows = SCALE_STEPS.map((k) => {
    const s = r.steps[k];
    return [k, s ? s.status : "not run", s ? `${s.elapsed_s}` : "-", s?.error ? "see below" : ""];
  });
  out.push(table(["step", "status", "s", ""], statusRows), "");
  if (targets.length) {
    out.push(
      table(
        ["step", "target", "value", "limit", "pass"],
        targets.map(({ k, t }) => [
          k,
          t.name,
          `${t.value.toFixed(2)} ${t.unit}`,
          `${t.limit.toFixed(2)} ${t.unit}`,
          t.pass ? "yes" : "**no**",
        ]),
      ),
      "",
    );
  }

  const c = r.steps.context;
  if (c) {
    out.push(...stepHeader("context", c, now));
    const f = c.figures as { kv_dtype?: string; budgets_mb?: number[]; rows?: ContextRow[] };
    if (f.rows) {
      out.push(
        `Longest context one sequence holds for a KV budget (${f.kv_dtype} KV, pages of 16; ` +
          "CacheGeometry's byte formula, checked against the CacheLayout of that budget).",
        "",
        table(
          [
            "preset",
            "plan",
            "retrieval KV heads",
            "KB/token",
            "model context",
            "KV for it",
            ...f.budgets_mb!.map((b) => `${b} MiB`),
          ],
          f.rows.map((row) => [
            row.preset,
            row.plan,
            `${row.retrieval_kv_heads} / ${row.retrieval_kv_heads + row.streaming_kv_heads}`,
            (row.page_bytes / 16 / 1024).toFixed(0),
            tokens(row.model_context),
            gib(row.model_context_bytes),
            ...row.fits.map((x) =>
              `${tokens(x.unbounded ? null : x.max_context)}${
                x.covers_model_context ? " (all)" : ""
              }`
            ),
          ]),
        ),
        "",
        '"(all)": the model\'s whole context fits.',
        "",
      );
    }
  }

  const l = r.steps.load;
  if (l) {
    out.push(...stepHeader("load", l, now));
    const f = l.figures;
    out.push(
      table(["figure", "value"], [
        [
          "checkpoint",
          `${f.checkpoint ?? "-"} (${f.layers ?? "-"} layers, ${f.shards ?? "-"} shards, ${
            gib(f.checkpoint_bytes)
          })`,
        ],
        [
          "checkpoint written now",
          `${f.checkpoint_written ?? "-"} (${num(f.checkpoint_write_s, 1)} s)`,
        ],
        [
          "cat first / warm",
          `${num(f.cat_first_s)} s / ${num(f.cat_warm_s)} s (${num(f.cat_warm_gbps)} GB/s)`,
        ],
        ["adapter", String(f.adapter ?? "-")],
        ["plan", String(f.plan ?? "-")],
        ["precision", String(f.precision ?? "-")],
        ["load (Engine.create)", `${num(f.load_s)} s`],
        ["warm-up", `${num(f.warm_up_s)} s`],
        ["GPU bytes: weights + KV", `${gib(f.gpu_weight_bytes)} + ${gib(f.gpu_kv_bytes)}`],
        [
          "peak RSS after load / at end",
          `${gib(f.peak_rss_after_load_bytes)} / ${gib(f.peak_rss_bytes)}`,
        ],
        [
          "decode",
          `${num(f.decode_ms_per_token, 1)} ms/token (${f.decode_tokens ?? "-"} tokens after a ${
            f.prompt_tokens ?? "-"
          }-token prompt)`,
        ],
      ]),
      "",
    );
  }

  for (const [name, s] of [["logits", r.steps.logits], ["million", r.steps.million]] as const) {
    if (!s) continue;
    out.push(...stepHeader(name, s, now));
    const f = s.figures;
    const lines: string[][] = [];
    if (f.adapter) lines.push(["adapter", String(f.adapter)]);
    if (f.checkpoint) lines.push(["checkpoint", String(f.checkpoint)]);
    if (f.plan) lines.push(["plan", String(f.plan)]);
    if (f.precision) lines.push(["precision", String(f.precision)]);
    if (f.load_s !== undefined) lines.push(["load", `${num(f.load_s)} s`]);
    if (name === "million") {
      lines.push(
        [
          "sequence",
          `${f.sequence_tokens ?? "-"} tokens, decode at position ${f.decode_position ?? "-"}`,
        ],
        [
          "KV pool",
          `${f.pool_pages ?? "-"} pages = ${f.pool_tokens ?? "-"} tokens, ${
            f.retrieval_shards ?? "-"
          } shard(s) per K/V buffer, ${gib(f.gpu_kv_bytes)}`,
        ],
        ["pages assigned", String(f.pages_assigned ?? "-")],
        ["decode ms (each run)", Array.isArray(f.decode_ms) ? f.decode_ms.join(", ") : "-"],
        [
          "planted keys move the reference logits by",
          `${num(f.planted_effect_rel, 3)} of max logit (GPU vs the unplanted reference: ${
            num(f.gpu_vs_unplanted_rel, 3)
          })`,
        ],
      );
    } else if (f.gpu_score_s !== undefined) {
      lines.push([
        "GPU score / CPU reference",
        `${num(f.gpu_score_s)} s / ${num(f.cpu_reference_s)} s`,
      ]);
    }
    if (f.max_rel_diff !== undefined) {
      lines.push(
        [
          "max abs diff / max abs logit",
          `${(f.max_rel_diff as number).toExponential(2)} (tolerance ${
            LOGITS_TOL.toExponential(2)
          })`,
        ],
        ["argmax agrees", String(f.argmax_agree)],
      );
    }
    lines.push(["peak RSS", gib(f.peak_rss_bytes)]);
    out.push(table(["figure", "value"], lines), "");
  }
  out.push(
    "Method: bench/scale.ts. Logits tolerance: 8 f16 unit roundoffs of max |logit| (the GPU " +
      "keeps weights and KV in f16 and computes in f32; the reference computes in f64 from the " +
      "same weights, reading them in row chunks: bench/scale_reference.ts). Performance targets " +
      "are reported, never asserted; a step fails when it cannot run or a check is out of " +
      "tolerance.",
    "",
  );
  return out.join("\n");
}

// ---- entry ------------------------------------------------------------------------------------

const VALUE_FLAGS = [
  "scale-only",
  "scale-dir",
  "layers",
  "kv-cache-mb",
  "kv-dtype",
  "precision",
  "load-kv-cache-mb",
  "load-max-model-len",
  "decode-tokens",
  "prompt-tokens",
  "logits-vocab",
  "logits-ffn",
  "million-tokens",
  "million-vocab",
  "million-ffn",
  "million-reps",
  "seed",
  "out",
  "child",
  "spec",
  "result",
] as const;

/** `deno task bench --scale ...` (bench.ts hands over the arguments without --scale). */
export async function scaleMain(argv: readonly string[]): Promise<number> {
  const a = parseArgs(argv, { booleans: ["help", "no-warm-up"], values: VALUE_FLAGS });
  if (a.boolean("help")) {
    console.log(USAGE);
    return 0;
  }
  const child = a.optionalString("child");
  if (child !== undefined) return await childMain(child, a.string("spec"), a.string("result"));

  const steps = (a.optionalString("scale-only") ?? SCALE_STEPS.join(",")).split(",").map((s) =>
    s.trim()
  ) as ScaleStep[];
  for (const s of steps) {
    if (!SCALE_STEPS.includes(s)) {
      throw new CliError(`--scale-only: unknown step ${s} (steps: ${SCALE_STEPS.join(", ")})`);
    }
  }
  const overrides = (vocab: string, ffn: string) => {
    const o: Record<string, number> = {};
    const v = a.optionalNumber(vocab, { integer: true, min: 256 });
    const h = a.optionalNumber(ffn, { integer: true, min: 64 });
    if (v !== undefined) o.vocab_size = v;
    if (h !== undefined) o.intermediate_size = h;
    return o;
  };
  const o: ScaleOptions = {
    steps,
    scaleDir: a.optionalString("scale-dir") ?? "/tmp/zigzag-scale",
    layers: a.optionalNumber("layers", { integer: true, min: 1, max: 32 }) ?? 32,
    budgetsMb: intList(a.optionalString("kv-cache-mb"), "kv-cache-mb") ?? [16384, 65536],
    kvDtype: a.optionalChoice("kv-dtype", ["f16", "f32"] as const) ?? "f16",
    precision: a.optionalChoice("precision", ["f16", "f32"] as const) ?? "f16",
    loadKvMb: a.optionalNumber("load-kv-cache-mb", { min: 1 }) ?? 1024,
    loadMaxModelLen: a.optionalNumber("load-max-model-len", { integer: true, min: 64 }) ?? 8192,
    decodeTokens: a.optionalNumber("decode-tokens", { integer: true, min: 1 }) ?? 8,
    warmUp: !a.boolean("no-warm-up"),
    promptTokens: a.optionalNumber("prompt-tokens", { integer: true, min: 1, max: 64 }) ?? 8,
    logitsOverrides: overrides("logits-vocab", "logits-ffn"),
    millionTokens: a.optionalNumber("million-tokens", { integer: true, min: 64 }) ?? 1 << 20,
    millionOverrides: overrides("million-vocab", "million-ffn"),
    millionReps: a.optionalNumber("million-reps", { integer: true, min: 1 }) ?? 2,
    seed: a.optionalNumber("seed", { integer: true, min: 0 }) ?? 0,
    out: a.optionalString("out") ?? OUT,
  };
  if (!steps.includes("load") && a.has("layers")) {
    throw new CliError("--layers sizes the load step's checkpoint: add load to --scale-only");
  }

  const now = new Date().toISOString();
  const result: ScaleResult = {
    schema: SCALE_SCHEMA,
    created: now,
    command: ["deno", "task", "bench", "--scale", ...argv],
    versions: { ...Deno.version },
    adapter: await adapterName(),
    host: {
      os: Deno.build.os,
      arch: Deno.build.arch,
      cpus: navigator.hardwareConcurrency,
      mem_total_bytes: memTotal(),
    },
    steps: {},
  };
  // Steps not run now keep what an earlier run measured.
  try {
    const prev = JSON.parse(await Deno.readTextFile(`${o.out}/scale.json`)) as ScaleResult;
    if (prev.schema === SCALE_SCHEMA) {
      for (const k of SCALE_STEPS) {
        if (!steps.includes(k) && prev.steps[k]) result.steps[k] = prev.steps[k];
      }
    }
  } catch { /* no earlier results */ }

  console.error(`zigzag scale bench: ${result.adapter ?? "no adapter"}, steps ${steps.join(",")}`);
  const write = async () => {
    await Deno.mkdir(o.out, { recursive: true });
    await Deno.writeTextFile(
      `${o.out}/scale.json`,
      await denoFmt(JSON.stringify(result, null, 2) + "\n", "json"),
    );
    const md = renderScaleMarkdown(result, now);
    await Deno.writeTextFile(`${o.out}/scale.md`, await denoFmt(md, "md"));
    return md;
  };
  // In the order given, the results written after each step: a run cut short by a time limit
  // (the GPU script's) keeps the steps it finished.
  for (
    const step of SCALE_STEPS.filter((s) => steps.includes(s)).sort((x, y) =>
      steps.indexOf(x) - steps.indexOf(y)
    )
  ) {
    let r: StepResult;
    if (step === "context") {
      r = await runStep(async () => ({ figures: await contextStep(o.budgetsMb, o.kvDtype) }));
    } else if (step === "load") r = await loadStep(o);
    else if (step === "logits") r = await logitsStep(o);
    else r = await millionStep(o);
    result.steps[step] = { command: result.command, ...r };
    if (!result.adapter && typeof r.figures.adapter === "string") {
      result.adapter = r.figures.adapter;
    }
    console.error(`scale: ${step}: ${r.status}${r.error ? `: ${r.error}` : ""}`);
    await write();
  }
  const md = await write();
  console.log(md);
  console.error(`wrote ${o.out}/scale.json and ${o.out}/scale.md`);
  return steps.some((s) => result.steps[s]?.status === "failed") ? 1 : 0;
}

if (import.meta.main) runMain(() => scaleMain(Deno.args), "run `deno task bench --scale --help`");
