// Continuous batching: concurrent requests equal the same requests run alone; a client that goes
// away gets its KV pages back into the pool; a full queue answers 429 with Retry-After.

import assert from "node:assert/strict";
import { post, PROMPTS, serverTest, sseData, startTestServer } from "./server_helpers.ts";

interface Gen {
  usage: { prompt_tokens: number };
  token_ids: number[];
  text: string;
  finish_reason: string;
}

async function generate(url: string, body: Record<string, unknown>): Promise<Gen> {
  const res = await post(`${url}/v1/generate`, body);
  assert.equal(res.status, 200, await res.clone().text());
  return await res.json();
}

interface Stats {
  sequences: number;
  pages_total: number;
  total: { pages_used: number; pages_free: number };
  requests: { running: number; waiting: number };
}

async function cacheStats(url: string): Promise<Stats> {
  return await (await fetch(`${url}/v1/cache/stats`)).json();
}

/** Polls until `ok(stats)` or the deadline; returns the last stats. */
async function waitForStats(url: string, ok: (s: Stats) => boolean, ms = 3000) {
  const end = performance.now() + ms;
  let s = await cacheStats(url);
  while (!ok(s) && performance.now() < end) {
    await new Promise((r) => setTimeout(r, 20));
    s = await cacheStats(url);
  }
  return s;
}

Deno.test("16 concurrent requests each equal the request run alone", serverTest, async () => {
  const server = await startTestServer({ maxBatch: 16, prefixCache: false });
  try {
    // The last prompt (~270 tokens) is prefilled in chunks between the others' decode steps.
    const long = "The cat sat on the mat and looked at the big red ball. ".repeat(18);
    const bodies = PROMPTS.map((prompt, i) => ({
      prompt: i === PROMPTS.length - 1 ? long : prompt,
      max_tokens: 10 + i,
      // Two sampled requests: the GPU RNG is keyed by (seed, position), not by batch row.
      ...(i % 8 === 7 ? { temperature: 0.9, top_p: 0.95, seed: 1000 + i } : {}),
    }));
    const together = await Promise.all(bodies.map((b) => generate(server.url, b)));
    const alone: Gen[] = [];
    for (const b of bodies) alone.push(await generate(server.url, b));
    const chunk = server.ctx.loadedEngine!.limits.prefillBudget;
    assert.ok(together[PROMPTS.length - 1].usage.prompt_tokens > 2 * chunk);
    together.forEach((g, i) => {
      assert.equal(g.token_ids.length > 0, true);
      assert.deepEqual(g.token_ids, alone[i].token_ids, `request ${i} (${bodies[i].prompt})`);
      assert.equal(g.text, alone[i].text);
      assert.equal(g.finish_reason, alone[i].finish_reason);
    });
    // Batched decode shares one forward per step (how much faster that is lives in the bench,
    // `deno task bench --serve`, not in a timed test).
    const m = server.ctx.loadedEngine!.metrics;
    assert.ok(m.decodeRows / m.decodeCalls > 1, "decode calls carried several sequences");
    const s = await cacheStats(server.url);
    assert.equal(s.sequences, 0);
    assert.equal(s.total.pages_free, s.pages_total);
  } finally {
    await server.close();
  }
});

Deno.test(
  "a client that disconnects gets its KV pages back into the pool",
  serverTest,
  async (t) => {
    const server = await startTestServer();
    try {
      const before = await cacheStats(server.url);
      assert.equal(before.total.pages_free, before.pages_total);

      await t.step("mid-stream (SSE)", async () => {
        const ac = new AbortController();
        const res = await fetch(`${server.url}/v1/generate`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            prompt: "Once upon a time",
            max_tokens: 480,
            ignore_eos: true,
            stream: true,
          }),
          signal: ac.signal,
        });
        const reader = res.body!.getReader();
        const first = new TextDecoder().decode((await reader.read()).value);
        assert.ok(sseData(first).length >= 1);
        const during = await cacheStats(server.url);
        assert.equal(during.sequences, 1);
        assert.ok(during.total.pages_used > 0);
        ac.abort();
        await reader.cancel().catch(() => {});
        const after = await waitForStats(server.url, (s) => s.sequences === 0);
        assert.equal(after.sequences, 0);
        assert.equal(after.total.pages_used, 0);
        assert.equal(after.total.pages_free, after.pages_total);
        // It stopped long before its 480 tokens.
        const m = server.ctx.loadedEngine!.metrics;
        assert.equal(m.finished.get("cancelled"), 1);
        assert.ok(m.generationTokens < 400, `${m.generationTokens} tokens generated`);
      });

      await t.step("waiting for a non-streamed answer", async () => {
        const ac = new AbortController();
        const p = fetch(`${server.url}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: "The cat", max_tokens: 480, ignore_eos: true }),
          signal: ac.signal,
        }).catch((e) => e);
        await waitForStats(server.url, (s) => s.total.pages_used > 2);
        ac.abort();
        assert.equal((await p).name, "AbortError");
        const after = await waitForStats(server.url, (s) => s.sequences === 0);
        assert.equal(after.total.pages_free, after.pages_total);
        assert.equal(server.ctx.loadedEngine!.metrics.finished.get("cancelled"), 2);
      });

      await t.step("the server still answers", async () => {
        const g = await generate(server.url, { prompt: "The cat", max_tokens: 5 });
        assert.equal(g.token_ids.length, 5);
      });
    } finally {
      await server.close();
    }
  },
);

Deno.test("a queue of 1 under 3 simultaneous long requests answers 429", serverTest, async () => {
  const server = await startTestServer({ maxBatch: 1, maxQueue: 1 });
  try {
    const ac = new AbortController();
    const send = () =>
      fetch(`${server.url}/v1/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 400, ignore_eos: true }),
        signal: ac.signal,
      });
    const pending = [send(), send(), send()];
    // The refused request answers at once, while the others are still running or queued.
    const first = await Promise.race(pending.map((p, i) => p.then((r) => ({ r, i }))));
    assert.equal(first.r.status, 429);
    assert.equal(first.r.headers.get("retry-after"), "1");
    const e = (await first.r.json()).error;
    assert.equal(e.type, "rate_limit_error");
    assert.equal(e.code, "queue_full");
    const engine = server.ctx.loadedEngine!;
    assert.equal(engine.running, 1);
    assert.equal(engine.waiting, 1);
    assert.equal(engine.metrics.rejected.get("queue_full"), 1);
    // Let the two long ones go; the server is free again for a new request.
    ac.abort();
    await Promise.allSettled(pending);
    await waitForStats(server.url, (s) => s.sequences === 0 && s.requests.waiting === 0);
    const g = await generate(server.url, { prompt: "The cat", max_tokens: 3 });
    assert.equal(g.token_ids.length, 3);
  } finally {
    await server.close();
  }
});
