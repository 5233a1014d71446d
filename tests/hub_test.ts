// Hub downloads against a local server that serves the hub's file URLs
// (`/{repo}/resolve/{revision}/{file}`, LFS files redirected to a blob URL with X-Linked-Etag /
// X-Linked-Size, X-Repo-Commit everywhere, a bearer token required) with passkey-llama's files.

import assert from "node:assert/strict";
import { downloadModel, HubError, isRepoId } from "../model/hub.ts";
import { loadModel } from "../model/load.ts";
import { ConfigError } from "../server/config.ts";
import { serverTest, shared, startTestServer } from "./server_helpers.ts";
import { serverConfig } from "../server/config.ts";
import { startServer } from "../server/serve.ts";

const SRC = shared("models/passkey-llama");
const REPO = "zigzag-test/passkey-llama";
const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const TOKEN = "hf_test_token";
const FILES = [
  "config.json",
  "generation_config.json",
  "model.safetensors",
  "special_tokens_map.json",
  "tokenizer.json",
  "tokenizer_config.json",
];

async function hex(algo: string, data: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest(algo, data));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

interface FakeHub {
  url: string;
  requests: { method: string; path: string; range: string | null }[];
  /** The next LFS download sends half the bytes, then breaks the connection. */
  interruptNext: boolean;
  blobs: Map<string, Uint8Array<ArrayBuffer>>;
  lfsSha: string;
  close(): Promise<void>;
}

async function fakeHub(): Promise<FakeHub> {
  const files = new Map<string, { data: Uint8Array<ArrayBuffer>; etag: string; lfs: boolean }>();
  const blobs = new Map<string, Uint8Array<ArrayBuffer>>();
  let lfsSha = "";
  for (const f of FILES) {
    const data = await Deno.readFile(`${SRC}/${f}`);
    const lfs = f.endsWith(".safetensors");
    const etag = lfs ? await hex("SHA-256", data) : await hex("SHA-1", data);
    files.set(f, { data, etag, lfs });
    if (lfs) {
      blobs.set(etag, data);
      lfsSha = etag;
    }
  }
  const hub: FakeHub = {
    url: "",
    requests: [],
    interruptNext: false,
    blobs,
    lfsSha,
    close: () => server.shutdown(),
  };
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: () => {},
    // The interrupted transfer errors on purpose; nothing to log.
    onError: () => new Response(null, { status: 500 }),
  }, (req) => {
    const path = new URL(req.url).pathname;
    hub.requests.push({ method: req.method, path, range: req.headers.get("range") });
    const blob = /^\/lfs\/([0-9a-f]{64})$/.exec(path);
    if (blob) {
      const data = blobs.get(blob[1])!;
      const range = /^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "");
      const start = range ? Number(range[1]) : 0;
      const body = data.subarray(start);
      const headers = { "content-length": String(body.length) };
      if (hub.interruptNext) {
        hub.interruptNext = false;
        const half = body.subarray(0, body.length >> 1);
        const stream = new ReadableStream<Uint8Array>({
          async start(c) {
            c.enqueue(half);
            await new Promise((r) => setTimeout(r, 300));
            c.error(new Error("connection lost"));
          },
        });
        return new Response(stream, { status: range ? 206 : 200, headers });
      }
      return new Response(req.method === "HEAD" ? null : body, {
        status: range ? 206 : 200,
        headers,
      });
    }
    if (req.headers.get("authorization") !== `Bearer ${TOKEN}`) {
      return new Response("unauthorized", { status: 401 });
    }
    const m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (!m || m[1] !== REPO) {
      return new Response("no repo", { status: 404, headers: { "x-error-code": "RepoNotFound" } });
    }
    const f = files.get(decodeURIComponent(m[3]));
    if (!f) {
      return new Response("no file", {
        status: 404,
        headers: { "x-error-code": "EntryNotFound", "x-repo-commit": COMMIT },
      });
    }
    if (f.lfs) {
      return new Response(null, {
        status: 302,
        headers: {
          location: `${hub.url}/lfs/${f.etag}`,
          "x-repo-commit": COMMIT,
          "x-linked-etag": `"${f.etag}"`,
          "x-linked-size": String(f.data.length),
          etag: `"${f.etag}"`,
        },
      });
    }
    return new Response(req.method === "HEAD" ? null : f.data, {
      headers: {
        etag: `"${f.etag}"`,
        "x-repo-commit": COMMIT,
        "content-length": String(f.data.length),
      },
    });
  });
  hub.url = `http://127.0.0.1:${server.addr.port}`;
  return hub;
}

Deno.test("repo ids", () => {
  assert.ok(isRepoId("HuggingFaceTB/SmolLM2-135M-Instruct"));
  assert.ok(!isRepoId("../shared/models/stories260K"));
  assert.ok(!isRepoId("/models"));
  assert.ok(!isRepoId("stories260K"));
});

Deno.test("hub downloads: cache layout, reuse, resume, token, offline", serverTest, async (t) => {
  const hub = await fakeHub();
  const tmp = await Deno.makeTempDir();
  const opts = (cacheDir: string) => ({ endpoint: hub.url, token: TOKEN, cacheDir });
  const repoDir = (cacheDir: string) => `${cacheDir}/models--zigzag-test--passkey-llama`;
  try {
    const cache = `${tmp}/hub`;
    let snapshot = "";

    await t.step("downloads into the hub cache layout, with progress", async () => {
      const progress = new Map<string, [number, number]>();
      snapshot = await downloadModel(REPO, {
        ...opts(cache),
        onProgress: (f, done, total) => progress.set(f, [done, total]),
      });
      const dir = repoDir(cache);
      assert.equal(snapshot, `${dir}/snapshots/${COMMIT}`);
      assert.equal(await Deno.readTextFile(`${dir}/refs/main`), COMMIT);
      assert.equal(
        await Deno.readLink(`${snapshot}/model.safetensors`),
        `../../blobs/${hub.lfsSha}`,
      );
      const cfg = await Deno.readLink(`${snapshot}/config.json`);
      assert.match(cfg, /^\.\.\/\.\.\/blobs\/[0-9a-f]{40}$/);
      await Deno.stat(`${dir}/.no_exist/${COMMIT}/chat_template.jinja`);
      const size = hub.blobs.get(hub.lfsSha)!.length;
      assert.deepEqual(progress.get("model.safetensors"), [size, size]);
      // The snapshot is an ordinary Hugging Face directory.
      const [got, want] = await Promise.all([loadModel(snapshot), loadModel(SRC)]);
      assert.deepEqual(got.config, want.config);
      assert.deepEqual(got.weights.layers[3].wq.data, want.weights.layers[3].wq.data);
      assert.ok(got.tokenizer);
    });

    await t.step("a second call reuses the cache (no blob downloaded again)", async () => {
      hub.requests.length = 0;
      assert.equal(await downloadModel(REPO, opts(cache)), snapshot);
      assert.ok(hub.requests.every((r) => r.method === "HEAD"), JSON.stringify(hub.requests));
    });

    await t.step("an interrupted download resumes with a Range request", async () => {
      const c2 = `${tmp}/hub2`;
      hub.interruptNext = true;
      await assert.rejects(
        () => downloadModel(REPO, opts(c2)),
        (e: Error) =>
          e instanceof HubError && /model\.safetensors.*interrupted.*resume/.test(e.message),
      );
      const part = `${repoDir(c2)}/blobs/${hub.lfsSha}.incomplete`;
      const have = (await Deno.stat(part)).size;
      assert.ok(have > 0);
      hub.requests.length = 0;
      const snap = await downloadModel(REPO, opts(c2));
      const ranged = hub.requests.filter((r) => r.path.startsWith("/lfs/") && r.method === "GET");
      assert.deepEqual(ranged.map((r) => r.range), [`bytes=${have}-`]);
      const bytes = await Deno.readFile(`${snap}/model.safetensors`);
      assert.equal(await hex("SHA-256", bytes), hub.lfsSha);
    });

    await t.step("without HF_TOKEN the gated repo is refused, naming HF_TOKEN", async () => {
      await assert.rejects(
        () => downloadModel(REPO, { endpoint: hub.url, cacheDir: `${tmp}/hub3`, token: "" }),
        (e: Error) => e instanceof HubError && /HF_TOKEN/.test(e.message),
      );
    });

    await t.step("offline: the cache serves; a missing file is named", async () => {
      hub.requests.length = 0;
      assert.equal(await downloadModel(REPO, { ...opts(cache), offline: true }), snapshot);
      assert.equal(hub.requests.length, 0);
      // An unreachable endpoint falls back to the cache too.
      const unreachable = { ...opts(cache), endpoint: "http://127.0.0.1:9" };
      assert.equal(await downloadModel(REPO, unreachable), snapshot);
      await Deno.remove(`${snapshot}/model.safetensors`);
      await assert.rejects(
        () => downloadModel(REPO, { ...opts(cache), offline: true }),
        (e: Error) =>
          e instanceof HubError && /offline/.test(e.message) &&
          /model\.safetensors of zigzag-test\/passkey-llama is not in the cache/.test(e.message),
      );
      await assert.rejects(
        () => downloadModel(REPO, { ...opts(`${tmp}/empty`), offline: true }),
        (e: Error) => e instanceof HubError && /refs\/main/.test(e.message),
      );
    });

    await t.step("the server takes a repo id for --model", async () => {
      const server = await startTestServer({ model: REPO, hub: opts(`${tmp}/hub4`) });
      try {
        const models = await (await fetch(`${server.url}/v1/models`)).json();
        assert.equal(models.data[0].id, REPO);
        const golden = JSON.parse(await Deno.readTextFile(`${SRC}/golden.json`));
        const g0 = golden[0];
        const res = await fetch(`${server.url}/v1/generate`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: g0.prompt_ids, max_tokens: 8, ignore_eos: true }),
        });
        assert.deepEqual((await res.json()).token_ids, g0.greedy_ids.slice(0, 8));
      } finally {
        await server.close();
      }
      const bad = startServer(
        serverConfig({ model: "zigzag-test/nope", hub: opts(`${tmp}/hub5`) }),
        { log: () => {} },
      );
      await assert.rejects(
        () => bad.loaded,
        (e: Error) =>
          e instanceof ConfigError &&
          /^zigzag: --model=zigzag-test\/nope: no model found \(not a local path; /.test(e.line),
      );
      await bad.shutdown(0);
    });
  } finally {
    await hub.close();
    await Deno.remove(tmp, { recursive: true });
  }
});
