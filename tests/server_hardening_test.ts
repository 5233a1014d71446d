// What a careful operator expects of an exposed server: JSON bodies only (415 otherwise, which
// stops cross-site form and text/plain POSTs), CORS for --allowed-origins only, unknown fields
// rejected with a suggestion, invalid UTF-8 rejected, X-Api-Key besides Bearer, and a warning when
// the key is on the command line.

import assert from "node:assert/strict";
import { createApp, sameKey } from "../server/app.ts";
import {
  ConfigError,
  parseServerConfig,
  type ServerConfig,
  serverConfig,
  startupWarnings,
  USAGE,
} from "../server/config.ts";
import { ServerContext } from "../server/context.ts";
import { closest } from "../server/errors.ts";
import {
  joinTemplateFile,
  post,
  ROOT,
  serverTest,
  startTestServer,
  STORIES,
} from "./server_helpers.ts";

const KEY = "hardening-key-4711";
const AUTH = { authorization: `Bearer ${KEY}` };
const SITE = "https://app.example.com";
const EVIL = "https://evil.example";
const JSON_CT = { "content-type": "application/json" };

/** An OpenAI-shaped error: status, param, code, and the message starting with the param. */
async function expectError(
  res: Response,
  status: number,
  param: string,
  code: string,
  says?: RegExp,
): Promise<string> {
  const body = await res.json();
  assert.equal(res.status, status, JSON.stringify(body));
  const e = body.error;
  assert.equal(e.param, param, e.message);
  assert.equal(e.code, code, e.message);
  assert.ok(e.message.startsWith(`${param}:`), e.message);
  if (says) assert.match(e.message, says);
  return e.message;
}

function config(argv: string[], env: Record<string, string> = {}): ServerConfig {
  const cfg = parseServerConfig(["--model", STORIES, ...argv], (n) => env[n]);
  assert.notEqual(cfg, "help");
  return cfg as ServerConfig;
}

Deno.test("--allowed-origins: parsed to browser Origin form, from flag or variable", () => {
  assert.equal(config([]).allowedOrigins, undefined);
  assert.deepEqual(
    config([
      "--allowed-origins",
      "https://App.Example.com/, http://localhost:5173,https://x.org:443",
    ])
      .allowedOrigins,
    ["https://app.example.com", "http://localhost:5173", "https://x.org"],
  );
  const fromEnv = config([], { ZIGZAG_ALLOWED_ORIGINS: SITE });
  assert.deepEqual(fromEnv.allowedOrigins, [SITE]);
  assert.equal(fromEnv.sources["allowed-origins"], "ZIGZAG_ALLOWED_ORIGINS");
  const bad = (argv: string[], env: Record<string, string>, line: RegExp) =>
    assert.throws(() => config(argv, env), (e) => e instanceof ConfigError && line.test(e.line));
  bad(
    ["--allowed-origins", "app.example.com"],
    {},
    /^zigzag: --allowed-origins=app\.example\.com: `app\.example\.com` is not an origin/,
  );
  bad(
    [],
    { ZIGZAG_ALLOWED_ORIGINS: "https://a.com/app" },
    /^zigzag: ZIGZAG_ALLOWED_ORIGINS=.*: `https:\/\/a\.com\/app` is not an origin/,
  );
  bad(["--allowed-origins", "ftp://a.com"], {}, /is not an origin/);
  bad(["--allowed-origins", " , "], {}, /--allowed-origins= , : expected a comma-separated list/);
  assert.match(USAGE, /--allowed-origins LIST .*\[ZIGZAG_ALLOWED_ORIGINS\]/s);
  assert.match(USAGE, /X-Api-Key: KEY/);
});

for (
  const [name, variable, key] of [
    ["prefix-cache", "ZIGZAG_PREFIX_CACHE", "prefixCache"],
    ["overlap-decode", "ZIGZAG_OVERLAP_DECODE", "overlapDecode"],
  ] as const
) {
  Deno.test(`--no-${name} and ${variable}: on by default, off by flag or variable`, () => {
    const flag = `--no-${name}`;
    assert.equal(config([])[key], true);
    assert.equal(config([flag])[key], false);
    assert.equal(config([], { [variable]: "0" })[key], false);
    assert.equal(config([], { [variable]: "on" })[key], true);
    assert.equal(config([flag], { [variable]: "1" })[key], false);
    assert.throws(
      () => config([], { [variable]: "maybe" }),
      (e) => e instanceof ConfigError && e.line.startsWith(`zigzag: ${variable}=maybe: must be`),
    );
    assert.throws(
      () => config([`${flag}=2`]),
      (e) => e instanceof ConfigError && e.line.includes(`${flag} takes no value`),
    );
    assert.match(USAGE, new RegExp(`${flag} .*\\[${variable}=0\\]`, "s"));
  });
}

Deno.test("--compensation and ZIGZAG_COMPENSATION: the plan's unless given", () => {
  assert.equal(config([]).compensation, undefined);
  assert.equal(config(["--compensation"]).compensation, true);
  assert.equal(config([], { ZIGZAG_COMPENSATION: "1" }).compensation, true);
  assert.equal(config([], { ZIGZAG_COMPENSATION: "off" }).compensation, false);
  assert.throws(
    () => config([], { ZIGZAG_COMPENSATION: "maybe" }),
    (e) => e instanceof ConfigError && e.line.startsWith("zigzag: ZIGZAG_COMPENSATION=maybe"),
  );
  assert.throws(
    () => config(["--compensation=yes"]),
    (e) => e instanceof ConfigError && e.line.includes("--compensation takes no value"),
  );
  assert.match(USAGE, /--compensation .*\[ZIGZAG_COMPENSATION=1\]/s);
});

Deno.test("--decode-steps: a count or auto", () => {
  assert.equal(config([]).decodeSteps, 8);
  assert.equal(config(["--decode-steps", "3"]).decodeSteps, 3);
  assert.equal(config(["--decode-steps", "auto"]).decodeSteps, "auto");
  assert.equal(config([], { ZIGZAG_DECODE_STEPS: "auto" }).decodeSteps, "auto");
  assert.throws(
    () => config(["--decode-steps", "fast"]),
    (e) => e instanceof ConfigError && e.line.includes("--decode-steps"),
  );
  assert.match(USAGE, /--decode-steps N\|auto/);
});

Deno.test("--api-key on the command line: a start-up warning naming ZIGZAG_API_KEY", () => {
  const flag = startupWarnings(config(["--api-key", KEY]));
  assert.equal(flag.length, 1);
  assert.match(flag[0], /^zigzag: warning: --api-key .*\/proc\/PID\/cmdline.*set ZIGZAG_API_KEY/);
  assert.ok(!flag[0].includes(KEY), "the warning does not repeat the key");
  assert.deepEqual(startupWarnings(config([], { ZIGZAG_API_KEY: KEY })), []);
  assert.deepEqual(startupWarnings(config([])), []);
});

Deno.test("main.ts logs the --api-key warning, and not for ZIGZAG_API_KEY", async () => {
  // A model that is not there: the process exits after the (cheap) preflight.
  const run = async (args: string[], env: Record<string, string>) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}main.ts`, "--port", "0", "--model", "/nonexistent/m", ...args],
      env: { NO_COLOR: "1", ...env },
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: out.code, lines: new TextDecoder().decode(out.stderr).trim().split("\n") };
  };
  const [flag, env] = await Promise.all([
    run(["--api-key", KEY], {}),
    run([], { ZIGZAG_API_KEY: KEY }),
  ]);
  assert.equal(flag.code, 1, flag.lines.join("\n"));
  assert.match(flag.lines[0], /^zigzag: warning: --api-key .*ZIGZAG_API_KEY/);
  assert.match(flag.lines[1], /^zigzag: --model=\/nonexistent\/m: no model found/);
  assert.equal(env.code, 1, env.lines.join("\n"));
  assert.deepEqual(env.lines.filter((l) => /warning/.test(l)), [], env.lines.join("\n"));
  assert.match(env.lines[0], /no model found/);
});

Deno.test("sameKey and closest", async () => {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(KEY)),
  );
  assert.equal(await sameKey(KEY, digest), true);
  assert.equal(await sameKey(KEY.slice(0, -1), digest), false);
  assert.equal(await sameKey(`${KEY}x`, digest), false);
  assert.equal(await sameKey("", digest), false);
  const known = ["temperature", "max_tokens", "top_p", "prompt", "max_completion_tokens"];
  assert.equal(closest("temprature", known), "temperature");
  assert.equal(closest("max_new_tokens", known), "max_tokens");
  assert.equal(closest("maxTokens", known), "max_tokens");
  assert.equal(closest("top-p", known), "top_p");
  assert.equal(closest("prompts", known), "prompt");
  assert.equal(closest("frobnicate", known), undefined);
});

Deno.test("without --allowed-origins: every preflight is a 403 without CORS headers", async () => {
  const app = createApp(new ServerContext(serverConfig({ model: STORIES })));
  const res = await app.request("/v1/completions", {
    method: "OPTIONS",
    headers: { origin: SITE, "access-control-request-method": "POST" },
  });
  await expectError(res, 403, "Origin", "origin_not_allowed", /app\.example\.com/);
  assert.equal(res.headers.get("access-control-allow-origin"), null);
  assert.equal(res.headers.get("access-control-allow-methods"), null);
  // A request with an Origin still works (non-browser clients may send one), but says nothing
  // that would let a page read it.
  const h = await app.request("/health", { headers: { origin: SITE } });
  assert.equal(h.status, 503);
  assert.equal(h.headers.get("access-control-allow-origin"), null);
});

Deno.test(
  "hardening: Content-Type, CORS, unknown fields, UTF-8, X-Api-Key",
  serverTest,
  async (t) => {
    const template = await joinTemplateFile();
    const server = await startTestServer({
      apiKey: KEY,
      allowedOrigins: [SITE],
      chatTemplate: template,
      maxBodyMb: 0.01,
    });
    const url = (p: string) => `${server.url}${p}`;
    const send = (path: string, body: BodyInit, headers: Record<string, string> = {}) =>
      fetch(url(path), { method: "POST", body, headers: { ...AUTH, ...headers } });
    const TOKENIZE = JSON.stringify({ prompt: "Once upon a time" });
    try {
      await t.step(
        "Content-Type: text/plain, none and forms get 415 on every JSON route",
        async () => {
          for (
            const path of [
              "/v1/generate",
              "/v1/completions",
              "/v1/chat/completions",
              "/tokenize",
              "/detokenize",
            ]
          ) {
            // A string body: fetch says text/plain;charset=UTF-8, as a cross-site page can.
            await expectError(
              await send(path, TOKENIZE),
              415,
              "Content-Type",
              "unsupported_media_type",
              /`text\/plain` is not supported; send `Content-Type: application\/json`/,
            );
          }
          // A byte body: no Content-Type at all.
          await expectError(
            await send("/tokenize", new TextEncoder().encode(TOKENIZE)),
            415,
            "Content-Type",
            "unsupported_media_type",
            /^Content-Type: missing/,
          );
          await expectError(
            await send("/tokenize", new URLSearchParams({ prompt: "x" })),
            415,
            "Content-Type",
            "unsupported_media_type",
            /application\/x-www-form-urlencoded/,
          );
          await expectError(
            await send("/tokenize", TOKENIZE, {
              "content-type": "application/json; charset=latin1",
            }),
            415,
            "Content-Type",
            "unsupported_media_type",
            /charset `latin1`/,
          );
        },
      );

      await t.step(
        "Content-Type: application/json with parameters, any case, is accepted",
        async () => {
          for (
            const ct of [
              "application/json",
              "Application/JSON; charset=UTF-8",
              'application/json;charset="utf-8"',
            ]
          ) {
            const res = await send("/tokenize", TOKENIZE, { "content-type": ct });
            assert.equal(res.status, 200, ct);
            assert.ok((await res.json()).count > 1, ct);
          }
        },
      );

      await t.step(
        "unknown fields: 400 naming the field, with the known one it resembles",
        async () => {
          const cases: { path: string; body: unknown; param: string; says: RegExp }[] = [
            {
              path: "/v1/generate",
              body: { prompt: "x", temprature: 0.5 },
              param: "temprature",
              says: /^temprature: unknown field; did you mean `temperature`\?$/,
            },
            {
              path: "/v1/completions",
              body: { prompt: "x", max_new_tokens: 5 },
              param: "max_new_tokens",
              says: /did you mean `max_tokens`\?/,
            },
            // The misspelling, not the "prompt is required" it causes.
            {
              path: "/v1/completions",
              body: { prompts: "x" },
              param: "prompts",
              says: /did you mean `prompt`\?/,
            },
            // Only fields the request does not already set are suggested.
            {
              path: "/v1/generate",
              body: { prompt: "x", temperature: 0, temprature: 0 },
              param: "temprature",
              says: /^temprature: unknown field$/,
            },
            {
              path: "/v1/generate",
              body: { prompt: "x", frobnicate: 1, zork: 2 },
              param: "frobnicate",
              says: /^frobnicate: unknown field \(also unknown: `zork`\)$/,
            },
            {
              path: "/v1/chat/completions",
              body: { messages: [{ role: "user", content: "hi", nmae: "a" }] },
              param: "messages[0].nmae",
              says: /did you mean `name`\?/,
            },
            {
              path: "/v1/chat/completions",
              body: {
                messages: [{ role: "user", content: [{ type: "text", txt: "hi" }] }],
              },
              param: "messages[0].content[0].txt",
              says: /did you mean `text`\?/,
            },
            {
              path: "/v1/chat/completions",
              body: {
                messages: [{ role: "user", content: "hi" }],
                stream_options: { include_usage: true, continuous_usage_stats: true },
              },
              param: "stream_options.continuous_usage_stats",
              says: /unknown field/,
            },
            {
              path: "/tokenize",
              body: { messages: [{ role: "user", content: "hi", extra: 1 }] },
              param: "messages[0].extra",
              says: /unknown field/,
            },
            {
              path: "/detokenize",
              body: { tokens: [1], skip_special_tokens: true },
              param: "skip_special_tokens",
              says: /unknown field/,
            },
          ];
          for (const c of cases) {
            await expectError(
              await post(url(c.path), c.body, AUTH),
              400,
              c.param,
              "unknown_field",
              c.says,
            );
          }
          // An unsupported response_format names its type, not the schema that comes with it.
          await expectError(
            await post(url("/v1/chat/completions"), {
              messages: [{ role: "user", content: "hi" }],
              response_format: { type: "json_schema", json_schema: {} },
            }, AUTH),
            400,
            "response_format.type",
            "invalid_value",
            /only response_format \{type: "text"\} is supported/,
          );
        },
      );

      await t.step("every field accepted before is still accepted", async () => {
        const sampling = {
          model: "stories260K",
          max_tokens: 2,
          temperature: 0,
          top_p: 1,
          top_k: 0,
          min_p: 0,
          seed: 1,
          stop_token_ids: [],
          ignore_eos: true,
          stream: false,
          stream_options: null,
          presence_penalty: 0,
          frequency_penalty: 0,
          repetition_penalty: 1,
          logit_bias: {},
          n: 1,
          user: "u",
        };
        const c = await post(url("/v1/completions"), {
          ...sampling,
          prompt: "x",
          stop: ["zz"],
          logprobs: 0,
          echo: false,
          suffix: null,
          best_of: 1,
        }, AUTH);
        assert.equal(c.status, 200, await c.clone().text());
        assert.equal((await c.json()).usage.completion_tokens, 2);
        const ch = await post(url("/v1/chat/completions"), {
          ...sampling,
          stream_options: { include_usage: null },
          messages: [{ role: "user", content: [{ type: "text", text: "hi" }], name: "me" }],
          max_completion_tokens: 2,
          stop: "zz",
          logprobs: false,
          top_logprobs: 0,
          add_generation_prompt: true,
          tools: [],
          response_format: { type: "text" },
        }, AUTH);
        assert.equal(ch.status, 200, await ch.clone().text());
        assert.equal((await ch.json()).usage.completion_tokens, 2);
        const g = await post(url("/v1/generate"), {
          ...sampling,
          prompt: "x",
          stop: ["zz", 0],
          logprobs: true,
        }, AUTH);
        assert.equal(g.status, 200, await g.clone().text());
        assert.equal((await g.json()).logprobs.length, 2);
        const tk = await post(url("/tokenize"), {
          model: null,
          prompt: "x",
          add_special_tokens: false,
        }, AUTH);
        assert.equal(tk.status, 200);
        const tm = await post(url("/tokenize"), {
          messages: [{ role: "user", content: "x" }],
          add_generation_prompt: false,
        }, AUTH);
        assert.equal(tm.status, 200);
        const dt = await post(url("/detokenize"), {
          model: "stories260K",
          tokens: (await tk.json()).tokens,
        }, AUTH);
        // The tokenizer's leading space (sentencepiece) is part of the text.
        assert.match((await dt.json()).prompt, /^ ?x$/);
      });

      await t.step(
        "invalid UTF-8: 400 on body; valid multi-byte text passes; 413 still first",
        async () => {
          const bytes = (s: string, bad: number[]) => {
            const [a, b] = s.split("|").map((p) => new TextEncoder().encode(p));
            return new Uint8Array([...a, ...bad, ...b]);
          };
          for (const bad of [[0xff], [0xc3], [0xed, 0xa0, 0x80]]) {
            await expectError(
              await send("/tokenize", bytes('{"prompt": "a|b"}', bad), JSON_CT),
              400,
              "body",
              "invalid_utf8",
              /not valid UTF-8/,
            );
          }
          const ok = await send(
            "/tokenize",
            new TextEncoder().encode('{"prompt": "héllo — ünïcode"}'),
            JSON_CT,
          );
          assert.equal(ok.status, 200);
          assert.ok((await ok.json()).count > 1);
          const big = bytes(`{"prompt": "${"x".repeat(20_000)}|"}`, [0xff]);
          await expectError(
            await send("/tokenize", big, JSON_CT),
            413,
            "body",
            "body_too_large",
            /exceeds/,
          );
        },
      );

      await t.step("API key: Bearer or X-Api-Key; wrong keys of any length are 401", async () => {
        const tok = (h: Record<string, string>) =>
          fetch(url("/tokenize"), {
            method: "POST",
            body: TOKENIZE,
            headers: { ...JSON_CT, ...h },
          });
        assert.equal((await tok(AUTH)).status, 200);
        const x = await tok({ "x-api-key": KEY });
        assert.equal(x.status, 200);
        assert.ok((await x.json()).count > 1);
        for (
          const wrong of ["", "h", KEY.slice(0, -1), `${KEY}0`, KEY.toUpperCase(), "k".repeat(4096)]
        ) {
          await expectError(
            await tok({ "x-api-key": wrong }),
            401,
            "Authorization",
            "invalid_api_key",
            /invalid API key/,
          );
        }
        await expectError(
          await tok({ authorization: `Bearer ${KEY}x` }),
          401,
          "Authorization",
          "invalid_api_key",
        );
        await expectError(
          await tok({}),
          401,
          "Authorization",
          "invalid_api_key",
          /`X-Api-Key: <key>`/,
        );
      });

      await t.step("CORS: a listed origin's preflight and requests get its headers", async () => {
        // No key: a browser's preflight never carries one.
        const pre = await fetch(url("/v1/chat/completions"), {
          method: "OPTIONS",
          headers: {
            origin: SITE,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-stainless-os",
          },
        });
        assert.equal(pre.status, 204);
        assert.equal(pre.headers.get("access-control-allow-origin"), SITE);
        assert.equal(pre.headers.get("access-control-allow-methods"), "GET, POST, OPTIONS");
        assert.equal(
          pre.headers.get("access-control-allow-headers"),
          "Authorization, Content-Type, X-Api-Key, x-stainless-os",
        );
        assert.equal(pre.headers.get("vary"), "Origin, Access-Control-Request-Headers");
        assert.equal(pre.headers.get("access-control-max-age"), "600");
        await pre.body?.cancel();

        const res = await send("/tokenize", TOKENIZE, { ...JSON_CT, origin: SITE });
        assert.equal(res.status, 200);
        assert.equal(res.headers.get("access-control-allow-origin"), SITE);
        assert.equal(res.headers.get("access-control-expose-headers"), "Retry-After");
        assert.match(res.headers.get("vary")!, /\bOrigin\b/);
        assert.ok((await res.json()).count > 1);
        // Errors too, so the page can read why.
        const denied = await fetch(url("/tokenize"), {
          method: "POST",
          body: TOKENIZE,
          headers: { ...JSON_CT, origin: SITE },
        });
        assert.equal(denied.headers.get("access-control-allow-origin"), SITE);
        await expectError(denied, 401, "Authorization", "invalid_api_key");
        const stream = await post(
          url("/v1/generate"),
          { prompt: "x", max_tokens: 2, stream: true },
          { ...AUTH, origin: SITE },
        );
        assert.equal(stream.headers.get("access-control-allow-origin"), SITE);
        assert.match(await stream.text(), /data: \[DONE\]/);
      });

      await t.step("CORS: another origin gets a 403 preflight and no CORS headers", async () => {
        const pre = await fetch(url("/v1/chat/completions"), {
          method: "OPTIONS",
          headers: { origin: EVIL, "access-control-request-method": "POST" },
        });
        assert.equal(pre.headers.get("access-control-allow-origin"), null);
        assert.equal(pre.headers.get("access-control-allow-methods"), null);
        assert.equal(pre.headers.get("access-control-allow-headers"), null);
        assert.equal(pre.headers.get("vary"), "Origin");
        await expectError(pre, 403, "Origin", "origin_not_allowed", /evil\.example/);
        const res = await send("/tokenize", TOKENIZE, { ...JSON_CT, origin: EVIL });
        assert.equal(res.status, 200);
        assert.equal(res.headers.get("access-control-allow-origin"), null);
        assert.match(res.headers.get("vary")!, /\bOrigin\b/);
        await res.body?.cancel();
        const h = await fetch(url("/health"), { headers: { origin: EVIL } });
        assert.equal(h.headers.get("access-control-allow-origin"), null);
        await h.body?.cancel();
      });
    } finally {
      await server.close();
      await Deno.remove(template);
    }
  },
);

Deno.test("--kv-dtype / ZIGZAG_KV_DTYPE: one of f16, f32, int8, int4, named when wrong", () => {
  assert.equal(config([]).kvDtype, undefined);
  assert.equal(config(["--kv-dtype", "int4"]).kvDtype, "int4");
  const fromEnv = config([], { ZIGZAG_KV_DTYPE: "int8" });
  assert.equal(fromEnv.kvDtype, "int8");
  assert.equal(fromEnv.sources["kv-dtype"], "ZIGZAG_KV_DTYPE");
  const bad = (argv: string[], env: Record<string, string>, line: RegExp) =>
    assert.throws(() => config(argv, env), (e) => e instanceof ConfigError && line.test(e.line));
  bad(["--kv-dtype", "int3"], {}, /^zigzag: --kv-dtype=int3: must be one of f16, f32, int8, int4/);
  bad([], { ZIGZAG_KV_DTYPE: "q4" }, /^zigzag: ZIGZAG_KV_DTYPE=q4: must be one of/);
  assert.match(USAGE, /--kv-dtype f16\|f32\|int8\|int4 .*\[ZIGZAG_KV_DTYPE\]/s);
});
