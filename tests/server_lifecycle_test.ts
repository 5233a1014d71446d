// main.ts as a process: start-up misconfiguration exits 1 with one line naming the flag or
// variable; SIGTERM lets a running request finish and exits 0; `deno serve main.ts` serves.

import assert from "node:assert/strict";
import { ENV, ROOT, serverTest, spawn, sseData, STORIES, waitHealthy } from "./server_helpers.ts";

const MAIN = `${ROOT}main.ts`;

async function runMain(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: { ...ENV, ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
  return { code: out.code, lines: text.split("\n").filter((l) => l.trim() !== "") };
}

Deno.test(
  "start-up misconfiguration: exit 1, one line naming the flag or variable",
  serverTest,
  async (t) => {
    const empty = await Deno.makeTempDir();
    const cases: { name: string; args: string[]; env?: Record<string, string>; line: RegExp }[] = [
      {
        name: "no model at ZIGZAG_MODEL",
        args: ["--port", "0"],
        env: { ZIGZAG_MODEL: "/nonexistent/models" },
        line: /^zigzag: ZIGZAG_MODEL=\/nonexistent\/models: no model found \(/,
      },
      {
        name: "an empty model directory",
        args: ["--port", "0", "--model", empty],
        line: /^zigzag: --model=.*: no model found \(.*config\.json/,
      },
      {
        name: "a plan file that does not exist",
        args: ["--port", "0"],
        env: { ZIGZAG_MODEL: STORIES, ZIGZAG_PLAN: "/nonexistent/plan.json" },
        line: /^zigzag: ZIGZAG_PLAN=\/nonexistent\/plan\.json: plan file not found/,
      },
      {
        name: "a bad number",
        args: ["--model", STORIES, "--max-batch", "lots"],
        line: /^zigzag: --max-batch=lots: must be an integer$/,
      },
      {
        name: "a KV budget too small",
        args: ["--port", "0", "--model", STORIES, "--kv-cache-mb", "0.001"],
        line: /^zigzag: --kv-cache-mb=0\.001: /,
      },
    ];
    try {
      // One after another would take a few seconds each; they are independent.
      const results = await Promise.all(cases.map((c) => runMain(c.args, c.env)));
      for (const [i, c] of cases.entries()) {
        await t.step(c.name, () => {
          const { code, lines } = results[i];
          assert.equal(code, 1, lines.join("\n"));
          assert.ok(lines.some((l) => c.line.test(l)), lines.join("\n"));
          assert.ok(
            lines.length <= 2,
            `at most the listening line and the error:\n${lines.join("\n")}`,
          );
          assert.ok(
            !lines.some((l) => /^\s+at |Uncaught|Stack backtrace/.test(l)),
            "no stack trace",
          );
        });
      }
    } finally {
      await Deno.remove(empty, { recursive: true });
    }
  },
);

Deno.test(
  "SIGTERM: a running request finishes, new ones are refused, exit 0",
  serverTest,
  async () => {
    const p = spawn([
      "run",
      "-A",
      MAIN,
      "--model",
      STORIES,
      "--port",
      "0",
      "--precision",
      "f32",
      "--grace-s",
      "30",
    ]);
    try {
      const url = (await p.waitFor(/listening on (http:\S+)/))[1];
      await waitHealthy(url);
      const res = await fetch(`${url}/v1/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          prompt: "Once upon a time",
          max_tokens: 120,
          ignore_eos: true,
          stream: true,
        }),
      });
      const reader = res.body!.getReader();
      let text = new TextDecoder().decode((await reader.read()).value);
      p.child.kill("SIGTERM");
      await p.waitFor(/SIGTERM: shutting down/);
      // New work is refused while the running request goes on.
      const health = await fetch(`${url}/health`).catch(() => null);
      if (health) {
        assert.equal(health.status, 503);
        assert.equal((await health.json()).status, "draining");
      }
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      const events = sseData(text);
      assert.equal(events.at(-1), "[DONE]");
      const ids = events.slice(0, -1).flatMap((e) => JSON.parse(e).token_ids ?? []);
      assert.equal(ids.length, 120);
      assert.equal(JSON.parse(events.at(-2)!).finish_reason, "length");
      const status = await p.child.status;
      assert.equal(status.code, 0, p.lines.join("\n"));
    } finally {
      try {
        p.child.kill("SIGKILL");
      } catch { /* exited */ }
      await p.done;
    }
  },
);

Deno.test("deno serve main.ts: settings from the environment", serverTest, async () => {
  const p = spawn(["serve", "-A", "--port", "0", MAIN], { ZIGZAG_MODEL: STORIES });
  try {
    const m = await p.waitFor(/Listening on (http:\/\/\S+?)\/?$/);
    const url = m[1].replace("0.0.0.0", "127.0.0.1");
    await waitHealthy(url);
    const r = await fetch(`${url}/v1/generate`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "The cat", max_tokens: 3 }),
    });
    assert.equal(r.status, 200);
    assert.equal((await r.json()).token_ids.length, 3);
    assert.ok(!p.lines.some((l) => /did you mean/.test(l)), p.lines.join("\n"));
    p.child.kill("SIGTERM");
    assert.equal((await p.child.status).code, 0);
  } finally {
    try {
      p.child.kill("SIGKILL");
    } catch { /* exited */ }
    await p.done;
  }
});
