// `deno task doctor` as a user runs it (a subprocess): it names the adapter and prints its
// features and limits, its capacity table is the closed form of cli/capacity.ts, a bad flag is
// refused naming the flag (exit 2), and no adapter at all is one clear message (exit 1).

import assert from "node:assert/strict";
import { longestContext, weightBytes } from "../cli/capacity.ts";
import { PRESETS } from "../model/random.ts";
import { resolvePlan } from "../plans/resolve.ts";
import { loadPlanFile } from "../plans/schema.ts";

const ROOT = new URL("../", import.meta.url).pathname;

async function doctor(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "cli/doctor.ts", ...args],
    cwd: ROOT,
    env: { XDG_RUNTIME_DIR: "/tmp", DENO_WEBGPU_BACKEND: "vulkan", NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("doctor: prints the adapter, its features and limits, and the capacity table", async () => {
  const r = await doctor(["--memory-gb", "80"]);
  assert.equal(r.code, 0, r.stderr);
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  assert.ok(adapter, "the test machine has a WebGPU adapter");
  const name = adapter.info.description || adapter.info.device;
  assert.match(r.stdout, new RegExp(`^adapter: ${name.replace(/[()]/g, "\\$&")}$`, "m"));
  for (const f of ["shader-f16", "subgroups", "timestamp-query"]) {
    const has = adapter.features.has(f as GPUFeatureName) ? "yes" : "no";
    assert.match(r.stdout, new RegExp(`^  ${f} +${has} `, "m"), f);
  }
  for (const l of ["maxStorageBufferBindingSize", "maxBufferSize"] as const) {
    assert.match(r.stdout, new RegExp(`^  ${l} +${adapter.limits[l]}\\b`, "m"), l);
  }
  assert.match(r.stdout, /^memory: /m);

  // The 80 GiB, q4_0 row: each cell is longestContext's figure for that plan and KV dtype.
  const c = PRESETS["llama-3-8b"];
  const file = `${ROOT}plans/shipped/llama-3-8b-instruct-gradient-4194k.zigzag50.json`;
  const zig = resolvePlan(await loadPlanFile(file), c, file);
  const row = r.stdout.split("\n").find((l) => /^ {2}80 GiB \(--memory-gb\) +q4_0 /.test(l));
  assert.ok(row, r.stdout);
  // The last four fields: full f16, full int4, zigzag50 f16, zigzag50 int4.
  const cells = row.trim().split(/\s+/).slice(-4).map((s) => Number(s.replaceAll(",", "")));
  const wb = weightBytes(c, "q4_0");
  const budget = 80 * 2 ** 30;
  assert.equal(cells[3], longestContext(c, zig, "int4", wb, budget).max_context);
  assert.equal(cells[2], longestContext(c, zig, "f16", wb, budget).max_context);
  assert.ok(cells[3] > cells[1] && cells[1] > cells[0], row);
  assert.match(r.stdout, /largest in 80 GiB \(--memory-gb\): llama-3-8b with f16 weights/);
});

Deno.test("doctor: a bad flag is refused, naming it", async () => {
  const typo = await doctor(["--memroy-gb", "8"]);
  assert.equal(typo.code, 2);
  assert.match(typo.stderr, /unknown flag --memroy-gb/);
  assert.equal(typo.stdout, "");
  const bad = await doctor(["--memory-gb", "lots"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--memory-gb must be a number, got "lots"/);
});

Deno.test("doctor: no adapter is one clear message and exit status 1", async () => {
  // No Vulkan driver to load: WebGPU (on the Vulkan backend) finds no adapter.
  const r = await doctor([], { VK_ICD_FILENAMES: "/nonexistent/icd.json" });
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stderr, /^zigzag doctor: no WebGPU adapter found/m);
  assert.match(r.stderr, /deno task setup/);
  assert.doesNotMatch(r.stderr, /^\s+at /m);
});
