// deno task doctor [--memory-gb N]
//
// What a new user checks first: the WebGPU adapter zigzag will use (opened exactly as the engine
// opens it, gpu/device.ts getGpu), its features and limits, the memory it has when that can be
// known (a CPU adapter's buffers are host RAM; an NVIDIA GPU's through nvidia-smi; WebGPU itself
// does not say), and the longest context it could hold: Llama-3-8B's shapes with f16 or q4_0
// weights and f16 or int4 KV, full attention or the shipped zigzag50 plan, for that memory and a
// few common sizes (closed form, cli/capacity.ts, the accounting of the bench's capacity figure).
// Exit status 1 with one clear message when no adapter is found; 2 on a bad flag.

import type { KvDtype } from "../cache/layout.ts";
import { getGpu, type Gpu, GpuUnavailableError } from "../gpu/device.ts";
import { PRESETS } from "../model/random.ts";
import type { ModelConfig } from "../model/types.ts";
import { builtinPlan, resolvePlan } from "../plans/resolve.ts";
import { loadPlanFile } from "../plans/schema.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import { parseArgs, runMain } from "../util/args.ts";
import { longestContext, runnerMemory, weightBytes } from "./capacity.ts";

const USAGE = `usage: deno task doctor [--memory-gb N]

Prints the WebGPU adapter zigzag will use, its features and limits, its memory when that can be
known, and the longest context Llama-3-8B's shapes could hold in it.

  --memory-gb N   memory to size the capacity table for, GiB (2^30 bytes); default: the
                  adapter's when known (host RAM for a CPU adapter, nvidia-smi for NVIDIA), and
                  16, 24, 48 and 80 GiB`;

const GIB = 2 ** 30;
const COMMON_GIB = [16, 24, 48, 80];
/** The context the "largest model" line asks for. */
const MODEL_CONTEXT = 4096;
const SHIPPED_ZIGZAG = new URL(
  "../plans/shipped/llama-3-8b-instruct-gradient-4194k.zigzag50.json",
  import.meta.url,
).pathname;

/** The features zigzag uses or users ask about, in the order printed. */
const KEY_FEATURES = ["shader-f16", "subgroups", "timestamp-query"] as const;
const FEATURE_USE: Record<(typeof KEY_FEATURES)[number], string> = {
  "shader-f16": "f16 weights and KV cache (else f32)",
  "subgroups": "not used yet",
  "timestamp-query": "kernel timings in the bench",
};
/** The limits that bound what zigzag can run (gpu/device.ts requests the adapter's own). */
const KEY_LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupsPerDimension",
  "maxUniformBufferBindingSize",
] as const;

function bytes(n: number): string {
  if (n >= GIB) return `${(n / GIB).toFixed(n % GIB === 0 ? 0 : 1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(n % (1 << 20) === 0 ? 0 : 1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(n % 1024 === 0 ? 0 : 1)} KiB`;
  return `${n} B`;
}

function tokens(n: number): string {
  return n <= 0 ? "-" : n.toLocaleString("en-US");
}

function pad(s: string, w: number): string {
  return s.length >= w ? s + " " : s + " ".repeat(w - s.length);
}

interface Memory {
  bytes: number;
  source: string;
}

/** The adapter's memory when it can be known: WebGPU has no query for it. */
async function adapterMemory(gpu: Gpu): Promise<Memory | null> {
  if (gpu.isCpu) {
    try {
      const m = Deno.systemMemoryInfo();
      return { bytes: m.total, source: "host RAM: a CPU adapter's buffers live in system memory" };
    } catch {
      return null;
    }
  }
  if (/nvidia/i.test(gpu.adapterName)) {
    try {
      const out = await new Deno.Command("nvidia-smi", {
        args: ["--query-gpu=memory.total", "--format=csv,noheader,nounits"],
        stdout: "piped",
        stderr: "null",
      }).output();
      const mib = Number(new TextDecoder().decode(out.stdout).trim().split("\n")[0]);
      if (out.success && Number.isFinite(mib) && mib > 0) {
        return { bytes: mib * (1 << 20), source: "nvidia-smi memory.total (the first GPU)" };
      }
    } catch { /* no nvidia-smi */ }
  }
  return null;
}

interface CapacityCase {
  label: string;
  plan: ResolvedPlan;
  kv: KvDtype;
}

async function main(): Promise<number> {
  const a = parseArgs(Deno.args, { booleans: ["help"], values: ["memory-gb"] });
  if (a.boolean("help")) {
    console.log(USAGE);
    return 0;
  }
  const memoryGb = a.optionalNumber("memory-gb", { min: 0.001 });

  let gpu: Gpu;
  try {
    gpu = await getGpu();
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    console.error(`zigzag doctor: ${e instanceof GpuUnavailableError ? "" : "WebGPU: "}${why}`);
    console.error(
      "zigzag doctor: `deno task setup` installs Mesa's Vulkan driver (a CPU adapter); " +
        `DENO_WEBGPU_BACKEND is ${Deno.env.get("DENO_WEBGPU_BACKEND") ?? "unset"}`,
    );
    return 1;
  }
  // The same adapter request as getGpu's, for what the device does not repeat: the adapter's
  // full feature list and its description.
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  const info = adapter?.info;
  const features = new Set<string>([...(adapter?.features ?? gpu.device.features)]);

  console.log(`zigzag doctor (deno ${Deno.version.deno})`);
  console.log(`adapter: ${gpu.adapterName}`);
  if (info) {
    const parts = [
      info.vendor && `vendor ${info.vendor}`,
      info.architecture && `architecture ${info.architecture}`,
      info.device && `device ${info.device}`,
    ].filter(Boolean);
    if (parts.length) console.log(`  ${parts.join(", ")}`);
  }
  console.log(`  backend: ${gpu.backend} (DENO_WEBGPU_BACKEND)`);
  console.log(
    `  kind: ${
      gpu.isCpu
        ? "CPU (software Vulkan: compute runs on this machine's cores)"
        : "GPU (the driver's own adapter)"
    }`,
  );
  console.log(`  precision zigzag runs at: ${gpu.hasF16 ? "f16" : "f32 (no shader-f16)"}`);

  console.log("features:");
  for (const f of KEY_FEATURES) {
    let extra = "";
    if (f === "subgroups" && info && "subgroupMinSize" in info) {
      const i = info as GPUAdapterInfo & { subgroupMinSize: number; subgroupMaxSize: number };
      extra = ` (subgroup size ${i.subgroupMinSize}..${i.subgroupMaxSize})`;
    }
    console.log(
      `  ${pad(f, 16)}${pad(features.has(f) ? "yes" : "no", 4)}${FEATURE_USE[f]}${extra}`,
    );
  }
  const others = [...features].filter((f) => !(KEY_FEATURES as readonly string[]).includes(f));
  if (others.length) console.log(`  also: ${others.sort().join(", ")}`);

  console.log("limits (zigzag requests the adapter's own):");
  const limits = gpu.limits as unknown as Record<string, number>;
  for (const k of KEY_LIMITS) {
    const v = limits[k];
    const human = k.endsWith("Size") && !k.includes("Workgroup") ? `  (${bytes(v)})` : "";
    console.log(`  ${pad(k, 36)}${v}${human}`);
  }
  console.log(
    `  one storage binding holds ${bytes(gpu.limits.maxStorageBufferBindingSize)}: larger ` +
      "weight matrices are split into row parts and the KV cache into shards, so it bounds no " +
      "model and no context",
  );

  const mem = await adapterMemory(gpu);
  if (mem) console.log(`memory: ${bytes(mem.bytes)} (${mem.source})`);
  else console.log("memory: unknown (WebGPU does not report it; pass --memory-gb N)");

  // ---- capacity ------------------------------------------------------------------------------
  const sizes: { bytes: number; note: string }[] = [];
  if (memoryGb !== undefined) sizes.push({ bytes: memoryGb * GIB, note: "--memory-gb" });
  else {
    if (mem) sizes.push({ bytes: mem.bytes, note: "this adapter" });
    for (const g of COMMON_GIB) sizes.push({ bytes: g * GIB, note: "" });
  }
  const label = (s: { bytes: number; note: string }) =>
    bytes(s.bytes) + (s.note ? ` (${s.note})` : "");
  const memW = Math.max(8, ...sizes.map((s) => label(s).length + 2));

  console.log(
    "\ncapacity, closed form (cli/capacity.ts): weights + the runner's other buffers + the KV " +
      "cache of one sequence,\nas the engine sizes them; leave some memory for the driver",
  );

  // The memory each model zigzag knows the shapes of needs for a 4K context, and the largest
  // that fits.
  const fullOf = (c: ModelConfig) => resolvePlan(builtinPlan("full", c), c);
  const need = (c: ModelConfig, w: "float" | "q4_0") => {
    const m = runnerMemory(c, fullOf(c), "f16", MODEL_CONTEXT);
    return weightBytes(c, w) + m.overhead.reduce((t, b) => t + b.bytes, 0) + m.kv_shard_bytes;
  };
  const models = Object.entries(PRESETS)
    .map(([name, c]) => ({ name, f16: need(c, "float"), q4: need(c, "q4_0") }))
    .sort((x, y) => x.f16 - y.f16);
  console.log(
    `
memory a model needs for one ${MODEL_CONTEXT}-token sequence (full attention, f16 KV):`,
  );
  const nameW = Math.max(8, ...models.map((m) => m.name.length + 2));
  console.log(`  ${pad("model", nameW)}${pad("f16 weights", 16)}q4_0 weights`);
  for (const m of models) {
    console.log(`  ${pad(m.name, nameW)}${pad(bytes(m.f16), 16)}${bytes(m.q4)}`);
  }
  for (const s of sizes) {
    const largest = (k: "f16" | "q4") => models.filter((m) => m[k] <= s.bytes).at(-1)?.name;
    console.log(
      `  largest in ${label(s)}: ${largest("f16") ?? "none"} with f16 weights, ` +
        `${largest("q4") ?? "none"} with q4_0`,
    );
  }

  // Llama-3-8B's shapes: full attention and the shipped zigzag50 plan, f16 and int4 KV.
  const c = PRESETS["llama-3-8b"];
  const zig = resolvePlan(await loadPlanFile(SHIPPED_ZIGZAG), c, SHIPPED_ZIGZAG);
  const cases: CapacityCase[] = [
    { label: "full f16 KV", plan: fullOf(c), kv: "f16" },
    { label: "full int4 KV", plan: fullOf(c), kv: "int4" },
    { label: "zigzag50 f16 KV", plan: zig, kv: "f16" },
    { label: "zigzag50 int4 KV", plan: zig, kv: "int4" },
  ];
  console.log(
    `\nlongest context of one sequence, Llama-3-8B shapes (${c.nLayers} layers, ${c.nKvHeads} ` +
      `KV heads x ${c.headDim}); zigzag50: plans/shipped/` +
      `llama-3-8b-instruct-gradient-4194k.zigzag50.json\n(16 of 32 layers retrieval, sink ` +
      `${zig.sink} + recent ${zig.recent}); past 8K tokens it needs a long-context checkpoint ` +
      "such as Gradient-4194k:",
  );
  const colW = 18;
  console.log(
    `  ${pad("memory", memW)}${pad("weights", 16)}${cases.map((k) => pad(k.label, colW)).join("")}`
      .trimEnd(),
  );
  for (const s of sizes) {
    for (const w of ["float", "q4_0"] as const) {
      const wb = weightBytes(c, w);
      const cells = cases.map((k) =>
        pad(tokens(longestContext(c, k.plan, k.kv, wb, s.bytes).max_context), colW)
      );
      const wl = `${w === "float" ? "f16" : w} ${bytes(wb)}`;
      console.log(`  ${pad(label(s), memW)}${pad(wl, 16)}${cells.join("")}`.trimEnd());
    }
  }
  return 0;
}

if (import.meta.main) runMain(main, "run `deno task doctor --help` for usage");
