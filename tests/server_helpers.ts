// Shared set-up for the server tests: a server on an ephemeral loopback port serving stories260K
// in f32 (so outputs compare exactly with the CLI's), SSE parsing and the CLI as an oracle.

import { type ServerConfig, serverConfig } from "../server/config.ts";
import { type Server, startServer } from "../server/serve.ts";

export const shared = (p: string) =>
  decodeURIComponent(new URL(`../../shared/${p}`, import.meta.url).pathname);
export const STORIES = shared("models/stories260K");
export const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname);

/** WebGPU keeps device handles and async polling alive across tests; Deno.serve keeps its
 * listener until shutdown. */
export const serverTest = { sanitizeResources: false, sanitizeOps: false };

/** A chat template for stories260K, which has none (it is not a chat model): the messages'
 * contents joined by spaces, so a one-message chat prompts exactly like a completion. */
export const JOIN_TEMPLATE =
  "{%- for m in messages %}{{ m.content }}{% if not loop.last %} {% endif %}{% endfor %}";

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

/** Prompts for the batching tests: different lengths and openings. */
export const PROMPTS = [
  "Once upon a time",
  "The cat",
  "Lily and Tom went to the park",
  "One day, a little bird",
  "The sun was shining and",
  "Ben had a red ball",
  "There was a big tree",
  "Mom said",
  "The dog ran fast",
  "A girl named Sue",
  "It was a rainy day",
  "The little boy wanted to",
  "Sam saw a frog",
  "In the forest there lived",
  "The princess looked at",
  "Tim and his friend",
];
