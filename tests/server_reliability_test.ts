// Reliability under careless and hostile clients (issue 13): a client that goes away is cancelled
// whatever its body size and wherever its request is (queued, prefilling, decoding); a prompt
// that cannot fit is refused before it is tokenized, without stalling anyone; a request cut by
// shutdown says so; a bad stop id is reported on the field it came in.

import assert from "node:assert/strict";
import type { Engine } from "../engine/engine.ts";
import {
  post,
  ROOT,
  serverTest,
  spawn,
  sseData,
  startTestServer,
  STORIES,
  waitHealthy,
} from "./server_helpers.ts";

const MAIN = `${ROOT}main.ts`;
const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `ok` every millisecond until it holds; fails after `ms`. */
async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const end = performance.now() + ms;
  while (!ok()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

/** A JSON POST written by hand on its own connection, padded with JSON whitespace to `size`
 * bytes, so that the test decides when the connection ends. */
async function rawPost(url: string, path: string, body: unknown, size = 0): Promise<Deno.TcpConn> {
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  const json = JSON.stringify(body);
  const bytes = enc.encode(json.slice(0, -1) + " ".repeat(Math.max(0, size - json.length)) + "}");
  const head = `POST ${path} HTTP/1.1\r\nHost: ${hostname}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${bytes.length}\r\n\r\n`;
  await conn.write(enc.encode(head));
  for (let i = 0; i < bytes.length; i += 1 << 16) {
    await conn.write(bytes.subarray(i, i + (1 << 16)));
  }
  return conn;
}

const cancelled = (e: Engine) => e.metrics.finished.get("cancelled") ?? 0;
const finished = (e: Engine) => [...e.metrics.finished.values()].reduce((a, b) => a + b, 0);
const stateOf = (e: Engine, id: number) => e.sequences().find((s) => s.id === id)?.state;
const lastId = (e: Engine) => Math.max(-1, ...e.sequences().map((s) => s.id));

async function pagesUsed(url: string): Promise<number> {
  const s = await (await fetch(`${url}/v1/cache/stats`)).json();
  return s.total.pages_used;
}

// 226 prompt tokens (+ 250 new within the context of 512): 29 prefill pieces of 8, so a disconnect can land in the middle of them.
const LONG_PROMPT = "Once upon a time there was a little girl named Lily. ".repeat(16);
const SIZES = [100, 2048, 64 << 10, 1 << 20];

Deno.test(
  "a client that goes away is cancelled within one iteration, whatever its body size",
  serverTest,
  async (t) => {
    const server = await startTestServer({ maxBatch: 1, prefillChunk: 8, prefixCache: false });
    const engine = server.ctx.loadedEngine!;
    const body = (stream: boolean, maxTokens = 250) => ({
      prompt: LONG_PROMPT,
      max_tokens: maxTokens,
      ignore_eos: true,
      stream,
    });
    try {
      for (const size of SIZES) {
        for (const stream of [false, true]) {
          const kind = `${size} B body, ${stream ? "streamed" : "not streamed"}`;

          await t.step(`${kind}: while queued`, async () => {
            const before = cancelled(engine);
            const blocker = await rawPost(server.url, "/v1/completions", body(true));
            await until("the blocker to run", () => engine.running === 1);
            const conn = await rawPost(server.url, "/v1/completions", body(stream), size);
            await until("the request to queue", () => engine.waiting === 1);
            conn.close();
            await until("the cancel", () => cancelled(engine) === before + 1);
            assert.equal(engine.waiting, 0);
            assert.equal(engine.running, 1, "the request ahead of it goes on");
            blocker.close();
            await until("the blocker's cancel", () => cancelled(engine) === before + 2);
            assert.equal(await pagesUsed(server.url), 0);
          });

          await t.step(`${kind}: while prefilling`, async () => {
            const before = cancelled(engine);
            const done = finished(engine);
            const conn = await rawPost(server.url, "/v1/completions", body(stream), size);
            await until("the prefill", () => stateOf(engine, lastId(engine)) === "prefill");
            const id = lastId(engine);
            const fed = engine.sequences().find((s) => s.id === id)!.tokens;
            const promptBefore = engine.metrics.promptTokens;
            conn.close();
            await until("the cancel", () => cancelled(engine) === before + 1);
            assert.equal(finished(engine), done + 1, "it ended only as cancelled");
            // One prefill piece (8 tokens) at most ran after the close was seen; the polling
            // above may read `fed` up to one piece late as well.
            const prefilled = engine.metrics.promptTokens - promptBefore;
            assert.ok(prefilled <= fed + 2 * 8, `prefilled ${prefilled} after ${fed}`);
            assert.ok(prefilled < 226, "the prompt was not prefilled to its end");
            assert.equal(await pagesUsed(server.url), 0);
          });

          await t.step(`${kind}: while decoding`, async () => {
            const before = cancelled(engine);
            const conn = await rawPost(server.url, "/v1/completions", body(stream, 250), size);
            await until("the decode", () => stateOf(engine, lastId(engine)) === "decode");
            const calls = engine.metrics.decodeCalls;
            const tokens = engine.metrics.generationTokens;
            conn.close();
            await until("the cancel", () => cancelled(engine) === before + 1);
            // The readback in flight when the close arrives finishes; no other starts.
            assert.ok(
              engine.metrics.decodeCalls - calls <= 2,
              `${engine.metrics.decodeCalls - calls} decode calls after the close`,
            );
            assert.ok(engine.metrics.generationTokens - tokens < 250, "it stopped early");
            assert.equal(await pagesUsed(server.url), 0);
          });
        }
      }
      assert.equal(engine.metrics.finished.get("length") ?? 0, 0, "nothing ran to its end");
    } finally {
      await server.close();
    }
  },
);

/** Max latency of GET /health, polled every 20 ms until `stop` resolves. */
async function probeHealth(url: string, stop: Promise<unknown>): Promise<number> {
  let worst = 0;
  let over = false;
  stop.finally(() => (over = true));
  while (!over) {
    const t0 = performance.now();
    const r = await fetch(`${url}/health`);
    await r.body?.cancel();
    worst = Math.max(worst, performance.now() - t0);
    await sleep(20);
  }
  return worst;
}

/** A process's resident and peak resident memory, from /proc. */
async function memoryOf(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status)![1]) * 1024;
  return { rss: kb("VmRSS"), peak: kb("VmHWM") };
}

Deno.test(
  "a prompt that cannot fit is refused before tokenizing, without stalling anyone",
  serverTest,
  async (t) => {
    // A server process of its own, so that its memory and its event loop are its alone.
    const p = spawn(["run", "-A", MAIN, "--model", STORIES, "--precision", "f32", "--port", "0"]);
    try {
      const url = (await p.waitFor(/listening on (http:\S+)/))[1];
      await waitHealthy(url);
      // 8 MiB of text, within the 16 MiB body limit; stories260K's context is 512 tokens.
      const huge = "Once upon a time ".repeat(493_447);
      const body = enc.encode(JSON.stringify({ prompt: huge, max_tokens: 1 }));
      const postBytes = (path: string, bytes: Uint8Array<ArrayBuffer>) =>
        fetch(`${url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: bytes,
        });

      const reject = async () => {
        const t0 = performance.now();
        const r = await postBytes("/v1/completions", body);
        const e = await r.json();
        assert.equal(r.status, 400);
        assert.equal(e.error.code, "context_length_exceeded");
        assert.equal(e.error.param, "prompt");
        assert.match(e.error.message, /at least \d+ tokens/);
        return performance.now() - t0;
      };

      await t.step("10 maximal prompts: 400 at once, /health answers, memory bounded", async () => {
        // Warm: one rejection first, so the baseline holds what any request leaves (buffers).
        await reject();
        const before = await memoryOf(p.child.pid);
        const work = (async () => {
          const times: number[] = [];
          for (let i = 0; i < 10; i++) times.push(await reject());
          return times;
        })();
        const [worst, times] = await Promise.all([probeHealth(url, work), work]);
        const after10 = await memoryOf(p.child.pid);
        for (let i = 0; i < 10; i++) await reject();
        const after20 = await memoryOf(p.child.pid);
        // Before: 28 s per prompt, /health blocked throughout, RSS +400 MB each. Measured now:
        // 50-250 ms per rejection and /health at most 94 ms (p50 23 ms) with the machine to
        // itself, its two cores holding the client too. The suite runs test files in parallel
        // on those cores, hence a bound of 250 ms here; the soak measures the rest.
        assert.ok(worst < 250, `/health took ${worst.toFixed(0)} ms`);
        assert.ok(Math.max(...times) < 2000, `rejections took ${times.map(Math.round)} ms`);
        // A rejected request briefly holds its bytes as relayed and as read, their text and the
        // parsed JSON, ~5 bodies, and the garbage collector lets a few requests' worth pile up
        // before it runs: measured +16 to +21 bodies at the peak. Bounded means: under 32
        // bodies, and no higher after 10 more (measured: the peak is reached within 10).
        const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;
        const peak = after10.peak - before.rss;
        assert.ok(peak < 32 * body.length, `peak RSS +${mib(peak)} (body ${mib(body.length)})`);
        const more = after20.peak - after10.peak;
        assert.ok(more < 4 * body.length, `peak RSS +${mib(more)} more after 10 more`);
      });

      await t.step(
        "a stream keeps receiving events while maximal prompts are refused",
        async () => {
          const res = await post(`${url}/v1/completions`, {
            prompt: "The cat",
            max_tokens: 400,
            ignore_eos: true,
            stream: true,
          });
          const reader = res.body!.getReader();
          await reader.read();
          let events = 0;
          const streaming = (async () => {
            for (;;) {
              const { done, value } = await reader.read();
              if (done) return;
              events += sseData(new TextDecoder().decode(value)).length;
            }
          })();
          const seen = events;
          const t0 = performance.now();
          for (let i = 0; i < 5; i++) await reject();
          const ms = performance.now() - t0;
          // Tokens arrive 8 per readback: a stream that went on got events in the meantime.
          assert.ok(events > seen, `no event during ${ms.toFixed(0)} ms of rejections`);
          await reader.cancel();
          await streaming.catch(() => {});
        },
      );

      await t.step("/tokenize and chat refuse it the same way", async () => {
        for (
          const [path, json, param] of [
            ["/tokenize", { prompt: huge }, "prompt"],
            ["/tokenize", { messages: [{ role: "user", content: huge }] }, "messages"],
          ] as const
        ) {
          const t0 = performance.now();
          const r = await postBytes(path, enc.encode(JSON.stringify(json)));
          const e = await r.json();
          // stories260K has no chat template: messages are refused for that, also at once.
          if (param === "messages") assert.equal(e.error.code, "no_chat_template");
          else assert.equal(e.error.code, "context_length_exceeded");
          assert.equal(r.status, 400, JSON.stringify(e).slice(0, 200));
          assert.equal(e.error.param, param);
          assert.ok(performance.now() - t0 < 2000);
        }
      });
    } finally {
      p.child.kill("SIGTERM");
      await p.child.status;
      await p.done;
    }
  },
);

Deno.test("shutdown: requests it cuts short say so", serverTest, async () => {
  const server = await startTestServer({ maxBatch: 2, maxQueue: 8 });
  const engine = server.ctx.loadedEngine!;
  const long = { prompt: "Once upon a time", max_tokens: 480, ignore_eos: true };
  try {
    const running = [
      post(`${server.url}/v1/completions`, long),
      post(`${server.url}/v1/completions`, { ...long, stream: true }),
    ];
    await until(
      "two decoding",
      () => engine.sequences().filter((s) => s.state === "decode").length === 2,
    );
    const queued = [
      post(`${server.url}/v1/completions`, long),
      post(`${server.url}/v1/generate`, { ...long, stream: true }),
    ];
    await until("two queued", () => engine.waiting === 2);
    await server.shutdown(0.2);

    const [plain, streamed] = await Promise.all(running);
    assert.equal(plain.status, 200);
    const p = await plain.json();
    assert.equal(p.choices[0].finish_reason, "abort");
    assert.ok(p.usage.completion_tokens > 0 && p.usage.completion_tokens < 480);

    const events = sseData(await streamed.text());
    assert.equal(events.at(-1), "[DONE]");
    const err = JSON.parse(events.at(-2)!);
    assert.equal(err.error.code, "shutting_down");
    assert.equal(err.error.type, "service_unavailable");
    // It was decoding, so its first token had been streamed before the cut.
    assert.ok(events.length >= 3, "it streamed tokens before the cut");
    assert.ok(JSON.parse(events[0]).choices[0].text.length > 0);

    const [q1, q2] = await Promise.all(queued);
    assert.equal(q1.status, 503);
    assert.equal((await q1.json()).error.code, "shutting_down");
    const qEvents = sseData(await q2.text());
    assert.equal(qEvents.at(-1), "[DONE]");
    assert.equal(JSON.parse(qEvents.at(-2)!).error.code, "shutting_down");

    assert.equal(engine.metrics.finished.get("abort"), 4);
    assert.equal(engine.metrics.finished.get("stop") ?? 0, 0);
    const metrics = await (await server.app.request("/metrics")).text();
    assert.match(metrics, /zigzag_requests_finished_total\{finish_reason="abort"\} 4/);
  } finally {
    await server.close();
  }
});

Deno.test(
  "a stop id outside the vocabulary is reported on the field it came in",
  serverTest,
  async () => {
    const server = await startTestServer();
    try {
      for (
        const [path, body, param] of [
          ["/v1/generate", { prompt: "x", stop: [5, 99999] }, "stop[1]"],
          ["/v1/generate", { prompt: "x", stop: 99999 }, "stop"],
          [
            "/v1/generate",
            { prompt: "x", stop: ["a"], stop_token_ids: [99999] },
            "stop_token_ids[0]",
          ],
          ["/v1/completions", { prompt: "x", stop_token_ids: [1, 99999] }, "stop_token_ids[1]"],
        ] as const
      ) {
        const r = await post(`${server.url}${path}`, body);
        const e = await r.json();
        assert.equal(r.status, 400);
        assert.equal(e.error.param, param, JSON.stringify(body));
        assert.match(e.error.message, /99999 is outside the vocabulary/);
      }
    } finally {
      await server.close();
    }
  },
);
