// /v1/cache/stats against the closed-form byte counts of a zigzag plan (some layers paged, some
// sink + recent rings) while requests run, and /metrics parsed as Prometheus' text format.

import assert from "node:assert/strict";
import { post, serverTest, startTestServer } from "./server_helpers.ts";

// stories260K: 5 layers x 4 KV heads, head_dim 8; f32 cache (4 bytes).
const LAYERS = ["retrieval", "streaming", "retrieval", "streaming", "streaming"];
const SINK = 4;
const RECENT = 12;
const PLAN = {
  version: 1,
  model: { architecture: "llama2.c", num_layers: 5, num_kv_heads: 4, head_dim: 8 },
  mode: "zigzag",
  layers: LAYERS,
  sink: SINK,
  recent: RECENT,
  provenance: { method: "test", budget: 0.4, source: "tests/server_observability_test.ts" },
};

// ---- a small Prometheus text-format parser ---------------------------------------------------

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Family {
  type: string;
  help: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function parseValue(s: string, line: string): number {
  if (s === "+Inf") return Infinity;
  if (s === "-Inf") return -Infinity;
  if (s === "NaN") return NaN;
  assert.match(s, /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/, `bad value in: ${line}`);
  return Number(s);
}

function parseLabels(s: string, line: string): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < s.length) {
    const eq = s.indexOf("=", i);
    assert.ok(eq > i, `bad labels in: ${line}`);
    const key = s.slice(i, eq).trim();
    assert.match(key, LABEL, `bad label name in: ${line}`);
    assert.equal(s[eq + 1], '"', `unquoted label value in: ${line}`);
    let j = eq + 2;
    let v = "";
    while (s[j] !== '"') {
      assert.ok(j < s.length, `unterminated label value in: ${line}`);
      if (s[j] === "\\") {
        const n = s[j + 1];
        assert.ok(n === "\\" || n === '"' || n === "n", `bad escape in: ${line}`);
        v += n === "n" ? "\n" : n;
        j += 2;
      } else v += s[j++];
    }
    assert.ok(!(key in out), `duplicate label in: ${line}`);
    out[key] = v;
    j++;
    if (s[j] === ",") j++;
    i = j;
  }
  return out;
}

/** Parses the text exposition format; throws on anything malformed. */
function parsePrometheus(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  assert.ok(text.endsWith("\n"), "ends with a newline");
  for (const line of text.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!m) continue; // a plain comment
      const [, kind, name, rest] = m;
      assert.match(name, NAME, `bad metric name in: ${line}`);
      const f = families.get(name) ?? { type: "untyped", help: "", samples: [] };
      if (kind === "TYPE") {
        assert.ok(
          ["counter", "gauge", "histogram", "summary", "untyped"].includes(rest),
          `bad type in: ${line}`,
        );
        assert.equal(f.samples.length, 0, `TYPE after samples: ${line}`);
        f.type = rest;
      } else f.help = rest;
      families.set(name, f);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$/.exec(line);
    assert.ok(m, `bad sample line: ${line}`);
    const [, name, , labelText, value] = m;
    const labels = labelText ? parseLabels(labelText, line) : {};
    const key = name + JSON.stringify(Object.entries(labels).sort());
    assert.ok(!seen.has(key), `duplicate sample: ${line}`);
    seen.add(key);
    const base = name.replace(/_(bucket|sum|count)$/, "");
    const fam = families.get(name) ?? families.get(base);
    assert.ok(fam, `sample without a TYPE: ${line}`);
    if (fam.type === "histogram") assert.notEqual(fam, families.get(name), line);
    fam.samples.push({ name, labels, value: parseValue(value, line) });
  }
  for (const [name, f] of families) {
    if (f.type !== "histogram") continue;
    const buckets = f.samples.filter((s) => s.name === `${name}_bucket`);
    assert.ok(buckets.length > 0, `${name}: no buckets`);
    let last = -Infinity;
    let prev = 0;
    for (const b of buckets) {
      const le = parseValue(b.labels.le, name);
      assert.ok(le > last, `${name}: buckets out of order`);
      assert.ok(b.value >= prev, `${name}: buckets not cumulative`);
      last = le;
      prev = b.value;
    }
    assert.equal(last, Infinity, `${name}: no +Inf bucket`);
    const count = f.samples.find((s) => s.name === `${name}_count`);
    assert.equal(count?.value, prev, `${name}: +Inf bucket != _count`);
    assert.ok(f.samples.some((s) => s.name === `${name}_sum`), `${name}: no _sum`);
  }
  return families;
}

function value(f: Map<string, Family>, name: string, labels: Record<string, string> = {}) {
  const fam = f.get(name) ?? f.get(name.replace(/_(bucket|sum|count)$/, ""));
  assert.ok(fam, `metric ${name} missing`);
  const s = fam.samples.find((s) =>
    s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  );
  assert.ok(s, `sample ${name} ${JSON.stringify(labels)} missing`);
  return s.value;
}

// ---------------------------------------------------------------------------------------------

Deno.test(
  "cache stats match the closed form; /metrics is valid Prometheus text",
  serverTest,
  async (t) => {
    const dir = await Deno.makeTempDir();
    const planFile = `${dir}/stories.zigzag.json`;
    await Deno.writeTextFile(planFile, JSON.stringify(PLAN));
    const server = await startTestServer({ plan: planFile, maxBatch: 4, prefixCache: false });
    const ac = new AbortController();
    try {
      // Closed form, from the plan alone.
      const bytes = 4;
      const tokenBytes = (heads: number) => 2 * heads * 8 * bytes;
      const retrievalHeads = LAYERS.filter((k) => k === "retrieval").length * 4;
      const streamingHeads = LAYERS.filter((k) => k === "streaming").length * 4;
      const pageBytes = 16 * tokenBytes(retrievalHeads);
      const ring = SINK + RECENT;
      const layout = server.ctx.loadedEngine!.layout;

      await t.step("idle", async () => {
        const s = await (await fetch(`${server.url}/v1/cache/stats`)).json();
        assert.equal(s.plan.mode, "zigzag");
        assert.deepEqual(s.plan.layers.map((l: { kind: string }) => l.kind), LAYERS);
        assert.equal(s.sink, SINK);
        assert.equal(s.recent, RECENT);
        assert.equal(s.geometry.page_bytes, pageBytes);
        assert.equal(s.geometry.ring_bytes, ring * tokenBytes(streamingHeads));
        assert.equal(s.retrieval.bytes_reserved, s.pages_total * pageBytes);
        assert.equal(
          s.streaming.bytes_reserved,
          s.max_sequences * ring * tokenBytes(streamingHeads),
        );
        assert.equal(s.total.bytes_used, 0);
        assert.equal(s.sequences, 0);
        assert.equal(s.pages_total, layout.numPages);
      });

      await t.step("while three requests run", async () => {
        const readers = [];
        for (const [prompt, n] of [["Once upon a time", 400], ["The cat", 300], ["A dog", 350]]) {
          const res = await fetch(`${server.url}/v1/generate`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ prompt, max_tokens: n, ignore_eos: true, stream: true }),
            signal: ac.signal,
          });
          const r = res.body!.getReader();
          await r.read(); // the first token is out: the sequence is decoding
          readers.push(r);
        }
        // Wait until every sequence is past the ring, so each streaming layer holds exactly
        // sink + recent positions per sequence.
        let s = await (await fetch(`${server.url}/v1/cache/stats`)).json();
        for (let i = 0; i < 500; i++) {
          if (s.per_sequence.every((q: { tokens: number }) => q.tokens > ring)) break;
          await new Promise((r) => setTimeout(r, 20));
          s = await (await fetch(`${server.url}/v1/cache/stats`)).json();
        }
        const lengths: number[] = s.per_sequence.map((q: { tokens: number }) => q.tokens);
        assert.equal(lengths.length, 3);
        assert.equal(s.sequences, 3);
        const sum = lengths.reduce((a, b) => a + b, 0);
        const pages = lengths.reduce((a, n) => a + Math.ceil(n / 16), 0);
        const streamTokens = lengths.reduce((a, n) => a + Math.min(n, ring), 0);
        assert.deepEqual(
          s.per_sequence.map((q: { pages: number }) => q.pages),
          lengths.map((n) => Math.ceil(n / 16)),
        );
        assert.equal(s.retrieval.pages_used, pages);
        assert.equal(s.retrieval.pages_free, s.pages_total - pages);
        assert.equal(s.retrieval.bytes_used, pages * pageBytes);
        assert.equal(s.streaming.tokens, streamTokens);
        assert.equal(s.streaming.bytes_used, streamTokens * tokenBytes(streamingHeads));
        assert.equal(s.total.tokens, sum);
        assert.equal(s.total.bytes_used, s.retrieval.bytes_used + s.streaming.bytes_used);
        assert.equal(s.full_attention_bytes, sum * tokenBytes(20));
        assert.equal(s.ratio_to_full, s.total.bytes_used / s.full_attention_bytes);
        // ... and the manager's own closed form agrees.
        const used = layout.usedBytes(lengths);
        assert.equal(s.retrieval.bytes_used, used.retrieval);
        assert.equal(s.streaming.bytes_used, used.streaming);
        assert.equal(s.full_attention_bytes, layout.fullBytes(sum));
        assert.ok(s.ratio_to_full < 1, "the plan saves memory");

        const res = await fetch(`${server.url}/metrics`);
        assert.match(res.headers.get("content-type")!, /^text\/plain; version=0\.0\.4/);
        const f = parsePrometheus(await res.text());
        assert.equal(value(f, "zigzag_requests_running"), 3);
        assert.equal(value(f, "zigzag_requests_waiting"), 0);
        assert.equal(value(f, "zigzag_kv_cache_sequences"), 3);
        // Numbers move between the two requests; only what cannot change while 3 run is compared.
        assert.equal(
          value(f, "zigzag_kv_cache_reserved_bytes", { kind: "streaming" }),
          s.streaming.bytes_reserved,
        );
        assert.equal(
          value(f, "zigzag_kv_cache_used_bytes", { kind: "streaming" }),
          3 * ring * tokenBytes(streamingHeads),
        );
        // One ring kind at one window: the ring gauges carry it, with the kind's figures.
        assert.deepEqual(
          s.rings.map((r: { sink: number; recent: number }) => [r.sink, r.recent]),
          [[SINK, RECENT]],
        );
        const win = { kind: "streaming", sink: String(SINK), recent: String(RECENT) };
        assert.equal(
          value(f, "zigzag_kv_ring_used_bytes", win),
          3 * ring * tokenBytes(streamingHeads),
        );
        assert.equal(value(f, "zigzag_kv_ring_kv_heads", win), streamingHeads);
        const ratio = value(f, "zigzag_kv_cache_usage_ratio");
        assert.ok(ratio > 0 && ratio <= 1);
        assert.equal(f.get("zigzag_time_to_first_token_seconds")!.type, "histogram");
        ac.abort();
        for (const r of readers) await r.cancel().catch(() => {});
      });

      await t.step("after: everything returned, counters and histograms filled", async () => {
        for (let i = 0; i < 100 && server.ctx.loadedEngine!.running > 0; i++) {
          await new Promise((r) => setTimeout(r, 20));
        }
        const g =
          await (await post(`${server.url}/v1/generate`, { prompt: "The cat", max_tokens: 9 }))
            .json();
        assert.equal(g.cache.tokens, g.usage.prompt_tokens + 8);
        const used = layout.usedBytes([g.cache.tokens]);
        assert.equal(g.cache.retrieval_bytes, used.retrieval);
        assert.equal(g.cache.streaming_bytes, used.streaming);
        const s = await (await fetch(`${server.url}/v1/cache/stats`)).json();
        assert.equal(s.total.bytes_used, 0);
        assert.equal(s.retrieval.pages_free, s.pages_total);
        const f = parsePrometheus(await (await fetch(`${server.url}/metrics`)).text());
        assert.equal(value(f, "zigzag_requests_running"), 0);
        assert.equal(value(f, "zigzag_requests_finished_total", { finish_reason: "cancelled" }), 3);
        assert.equal(value(f, "zigzag_requests_finished_total", { finish_reason: "length" }), 1);
        assert.equal(value(f, "zigzag_e2e_request_latency_seconds_count"), 4);
        assert.equal(value(f, "zigzag_time_to_first_token_seconds_count"), 4);
        assert.ok(value(f, "zigzag_time_per_output_token_seconds_sum") > 0);
        assert.ok(value(f, "zigzag_generation_tokens_total") >= 9 + 3);
        assert.equal(value(f, "zigzag_kv_cache_used_bytes", { kind: "retrieval" }), 0);
      });
    } finally {
      ac.abort();
      await server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test(
  "--kv-dtype int4: cache stats and /metrics count the quantized entries and their scales",
  serverTest,
  async () => {
    const server = await startTestServer({ kvDtype: "int4", maxBatch: 2 });
    try {
      // stories260K: 5 layers x 4 KV heads of head_dim 8. An int4 entry: 8 nibbles (one word)
      // and one word of f16 (scale, zero): 8 bytes against f32's 32.
      const entry = 8 / 2 + 4;
      const tokenBytes = 2 * 5 * 4 * entry;
      const s = await (await fetch(`${server.url}/v1/cache/stats`)).json();
      assert.equal(s.geometry.kv_dtype, "int4");
      assert.equal(s.geometry.page_bytes, 16 * tokenBytes);
      const g = await (await post(`${server.url}/v1/generate`, {
        prompt: "Once upon a time",
        max_tokens: 20,
        ignore_eos: true,
      })).json();
      assert.equal(g.usage.completion_tokens, 20);
      assert.equal(g.cache.retrieval_bytes, Math.ceil(g.cache.tokens / 16) * 16 * tokenBytes);
      const f = parsePrometheus(await (await fetch(`${server.url}/metrics`)).text());
      assert.equal(
        value(f, "zigzag_kv_cache_reserved_bytes", { kind: "retrieval" }),
        s.pages_total * 16 * tokenBytes,
      );
    } finally {
      await server.close();
    }
  },
);
