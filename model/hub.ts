// Hugging Face Hub downloads into the cache layout `huggingface_hub` uses, so a model fetched here
// is found by the Python tools too, and the other way round:
//
//   $HF_HUB_CACHE (default $HF_HOME/hub, $HF_HOME default ~/.cache/huggingface)
//     models--{org}--{name}/
//       refs/{revision}                  the commit the revision pointed at
//       blobs/{etag}                     file contents (sha256 for LFS files, git sha1 otherwise)
//       blobs/{etag}.incomplete          a download in progress (resumed with a Range request)
//       snapshots/{commit}/{file}        symlinks to ../../blobs/{etag}
//       .no_exist/{commit}/{file}        optional files the repo does not have
//
// Files: `{endpoint}/{repo}/resolve/{revision}/{file}`; a HEAD request (redirects not followed)
// gives X-Repo-Commit and the etag and size (X-Linked-Etag / X-Linked-Size for LFS files). The
// endpoint is $HF_ENDPOINT (default https://huggingface.co) and $HF_TOKEN, when set, is sent as a
// bearer token. Offline ($HF_HUB_OFFLINE=1, or the endpoint cannot be reached), the snapshot the
// revision last pointed at is used, and a missing file is an error that names it.

export class HubError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HubError";
  }
}

export interface HubOptions {
  /** Default $HF_ENDPOINT, else https://huggingface.co. */
  endpoint?: string;
  /** Default $HF_TOKEN. */
  token?: string;
  /** The hub cache directory; default $HF_HUB_CACHE, else $HF_HOME/hub. */
  cacheDir?: string;
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  /** Use the cache only (default: $HF_HUB_OFFLINE is 1 or true). */
  offline?: boolean;
  /** Bytes of `file` downloaded so far, of `total`. */
  onProgress?: (file: string, done: number, total: number) => void;
  /** A file download starts (`resumeFrom` > 0 when resuming). */
  onFile?: (file: string, size: number, resumeFrom: number) => void;
}

/** Files a model directory may have besides its weights; only config.json is required. */
const OPTIONAL = [
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
];

/** `org/name`, as the hub names repositories. */
export function isRepoId(s: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/.test(s) && !s.includes("..");
}

function env(name: string): string | undefined {
  try {
    const v = Deno.env.get(name);
    return v === "" ? undefined : v;
  } catch {
    return undefined;
  }
}

/** The hub cache directory the options and environment select. */
export function hubCacheDir(o: HubOptions = {}): string {
  if (o.cacheDir) return o.cacheDir;
  const hubCache = env("HF_HUB_CACHE");
  if (hubCache) return hubCache;
  const home = env("HF_HOME") ??
    `${env("XDG_CACHE_HOME") ?? `${env("HOME") ?? "."}/.cache`}/huggingface`;
  return `${home}/hub`;
}

interface FileMeta {
  commit: string;
  etag: string;
  size: number;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch {
    return -1;
  }
}

class Repo {
  readonly dir: string;
  readonly endpoint: string;
  readonly token: string | undefined;
  readonly revision: string;

  constructor(readonly repo: string, readonly o: HubOptions) {
    this.dir = `${hubCacheDir(o)}/models--${repo.replace("/", "--")}`;
    this.endpoint = (o.endpoint ?? env("HF_ENDPOINT") ?? "https://huggingface.co").replace(
      /\/+$/,
      "",
    );
    this.token = o.token ?? env("HF_TOKEN");
    this.revision = o.revision ?? "main";
  }

  url(file: string): string {
    return `${this.endpoint}/${this.repo}/resolve/${encodeURIComponent(this.revision)}/${
      file.split("/").map(encodeURIComponent).join("/")
    }`;
  }

  headers(): Record<string, string> {
    return this.token ? { authorization: `Bearer ${this.token}` } : {};
  }

  /** The file's commit, etag and size; null when the repo has no such file. */
  async head(file: string): Promise<FileMeta | null> {
    const res = await fetch(this.url(file), {
      method: "HEAD",
      redirect: "manual",
      headers: this.headers(),
    });
    await res.body?.cancel();
    const code = res.headers.get("x-error-code");
    if (res.status === 404 && code !== "RepoNotFound" && code !== "RevisionNotFound") return null;
    if (res.status === 401 || res.status === 403 || code === "RepoNotFound") {
      throw new HubError(
        `${this.repo}: ${file}: the hub answered ${res.status}` +
          (this.token
            ? " with HF_TOKEN set: the token has no access to this repository"
            : ": the repository does not exist, or it is gated or private and needs HF_TOKEN"),
      );
    }
    if (res.status === 404) {
      throw new HubError(`${this.repo}: revision ${this.revision} not found`);
    }
    if (!(res.status >= 200 && res.status < 400)) {
      throw new HubError(`${this.repo}: ${file}: the hub answered ${res.status} ${res.statusText}`);
    }
    const h = res.headers;
    const etag = (h.get("x-linked-etag") ?? h.get("etag") ?? "").replace(/^W\//, "").replace(
      /"/g,
      "",
    );
    const size = Number(h.get("x-linked-size") ?? h.get("content-length") ?? NaN);
    const commit = h.get("x-repo-commit") ?? "";
    if (!etag || !commit || !/^[0-9a-f]{40}$/.test(commit)) {
      throw new HubError(
        `${this.repo}: ${file}: the answer from ${this.endpoint} lacks X-Repo-Commit or ETag ` +
          "(is HF_ENDPOINT a Hugging Face hub?)",
      );
    }
    return { commit, etag, size };
  }

  /** Downloads into blobs/{etag}, resuming blobs/{etag}.incomplete. */
  async fetchBlob(file: string, meta: FileMeta): Promise<string> {
    const blob = `${this.dir}/blobs/${meta.etag}`;
    if (await exists(blob) && (Number.isNaN(meta.size) || await fileSize(blob) === meta.size)) {
      return blob;
    }
    await Deno.mkdir(`${this.dir}/blobs`, { recursive: true });
    const part = `${blob}.incomplete`;
    let have = Math.max(0, await fileSize(part));
    if (!Number.isNaN(meta.size) && have > meta.size) have = 0;
    this.o.onFile?.(file, meta.size, have);
    const headers = this.headers();
    if (have > 0) headers.range = `bytes=${have}-`;
    const res = await fetch(this.url(file), { headers });
    if (res.status === 416 && have === meta.size) {
      await res.body?.cancel();
    } else {
      if (!(res.status === 200 || res.status === 206)) {
        await res.body?.cancel();
        throw new HubError(
          `${this.repo}: ${file}: download failed: ${res.status} ${res.statusText}`,
        );
      }
      if (res.status === 200) have = 0; // the server ignored the range: start over
      const out = await Deno.open(part, { write: true, create: true, truncate: have === 0 });
      try {
        await out.seek(have, Deno.SeekMode.Start);
        const total = Number.isNaN(meta.size)
          ? have + Number(res.headers.get("content-length"))
          : meta.size;
        this.o.onProgress?.(file, have, total);
        for await (const chunk of res.body!) {
          let off = 0;
          while (off < chunk.length) off += await out.write(chunk.subarray(off));
          have += chunk.length;
          this.o.onProgress?.(file, have, total);
        }
      } catch (e) {
        throw new HubError(
          `${this.repo}: ${file}: download interrupted after ${have} bytes ` +
            `(${(e as Error).message}); run again to resume`,
        );
      } finally {
        out.close();
      }
    }
    const got = await fileSize(part);
    if (!Number.isNaN(meta.size) && got !== meta.size) {
      throw new HubError(
        `${this.repo}: ${file}: got ${got} of ${meta.size} bytes; run again to resume`,
      );
    }
    await Deno.rename(part, blob);
    return blob;
  }

  /** snapshots/{commit}/{file} -> ../../blobs/{etag} (a copy where symlinks are not allowed). */
  async link(commit: string, file: string, blob: string): Promise<void> {
    const path = `${this.dir}/snapshots/${commit}/${file}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    if (await exists(path)) await Deno.remove(path);
    const up = "../".repeat(file.split("/").length + 1);
    const target = `${up}blobs/${blob.slice(blob.lastIndexOf("/") + 1)}`;
    try {
      await Deno.symlink(target, path);
    } catch {
      await Deno.copyFile(blob, path);
    }
  }

  async writeRef(commit: string): Promise<void> {
    if (/^[0-9a-f]{40}$/.test(this.revision)) return;
    const ref = `${this.dir}/refs/${this.revision}`;
    await Deno.mkdir(ref.slice(0, ref.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(ref, commit);
  }

  async markMissing(commit: string, file: string): Promise<void> {
    const path = `${this.dir}/.no_exist/${commit}/${file}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeFile(path, new Uint8Array());
  }

  /** Gets one file into the snapshot; false when the repo has no such file. */
  async get(file: string, required: boolean, commit: { id: string }): Promise<boolean> {
    const meta = await this.head(file);
    if (!meta) {
      if (required) {
        throw new HubError(
          `${this.repo}: ${file} not found in the repository (revision ${this.revision})`,
        );
      }
      if (commit.id) await this.markMissing(commit.id, file);
      return false;
    }
    if (!commit.id) {
      commit.id = meta.commit;
      await this.writeRef(meta.commit);
    }
    const blob = await this.fetchBlob(file, meta);
    await this.link(commit.id, file, blob);
    return true;
  }
}

/** Shard file names of a safetensors index. */
async function shardsOf(indexPath: string): Promise<string[]> {
  const index = JSON.parse(await Deno.readTextFile(indexPath)) as {
    weight_map?: Record<string, string>;
  };
  return [...new Set(Object.values(index.weight_map ?? {}))].sort();
}

async function online(r: Repo): Promise<string> {
  const commit = { id: "" };
  await r.get("config.json", true, commit);
  for (const f of OPTIONAL) await r.get(f, false, commit);
  const snap = `${r.dir}/snapshots/${commit.id}`;
  if (await r.get("model.safetensors.index.json", false, commit)) {
    for (const shard of await shardsOf(`${snap}/model.safetensors.index.json`)) {
      await r.get(shard, true, commit);
    }
  } else {
    await r.get("model.safetensors", true, commit);
  }
  return snap;
}

async function fromCache(r: Repo, why: string): Promise<string> {
  let commit = r.revision;
  if (!/^[0-9a-f]{40}$/.test(commit)) {
    try {
      commit = (await Deno.readTextFile(`${r.dir}/refs/${r.revision}`)).trim();
    } catch {
      throw new HubError(
        `${why}, and ${r.repo} (revision ${r.revision}) is not in the cache: missing ` +
          `${r.dir}/refs/${r.revision}`,
      );
    }
  }
  const snap = `${r.dir}/snapshots/${commit}`;
  const need = ["config.json"];
  if (await exists(`${snap}/model.safetensors.index.json`)) {
    need.push(...await shardsOf(`${snap}/model.safetensors.index.json`));
  } else {
    need.push("model.safetensors");
  }
  for (const f of need) {
    if (await fileSize(`${snap}/${f}`) < 0) {
      throw new HubError(`${why}, and ${f} of ${r.repo} is not in the cache (${snap}/${f})`);
    }
  }
  return snap;
}

/**
 * Makes a hub repository's model files available locally and returns the snapshot directory
 * (which `loadModel` reads like any Hugging Face directory).
 */
export async function downloadModel(repo: string, o: HubOptions = {}): Promise<string> {
  const r = new Repo(repo, o);
  const offlineEnv = (env("HF_HUB_OFFLINE") ?? "").toLowerCase();
  const offline = o.offline ?? (offlineEnv === "1" || offlineEnv === "true");
  if (offline) return await fromCache(r, "offline (HF_HUB_OFFLINE)");
  try {
    return await online(r);
  } catch (e) {
    // No network: the cache may still have everything.
    if (e instanceof TypeError && !(e instanceof HubError)) {
      return await fromCache(r, `cannot reach ${r.endpoint} (${e.message})`);
    }
    throw e;
  }
}
