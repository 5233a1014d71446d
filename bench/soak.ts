// deno task soak [--requests 1000] [--time-limit-s 600] [--concurrency 16] [--model PATH]
//   [--seed 1] [--max-batch 8] [--max-queue 64] [--grace-s 1] [--shutdown-requests 12]
//   [--precision f16|f32] [--out DIR]
//
// A bounded soak test of the server, on loopback only. It starts `main.ts` on a free port, then
// sends --requests requests (a seeded, reproducible mix) from --concurrency clients:
//   - normal: /v1/completions, /v1/chat/completions, /v1/generate, streamed or not, with
//     ignore_eos, so each must come back complete (finish_reason "length", exactly max_tokens
//     tokens, a stream ending with `data: [DONE]`); anything shorter is a silent truncation;
//   - disconnects: a hand-written HTTP/1.1 request (body padded to 100 B .. 1 MB, max_tokens 400)
//     on a raw TCP connection, closed 0-500 ms later; each must end "cancelled" in the engine;
//   - hostile bodies (malformed JSON, wrong types, unknown fields, huge numbers, invalid UTF-8,
//     text/plain, a 2 MB prompt, ...): each must get a 4xx with an OpenAI-shaped JSON error;
// while a prober GETs /health every 100 ms (over 1 s is a stall). Then it waits for the server to
// drain, checks /metrics (every abandoned request cancelled) and /v1/cache/stats (no page held),
// starts --shutdown-requests long requests and sends SIGTERM: each must end complete or
// explicitly (503 shutting_down, finish_reason "abort", an SSE error event then [DONE]), and the
// server must exit with status 0 within --grace-s + 5 s. The run stops at --time-limit-s whatever
// the server does (it is killed then).
//
// Prints one summary line; exits 1 when a check fails. --out DIR writes soak.json and soak.md.

import { parseArgs, runMain } from "../util/args.ts";
import { progress } from "../util/progress.ts";
import { denoFmt } from "../util/fmt.ts";
import { JOIN_TEMPLATE, PROMPTS } from "./story_prompts.ts";

const USAGE = `usage: deno task soak [--requests N] [--time-limit-s S] [--concurrency C]
  [--model PATH] [--seed N] [--max-batch N] [--max-queue N] [--grace-s S]
  [--shutdown-requests N] [--precision f16|f32] [--out DIR]

  --requests N           requests of the load phase (default 1000)
  --time-limit-s S       the whole run stops by then; the server is killed (default 600)
  --concurrency C        concurrent clients (default 16)
  --model PATH           (default ../shared/models/stories260K)
  --seed N               seed of the request mix (default 1)
  --max-batch N --max-queue N   the server's (defaults 8 and 64)
  --grace-s S            the server's grace period at the final SIGTERM (default 1)
  --shutdown-requests N  requests running when SIGTERM is sent (default 12)
  --out DIR              write DIR/soak.json and DIR/soak.md`;

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const DEFAULT_MODEL = decodeURIComponent(
  new URL("../../shared/models/stories260K", import.meta.url).pathname,
);
const STALL_MS = 1000;
const PROBE_EVERY_MS = 100;
const REQUEST_TIMEOUT_MS = 120_000;
const DISCONNECT_MAX_TOKENS = 400;
const BODY_LIMIT_MB = 4;

// ---- options ------------------------------------------------------------------------------

interface SoakOptions {
  requests: number;
  timeLimitS: number;
  concurrency: number;
  model: string;
  seed: number;
  maxBatch: number;
  maxQueue: number;
  graceS: number;
  shutdownRequests: number;
  precision: "f16" | "f32";
  out?: string;
}

function parseOptions(argv: readonly string[]): SoakOptions | "help" {
  const a = parseArgs(argv, {
    booleans: ["help"],
    values: [
      "requests",
      "time-limit-s",
      "concurrency",
      "model",
      "seed",
      "max-batch",
      "max-queue",
      "grace-s",
      "shutdown-requests",
      "precision",
      "out",
    ],
  });
  if (a.boolean("help")) return "help";
  const int = (name: string, def: number, min: number) =>
    a.optionalNumber(name, { integer: true, min }) ?? def;
  return {
    requests: int("requests", 1000, 1),
    timeLimitS: a.optionalNumber("time-limit-s", { min: 10 }) ?? 600,
    concurrency: int("concurrency", 16, 1),
    model: a.optionalString("model") ?? DEFAULT_MODEL,
    seed: int("seed", 1, 0),
    maxBatch: int("max-batch", 8, 1),
    maxQueue: int("max-queue", 64, 0),
    graceS: a.optionalNumber("grace-s", { min: 0 }) ?? 1,
    shutdownRequests: int("shutdown-requests", 12, 0),
    precision: a.optionalChoice("precision", ["f16", "f32"] as const) ?? "f32",
    out: a.optionalString("out"),
  };
}

// ---- seeded randomness ----------------------------------------------------------------------

/** mulberry32: small, fast and good enough to make a request mix reproducible. */
class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = (seed * 0x9e3779b9) >>> 0;
  }
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

// ---- the request mix ------------------------------------------------------------------------

type Endpoint = "completions" | "chat" | "generate";
const ENDPOINTS: readonly Endpoint[] = ["completions", "chat", "generate"];
const PATHS: Record<Endpoint, string> = {
  completions: "/v1/completions",
  chat: "/v1/chat/completions",
  generate: "/v1/generate",
};

interface NormalSpec {
  kind: "normal";
  endpoint: Endpoint;
  stream: boolean;
  prompt: string;
  maxTokens: number;
  temperature: number;
}

interface DisconnectSpec {
  kind: "disconnect";
  endpoint: Endpoint;
  stream: boolean;
  prompt: string;
  bodyBytes: number;
  padWith: "user" | "spaces";
  delayMs: number;
}

interface HostileSpec {
  kind: "hostile";
  name: string;
  endpoint: Endpoint;
}

type Spec = NormalSpec | DisconnectSpec | HostileSpec;

function normalSpec(rng: Rng, minTokens: number, maxTokens: number): NormalSpec {
  return {
    kind: "normal",
    endpoint: rng.pick(ENDPOINTS),
    stream: rng.chance(0.5),
    prompt: rng.pick(PROMPTS),
    maxTokens: rng.int(minTokens, maxTokens),
    temperature: rng.pick([0, 0.7, 1]),
  };
}

function disconnectSpec(rng: Rng): DisconnectSpec {
  return {
    kind: "disconnect",
    endpoint: rng.pick(ENDPOINTS),
    stream: rng.chance(0.5),
    prompt: rng.pick(PROMPTS),
    bodyBytes: rng.pick([100, 2048, 64 << 10, 1 << 20]),
    padWith: rng.pick(["user", "spaces"] as const),
    delayMs: rng.int(0, 500),
  };
}

/** The k-th hostile request: the cases in turn (so a short run still sends each of them). */
function hostileSpec(rng: Rng, k: number): HostileSpec {
  const c = HOSTILE_CASES[k % HOSTILE_CASES.length];
  return { kind: "hostile", name: c.name, endpoint: rng.pick(c.endpoints ?? ENDPOINTS) };
}

/** The load phase's requests: 60% normal, 20% disconnects, 20% hostile. */
function planLoad(rng: Rng, n: number): Spec[] {
  let hostile = 0;
  return Array.from({ length: n }, () => {
    const r = rng.next();
    if (r < 0.6) return normalSpec(rng, 16, 160);
    return r < 0.8 ? disconnectSpec(rng) : hostileSpec(rng, hostile++);
  });
}

// ---- request bodies -------------------------------------------------------------------------

/** A generation body for an endpoint: the prompt (or one user message), ignore_eos. */
function generationBody(
  endpoint: Endpoint,
  prompt: string,
  maxTokens: number,
  stream: boolean,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  const input = endpoint === "chat"
    ? { messages: [{ role: "user", content: prompt }] }
    : { prompt };
  const usage = stream && endpoint !== "generate"
    ? { stream_options: { include_usage: true } }
    : {};
  return { ...input, max_tokens: maxTokens, ignore_eos: true, stream, ...usage, ...extra };
}

/** `body` as JSON of about `bytes` bytes: padded with a long `user` field or with whitespace. */
function paddedJson(body: Record<string, unknown>, bytes: number, how: "user" | "spaces"): string {
  const plain = JSON.stringify(body);
  const room = bytes - plain.length;
  if (room <= 0) return plain;
  if (how === "spaces") return `{${" ".repeat(room)}${plain.slice(1)}`;
  const overhead = JSON.stringify({ ...body, user: "" }).length - plain.length;
  return JSON.stringify({ ...body, user: "u".repeat(Math.max(0, room - overhead)) });
}

// ---- hostile bodies -------------------------------------------------------------------------

interface HostileBody {
  contentType: string;
  body: string | Uint8Array<ArrayBuffer>;
}

interface HostileCase {
  name: string;
  /** Endpoints it applies to (default: all three). */
  endpoints?: readonly Endpoint[];
  make(ep: Endpoint): HostileBody;
}

const enc = new TextEncoder();
const json = (body: unknown): HostileBody => ({
  contentType: "application/json",
  body: typeof body === "string" ? body : JSON.stringify(body),
});
/** A valid small body, with `extra` fields on top. */
const small = (ep: Endpoint, extra: Record<string, unknown> = {}) =>
  generationBody(ep, "Once upon a time", 4, false, extra);
const inputKey = (ep: Endpoint) => ep === "chat" ? "messages" : "prompt";
const cached = <T>(make: () => T): () => T => {
  let v: T | undefined;
  return () => (v ??= make());
};
const bigPrompt = cached(() => "Once upon a time ".repeat(Math.ceil((2 << 20) / 17)));
const nested = cached(() => "[".repeat(100_000) + "]".repeat(100_000));
const oversized = cached(() =>
  enc.encode(paddedJson(small("completions"), (BODY_LIMIT_MB + 1) << 20, "user"))
);
const PROMPT_ENDPOINTS: readonly Endpoint[] = ["completions", "generate"];

const HOSTILE_CASES: readonly HostileCase[] = [
  { name: "malformed_json", make: (ep) => json(JSON.stringify(small(ep)).slice(0, -7)) },
  { name: "empty_body", make: () => json("") },
  { name: "json_array", make: () => json("[1, 2, 3]") },
  { name: "wrong_type_input", make: (ep) => json(small(ep, { [inputKey(ep)]: 5 })) },
  { name: "wrong_type_max_tokens", make: (ep) => json(small(ep, { max_tokens: "ten" })) },
  { name: "wrong_type_stream", make: (ep) => json(small(ep, { stream: "yes" })) },
  { name: "unknown_field", make: (ep) => json(small(ep, { frobnicate: true })) },
  {
    name: "huge_max_tokens",
    make: (ep) => json(JSON.stringify(small(ep)).replace('"max_tokens":4', '"max_tokens":1e400')),
  },
  { name: "overflow_max_tokens", make: (ep) => json(small(ep, { max_tokens: 1e15 })) },
  { name: "huge_temperature", make: (ep) => json(small(ep, { temperature: 1e308 })) },
  { name: "huge_seed", make: (ep) => json(small(ep, { seed: 1e30 })) },
  { name: "negative_max_tokens", make: (ep) => json(small(ep, { max_tokens: -5 })) },
  {
    name: "invalid_utf8",
    make: (ep) => {
      const [head, tail] = JSON.stringify(small(ep)).split("upon");
      const bytes = [...enc.encode(head), 0xff, 0xfe, 0xc3, 0x28, ...enc.encode(tail)];
      return { contentType: "application/json", body: new Uint8Array(bytes) };
    },
  },
  {
    name: "text_plain",
    make: (ep) => ({ contentType: "text/plain", body: JSON.stringify(small(ep)) }),
  },
  {
    name: "prompt_beyond_context",
    make: (ep) => json(generationBody(ep, bigPrompt(), 4, false)),
  },
  {
    name: "token_ids_outside_vocab",
    endpoints: PROMPT_ENDPOINTS,
    make: (ep) => json(small(ep, { prompt: [1, 2, 10_000_000] })),
  },
  {
    name: "negative_token_id",
    endpoints: PROMPT_ENDPOINTS,
    make: (ep) => json(small(ep, { prompt: [1, -3] })),
  },
  {
    name: "deeply_nested",
    make: (ep) => json(`{"${inputKey(ep)}": ${nested()}, "max_tokens": 4}`),
  },
  { name: "empty_messages", endpoints: ["chat"], make: () => json({ messages: [] }) },
  {
    name: "body_too_large",
    endpoints: ["completions"],
    make: () => ({ contentType: "application/json", body: oversized() }),
  },
];

// ---- the server process ---------------------------------------------------------------------

class ServerProcess {
  readonly stderrTail: string[] = [];
  exit: Deno.CommandStatus | null = null;
  readonly exited: Promise<Deno.CommandStatus>;
  #listening: Promise<string>;

  private constructor(readonly child: Deno.ChildProcess) {
    this.exited = child.status.then((s) => (this.exit = s));
    this.#listening = this.#readStderr();
  }

  static spawn(o: SoakOptions, chatTemplate: string): ServerProcess {
    const args = [
      "run",
      "-A",
      MAIN,
      ...["--model", o.model, "--precision", o.precision, "--host", "127.0.0.1", "--port", "0"],
      ...["--max-batch", `${o.maxBatch}`, "--max-queue", `${o.maxQueue}`],
      ...["--grace-s", `${o.graceS}`, "--max-body-mb", `${BODY_LIMIT_MB}`],
      ...["--chat-template", chatTemplate],
    ];
    const child = new Deno.Command(Deno.execPath(), {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    return new ServerProcess(child);
  }

  /** Keeps the last lines of the server's log; resolves with its URL once it listens. */
  async #readStderr(): Promise<string> {
    let resolveUrl!: (u: string) => void;
    const url = new Promise<string>((r) => (resolveUrl = r));
    (async () => {
      let buf = "";
      for await (const chunk of this.child.stderr.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        const lines = buf.split("\n");
        buf = lines.pop()!;
        for (const line of lines) {
          this.stderrTail.push(line);
          if (this.stderrTail.length > 40) this.stderrTail.shift();
          const m = /zigzag: listening on (http:\/\/\S+)/.exec(line);
          if (m) resolveUrl(m[1]);
        }
      }
    })().catch(() => {});
    return await url;
  }

  /** The URL once /health answers 200; throws if the server exits or `signal` fires first. */
  async ready(signal: AbortSignal): Promise<string> {
    const gone = this.exited.then((s) => {
      throw new Error(
        `the server exited with status ${s.code} before it was ready:\n` +
          this.stderrTail.join("\n"),
      );
    });
    const url = await Promise.race([this.#listening, gone, aborted(signal)]);
    for (;;) {
      const r = await Promise.race([
        fetch(`${url}/health`, { signal }).then(async (r) => (await r.body?.cancel(), r.status)),
        gone,
      ]);
      if (r === 200) return url;
      await sleep(100, signal);
    }
  }

  kill(signal: Deno.Signal): void {
    try {
      this.child.kill(signal);
    } catch { /* already gone */ }
  }
}

// ---- small helpers --------------------------------------------------------------------------

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

function aborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    const fail = () => reject(new Error("time limit reached"));
    if (signal.aborted) fail();
    else signal.addEventListener("abort", fail, { once: true });
  });
}

async function getJson(url: string, signal: AbortSignal): Promise<unknown> {
  const r = await fetch(url, { signal: AbortSignal.any([signal, AbortSignal.timeout(10_000)]) });
  return await r.json();
}

/** The `data:` payloads of an SSE body, `[DONE]` included. */
function sseData(text: string): string[] {
  return text.split("\n\n").filter((e) => e.trim() !== "").map((e) =>
    e.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n")
  );
}

function percentiles(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))];
  const r = (v: number) => Math.round(v * 10) / 10;
  return s.length === 0
    ? { n: 0 }
    : { n: s.length, p50: r(at(0.5)), p90: r(at(0.9)), p99: r(at(0.99)), max: r(s.at(-1)!) };
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

// ---- the health prober ----------------------------------------------------------------------

/** GET /health every 100 ms; each answer slower than 1 s (or none in 10 s) is a stall. */
class Prober {
  readonly latencies: number[] = [];
  readonly stalls: { atS: number; ms: number }[] = [];
  #stop = new AbortController();
  #loop: Promise<void> | null = null;

  constructor(readonly url: string, readonly t0: number) {}

  start(): void {
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
  }

  get maxMs(): number {
    return this.latencies.reduce((a, b) => Math.max(a, b), 0);
  }

  async #run(): Promise<void> {
    while (!this.#stop.signal.aborted) {
      const start = performance.now();
      try {
        const r = await fetch(`${this.url}/health`, {
          signal: AbortSignal.any([this.#stop.signal, AbortSignal.timeout(10_000)]),
        });
        await r.body?.cancel();
      } catch {
        if (this.#stop.signal.aborted) break;
      }
      const ms = performance.now() - start;
      this.latencies.push(ms);
      if (ms > STALL_MS) this.stalls.push({ atS: (start - this.t0) / 1000, ms: Math.round(ms) });
      await sleep(PROBE_EVERY_MS, this.#stop.signal);
    }
  }
}

// ---- clients --------------------------------------------------------------------------------

/** What a generation request came back with, streamed or not. */
interface Answer {
  status: number;
  /** The final finish_reason (null when there was none). */
  finish: string | null;
  /** Completion tokens (usage, or token_ids counted for /v1/generate streams). */
  tokens: number | null;
  /** A stream that ended with `data: [DONE]`. */
  done: boolean;
  /** An error object: the JSON body's, or an SSE error event's. */
  error: { message?: string; code?: string | null } | null;
  /** The fetch failed (connection refused or reset, timeout). */
  failed?: string;
  ms: number;
}

type Json = Record<string, unknown>;

function answerOfJson(status: number, body: Json, ms: number): Answer {
  const choice = (body.choices as Json[] | undefined)?.[0];
  const usage = body.usage as Json | undefined;
  return {
    status,
    finish: (choice?.finish_reason ?? body.finish_reason ?? null) as string | null,
    tokens: (usage?.completion_tokens ?? null) as number | null,
    done: false,
    error: (body.error ?? null) as Answer["error"],
    ms,
  };
}

function answerOfStream(status: number, text: string, ms: number): Answer {
  const events = sseData(text);
  const a: Answer = { status, finish: null, tokens: null, done: false, error: null, ms };
  let ids = 0;
  let sawIds = false;
  for (const data of events) {
    if (data === "[DONE]") {
      a.done = true;
      continue;
    }
    let e: Json;
    try {
      e = JSON.parse(data);
    } catch {
      a.error = { message: `unparsable SSE event ${data.slice(0, 80)}` };
      continue;
    }
    if (e.error) a.error = e.error as Answer["error"];
    const f = (e.choices as Json[] | undefined)?.[0]?.finish_reason ?? e.finish_reason;
    if (f) a.finish = f as string;
    const usage = e.usage as Json | null | undefined;
    if (usage && typeof usage.completion_tokens === "number") a.tokens = usage.completion_tokens;
    if (Array.isArray(e.token_ids)) {
      ids += e.token_ids.length;
      sawIds = true;
    }
  }
  if (a.tokens === null && sawIds) a.tokens = ids;
  return a;
}

async function runNormal(url: string, s: NormalSpec, signal: AbortSignal): Promise<Answer> {
  const body = generationBody(s.endpoint, s.prompt, s.maxTokens, s.stream, {
    temperature: s.temperature,
  });
  const start = performance.now();
  const ms = () => performance.now() - start;
  try {
    const r = await fetch(url + PATHS[s.endpoint], {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.any([signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
    });
    const isStream = (r.headers.get("content-type") ?? "").includes("text/event-stream");
    let text = "";
    try {
      text = await r.text();
    } catch (e) {
      // A stream cut off mid-way: what arrived is judged (it lacks [DONE]).
      if (!isStream) throw e;
    }
    if (isStream) return answerOfStream(r.status, text, ms());
    try {
      return answerOfJson(r.status, JSON.parse(text), ms());
    } catch {
      return { ...answerOfJson(r.status, {}, ms()), failed: `not JSON: ${text.slice(0, 120)}` };
    }
  } catch (e) {
    return {
      status: 0,
      finish: null,
      tokens: null,
      done: false,
      error: null,
      failed: errorMessage(e),
      ms: ms(),
    };
  }
}

interface DisconnectResult {
  /** The status line's code, when an answer began before the close. */
  status: number | null;
  /** A whole non-streamed answer arrived before the close: nothing was abandoned. */
  answered: boolean;
  failed?: string;
}

/** A hand-written request on a raw TCP connection, closed `delayMs` after the body is sent. */
async function runDisconnect(
  port: number,
  s: DisconnectSpec,
  signal: AbortSignal,
): Promise<DisconnectResult> {
  const body = enc.encode(paddedJson(
    generationBody(s.endpoint, s.prompt, DISCONNECT_MAX_TOKENS, s.stream),
    s.bodyBytes,
    s.padWith,
  ));
  const head = enc.encode(
    `POST ${PATHS[s.endpoint]} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
  );
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
  } catch (e) {
    return { status: null, answered: false, failed: `connect: ${errorMessage(e)}` };
  }
  const close = () => {
    try {
      conn.close();
    } catch { /* closed */ }
  };
  signal.addEventListener("abort", close, { once: true });
  let received = "";
  const reading = (async () => {
    const buf = new Uint8Array(4096);
    const dec = new TextDecoder();
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) return;
      if (received.length < 8192) received += dec.decode(buf.subarray(0, n), { stream: true });
    }
  })().catch(() => {});
  try {
    await conn.write(head);
    for (let off = 0; off < body.length; off += 64 << 10) {
      await conn.write(body.subarray(off, off + (64 << 10)));
    }
  } catch (e) {
    close();
    return { status: null, answered: false, failed: `write: ${errorMessage(e)}` };
  }
  await sleep(s.delayMs, signal);
  close();
  signal.removeEventListener("abort", close);
  await reading;
  const m = /^HTTP\/1\.1 (\d{3})/.exec(received);
  const status = m ? Number(m[1]) : null;
  const answered = status === 200 && !s.stream && /\r\n\r\n\{.*\}/s.test(received);
  return { status, answered };
}

interface HostileResult {
  status: number;
  /** Why the answer breaks the contract (null: a 4xx with an OpenAI-shaped JSON error). */
  problem: string | null;
  ms: number;
}

async function runHostile(
  url: string,
  s: HostileSpec,
  signal: AbortSignal,
): Promise<HostileResult> {
  const c = HOSTILE_CASES.find((h) => h.name === s.name)!;
  const { contentType, body } = c.make(s.endpoint);
  const start = performance.now();
  let status = 0;
  let text = "";
  try {
    const r = await fetch(url + PATHS[s.endpoint], {
      method: "POST",
      headers: { "content-type": contentType },
      body,
      signal: AbortSignal.any([signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
    });
    status = r.status;
    text = await r.text();
  } catch (e) {
    return { status, problem: `no answer: ${errorMessage(e)}`, ms: performance.now() - start };
  }
  return { status, problem: hostileProblem(status, text), ms: performance.now() - start };
}

function hostileProblem(status: number, text: string): string | null {
  let err: Json | undefined;
  try {
    err = JSON.parse(text)?.error;
  } catch {
    return `${status} with a non-JSON body: ${text.slice(0, 100)}`;
  }
  if (status < 400 || status >= 500) return `${status}: ${text.slice(0, 160)}`;
  const shaped = err && typeof err.message === "string" && typeof err.type === "string" &&
    "param" in err && "code" in err;
  return shaped ? null : `${status} without {error: {message, type, param, code}}: ${text}`;
}

// ---- bookkeeping ----------------------------------------------------------------------------

interface Failure {
  check: string;
  request: string;
  detail: string;
}

class Tally {
  ok = 0;
  disconnects = 0;
  abandoned = 0;
  hostile = 0;
  hostileAccepted = 0;
  busy = 0;
  normalFailed = 0;
  atShutdown = 0;
  engineErrors = 0;
  /** Normal answers the engine ran to an end (complete or not), to tell abandoned ones apart in
   * the finish counters. */
  engineFinished = 0;
  readonly failures: Failure[] = [];
  readonly latencies = new Map<string, number[]>();
  readonly shutdownOutcomes = new Map<string, number>();

  get issued(): number {
    return this.ok + this.normalFailed + this.busy + this.disconnects + this.hostile +
      this.atShutdown;
  }

  count(check: string): number {
    return this.failures.filter((f) => f.check === check).length;
  }

  fail(check: string, request: string, detail: string): void {
    this.failures.push({ check, request, detail });
  }

  latency(kind: string, ms: number): void {
    const xs = this.latencies.get(kind) ?? [];
    xs.push(ms);
    this.latencies.set(kind, xs);
  }
}

function describe(s: Spec): string {
  const path = PATHS[s.endpoint];
  if (s.kind === "normal") {
    return `${path}${s.stream ? " stream" : ""} max_tokens=${s.maxTokens}`;
  }
  if (s.kind === "disconnect") {
    return `disconnect ${path}${s.stream ? " stream" : ""} ${s.bodyBytes} B after ${s.delayMs} ms`;
  }
  return `hostile ${s.name} ${path}`;
}

/** Why a normal answer is not complete (null when it is). */
function incomplete(s: NormalSpec, a: Answer): string | null {
  if (a.finish !== "length") return `finish_reason ${a.finish}`;
  if (a.tokens !== s.maxTokens) return `${a.tokens} of ${s.maxTokens} tokens`;
  if (s.stream && !a.done) return "the stream ended without [DONE]";
  return null;
}

function answerText(a: Answer): string {
  if (a.failed) return a.failed;
  const err = a.error ? ` error ${a.error.code}: ${a.error.message}` : "";
  return `${a.status} finish=${a.finish} tokens=${a.tokens}${when(a.done, " [DONE]")}${err}`;
}

const when = (cond: boolean, text: string) => cond ? text : "";

/** A normal request of the load phase: complete, or a truncation / server error. */
function checkNormal(t: Tally, spec: NormalSpec, a: Answer): void {
  const what = describe(spec);
  const kind = `${spec.endpoint}${spec.stream ? "_stream" : ""}`;
  if (a.status === 429) {
    t.busy++;
    return;
  }
  t.latency(kind, a.ms);
  if (a.status === 200 || a.error?.code === "engine_error") t.engineFinished++;
  if (a.failed || a.status !== 200 || a.error) {
    t.normalFailed++;
    // An engine failure (500 engine_error, or an SSE error event) is reported, not a soak failure.
    if (a.error?.code === "engine_error") t.engineErrors++;
    else t.fail("server_error", what, answerText(a));
    return;
  }
  const why = incomplete(spec, a);
  if (why) {
    t.normalFailed++;
    t.fail("silent_truncation", what, `${why} (${answerText(a)})`);
  } else {
    t.ok++;
  }
}

function checkDisconnect(t: Tally, spec: DisconnectSpec, r: DisconnectResult): void {
  t.disconnects++;
  if (r.failed) return t.fail("server_error", describe(spec), r.failed);
  if (r.status === 429) return void t.busy++;
  if (r.status !== null && r.status !== 200) {
    return t.fail("server_error", describe(spec), `answered ${r.status} before the close`);
  }
  if (r.answered) t.engineFinished++;
  else t.abandoned++;
}

function checkHostile(t: Tally, spec: HostileSpec, r: HostileResult): void {
  t.hostile++;
  t.latency("hostile", r.ms);
  if (r.status === 200) t.hostileAccepted++;
  if (r.problem) t.fail("hostile", describe(spec), r.problem);
}

/** A request cut by SIGTERM: complete, or ended explicitly (503, "abort", an error event). */
function checkShutdown(t: Tally, spec: NormalSpec, a: Answer): void {
  t.atShutdown++;
  const refused = a.status === 503 && a.error?.code === "shutting_down";
  let outcome: string | null = null;
  if (refused) outcome = "503 shutting_down";
  else if (a.status === 200 && incomplete(spec, a) === null) outcome = "complete";
  else if (a.status === 200 && a.finish === "abort" && (!spec.stream || a.done)) outcome = "abort";
  else if (a.status === 200 && spec.stream && a.done && a.error) outcome = "error event";
  const key = outcome ?? "truncated";
  t.shutdownOutcomes.set(key, (t.shutdownOutcomes.get(key) ?? 0) + 1);
  if (outcome === null) {
    t.fail("silent_truncation", `at shutdown: ${describe(spec)}`, answerText(a));
  }
}

// ---- phases ---------------------------------------------------------------------------------

interface Run {
  opts: SoakOptions;
  url: string;
  port: number;
  server: ServerProcess;
  tally: Tally;
  /** Fires at the time limit: everything stops. */
  hard: AbortSignal;
  t0: number;
}

/** The load phase: `specs` from `concurrency` workers, until done or `stopAt` (ms, performance). */
async function loadPhase(run: Run, specs: Spec[], stopAt: number): Promise<number> {
  const { tally, hard } = run;
  const bar = progress("soak");
  let next = 0;
  let done = 0;
  const note = () =>
    `ok ${tally.ok} disc ${tally.disconnects} hostile ${tally.hostile} fail ${tally.failures.length}`;
  const worker = async () => {
    while (next < specs.length && !hard.aborted && performance.now() < stopAt && !run.server.exit) {
      const spec = specs[next++];
      const answered = spec.kind === "normal"
        ? runNormal(run.url, spec, hard)
        : spec.kind === "disconnect"
        ? runDisconnect(run.port, spec, hard)
        : runHostile(run.url, spec, hard);
      const result = await answered;
      // What the time limit cut short says nothing about the server.
      if (hard.aborted) break;
      if (spec.kind === "normal") checkNormal(tally, spec, result as Answer);
      else if (spec.kind === "disconnect") checkDisconnect(tally, spec, result as DisconnectResult);
      else checkHostile(tally, spec, result as HostileResult);
      bar.update(++done, specs.length, note());
    }
  };
  await Promise.all(Array.from({ length: run.opts.concurrency }, worker));
  bar.done(note());
  return done;
}

interface CacheStats {
  sequences: number;
  total: { pages_used: number; pages_free: number };
  pages_total: number;
  requests: { running: number; waiting: number };
}

/** Polls /v1/cache/stats until nothing is running, queued or cached (or `until`). */
async function drain(
  run: Run,
  until: number,
): Promise<{ drained: boolean; stats: CacheStats | null }> {
  for (;;) {
    let st: CacheStats;
    try {
      st = await getJson(`${run.url}/v1/cache/stats`, run.hard) as CacheStats;
    } catch {
      return { drained: false, stats: null };
    }
    const idle = st.sequences === 0 && st.requests.running === 0 && st.requests.waiting === 0;
    if (idle || performance.now() > until || run.hard.aborted) return { drained: idle, stats: st };
    await sleep(200, run.hard);
  }
}

/** `zigzag_requests_finished_total` by finish reason. */
async function finishedCounters(run: Run): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  try {
    const r = await fetch(`${run.url}/metrics`, { signal: run.hard });
    const re = /^zigzag_requests_finished_total\{finish_reason="([^"]+)"\} (\S+)$/gm;
    for (const m of (await r.text()).matchAll(re)) out[m[1]] = Number(m[2]);
  } catch { /* judged by the drain */ }
  return out;
}

interface ShutdownReport {
  requests: number;
  exitCode: number | null;
  exitMs: number | null;
  killed: boolean;
}

/** Long requests, then SIGTERM: each must end explicitly, the server exit 0 in grace + 5 s. */
async function shutdownPhase(run: Run, rng: Rng): Promise<ShutdownReport> {
  const { opts, tally } = run;
  const specs = Array.from({ length: opts.shutdownRequests }, () => normalSpec(rng, 100, 400));
  const answers = specs.map((spec) => runNormal(run.url, spec, run.hard));
  // Wait until the engine holds them all (running or queued), then a little decode.
  const until = performance.now() + 10_000;
  while (performance.now() < until && !run.hard.aborted) {
    const st = await getJson(`${run.url}/v1/cache/stats`, run.hard).catch(() => null) as
      | CacheStats
      | null;
    if (!st || st.requests.running + st.requests.waiting >= specs.length) break;
    await sleep(50, run.hard);
  }
  await sleep(rng.int(100, 500), run.hard);
  const sent = performance.now();
  run.server.kill("SIGTERM");
  const limit = sleep((opts.graceS + 5) * 1000, run.hard).then(() => null);
  const exit = await Promise.race([run.server.exited, limit]);
  const exitMs = exit ? Math.round(performance.now() - sent) : null;
  if (!exit) run.server.kill("SIGKILL");
  const results = await Promise.all(answers);
  results.forEach((a, i) => checkShutdown(tally, specs[i], a));
  return { requests: specs.length, exitCode: exit?.code ?? null, exitMs, killed: !exit };
}

// ---- report ---------------------------------------------------------------------------------

interface Report {
  schema: "zigzag-soak/1";
  options: SoakOptions;
  duration_s: number;
  /** Load-phase requests sent (of --requests), and whether the time limit cut the run. */
  load_requests_sent: number;
  time_limit_hit: boolean;
  counts: Record<string, number>;
  checks: Record<string, number | boolean | null>;
  finished_counters: Record<string, number>;
  health: { probes: number; max_ms: number; stalls: { atS: number; ms: number }[] };
  latency_ms: Record<string, ReturnType<typeof percentiles>>;
  shutdown: ShutdownReport & { outcomes: Record<string, number> };
  failures: Failure[];
  server_log_tail: string[];
}

/** The checks that fail the run, by name: value (non-zero / true fails). */
function failingChecks(r: Report): string[] {
  return Object.entries(r.checks).filter(([k, v]) =>
    k !== "health_max_ms" && (v === true || (typeof v === "number" && v > 0))
  ).map(([k]) => k);
}

function summaryLine(r: Report): string {
  const c = r.counts;
  const k = r.checks;
  const n = (x: unknown) => x ?? "n/a";
  const requests = [
    `${c.ok} ok`,
    when(c.failed > 0, `${c.failed} failed`),
    when(c.busy > 0, `${c.busy} busy (429)`),
    `${c.disconnects} disconnects`,
    `${c.hostile} hostile`,
    `${c.at_shutdown} at shutdown`,
  ].filter(Boolean).join(", ");
  const checks = [
    `${n(k.uncancelled_abandoned)} uncancelled abandoned`,
    `${k.health_stalls} /health stalls > 1 s (max ${k.health_max_ms} ms)`,
    `${k.silent_truncations} silent truncations`,
    `${n(k.pages_held_after_drain)} pages held after drain`,
    when((k.hostile_failures as number) > 0, `${k.hostile_failures} hostile failures`),
    when((k.server_errors as number) > 0, `${k.server_errors} server errors`),
    when(c.engine_errors > 0, `${c.engine_errors} engine errors`),
    when(k.not_drained === true, "the server did not drain"),
    when(k.server_crashed === true, "the server crashed"),
    when(k.unclean_exit === true, `shutdown: ${exitText(r.shutdown)}`),
    when(r.time_limit_hit, "stopped at the time limit"),
    when(
      !r.time_limit_hit && r.load_requests_sent < r.options.requests,
      `the time limit cut the load at ${r.load_requests_sent} of ${r.options.requests}`,
    ),
  ].filter(Boolean).join(", ");
  return `soak: ${c.total} requests in ${Math.round(r.duration_s)} s (${requests}): ${checks}`;
}

function exitText(sh: ShutdownReport): string {
  if (sh.killed) return "no exit in time (killed)";
  return `exit status ${sh.exitCode} after ${sh.exitMs} ms`;
}

function markdown(r: Report): string {
  const rows = Object.entries(r.checks).map(([k, v]) =>
    `| ${k.replaceAll("_", " ")} | ${v} | ${
      k === "health_max_ms" ? "" : v === true || (typeof v === "number" && v > 0) ? "FAIL" : "ok"
    } |`
  );
  const lat = Object.entries(r.latency_ms).map(([k, p]) =>
    `| ${k} | ${p.n} | ${p.p50 ?? ""} | ${p.p90 ?? ""} | ${p.p99 ?? ""} | ${p.max ?? ""} |`
  );
  const failures = r.failures.slice(0, 50).map((f) =>
    `- ${f.check}: ${f.request}: ${f.detail.replaceAll("|", "\\|")}`
  );
  return [
    "# Soak",
    "",
    summaryLine(r),
    "",
    "| check | value | |",
    "| --- | --- | --- |",
    ...rows,
    "",
    "| latency, ms | n | p50 | p90 | p99 | max |",
    "| --- | --- | --- | --- | --- | --- |",
    ...lat,
    "",
    ...(failures.length ? ["Failures:", "", ...failures, ""] : []),
  ].join("\n");
}

async function writeReport(dir: string, r: Report): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/soak.json`, JSON.stringify(r, null, 2) + "\n");
  await Deno.writeTextFile(`${dir}/soak.md`, await denoFmt(markdown(r), "md"));
}

function printFailures(r: Report): void {
  const shown = r.failures.slice(0, 30);
  for (const f of shown) console.error(`soak: FAIL ${f.check}: ${f.request}: ${f.detail}`);
  if (r.failures.length > shown.length) {
    console.error(`soak: ... and ${r.failures.length - shown.length} more (see soak.json)`);
  }
  for (const st of r.health.stalls.slice(0, 10)) {
    console.error(`soak: FAIL /health stall: ${st.ms} ms at ${st.atS.toFixed(1)} s`);
  }
  if (r.checks.server_crashed) {
    console.error(`soak: FAIL the server exited early; its last lines:`);
    for (const line of r.server_log_tail.slice(-10)) console.error(`  ${line}`);
  }
}

// ---- main -----------------------------------------------------------------------------------

async function soak(opts: SoakOptions): Promise<number> {
  const t0 = performance.now();
  const deadline = t0 + opts.timeLimitS * 1000;
  const hardStop = new AbortController();
  const timer = setTimeout(() => hardStop.abort(), opts.timeLimitS * 1000);
  const rng = new Rng(opts.seed);
  const specs = planLoad(rng, opts.requests);
  const template = await Deno.makeTempFile({ prefix: "soak-chat-", suffix: ".jinja" });
  await Deno.writeTextFile(template, JOIN_TEMPLATE);
  const server = ServerProcess.spawn(opts, template);
  const tally = new Tally();
  let prober: Prober | null = null;
  let report: Report | null = null;
  try {
    const url = await server.ready(hardStop.signal);
    const run: Run = {
      opts,
      url,
      port: Number(new URL(url).port),
      server,
      tally,
      hard: hardStop.signal,
      t0,
    };
    prober = new Prober(url, t0);
    prober.start();
    // Keep time for the drain and the shutdown (its ramp, the grace, the exit) after the load.
    const shutdownMs = 20_000 + 2000 * opts.graceS;
    const reserve = Math.min(opts.timeLimitS * 500, 30_000 + shutdownMs);
    const sent = await loadPhase(run, specs, deadline - reserve);
    let crashed = server.exit !== null;
    let drained = false;
    let shutdownRan = false;
    let stats: CacheStats | null = null;
    let counters: Record<string, number> = {};
    let shutdown: ShutdownReport = { requests: 0, exitCode: null, exitMs: null, killed: false };
    if (!crashed && !hardStop.signal.aborted) {
      ({ drained, stats } = await drain(run, deadline - Math.min(reserve / 2, shutdownMs)));
      counters = await finishedCounters(run);
      await prober.stop();
      crashed = server.exit !== null;
      if (!crashed && !hardStop.signal.aborted) {
        shutdown = await shutdownPhase(run, rng);
        shutdownRan = true;
      }
    }
    await prober.stop();
    report = buildReport(run, {
      sent,
      crashed,
      drained,
      stats,
      counters,
      shutdown,
      shutdownRan,
      prober,
      timeLimitHit: hardStop.signal.aborted,
    });
  } finally {
    clearTimeout(timer);
    await prober?.stop();
    if (!server.exit) {
      server.kill("SIGKILL");
      await server.exited;
    }
    await Deno.remove(template).catch(() => {});
  }
  const r = report!;
  printFailures(r);
  if (opts.out) await writeReport(opts.out, r);
  console.log(summaryLine(r));
  return failingChecks(r).length > 0 ? 1 : 0;
}

interface Outcome {
  sent: number;
  crashed: boolean;
  drained: boolean;
  stats: CacheStats | null;
  counters: Record<string, number>;
  shutdown: ShutdownReport;
  shutdownRan: boolean;
  prober: Prober;
  timeLimitHit: boolean;
}

function buildReport(run: Run, o: Outcome): Report {
  const t = run.tally;
  // The cancel and page checks need a drained server (whose counters were then read).
  const evaluated = o.drained;
  // After the drain every request the engine took has ended: cancelled, or otherwise (length,
  // stop, error). What ended otherwise and was not answered to a client was abandoned and never
  // cancelled. Abandoned requests in neither count never reached the engine (e.g. a 1 MB body
  // whose connection closed before the server had read it): nothing ran, nothing to cancel.
  const cancelled = o.counters.cancelled ?? 0;
  const ended = Object.entries(o.counters).filter(([k]) => k !== "cancelled")
    .reduce((a, [, v]) => a + v, 0);
  const uncancelled = Math.max(0, ended - t.engineFinished - t.hostileAccepted);
  const notStarted = Math.max(0, t.abandoned - cancelled - uncancelled);
  const latency: Report["latency_ms"] = {};
  for (const [k, xs] of [...t.latencies].sort()) latency[k] = percentiles(xs);
  latency.health = percentiles(o.prober.latencies);
  return {
    schema: "zigzag-soak/1",
    options: run.opts,
    duration_s: (performance.now() - run.t0) / 1000,
    load_requests_sent: o.sent,
    time_limit_hit: o.timeLimitHit,
    counts: {
      total: t.issued,
      ok: t.ok,
      failed: t.normalFailed,
      busy: t.busy,
      disconnects: t.disconnects,
      abandoned: t.abandoned,
      abandoned_cancelled: cancelled,
      abandoned_not_started: evaluated ? notStarted : 0,
      hostile: t.hostile,
      hostile_accepted: t.hostileAccepted,
      at_shutdown: t.atShutdown,
      engine_errors: t.engineErrors,
    },
    checks: {
      uncancelled_abandoned: evaluated ? uncancelled : null,
      health_stalls: o.prober.stalls.length,
      health_max_ms: Math.round(o.prober.maxMs),
      silent_truncations: t.count("silent_truncation"),
      pages_held_after_drain: o.stats?.total.pages_used ?? null,
      hostile_failures: t.count("hostile"),
      server_errors: t.count("server_error"),
      not_drained: !o.crashed && !o.timeLimitHit && !o.drained,
      server_crashed: o.crashed,
      unclean_exit: o.shutdownRan && (o.shutdown.killed || o.shutdown.exitCode !== 0),
      time_limit_hit: o.timeLimitHit,
    },
    finished_counters: o.counters,
    health: {
      probes: o.prober.latencies.length,
      max_ms: Math.round(o.prober.maxMs),
      stalls: o.prober.stalls,
    },
    latency_ms: latency,
    shutdown: { ...o.shutdown, outcomes: Object.fromEntries(t.shutdownOutcomes) },
    failures: t.failures,
    server_log_tail: run.server.stderrTail,
  };
}

if (import.meta.main) {
  runMain(async () => {
    const opts = parseOptions(Deno.args);
    if (opts === "help") {
      console.log(USAGE);
      return 0;
    }
    return await soak(opts);
  }, "run `deno task soak --help` for usage");
}
