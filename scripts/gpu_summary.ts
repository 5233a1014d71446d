// deno run -A scripts/gpu_summary.ts WORK_DIR OUT_DIR [--quiet]
//
// The last part of scripts/gpu_run.sh: reads what the steps left in WORK_DIR (steps.tsv,
// adapter.json, steps/*.log, each bench's --out folder, generate.json) and writes to OUT_DIR
//   summary.json   the adapter, every step's status, time and key figures
//   report.md      the same as tables, then every bench's own Markdown
//   bench-quick.json, bench-smollm2.json, bench-scale.json, serve.json   the benches' JSON
// (with run.log from gpu_run.sh at most 8 files, no folders: what the device tool brings back),
// then prints a one-screen summary. Reads the bench JSON defensively (fields may move while the
// benches change) and imports nothing from the project.

type Json = Record<string, unknown>;

interface StepRow {
  name: string;
  status: string;
  rc: string;
  seconds: number;
  budget: number;
  note: string;
  figures: Record<string, unknown>;
  headline: string;
}

const args = Deno.args.filter((a) => !a.startsWith("--"));
const quiet = Deno.args.includes("--quiet");
if (args.length !== 2) {
  console.error("usage: deno run -A scripts/gpu_summary.ts WORK_DIR OUT_DIR [--quiet]");
  Deno.exit(2);
}
const [WORK, OUT] = args;
Deno.mkdirSync(OUT, { recursive: true });

function readText(path: string): string | null {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return null;
  }
}
function readJson(path: string): Json | null {
  const t = readText(path);
  if (t === null || !t.trim()) return null;
  try {
    return JSON.parse(t) as Json;
  } catch {
    return null;
  }
}
function listDir(path: string): string[] {
  try {
    return [...Deno.readDirSync(path)].filter((e) => e.isFile).map((e) => e.name).sort();
  } catch {
    return [];
  }
}
/** a.b.0.c on unknown JSON. */
function at(root: unknown, path: string): unknown {
  let v: unknown = root;
  for (const k of path.split(".")) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<string, unknown>)[k];
  }
  return v;
}
function num(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}
/** Three significant digits, or "-". */
function g(v: number | null | undefined, unit = ""): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "-";
  const a = Math.abs(v);
  const s = a >= 100
    ? v.toFixed(0)
    : a >= 10
    ? v.toFixed(1)
    : a >= 1
    ? v.toFixed(2)
    : v.toPrecision(3);
  return s + unit;
}

// ---- the adapter -------------------------------------------------------------------------------
const adapter = readJson(`${WORK}/adapter.json`);
const limits = (adapter?.device_limits ?? adapter?.limits ?? {}) as Record<string, number>;
const features = (adapter?.features ?? []) as string[];
const adapterName = (adapter?.description as string) || "no adapter";

// ---- the steps ---------------------------------------------------------------------------------
const rows: StepRow[] = (readText(`${WORK}/steps.tsv`) ?? "").split("\n").filter(Boolean).map(
  (line) => {
    const [name, status, rc, secs, budget, note] = line.split("\t");
    return {
      name,
      status,
      rc,
      seconds: Number(secs) || 0,
      budget: Number(budget) || 0,
      note: note ?? "",
      figures: {},
      headline: note ?? "",
    };
  },
);
const stepLog = (name: string) => readText(`${WORK}/steps/${name}.log`) ?? "";

function testFigures(log: string): { figures: Json; headline: string } {
  // deno test's last line: "ok | 10 passed (18 steps) | 0 failed | 2 ignored (1m13s)".
  const last = [
    ...log.matchAll(/^(ok|FAILED) \| (\d+) passed.*?\| (\d+) failed(?:.*?\| (\d+) ignored)?/gm),
  ]
    .at(-1);
  const failedNames = [...log.matchAll(/^(\S.*?) \.\.\. FAILED/gm)].map((m) => m[1]);
  if (last) {
    const f = {
      passed: Number(last[2]),
      failed: Number(last[3]),
      ignored: Number(last[4] ?? 0),
      failed_tests: [...new Set(failedNames)],
    };
    return {
      figures: f,
      headline:
        `${f.passed} passed, ${f.failed} failed${f.ignored ? `, ${f.ignored} ignored` : ""}` +
        (f.failed_tests.length ? `: ${f.failed_tests.slice(0, 3).join("; ")}` : ""),
    };
  }
  // Cut off by its timeout: count the finished top-level tests.
  const ok = [...log.matchAll(/^\S.*? \.\.\. ok \(/gm)].length;
  return {
    figures: { passed: ok, failed: failedNames.length, incomplete: true },
    headline: `incomplete: ${ok} passed, ${failedNames.length} failed before the cut`,
  };
}

interface DecodeM {
  batch: number;
  ms_per_token?: { median?: number };
}
interface CellJ {
  plan: string;
  context: number;
  prefill_ms?: { median?: number } | null;
  decode?: DecodeM[];
  kv?: { ratio_to_full?: number };
}

function benchFigures(b: Json): { figures: Json; headline: string } {
  const stream = num(at(b, "reference.stream_read.best.gbps.median"));
  const copy = num(at(b, "reference.copy.gbps.median"));
  const gemv = num(at(b, "decode_gemv.gbps"));
  const cells = (Array.isArray(b.cells) ? b.cells : []) as CellJ[];
  const decodeCtx = Math.max(0, ...cells.filter((c) => c.decode?.length).map((c) => c.context));
  const prefillCtx = Math.max(
    0,
    // The longest context where full attention was prefilled (streaming alone also runs the
    // linearity contexts).
    ...cells.filter((c) => c.plan !== "streaming" && num(c.prefill_ms?.median) !== null).map((c) =>
      c.context
    ),
  );
  const dec = (plan: string, batch: number) =>
    num(
      cells.find((c) => c.plan === plan && c.context === decodeCtx)?.decode?.find((d) =>
        d.batch === batch
      )?.ms_per_token?.median,
    );
  const pre = (plan: string) =>
    num(cells.find((c) => c.plan === plan && c.context === prefillCtx)?.prefill_ms?.median);
  const kvr = num(
    cells.find((c) => c.plan === "zigzag" && c.context === decodeCtx)?.kv?.ratio_to_full,
  );
  const batches = [...new Set(cells.flatMap((c) => (c.decode ?? []).map((d) => d.batch)))].sort((
    x,
    y,
  ) => x - y);
  const plans = ["full", "duo", "zigzag", "streaming"];
  const decode: Json = {};
  for (const bt of batches) {
    decode[`b${bt}`] = Object.fromEntries(plans.map((p) => [p, dec(p, bt)]));
  }
  const targets = (Array.isArray(b.targets) ? b.targets : []) as { met?: boolean | null }[];
  const met = targets.filter((t) => t.met === true).length;
  const judged = targets.filter((t) => t.met === true || t.met === false).length;
  const figures = {
    model: `${at(b, "model.preset") ?? "?"} x${at(b, "options.layers") ?? "?"} layers, vocab ${
      at(b, "options.vocab") ?? "?"
    }, ${at(b, "options.precision") ?? "?"}`,
    stream_read_gbps: stream,
    copy_gbps: copy,
    decode_gemv_gbps: gemv,
    decode_gemv_pct_of_stream: stream && gemv ? gemv / stream : null,
    decode_context: decodeCtx || null,
    decode_ms_per_token: decode,
    prefill_context: prefillCtx || null,
    prefill_ms: Object.fromEntries(plans.map((p) => [p, pre(p)])),
    zigzag_kv_ratio_to_full: kvr,
    targets_met: met,
    targets_judged: judged,
    elapsed_s: num(b.elapsed_s),
  };
  const b1 = batches[0];
  const parts = [
    `stream ${g(stream)} GB/s, GEMV ${g(gemv)} GB/s`,
    decodeCtx
      ? `decode@${decodeCtx} b${b1} ms/tok full ${g(dec("full", b1))} duo ${g(dec("duo", b1))} ` +
        `zigzag ${g(dec("zigzag", b1))}`
      : "no decode cells",
    prefillCtx ? `prefill@${prefillCtx} ms full ${g(pre("full"))} zigzag ${g(pre("zigzag"))}` : "",
    `targets ${met}/${judged}`,
  ].filter(Boolean);
  return { figures, headline: parts.join("; ") };
}

function serveFigures(s: Json): { figures: Json; headline: string } {
  const conc = (Array.isArray(s.concurrency) ? s.concurrency : []) as {
    requests: number;
    tokens_per_s?: { median?: number };
  }[];
  const ratio = num(s.steps_8_over_1);
  const figures = {
    model: s.model,
    precision: s.precision,
    tokens_per_s: Object.fromEntries(conc.map((c) => [c.requests, num(c.tokens_per_s?.median)])),
    steps_8_over_1: ratio,
  };
  return {
    figures,
    headline: `tokens/s at ${conc.map((c) => c.requests).join("/")} requests: ${
      conc.map((c) => g(num(c.tokens_per_s?.median))).join("/")
    }; decode steps 8 vs 1: ${g(ratio)}x`,
  };
}

const copied: string[] = [];
const reports: { title: string; md: string }[] = [];
function keepJson(name: string, value: unknown) {
  Deno.writeTextFileSync(`${OUT}/${name}`, JSON.stringify(value, null, 2) + "\n");
  copied.push(name);
}

let generate: Json | null = null;
for (const r of rows) {
  if (r.status === "skipped" || r.status === "refused") continue;
  const log = stepLog(r.name);
  if (r.name === "tests") {
    Object.assign(r, testFigures(log));
  } else if (r.name.startsWith("bench-") && r.name !== "bench-scale") {
    const b = readJson(`${WORK}/${r.name}/bench.json`);
    if (b) {
      Object.assign(r, benchFigures(b));
      keepJson(`${r.name}.json`, b);
    } else r.headline = "no bench.json written";
    const md = readText(`${WORK}/${r.name}/bench.md`);
    if (md) {
      reports.push({ title: `${r.name}: \`${(b?.command as string[] ?? []).join(" ")}\``, md });
    }
  } else if (r.name === "bench-scale") {
    // Another engineer's bench: keep whatever JSON and Markdown it wrote.
    const dir = `${WORK}/bench-scale`;
    const files = listDir(dir);
    const jsons = files.filter((f) => f.endsWith(".json"));
    const parsed = Object.fromEntries(jsons.map((f) => [f, readJson(`${dir}/${f}`)]));
    if (jsons.length === 1) keepJson("bench-scale.json", parsed[jsons[0]]);
    else if (jsons.length > 1) keepJson("bench-scale.json", parsed);
    for (const f of files.filter((f) => f.endsWith(".md"))) {
      reports.push({ title: `bench-scale: ${f}`, md: readText(`${dir}/${f}`) ?? "" });
    }
    const first = jsons.length ? parsed[jsons[0]] : null;
    r.figures = { files, elapsed_s: num(first?.elapsed_s) };
    r.headline = jsons.length ? `wrote ${files.join(", ")}` : "no JSON written";
  } else if (r.name === "serve") {
    const s = readJson(`${WORK}/serve/serve.json`);
    if (s) {
      Object.assign(r, serveFigures(s));
      keepJson("serve.json", s);
    } else r.headline = "no serve.json written";
    const md = readText(`${WORK}/serve/serve.md`);
    if (md) reports.push({ title: "serve: `deno task bench --serve`", md });
  } else if (r.name === "fake-8b") {
    const m = log.match(/: (\d+) layers, (\d+) shard\(s\), ([\d.]+) GB in ([\d.]+) s/);
    if (m) {
      r.figures = { layers: +m[1], shards: +m[2], gb: +m[3], seconds: +m[4] };
      r.headline = `${m[1]} layers, ${m[3]} GB written in ${m[4]} s`;
    }
  } else if (r.name === "generate-8b") {
    generate = readJson(`${WORK}/generate.json`);
    if (generate) {
      const ids = (generate.generated_ids ?? []) as number[];
      const ttft = num(at(generate, "timings.time_to_first_token_ms"));
      const tps = num(at(generate, "timings.decode_tokens_per_s"));
      r.figures = {
        generated: ids.length,
        time_to_first_token_ms: ttft,
        decode_tokens_per_s: tps,
        precision: generate.precision,
      };
      r.headline = `${ids.length} tokens [${ids.slice(0, 8).join(",")}], TTFT ${g(ttft, " ms")}, ` +
        `decode ${g(tps)} tok/s, ${generate.precision ?? "?"}`;
    } else r.headline = "no JSON line in its output";
  }
  if (r.status !== "ok") {
    // The first error line says more than the figures.
    const err = log.split("\n").find((l) =>
      /error|exceeds|FAILED|panic|Uncaught|not found|denied/i.test(l) && !l.startsWith("$ ")
    );
    if (err) r.headline = `${err.trim().slice(0, 160)}${r.headline ? ` | ${r.headline}` : ""}`;
    if (r.status === "timeout") r.headline = `cut at ${r.budget} s; ${r.headline}`;
  }
}

const denoVersion = Deno.version.deno;
const host = `${Deno.build.os}/${Deno.build.arch}, ${navigator.hardwareConcurrency} CPUs`;
const mib = (n: number | undefined) => (n === undefined ? "?" : `${(n / 2 ** 20).toFixed(0)} MiB`);
const yes = (f: string) => (features.includes(f) ? "yes" : "no");
const refused = rows.find((r) => r.status === "refused");
const summary = {
  schema: "zigzag-gpu-run/1",
  created: new Date().toISOString(),
  deno: denoVersion,
  host,
  refused: refused ? refused.note : null,
  adapter,
  steps: rows.map(({ headline, ...r }) => ({ ...r, summary: headline })),
  generate,
  files: [] as string[],
};

// ---- report.md ---------------------------------------------------------------------------------
const line = (cells: (string | number)[]) => `| ${cells.join(" | ")} |`;
const md = [
  `# zigzag on ${adapterName}`,
  "",
  `${summary.created}, Deno ${denoVersion}, ${host}. Adapter vendor ${
    adapter?.vendor_hex ?? adapter?.vendor ?? "?"
  }${adapter?.nvidia ? " (NVIDIA)" : ""}, kind ${adapter?.kind ?? "?"}; shader-f16 ${
    yes("shader-f16")
  }, timestamp-query ${yes("timestamp-query")}; maxStorageBufferBindingSize ${
    mib(limits.maxStorageBufferBindingSize)
  }, maxBufferSize ${mib(limits.maxBufferSize)}, maxComputeWorkgroupStorageSize ${
    limits.maxComputeWorkgroupStorageSize ?? "?"
  }, maxComputeInvocationsPerWorkgroup ${limits.maxComputeInvocationsPerWorkgroup ?? "?"}.`,
  "",
  `Features: ${features.join(", ") || "-"}.`,
  "",
  line(["step", "status", "seconds", "budget s", "figures"]),
  line(["---", "---", "---:", "---:", "---"]),
  ...rows.map((r) =>
    line([r.name, r.status, r.seconds.toFixed(1), r.budget, r.headline.replaceAll("|", "/")])
  ),
  "",
  ...(generate ? ["## generate-8b", "", "```json", JSON.stringify(generate), "```", ""] : []),
  ...reports.flatMap((r) => [`## ${r.title}`, "", r.md.replace(/^# .*\n+/, "").trim(), ""]),
].join("\n");
Deno.writeTextFileSync(`${OUT}/report.md`, md + "\n");
summary.files = [...copied, "report.md", "summary.json", "run.log"];
Deno.writeTextFileSync(`${OUT}/summary.json`, JSON.stringify(summary, null, 2) + "\n");

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let cur = "";
  for (const w of text.split(/\s+/).filter(Boolean)) {
    if (cur && cur.length + 1 + w.length > width) {
      lines.push(cur);
      cur = "";
    }
    cur = cur ? `${cur} ${w}` : w.slice(0, width);
  }
  if (cur) lines.push(cur);
  return lines;
}

// ---- one screen ----------------------------------------------------------------------------------
if (!quiet) {
  const cols = 118;
  const out: string[] = [];
  out.push("=".repeat(cols));
  out.push(
    `zigzag GPU run: ${adapterName} (vendor ${adapter?.vendor_hex ?? "?"}${
      adapter?.nvidia ? ", NVIDIA" : ""
    }, ${adapter?.kind ?? "?"}) | Deno ${denoVersion} | ${host}`,
  );
  out.push(
    `  shader-f16 ${yes("shader-f16")}, timestamp-query ${yes("timestamp-query")}, ` +
      `subgroups ${yes("subgroups")}; storage binding ${
        mib(limits.maxStorageBufferBindingSize)
      }, ` +
      `buffer ${mib(limits.maxBufferSize)}, workgroup storage ${
        limits.maxComputeWorkgroupStorageSize ?? "?"
      } B, invocations ${limits.maxComputeInvocationsPerWorkgroup ?? "?"}`,
  );
  out.push("-".repeat(cols));
  for (const r of rows) {
    const head = `${r.name.padEnd(14)} ${r.status.padEnd(8)} ${
      r.status === "skipped" ? "      -" : r.seconds.toFixed(1).padStart(6) + "s"
    }  `;
    // The figures under their step, wrapped at words, at most two lines.
    const width = cols - head.length;
    const lines = wrap(r.headline || "", width).slice(0, 2);
    out.push(head + (lines[0] ?? ""));
    if (lines[1]) out.push(" ".repeat(head.length) + lines[1]);
  }
  out.push("-".repeat(cols));
  out.push(`files in ${OUT}: ${summary.files.join(", ")}`);
  out.push("=".repeat(cols));
  console.log(out.join("\n"));
}
