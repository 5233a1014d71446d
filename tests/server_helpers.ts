// Shared set-up for the server tests: a server on an ephemeral loopback port serving stories260K
// in f32 (so outputs compare exactly with the CLI's), SSE parsing and the CLI as an oracle.

import { type ServerConfig, serverConfig } from "../server/config.ts";
import { type Server, startServer } from "../server/serve.ts";
import { JOIN_TEMPLATE } from "../bench/story_prompts.ts";

export { JOIN_TEMPLATE, PROMPTS } from "../bench/story_prompts.ts";

/** A temporary file holding JOIN_TEMPLATE, for --chat-template. */
export async function joinTemplateFile(): Promise<string> {
  const file = await Deno.makeTempFile({ suffix: ".jinja" });
  await Deno.writeTextFile(file, JOIN_TEMPLATE);
  return file;
}

export const shared = (p: string) =>
  decodeURIComponent(new URL(`../../shared/${p}`, import.meta.url).pathname);
export const STORIES = shared("models/stories260K");
export const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname);

/** WebGPU keeps device handles and async polling alive across tests; Deno.serve keeps its
 * listener until shutdown. */
export const serverTest = { sanitizeResources: false, sanitizeOps: false };

/** The environment child processes run with. */
export const ENV = { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", NO_COLOR: "1" };

/** A child process whose stderr lines are collected as they come. */
export function spawn(args: string[], env: Record<string, string> = {}) {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    env: { ...ENV, ...env },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const done = (async () => {
    let buf = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      const parts = buf.split("\n");
      buf = parts.pop()!;
      lines.push(...parts);
    }
  })();
  const waitFor = async (re: RegExp, ms = 20000): Promise<RegExpExecArray> => {
    const end = performance.now() + ms;
    while (performance.now() < end) {
      for (const l of lines) {
        const m = re.exec(l);
        if (m) return m;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`no line matching ${re}; got:\n${lines.join("\n")}`);
  };
  return { child, lines, done, waitFor };
}

export async function waitHealthy(url: string) {
  for (let i = 0; i < 500; i++) {
    try {
      const r = await fetch(`${url}/health`);
      await r.body?.cancel();
      if (r.status === 200) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("never healthy");
}

export interface TestServer extends Server {
  url: string;
  close(): Promise<void>;
}

export async function startTestServer(o: Partial<ServerConfig> = {}): Promise<TestServer> {
  const s = startServer(
    serverConfig({ model: STORIES, precision: "f32", port: 0, ...o }),
    { log: () => {} },
  );
  await s.loaded;
  return { ...s, url: s.url!, close: () => s.shutdown(0) };
}

export function post(url: string, body: unknown, headers: Record<string, string> = {}) {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** The `data:` payloads of an SSE body, `[DONE]` included. */
export function sseData(text: string): string[] {
  return text.split("\n\n").filter((e) => e.trim() !== "").map((e) =>
    e.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n")
  );
}

export interface CliResult {
  prompt_ids: number[];
  generated_ids: number[];
  text: string;
  finish_reason: string;
}

/** Runs `cli/generate.ts --json` (greedy, f32) and returns its result. */
export async function runCli(
  prompt: string,
  maxTokens: number,
  extra: string[] = [],
): Promise<CliResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}cli/generate.ts`,
      "--model",
      STORIES,
      "--prompt",
      prompt,
      "--max-tokens",
      String(maxTokens),
      "--precision",
      "f32",
      "--json",
      ...extra,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`CLI failed: ${new TextDecoder().decode(out.stderr)}`);
  const line = stdout.split("\n").filter((l) => l.startsWith("{")).pop()!;
  return JSON.parse(line);
}
