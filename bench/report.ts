// The bench's JSON schema, the ratios and targets derived from its measurements, and the
// Markdown and SVG renderings (shared by bench/bench.ts and bench/readme.ts).
//
// Every ratio names the two measured numbers it divides by their path in the JSON
// (`num_ref`, `den_ref`, e.g. `cells[3].decode[0].ms_per_token.median`) and carries their values:
// value === num / den, num === at(result, num_ref), den === at(result, den_ref).

import type { WeightFormat } from "../gpu/kernels/matmul.ts";
import type {
  AttentionResult,
  CopyResult,
  FmaResult,
  MatmulResult,
  PrefillAttentionResult,
  StreamReadResult,
} from "./kernels.ts";
import type { CapacityReport, Fit } from "./kv.ts";
import type { Cell } from "./model_bench.ts";
import type { BenchPlanName, PlanSummary } from "./plans.ts";
import { type Stat, stat } from "./stats.ts";
import { lineChart, type Series } from "../util/svg.ts";

export const SCHEMA = "zigzag-bench/1";

export interface Ratio {
  id: string;
  label: string;
  value: number;
  num: number;
  den: number;
  num_ref: string;
  den_ref: string;
  /** When both numbers are medians of samples taken in the same interleaved rounds: the
   * per-round ratios num.samples[i] / den.samples[i] (a supplement; `value` is the quotient). */
  paired?: Stat;
}

export interface Target {
  id: string;
  label: string;
  /** The ratio (or derived figure) compared with the target; null when not measured. */
  ratio_id: string | null;
  value: number | null;
  op: "<=" | ">=";
  target: number;
  met: boolean | null;
  /** Where the value is in the JSON when it is a figure rather than one of the ratios (e.g.
   * `capacity.rows[0].max_context`). */
  value_ref?: string;
  /** How far from the target: value - target for <=, target - value for >= (> 0: missed). */
  gap: number | null;
  /** Speed-up (or improvement factor) still needed: value / target for <=, target / value for >=;
   * <= 1 when met. */
  factor_needed: number | null;
  note?: string;
}

export interface GemvAggregate {
  matrices: MatmulResult[];
  /** Sum of weight bytes over sum of median times. */
  bytes: number;
  ms: number;
  gbps: number;
}

/** The bytes one decode step's GEMVs read with the matrices in one weight format (closed form:
 * gpu/weights.ts weightBuffers, the runner's buffer plan, less the gathered embedding). */
export interface WeightBytesRow {
  /** Whose shapes: "run" (the model as the bench ran it), a preset at its full size. */
  model: string;
  label: string;
  format: WeightFormat;
  /** How float matrices are counted: f16, the reference of the ratios. */
  float_dtype: "f16";
  /** Weights of the GEMV matrices (no padding). */
  params: number;
  bytes: number;
  /** 8 x bytes / params: scales and padding included. */
  bits_per_weight: number;
  /** Bytes per matrix kind (wqkv, wo, w_gate_up, w_down, lm_head), summed over the layers. */
  by_matrix: Record<string, number>;
  /** Matrices stored in `format` (the others stay float: rows not whole blocks). */
  quantized_matrices: number;
  matrices: number;
}

/** Quantized matmul weights (`--weights`). */
export interface WeightsSection {
  /** "float" and the quantized formats compared with it. */
  formats: WeightFormat[];
  bytes: WeightBytesRow[];
  /** The plan whose runner was built with quantized weights (null: not measured). */
  plan: BenchPlanName | null;
  /** Where their decode was measured (null: not measured). */
  context: number | null;
  /** One cell per quantized format (`weights` set): decode at `context`, every batch, in the
   * same rotation as the plans' cells (the float runner of `plan` is in `cells`). */
  cells: Cell[];
}

export interface BenchResult {
  schema: typeof SCHEMA;
  created: string;
  command: string[];
  versions: { deno: string; v8: string; typescript: string };
  adapter: {
    name: string;
    backend: string;
    shader_f16: boolean;
    timestamp_query: boolean;
    max_storage_binding_bytes: number;
    max_buffer_bytes: number;
  };
  host: { os: string; arch: string; cpus: number };
  options: Record<string, unknown>;
  notes: string[];
  method: Record<string, string>;
  model: {
    preset: string;
    config: Record<string, unknown>;
    params: number;
    weight_bytes: number;
  };
  plans: Partial<Record<BenchPlanName, PlanSummary>>;
  reference: {
    readback_ms: Stat;
    stream_read: StreamReadResult;
    copy: CopyResult;
    /** The compute roofs, one per arithmetic precision (absent in results before them). */
    fma?: FmaResult[];
  };
  decode_gemv: GemvAggregate | null;
  kernels: MatmulResult[] | null;
  /** `--kernels`: the decode attention pass at --attention-context, per KV dtype. */
  attention: AttentionResult[] | null;
  /** `--kernels`: the prefill attention pass, full and streaming (absent in older results). */
  prefill_attention?: PrefillAttentionResult[] | null;
  cells: Cell[];
  fits: (Fit & { plan: BenchPlanName })[];
  issue3: {
    llama3_8b_32k: {
      plan_source: string;
      tokens: number;
      kv_dtype: string;
      zigzag_bytes: number;
      full_bytes: number;
      duo_bytes: number;
      closed_form_zigzag_bytes: number;
      ratio_to_full: number;
    };
    streaming_prefill: {
      contexts: number[];
      /** Median prefill ms of the streaming plan at each length (from the cells). */
      ms: number[];
      /** (ms[i+1] - ms[i]) / (contexts[i+1] - contexts[i]): the cost of each extra token. */
      marginal_ms_per_token: number[];
      /** ln(ms_last / ms_first) / ln(n_last / n_first): 1 = linear, 2 = quadratic (includes the
       * cheaper first chunk, whose window is not yet full). */
      exponent: number | null;
      /** The same figures for full attention where it was measured at the same lengths. */
      full_ms: number[] | null;
      full_marginal_ms_per_token: number[] | null;
    } | null;
  };
  /** The longest context of Llama-3-8B-Gradient-4194k in 80 GiB, closed form (bench/kv.ts
   * llama3Capacity; absent in results written before it). */
  capacity?: CapacityReport;
  /** Quantized matmul weights (absent in results written before them). */
  weights?: WeightsSection;
  ratios: Ratio[];
  targets: Target[];
  elapsed_s: number;
  /** Wall seconds per phase of the run. */
  phases_s: Record<string, number>;
}

/** Resolves `a.b[2].c` in an object. */
export function at(root: unknown, path: string): unknown {
  let cur: unknown = root;
  for (const part of path.match(/[^.[\]]+/g) ?? []) {
    if (cur === null || cur === undefined) return undefined;
    cur = (cur as Record<string, unknown>)[/^\d+$/.test(part) ? Number(part) : part];
  }
  return cur;
}

export function makeRatio(
  root: unknown,
  id: string,
  label: string,
  numRef: string,
  denRef: string,
): Ratio | null {
  const num = at(root, numRef);
  const den = at(root, denRef);
  if (typeof num !== "number" || typeof den !== "number" || den === 0) return null;
  const out: Ratio = { id, label, value: num / den, num, den, num_ref: numRef, den_ref: denRef };
  if (numRef.endsWith(".median") && denRef.endsWith(".median")) {
    const a = at(root, numRef.slice(0, -7) + ".samples");
    const b = at(root, denRef.slice(0, -7) + ".samples");
    if (Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.length > 0) {
      out.paired = stat(a.map((x: number, i: number) => x / (b[i] as number)));
    }
  }
  return out;
}

export function makeTarget(
  id: string,
  label: string,
  op: "<=" | ">=",
  target: number,
  value: number | null,
  ratioId: string | null,
  note?: string,
  valueRef?: string,
): Target {
  const ref = valueRef ? { value_ref: valueRef } : {};
  if (value === null || !isFinite(value)) {
    return {
      id,
      label,
      ratio_id: ratioId,
      ...ref,
      value: null,
      op,
      target,
      met: null,
      gap: null,
      factor_needed: null,
      note,
    };
  }
  const met = op === "<=" ? value <= target : value >= target;
  const gap = op === "<=" ? value - target : target - value;
  const factor = op === "<=" ? value / target : value > 0 ? target / value : Infinity;
  return {
    id,
    label,
    ratio_id: ratioId,
    ...ref,
    value,
    op,
    target,
    met,
    gap,
    factor_needed: factor,
    note,
  };
}

const PLAN_ORDER: BenchPlanName[] = ["full", "duo", "zigzag", "streaming"];
const PLAN_COLORS: Record<BenchPlanName, string> = {
  full: "#444444",
  duo: "#1f77b4",
  zigzag: "#d62728",
  streaming: "#2ca02c",
};

/** `gemv.f16.1536x576.r1` (quantized weights: `gemv.q4_0.f16.1536x576.r1`, W after the format),
 * with the kernel's file and entry when it is not matmul.wgsl's. */
export function kernelId(k: MatmulResult): string {
  const fmt = k.format && k.format !== "float" ? `${k.format}.` : "";
  const base = `${k.kind}.${fmt}${k.dtype}.${k.n}x${k.k}.r${k.rows}`;
  return k.kernel === `matmul.wgsl:${k.kind}` ? base : `${base}.${k.kernel}`;
}

/** The cache a prefill attention measurement reads, for labels: "ring 64 + 256" or "full (paged)". */
function prefillAttentionCache(x: PrefillAttentionResult): string {
  return x.layout === "ring" ? `ring ${x.sink} + ${x.recent}` : "full (paged)";
}

/** `attention.prefill.paged.f16.h9x3x64.r256@1024`: one prefill attention measurement. */
export function prefillAttentionId(x: PrefillAttentionResult): string {
  const layout = x.layout === "ring" ? `ring${x.sink}+${x.recent}` : x.layout;
  return `attention.prefill.${layout}.${x.kv_dtype}.h${x.heads}x${x.kv_heads}x${x.head_dim}.` +
    `r${x.rows}@${x.context}`;
}

/** An attention result's KV dtype (results written before kv_dtype stored the cache in `dtype`). */
function attentionKv(x: AttentionResult): string {
  return x.kv_dtype ?? x.dtype;
}

/** The float KV dtype the quantized attention figures are compared with: f16 when measured. */
function attentionReference(r: BenchResult): "f16" | "f32" | null {
  const kvs = new Set((r.attention ?? []).map(attentionKv));
  return kvs.has("f16") ? "f16" : kvs.has("f32") ? "f32" : null;
}

/** `attn.b1.int4/f16@4096`: decode attention time of a quantized cache over the float one. */
export function attentionRatioId(rows: number, kv: string, ref: string, ctx: number): string {
  return `attn.b${rows}.${kv}/${ref}@${ctx}`;
}

function cellIndex(r: BenchResult, plan: string, ctx: number): number {
  return r.cells.findIndex((c) => c.plan === plan && c.context === ctx);
}

/** A matmul result's weight format ("float" for results written before formats). */
function kernelFormat(k: MatmulResult): WeightFormat {
  return k.format ?? "float";
}

/** `weights.bytes.run.q4_0/f16`: GEMV bytes per decode step, quantized over f16. */
export function weightBytesRatioId(model: string, format: string): string {
  return `weights.bytes.${model}.${format}/f16`;
}

/** `weights.decode.b1.zigzag.q4_0/float@4096`: decode ms/token, quantized weights over float. */
export function weightDecodeRatioId(b: number, plan: string, format: string, ctx: number) {
  return `weights.decode.b${b}.${plan}.${format}/float@${ctx}`;
}

/** `gemv.b1.q4_0/f16.1536x576`: GEMV ms of a quantized weight over the float one (same W). */
export function gemvFormatRatioId(k: MatmulResult): string {
  return `gemv.b${k.rows}.${kernelFormat(k)}/${k.dtype}.${k.n}x${k.k}`;
}

/** The float result a quantized GEMV is compared with: same shape, rows and W. */
function gemvFloatIndex(r: BenchResult, k: MatmulResult): number {
  return (r.kernels ?? []).findIndex((x) =>
    kernelFormat(x) === "float" && x.kind === k.kind && x.dtype === k.dtype && x.n === k.n &&
    x.k === k.k && x.rows === k.rows
  );
}

/** The ratios zigzag/full and zigzag/duo (and the bandwidth ratios) of a result. */
export function buildRatios(r: BenchResult): Ratio[] {
  const out: Ratio[] = [];
  const push = (x: Ratio | null) => x && out.push(x);
  const ctxs = [...new Set(r.cells.map((c) => c.context))].sort((a, b) => a - b);
  for (const ctx of ctxs) {
    const z = cellIndex(r, "zigzag", ctx);
    if (z < 0) continue;
    for (const other of ["full", "duo"] as const) {
      const o = cellIndex(r, other, ctx);
      if (o < 0) continue;
      const zc = r.cells[z];
      if (zc.prefill_ms && r.cells[o].prefill_ms) {
        push(makeRatio(
          r,
          `prefill.zigzag/${other}@${ctx}`,
          `prefill time zigzag/${other} at ${ctx}`,
          `cells[${z}].prefill_ms.median`,
          `cells[${o}].prefill_ms.median`,
        ));
      }
      zc.decode.forEach((d, i) => {
        const j = r.cells[o].decode.findIndex((e) => e.batch === d.batch);
        if (j < 0) return;
        push(makeRatio(
          r,
          `decode.b${d.batch}.zigzag/${other}@${ctx}`,
          `decode ms/token zigzag/${other}, batch ${d.batch}, at ${ctx}`,
          `cells[${z}].decode[${i}].ms_per_token.median`,
          `cells[${o}].decode[${j}].ms_per_token.median`,
        ));
      });
      push(makeRatio(
        r,
        `kv.zigzag/${other}@${ctx}`,
        `KV bytes zigzag/${other} at ${ctx}`,
        `cells[${z}].kv.bytes`,
        `cells[${o}].kv.bytes`,
      ));
    }
  }
  // Achieved decode bandwidth of each cell against the streaming kernel.
  r.cells.forEach((c, i) =>
    c.decode.forEach((d, j) =>
      push(makeRatio(
        r,
        `bw.decode.b${d.batch}.${c.plan}@${c.context}`,
        `decode bandwidth / streaming read, ${c.plan}, batch ${d.batch}, at ${c.context}`,
        `cells[${i}].decode[${j}].gbps`,
        "reference.stream_read.best.gbps.median",
      ))
    )
  );
  if (r.decode_gemv) {
    push(makeRatio(
      r,
      "bw.gemv.model/stream",
      "decode GEMV bandwidth (the model's matrices) / streaming read",
      "decode_gemv.gbps",
      "reference.stream_read.best.gbps.median",
    ));
    push(makeRatio(
      r,
      "bw.gemv.model/copy",
      "decode GEMV bandwidth (the model's matrices) / copyBufferToBuffer",
      "decode_gemv.gbps",
      "reference.copy.gbps.median",
    ));
  }
  push(makeRatio(
    r,
    "bw.stream/copy",
    "streaming read / copyBufferToBuffer",
    "reference.stream_read.best.gbps.median",
    "reference.copy.gbps.median",
  ));
  (r.kernels ?? []).forEach((k, i) => {
    const id = kernelId(k);
    // Against the f32 compute roof: matmul.wgsl converts every weight to f32 and accumulates in
    // f32, whatever the storage (an f16 roof would flatter f16 weights on adapters that emulate
    // f16 arithmetic).
    const roof = (r.reference.fma ?? []).findIndex((x) => x.dtype === "f32");
    if (roof >= 0) {
      push(makeRatio(
        r,
        `compute.${id}/fma`,
        `${k.kernel} ${k.label} ${k.n}x${k.k} ${k.dtype} rows ${k.rows}: GFLOP/s / peak FMA`,
        `kernels[${i}].gflops.median`,
        `reference.fma[${roof}].best.gflops.median`,
      ));
    }
    push(makeRatio(
      r,
      `bw.${id}/stream`,
      `${k.kernel} ${k.label} ${k.n}x${k.k} ${k.dtype} rows ${k.rows}: weight GB/s / streaming read`,
      `kernels[${i}].gbps.median`,
      "reference.stream_read.best.gbps.median",
    ));
    push(makeRatio(
      r,
      `bw.${id}/copy`,
      `${k.kernel} ${k.label} ${k.n}x${k.k} ${k.dtype} rows ${k.rows}: weight GB/s / copy`,
      `kernels[${i}].gbps.median`,
      "reference.copy.gbps.median",
    ));
  });
  // Quantized GEMVs against the float one of the same shape, rows and W (same sitting).
  (r.kernels ?? []).forEach((k, i) => {
    if (kernelFormat(k) === "float") return;
    const j = gemvFloatIndex(r, k);
    if (j < 0) return;
    push(makeRatio(
      r,
      gemvFormatRatioId(k),
      `${k.kernel} ${k.label} ${k.n}x${k.k} rows ${k.rows}: ms with ${k.format} weights / ` +
        `${k.dtype} weights`,
      `kernels[${i}].ms.median`,
      `kernels[${j}].ms.median`,
    ));
  });
  // Quantized matmul weights: GEMV bytes per decode step over f16, and decode ms/token over the
  // float runner of the same plan at the same context (same rotation).
  const w = r.weights;
  (w?.bytes ?? []).forEach((x, i) => {
    if (x.format === "float") return;
    const j = w!.bytes.findIndex((y) => y.model === x.model && y.format === "float");
    if (j < 0) return;
    push(makeRatio(
      r,
      weightBytesRatioId(x.model, x.format),
      `GEMV bytes per decode step, ${x.format} / f16 (${x.label})`,
      `weights.bytes[${i}].bytes`,
      `weights.bytes[${j}].bytes`,
    ));
  });
  (w?.cells ?? []).forEach((c, i) => {
    const o = cellIndex(r, c.plan, c.context);
    if (o < 0) return;
    c.decode.forEach((d, j) => {
      const k = r.cells[o].decode.findIndex((e) => e.batch === d.batch);
      if (k < 0) return;
      push(makeRatio(
        r,
        weightDecodeRatioId(d.batch, c.plan, c.weights ?? "float", c.context),
        `decode ms/token ${c.plan}, ${c.weights} weights / ${r.options.precision}, batch ` +
          `${d.batch}, at ${c.context}`,
        `weights.cells[${i}].decode[${j}].ms_per_token.median`,
        `cells[${o}].decode[${k}].ms_per_token.median`,
      ));
    });
  });
  (r.attention ?? []).forEach((x, i) => {
    push(makeRatio(
      r,
      `bw.attention.${attentionKv(x)}.r${x.rows}@${x.context}/stream`,
      `attention decode ${attentionKv(x)} KV, ${x.rows} rows at ${x.context}: KV GB/s / ` +
        "streaming read",
      `attention[${i}].gbps.median`,
      "reference.stream_read.best.gbps.median",
    ));
  });
  // Quantized KV against the float reference of the same batch and context (same sitting).
  // Prefill attention against the f32 compute roof (its arithmetic is f32 whatever the storage).
  const f32Roof = (r.reference.fma ?? []).findIndex((x) => x.dtype === "f32");
  (r.prefill_attention ?? []).forEach((x, i) => {
    if (f32Roof < 0) return;
    push(makeRatio(
      r,
      `compute.${prefillAttentionId(x)}/fma`,
      `attention prefill ${prefillAttentionCache(x)} ` +
        `${x.kv_dtype} KV, ${x.rows} rows at ${x.context}: GFLOP/s / peak f32 FMA`,
      `prefill_attention[${i}].gflops.median`,
      `reference.fma[${f32Roof}].best.gflops.median`,
    ));
  });
  const attnRef = attentionReference(r);
  (r.attention ?? []).forEach((x, i) => {
    const kv = attentionKv(x);
    if (kv !== "int8" && kv !== "int4") return;
    const j = (r.attention ?? []).findIndex((y) =>
      attentionKv(y) === attnRef && y.rows === x.rows && y.context === x.context
    );
    if (j < 0) return;
    push(makeRatio(
      r,
      attentionRatioId(x.rows, kv, attnRef!, x.context),
      `decode attention ms, ${kv} KV / ${attnRef} KV, batch ${x.rows}, at ${x.context}`,
      `attention[${i}].ms.median`,
      `attention[${j}].ms.median`,
    ));
  });
  if (r.capacity) {
    const rows = r.capacity.rows;
    const z = rows.findIndex((x) => x.plan === "zigzag50" && x.kv_dtype === "int4");
    const full = rows.findIndex((x) => x.plan === "full" && x.kv_dtype === "int4");
    if (z >= 0) {
      push(makeRatio(
        r,
        "capacity.zigzag50.int4/duo_published",
        "longest context in 80 GiB: zigzag 50% + int4 KV + q4 weights / DuoAttention's " +
          "published 3.3M",
        `capacity.rows[${z}].max_context`,
        "capacity.duo_published.max_context",
      ));
      if (full >= 0) {
        push(makeRatio(
          r,
          "capacity.zigzag50.int4/full.int4",
          "longest context in 80 GiB: zigzag 50% / full attention (both int4 KV, q4 weights)",
          `capacity.rows[${z}].max_context`,
          `capacity.rows[${full}].max_context`,
        ));
      }
    }
  }
  push(makeRatio(
    r,
    "kv.llama3-8b.32k.zigzag/full",
    "Llama-3-8B, 32k tokens: zigzag 50% KV bytes / full (manager's figures)",
    "issue3.llama3_8b_32k.zigzag_bytes",
    "issue3.llama3_8b_32k.full_bytes",
  ));
  const sp = r.issue3.streaming_prefill;
  if (sp && sp.marginal_ms_per_token.length >= 2) {
    const last = sp.marginal_ms_per_token.length - 1;
    push(makeRatio(
      r,
      "prefill.streaming.marginal_growth",
      `streaming prefill: ms per extra token from ${sp.contexts.at(-2)} to ${
        sp.contexts.at(-1)
      } / ` +
        `from ${sp.contexts[0]} to ${sp.contexts[1]}`,
      `issue3.streaming_prefill.marginal_ms_per_token[${last}]`,
      "issue3.streaming_prefill.marginal_ms_per_token[0]",
    ));
    if (sp.full_marginal_ms_per_token) {
      push(makeRatio(
        r,
        "prefill.full.marginal_growth",
        `full prefill: ms per extra token from ${sp.contexts.at(-2)} to ${sp.contexts.at(-1)} / ` +
          `from ${sp.contexts[0]} to ${sp.contexts[1]}`,
        `issue3.streaming_prefill.full_marginal_ms_per_token[${last}]`,
        "issue3.streaming_prefill.full_marginal_ms_per_token[0]",
      ));
    }
  }
  return out;
}

/** The issue's targets, at the longest context of the run. */
export function buildTargets(r: BenchResult): Target[] {
  const byId = new Map(r.ratios.map((x) => [x.id, x]));
  const t: Target[] = [];
  const ctxs = r.cells.filter((c) => c.decode.length).map((c) => c.context);
  const maxCtx = ctxs.length ? Math.max(...ctxs) : null;
  const prefillCtxs = r.cells.filter((c) => c.plan === "zigzag" && c.prefill_ms).map((c) =>
    c.context
  );
  const maxPrefill = prefillCtxs.length ? Math.max(...prefillCtxs) : null;
  const fromRatio = (
    id: string,
    label: string,
    op: "<=" | ">=",
    target: number,
    ratioId: string,
    note?: string,
  ) => t.push(makeTarget(id, label, op, target, byId.get(ratioId)?.value ?? null, ratioId, note));
  const batches = [...new Set(r.cells.flatMap((c) => c.decode.map((d) => d.batch)))].sort((a, b) =>
    a - b
  );
  if (r.cells.length) {
    for (const b of batches) {
      fromRatio(
        `decode.b${b}.vs.duo`,
        `zigzag decode/token <= 0.90x duo (batch ${b}, ${maxCtx} tokens)`,
        "<=",
        0.9,
        `decode.b${b}.zigzag/duo@${maxCtx}`,
      );
      fromRatio(
        `decode.b${b}.vs.full`,
        `zigzag decode/token <= 0.65x full (batch ${b}, ${maxCtx} tokens)`,
        "<=",
        0.65,
        `decode.b${b}.zigzag/full@${maxCtx}`,
      );
    }
    fromRatio(
      "prefill.vs.full",
      `zigzag prefill <= 0.70x full (${maxPrefill ?? "-"} tokens)`,
      "<=",
      0.7,
      `prefill.zigzag/full@${maxPrefill}`,
      maxPrefill !== null && maxCtx !== null && maxPrefill < maxCtx
        ? `longest prefill context of the run (--prefill-max), not ${maxCtx}`
        : undefined,
    );
    fromRatio(
      "kv.vs.full",
      `zigzag KV bytes <= 0.52x full (${maxCtx} tokens)`,
      "<=",
      0.52,
      `kv.zigzag/full@${maxCtx}`,
    );
  }
  fromRatio(
    "gemv.bw",
    "decode GEMV bandwidth >= 70% of the streaming read (the model's matrices)",
    ">=",
    0.7,
    "bw.gemv.model/stream",
  );
  for (const k of r.kernels ?? []) {
    if (k.kind === "gemm" && kernelFormat(k) === "float") {
      const id = `compute.${kernelId(k)}/fma`;
      fromRatio(
        `kernels.${id}`,
        `GEMM (${k.kernel}) ${k.label} ${k.dtype}, ${k.rows} rows >= 50% of the FMA roof`,
        ">=",
        0.5,
        id,
      );
    }
    if (k.kind !== "gemv" || k.rows !== 1 || kernelFormat(k) !== "float") continue;
    const id = `bw.${kernelId(k)}/stream`;
    fromRatio(
      `kernels.${id}`,
      `GEMV ${k.label} ${k.dtype} >= 70% of the streaming read`,
      ">=",
      0.7,
      id,
    );
  }
  for (const x of r.prefill_attention ?? []) {
    const id = `compute.${prefillAttentionId(x)}/fma`;
    fromRatio(
      `kernels.${id}`,
      `prefill attention (${prefillAttentionCache(x)}) ` +
        `${x.rows} rows at ${x.context} >= 40% of the f32 FMA roof`,
      ">=",
      0.4,
      id,
    );
  }
  // Decode attention with a quantized KV cache (--kernels), at --attention-context.
  const attnRef = attentionReference(r) ?? "f16";
  // At --attention-context (results before the long context had only that one).
  const attnCtx = (r.options.attention_context as number | undefined) ??
    (r.attention?.length ? Math.min(...r.attention.map((x) => x.context)) : 4096);
  const attnBatches = r.attention?.length
    ? [...new Set(r.attention.map((x) => x.rows))].sort((a, b) => a - b)
    : [1, 8];
  for (const b of attnBatches) {
    for (const [kv, target] of [["int4", 0.45], ["int8", 0.65]] as const) {
      fromRatio(
        `attention.b${b}.${kv}`,
        `decode attention with ${kv} KV <= ${target}x ${attnRef} (batch ${b}, ${attnCtx} tokens)`,
        "<=",
        target,
        attentionRatioId(b, kv, attnRef, attnCtx),
        r.attention?.length ? undefined : "measured with --kernels",
      );
    }
  }
  // Quantized matmul weights: the bytes of a decode step's GEMVs (closed form, the shapes as
  // run and Llama-3-8B's), and decode ms/token with q4_0 weights, at batch 1 and 8.
  if (r.weights) {
    const w = r.weights;
    const models = [...new Set(w.bytes.map((x) => x.model))].filter((m) =>
      m === "run" || m === "llama-3-8b"
    );
    for (const m of models) {
      const label = w.bytes.find((x) => x.model === m)!.label;
      for (const [fmt, target] of [["q4_0", 0.3], ["q8_0", 0.55]] as const) {
        fromRatio(
          `weights.bytes.${m}.${fmt}`,
          `GEMV bytes per decode step with ${fmt} weights <= ${target}x f16 (${label})`,
          "<=",
          target,
          weightBytesRatioId(m, fmt),
          w.formats.includes(fmt) ? undefined : `${fmt} not in --weights`,
        );
      }
    }
    const plan = w.plan ?? (r.options.weights_plan as string | undefined) ?? "zigzag";
    const ctx = w.context ?? (r.options.weights_context as number | undefined) ?? 4096;
    const wBatches = w.cells.length
      ? [...new Set(w.cells.flatMap((c) => c.decode.map((d) => d.batch)))].sort((a, b) => a - b)
      : [1, 8];
    for (const b of wBatches) {
      fromRatio(
        `weights.decode.b${b}.q4_0`,
        `decode ms/token with q4_0 weights <= 0.6x ${r.options.precision} (${plan}, batch ${b}, ` +
          `${ctx} tokens)`,
        "<=",
        0.6,
        weightDecodeRatioId(b, plan, "q4_0", ctx),
        !w.cells.some((c) => c.weights === "q4_0")
          ? "measured by the model bench with q4_0 in --weights"
          : r.options.precision !== "f16"
          ? `the float runner is ${r.options.precision} on this adapter`
          : undefined,
      );
    }
  }
  fromRatio(
    "issue3.kv",
    "Llama-3-8B at 32k, zigzag 50%: KV bytes <= 0.52x full (manager, closed form)",
    "<=",
    0.52,
    "kv.llama3-8b.32k.zigzag/full",
  );
  const cap = r.capacity;
  if (cap) {
    const z = cap.rows.findIndex((x) => x.plan === "zigzag50" && x.kv_dtype === "int4");
    const full = cap.rows.find((x) => x.plan === "full" && x.kv_dtype === "int4");
    const n = (x: number) => x.toLocaleString("en-US");
    t.push(makeTarget(
      "capacity.zigzag50.int4",
      `zigzag 50% + int4 KV + q4 weights fit >= ${n(cap.target_tokens)} tokens in ` +
        `${cap.budget_gib} GiB (Llama-3-8B-Gradient-4194k, one sequence, closed form; ` +
        `DuoAttention published ${n(cap.duo_published.max_context)}, full attention ` +
        `${full ? n(full.max_context) : "-"})`,
      ">=",
      cap.target_tokens,
      z >= 0 ? cap.rows[z].max_context : null,
      null,
      undefined,
      `capacity.rows[${z}].max_context`,
    ));
  }
  if (r.cells.length) {
    fromRatio(
      "issue3.linear",
      "streaming prefill grows linearly: ms per extra token at the longest lengths <= 1.15x that " +
        "at the shortest",
      "<=",
      1.15,
      "prefill.streaming.marginal_growth",
      "needs 3 or more streaming prefill lengths (--linearity-contexts); full attention's figure " +
        "grows instead",
    );
  }
  return t;
}

// ---- Markdown ------------------------------------------------------------------------------

const f = (v: number | null | undefined, digits = 3) =>
  v === null || v === undefined || !isFinite(v) ? "-" : `${+v.toPrecision(digits)}`;
const mib = (b: number) => (b / 2 ** 20).toFixed(b < 2 ** 20 ? 3 : 1);
const pm = (s: Stat | null | undefined) =>
  s ? `${f(s.median)} ±${(s.spread * 50).toFixed(0)}%` : "-";

/** The whole report; `imageBase` prefixes the chart file names (for the README). */
export function renderMarkdown(r: BenchResult, imageBase = ""): string {
  const L: string[] = [];
  const c = r.model.config as Record<string, number | string>;
  L.push(
    `Adapter **${r.adapter.name}** (backend ${r.adapter.backend}; shader-f16 ` +
      `${r.adapter.shader_f16 ? "yes" : "no"}, timestamp-query ${
        r.adapter.timestamp_query ? "yes" : "no"
      }), Deno ${r.versions.deno}, ${r.host.os}/${r.host.arch} ${r.host.cpus} CPUs, ` +
      `${r.created.slice(0, 19).replace("T", " ")} UTC.`,
    "",
    `Model: **${r.model.preset}** shapes, ${c.nLayers} layers, dim ${c.dim}, hidden ${c.hiddenDim}, ` +
      `${c.nHeads} heads / ${c.nKvHeads} KV heads of ${c.headDim}, vocab ${c.vocabSize}; ` +
      `random weights, ${r.options.precision}; ${
        (r.model.weight_bytes / 2 ** 20).toFixed(1)
      } MiB ` +
      `of weights per decode step. Sink ${r.options.sink} + recent ${r.options.recent}, budget ` +
      `${r.options.budget}.`,
  );
  if (r.notes.length) L.push("", ...r.notes.map((n) => `- ${n}`));
  L.push("", "Plans:", "");
  L.push("| plan | source | retrieval KV heads | streaming KV heads | mixed layers |");
  L.push("| --- | --- | ---: | ---: | ---: |");
  for (const p of PLAN_ORDER) {
    const s = r.plans[p];
    if (!s) continue;
    L.push(
      `| ${p} | ${s.source} | ${s.retrieval_kv_heads} | ${s.streaming_kv_heads} | ` +
        `${s.mixed_layers} |`,
    );
  }
  const ref = r.reference;
  L.push(
    "",
    `Bandwidth references (same adapter, same run): streaming-read kernel ` +
      `**${f(ref.stream_read.best.gbps.median)} GB/s** (${ref.stream_read.best.workgroups} ` +
      `workgroups, ${ref.stream_read.best.chunked ? "chunked" : "grid-stride"}, ` +
      `${mib(ref.stream_read.bytes)} MiB, ${ref.stream_read.method}); copyBufferToBuffer ` +
      `**${f(ref.copy.gbps.median)} GB/s** copied; readback round trip ` +
      `${f(ref.readback_ms.median)} ms.` +
      (ref.fma?.length
        ? ` Compute roof (wgsl/peak_fma.wgsl, independent FMA chains): ` +
          ref.fma.map((x) =>
            `**${f(x.best.gflops.median)} GFLOP/s** ${x.dtype} (${x.best.workgroups} workgroups)`
          ).join(", ") + "."
        : ""),
  );
  if (r.decode_gemv) {
    L.push(
      "",
      `Decode GEMV over the model's matrices (batch 1): ${f(r.decode_gemv.gbps)} GB/s = ` +
        `${(100 * r.decode_gemv.gbps / ref.stream_read.best.gbps.median).toFixed(0)}% of the ` +
        `streaming read.`,
    );
  }

  const rv = (id: string) => f(r.ratios.find((x) => x.id === id)?.value);
  const batches = [...new Set(r.cells.flatMap((x) => x.decode.map((d) => d.batch)))].sort((a, b) =>
    a - b
  );
  if (r.cells.length) {
    L.push("", "### Per plan and context", "");
    L.push(
      `| context | plan | prefill ms | ${
        batches.map((b) => `decode ms/token b${b}`).join(" | ")
      } | ${batches.map((b) => `GB/s b${b} (% stream)`).join(" | ")} | KV MiB | KV / full |`,
    );
    L.push(
      `| ---: | --- | ---: | ${batches.map(() => "---:").join(" | ")} | ${
        batches.map(() => "---:").join(" | ")
      } | ---: | ---: |`,
    );
    const ctxs = [...new Set(r.cells.map((x) => x.context))].sort((a, b) => a - b);
    const streamBw = ref.stream_read.best.gbps.median;
    for (const ctx of ctxs) {
      for (const p of PLAN_ORDER) {
        const cell = r.cells.find((x) => x.plan === p && x.context === ctx);
        if (!cell) continue;
        const dec = batches.map((b) => pm(cell.decode.find((d) => d.batch === b)?.ms_per_token));
        const bw = batches.map((b) => {
          const d = cell.decode.find((e) => e.batch === b);
          return d ? `${f(d.gbps)} (${(100 * d.gbps / streamBw).toFixed(0)}%)` : "-";
        });
        L.push(
          `| ${ctx} | ${p} | ${pm(cell.prefill_ms)} | ${dec.join(" | ")} | ${bw.join(" | ")} | ` +
            `${mib(cell.kv.bytes)} | ${f(cell.kv.ratio_to_full)} |`,
        );
      }
    }
    const method = r.cells.flatMap((x) => x.decode.map((d) => d.method))[0];
    L.push(
      "",
      `Medians; ± is half the relative range of the samples. Decode ms/token: ${
        method === "timestamp"
          ? "GPU timestamps of one step (the wall-clock slope is in the JSON as wall_ms_per_token)"
          : "wall-clock slope between two step counts per submission"
      }.`,
    );
    const maxDecode = Math.max(...r.cells.filter((x) => x.decode.length).map((x) => x.context));
    const prof = r.cells.filter((x) =>
      x.context === maxDecode && x.decode.some((d) => d.gpu_kernels_ms)
    );
    if (prof.length) {
      for (const b of batches) {
        const kernels = [
          ...new Set(
            prof.flatMap((x) =>
              Object.keys(x.decode.find((d) => d.batch === b)?.gpu_kernels_ms ?? {})
            ),
          ),
        ].sort();
        L.push("", `GPU ms per decode step by kernel, batch ${b}, ${maxDecode} tokens:`, "");
        L.push(`| kernel | ${prof.map((x) => x.plan).join(" | ")} |`);
        L.push(`| --- | ${prof.map(() => "---:").join(" | ")} |`);
        for (const k of kernels) {
          L.push(
            `| ${k} | ${
              prof.map((x) => f(x.decode.find((d) => d.batch === b)?.gpu_kernels_ms?.[k])).join(
                " | ",
              )
            } |`,
          );
        }
      }
    }

    // Where a prefill's time goes: the prompt's last chunk by kernel, at the longest prefill
    // every plan was measured at (not a streaming-only linearity length).
    const pk = r.cells.filter((x) => x.prefill_kernels_ms);
    const plansAt = (c: number) => pk.filter((x) => x.context === c).length;
    const most = Math.max(0, ...pk.map((x) => plansAt(x.context)));
    const pkCtx = pk.length
      ? Math.max(...pk.filter((x) => plansAt(x.context) === most).map((x) => x.context))
      : null;
    const pkCells = pk.filter((x) => x.context === pkCtx);
    if (pkCells.length) {
      const kernels = [...new Set(pkCells.flatMap((x) => Object.keys(x.prefill_kernels_ms!)))]
        .sort();
      const chunk = r.options.prefill_chunk ?? "-";
      L.push(
        "",
        `GPU ms of a prefill's last chunk by kernel (${chunk} rows ending at ${pkCtx} tokens):`,
        "",
      );
      L.push(`| kernel | ${pkCells.map((x) => x.plan).join(" | ")} |`);
      L.push(`| --- | ${pkCells.map(() => "---:").join(" | ")} |`);
      for (const k of kernels) {
        L.push(`| ${k} | ${pkCells.map((x) => f(x.prefill_kernels_ms![k])).join(" | ")} |`);
      }
    }

    L.push("", "### Ratios (zigzag / other, interleaved runs)", "");
    L.push(
      "| context | vs | prefill | " + batches.map((b) => `decode b${b}`).join(" | ") +
        " | KV bytes |",
    );
    L.push("| ---: | --- | ---: | " + batches.map(() => "---:").join(" | ") + " | ---: |");
    for (
      const ctx of ctxs.filter((c) => r.cells.some((x) => x.plan === "zigzag" && x.context === c))
    ) {
      for (const o of ["full", "duo"]) {
        L.push(
          `| ${ctx} | ${o} | ${rv(`prefill.zigzag/${o}@${ctx}`)} | ${
            batches.map((b) => rv(`decode.b${b}.zigzag/${o}@${ctx}`)).join(" | ")
          } | ${rv(`kv.zigzag/${o}@${ctx}`)} |`,
        );
      }
    }
  }

  if (r.weights) L.push(...weightsMarkdown(r));

  L.push("", "### Targets (not asserted)", "");
  L.push("| target | value | met | gap |");
  L.push("| --- | ---: | :---: | --- |");
  for (const t of r.targets) {
    // Figures (value_ref: e.g. a token count) in full; ratios to 3 digits.
    const fv = (v: number) => t.value_ref ? Math.round(v).toLocaleString("en-US") : f(v);
    const gap = t.met === null
      ? "not measured"
      : t.met
      ? `met (margin ${fv(Math.abs(t.gap!))})`
      : `missed by ${fv(t.gap!)} (needs ${f(t.factor_needed!)}x)`;
    L.push(
      `| ${t.label} | ${t.value === null ? "-" : fv(t.value)} | ` +
        `${t.met === null ? "-" : t.met ? "yes" : "no"} | ${gap} |`,
    );
  }

  if (r.fits.length) {
    L.push("", `### Longest context that fits ${r.options.kv_cache_mb} MiB of KV cache`, "");
    const seqs = [...new Set(r.fits.map((x) => x.seqs))].sort((a, b) => a - b);
    L.push(`| plan | ${seqs.map((s) => `${s} seq${s > 1 ? "s" : ""}`).join(" | ")} |`);
    L.push(`| --- | ${seqs.map(() => "---:").join(" | ")} |`);
    for (const p of PLAN_ORDER) {
      const row = seqs.map((s) => {
        const x = r.fits.find((y) => y.plan === p && y.seqs === s);
        return !x ? "-" : x.unbounded ? "unbounded" : `${x.max_context}`;
      });
      if (r.fits.some((y) => y.plan === p)) L.push(`| ${p} | ${row.join(" | ")} |`);
    }
  }

  const i3 = r.issue3;
  L.push(
    "",
    "### KV memory at Llama-3-8B shapes, 32k tokens",
    "",
    `Zigzag 50% (${i3.llama3_8b_32k.plan_source}), ${i3.llama3_8b_32k.kv_dtype} KV: ` +
      `${mib(i3.llama3_8b_32k.zigzag_bytes)} MiB vs full ${mib(i3.llama3_8b_32k.full_bytes)} ` +
      `MiB (duo ${mib(i3.llama3_8b_32k.duo_bytes)} MiB): **${
        f(i3.llama3_8b_32k.ratio_to_full, 4)
      }x** full, from the cache manager's statistics (equal to the closed form).`,
  );
  if (i3.streaming_prefill) {
    const sp = i3.streaming_prefill;
    L.push(
      "",
      `Streaming prefill time vs length: ${
        sp.contexts.map((n, i) => `${n}: ${f(sp.ms[i])} ms`).join(", ")
      }; ms per extra token between consecutive lengths: ${
        sp.marginal_ms_per_token.map((m) => f(m)).join(", ")
      }${
        sp.full_marginal_ms_per_token
          ? ` (full attention: ${sp.full_marginal_ms_per_token.map((m) => f(m)).join(", ")})`
          : ""
      }; two-point growth exponent ${f(sp.exponent)} (1 = linear).`,
    );
  }

  if (r.capacity) L.push("", ...capacityMarkdown(r.capacity));

  if (r.kernels?.length) {
    L.push("", "### Kernels (`--kernels`)", "");
    L.push(
      "| kernel | shape | weight [n x k] | weights | rows | ms | weight GB/s | GFLOP/s | / stream | " +
        "/ copy | / FMA | ms / float |",
    );
    L.push("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const k of r.kernels) {
      const id = kernelId(k);
      const fmt = kernelFormat(k);
      L.push(
        `| ${k.kernel} | ${k.label} | ${k.n} x ${k.k} | ${
          fmt === "float" ? k.dtype : `${fmt} (W ${k.dtype})`
        } | ${k.rows} | ${pm(k.ms)} | ` +
          `${f(k.gbps.median)} | ${f(k.gflops.median)} | ${rv(`bw.${id}/stream`)} | ` +
          `${rv(`bw.${id}/copy`)} | ${rv(`compute.${id}/fma`)} | ${
            fmt === "float" ? "" : rv(gemvFormatRatioId(k))
          } |`,
      );
    }
    if (r.kernels.some((k) => kernelFormat(k) !== "float")) {
      L.push(
        "",
        "A shape's GEMVs at one batch (every weight format) are timed in the same sitting, " +
          "interleaved round by round; weight GB/s counts the bytes as stored (quantized: " +
          "quants and scales); ms / float is over the float weight of the same pipeline type W.",
      );
    }
  }

  if (r.attention?.length) {
    const ref = attentionReference(r);
    L.push("", "### Decode attention (`--kernels`)", "");
    L.push(
      `| kernel | context | rows | KV dtype | ms | KV MiB read | KV GB/s | / stream | / ${ref} |`,
    );
    L.push("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for (const x of r.attention) {
      const kv = attentionKv(x);
      L.push(
        `| ${x.kernel} (${x.heads}/${x.kv_heads} heads of ${x.head_dim}) | ${x.context} | ` +
          `${x.rows} | ${kv}${kv === x.dtype ? "" : ` (W ${x.dtype})`} | ${pm(x.ms)} | ` +
          `${mib(x.kv_bytes)} | ${f(x.gbps.median)} | ` +
          `${rv(`bw.attention.${kv}.r${x.rows}@${x.context}/stream`)} | ${
            kv === ref ? "1" : rv(attentionRatioId(x.rows, kv, ref!, x.context))
          } |`,
      );
    }
    L.push(
      "",
      "The KV dtypes of one batch are timed in the same sitting, interleaved round by round; " +
        "KV MiB read counts the scales.",
    );
  }

  if (r.prefill_attention?.length) {
    L.push("", "### Prefill attention (`--kernels`)", "");
    L.push("| kernel | cache | context | rows | KV dtype | ms | GFLOP/s | / f32 FMA |");
    L.push("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |");
    for (const x of r.prefill_attention) {
      L.push(
        `| ${x.kernel} (${x.heads}/${x.kv_heads} heads of ${x.head_dim}) | ${
          prefillAttentionCache(x)
        } | ${x.context} | ${x.rows} | ${x.kv_dtype} | ${pm(x.ms)} | ${f(x.gflops.median)} | ${
          rv(`compute.${prefillAttentionId(x)}/fma`)
        } |`,
      );
    }
    L.push(
      "",
      "The last chunk of a prompt: rows at positions [context - rows, context) over the keys " +
        "before them; FLOPs = 4 x head_dim x heads x the keys each row sees (a ring: its sink " +
        "and window only). Both caches are timed in the same sitting, interleaved.",
    );
  }

  if (r.cells.length) {
    L.push("", "### Charts", "");
    L.push(`![decode ms/token vs context](${imageBase}decode.svg)`, "");
    L.push(`![KV bytes vs context](${imageBase}kv.svg)`);
    if (r.cells.some((x) => x.prefill_ms)) {
      L.push("", `![prefill ms vs context](${imageBase}prefill.svg)`);
    }
  }
  L.push("", "### Method", "");
  for (const [k, v] of Object.entries(r.method)) L.push(`- **${k}**: ${v}`);
  return L.join("\n") + "\n";
}

const gib = (b: number) => (b / 2 ** 30).toFixed(2);

/** The quantized-weights section: GEMV bytes per decode step by format, and decode with
 * quantized weights beside the float runner. */
export function weightsMarkdown(r: BenchResult): string[] {
  const w = r.weights;
  if (!w) return [];
  const L: string[] = [];
  const rv = (id: string) => f(r.ratios.find((x) => x.id === id)?.value);
  L.push(
    "",
    "### Quantized weights (`--weights`)",
    "",
    "GEMV bytes per decode step: the layers' wqkv, wo, w_gate_up, w_down and the LM head as " +
      "the runner stores them (gpu/weights.ts weightBuffers; not the gathered embedding; a tied " +
      "LM head is read as its quantized copy), closed form:",
    "",
    "| model | weights | MiB per step | bits / weight | quantized matrices | / f16 |",
    "| --- | --- | ---: | ---: | ---: | ---: |",
  );
  for (const x of w.bytes) {
    L.push(
      `| ${x.label} | ${x.format === "float" ? x.float_dtype : x.format} | ${mib(x.bytes)} | ` +
        `${f(x.bits_per_weight)} | ${x.quantized_matrices} of ${x.matrices} | ${
          x.format === "float" ? "1" : rv(weightBytesRatioId(x.model, x.format))
        } |`,
    );
  }
  if (w.cells.length && w.plan !== null && w.context !== null) {
    const ref = r.cells.find((c) => c.plan === w.plan && c.context === w.context);
    const batches = [...new Set(w.cells.flatMap((c) => c.decode.map((d) => d.batch)))].sort((
      a,
      b,
    ) => a - b);
    L.push(
      "",
      `Decode with quantized weights: ${w.plan}, ${w.context} tokens, the runner built again ` +
        `with its matrices quantized on load; measured in the same rotation as the plans, so ` +
        `each sample pairs with the float runner's of the same round (paired median in ` +
        `brackets):`,
      "",
      `| weights | ${batches.map((b) => `decode ms/token b${b}`).join(" | ")} | ${
        batches.map((b) => `GB/s b${b}`).join(" | ")
      } | ${batches.map((b) => `/ float b${b}`).join(" | ")} |`,
      `| --- | ${batches.map(() => "---:").join(" | ")} | ${
        batches.map(() => "---:").join(" | ")
      } | ${batches.map(() => "---:").join(" | ")} |`,
    );
    const row = (name: string, c: Cell | undefined, ratio: (b: number) => string) => {
      const d = (b: number) => c?.decode.find((e) => e.batch === b);
      L.push(
        `| ${name} | ${batches.map((b) => pm(d(b)?.ms_per_token)).join(" | ")} | ${
          batches.map((b) => f(d(b)?.gbps)).join(" | ")
        } | ${batches.map(ratio).join(" | ")} |`,
      );
    };
    row(`${r.options.precision} (float)`, ref, () => "1");
    for (const c of w.cells) {
      row(c.weights ?? "float", c, (b) => {
        const x = r.ratios.find((y) =>
          y.id === weightDecodeRatioId(b, c.plan, c.weights ?? "float", c.context)
        );
        return x ? `${f(x.value)}${x.paired ? ` (${f(x.paired.median)})` : ""}` : "-";
      });
    }
  }
  return L;
}

/** The capacity table: the longest context of one sequence in the budget, per plan and KV dtype,
 * next to DuoAttention's published figure. */
export function capacityMarkdown(cap: CapacityReport): string[] {
  const L: string[] = [];
  const w = cap.weights;
  const n = (x: number) => x.toLocaleString("en-US");
  L.push(
    `### Longest context in ${cap.budget_gib} GiB: ${cap.model}, one sequence (closed form)`,
    "",
    `Budget ${cap.budget_gib} GiB = ${n(cap.budget_bytes)} bytes (${
      cap.budget_gb.toFixed(1)
    } GB) for weights, activations and KV cache together. Weights ${gib(w.total_bytes)} GiB: ` +
      `${w.format} (${n(w.linear_params)} linear weights in ${gib(w.linear_bytes)} GiB, ` +
      `embedding + LM head ${gib(w.embedding_bytes)} GiB, norms ${mib(w.norm_bytes)} MiB) — ` +
      "the issue's accounting, not the runner's upload format. " +
      `Activations: what the runner allocates at batch 1, prefill chunk ` +
      `${cap.activations.prefill_chunk} (${cap.activations.formula}). KV: ` +
      "maxContextFit of CacheGeometry over what is left (pages of 16 tokens; the streaming " +
      "heads' sink + recent rings reserved), scales included.",
    "",
    "| plan | KV dtype | KV bytes / token | weights GiB | activations MiB | KV GiB | total GiB | " +
      `max context | / ${n(cap.target_tokens)} | / DuoAttention 3.3M |`,
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const x of cap.rows) {
    L.push(
      `| ${x.plan} (${x.plan_source}) | ${x.kv_dtype} | ${n(x.kv_bytes_per_token)} | ` +
        `${gib(x.weight_bytes)} | ${mib(x.activation_bytes)} | ${gib(x.kv_bytes)} | ` +
        `${gib(x.total_bytes)} | **${n(x.max_context)}** | ${f(x.vs_target)} | ` +
        `${f(x.vs_duo_published)} |`,
    );
  }
  const d = cap.duo_published;
  L.push(
    `| DuoAttention, published (${d.setting}) | int4 | | | | | | ${n(d.max_context)} | ` +
      `${f(d.max_context / cap.target_tokens)} | 1 |`,
    "",
    `DuoAttention's figure is quoted from ${d.source}, not computed here.`,
  );
  return L;
}

// ---- charts --------------------------------------------------------------------------------

export function renderCharts(r: BenchResult): Record<string, string> {
  if (r.cells.length === 0) return {};
  const plans = PLAN_ORDER.filter((p) => r.cells.some((c) => c.plan === p));
  const batches = [...new Set(r.cells.flatMap((x) => x.decode.map((d) => d.batch)))].sort((a, b) =>
    a - b
  );
  const decodeSeries: Series[] = [];
  batches.forEach((b, bi) => {
    for (const p of plans) {
      decodeSeries.push({
        name: `${p} b${b}`,
        color: PLAN_COLORS[p],
        dashed: bi > 0,
        points: r.cells.filter((c) => c.plan === p).flatMap((c) => {
          const d = c.decode.find((e) => e.batch === b);
          return d ? [[c.context, d.ms_per_token.median] as [number, number]] : [];
        }),
      });
    }
  });
  const out: Record<string, string> = {
    "decode.svg": lineChart({
      title: `Decode ms/token vs context (${r.model.preset}, ${r.adapter.name.slice(0, 40)})`,
      xLabel: "context (tokens)",
      yLabel: "ms per decode step",
      logX: true,
      series: decodeSeries,
    }),
    "kv.svg": lineChart({
      title: "KV-cache bytes vs context (one sequence)",
      xLabel: "context (tokens)",
      yLabel: "MiB",
      logX: true,
      series: plans.map((p) => ({
        name: p,
        color: PLAN_COLORS[p],
        points: r.cells.filter((c) => c.plan === p).map((c) =>
          [c.context, c.kv.bytes / 2 ** 20] as [number, number]
        ),
      })),
    }),
  };
  if (r.cells.some((c) => c.prefill_ms)) {
    out["prefill.svg"] = lineChart({
      title: "Prefill time vs context",
      xLabel: "context (tokens)",
      yLabel: "ms",
      series: plans.map((p) => ({
        name: p,
        color: PLAN_COLORS[p],
        points: r.cells.filter((c) => c.plan === p && c.prefill_ms).map((c) =>
          [c.context, c.prefill_ms!.median] as [number, number]
        ),
      })),
    });
  }
  return out;
}
