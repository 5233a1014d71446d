// What every route reads: the configuration, the loading state and, once loaded, the session
// (model, plan, runner), the scheduler and the chat formatter.

import { type ChatFormatter, chatFormatter } from "../engine/chat.ts";
import { Scheduler } from "../engine/scheduler.ts";
import { type Session, setup } from "../engine/setup.ts";
import { GpuUnavailableError } from "../gpu/device.ts";
import { GREEDY } from "../gpu/runner.ts";
import { CacheExhaustedError } from "../gpu/kv_cache.ts";
import { downloadModel, HubError, isRepoId } from "../model/hub.ts";
import { ModelFormatError } from "../model/types.ts";
import { type Progress, progress } from "../engine/progress.ts";
import { PlanError } from "../plans/schema.ts";
import { ConfigError, type ServerConfig } from "./config.ts";
import { ApiError } from "./errors.ts";

export type ServerState = "loading" | "ready" | "failed" | "draining";

export interface Ready {
  session: Session;
  scheduler: Scheduler;
  chat: ChatFormatter | null;
}

export class ServerContext {
  state: ServerState = "loading";
  /** Why the server is not ready (for /health). */
  reason = "loading the model";
  ready: Ready | null = null;
  readonly modelId: string;
  readonly startedAt = Date.now();

  constructor(readonly config: ServerConfig, readonly log: (line: string) => void = () => {}) {
    this.modelId = config.servedModelName ??
      (isRepoId(config.model) && !localPathExists(config.model)
        ? config.model
        : modelName(config.model));
  }

  /** The loaded engine, or a 503 while loading or shutting down. */
  engine(): Ready {
    if (this.state === "draining") {
      throw new ApiError(
        503,
        "the server is shutting down",
        "service_unavailable",
        null,
        "shutting_down",
        {
          "Retry-After": "5",
        },
      );
    }
    if (!this.ready) {
      throw new ApiError(
        503,
        `the model is not ready: ${this.reason}`,
        "service_unavailable",
        null,
        "model_not_ready",
        { "Retry-After": "5" },
      );
    }
    return this.ready;
  }

  /**
   * The checks that need no loading: a local model path holds a model, a plan file exists.
   * The server announces itself only after them, so a misconfigured start logs one line.
   */
  async preflight(): Promise<void> {
    const cfg = this.config;
    const src = (k: string) => cfg.sources[k] ?? `--${k}`;
    if (localPathExists(cfg.model) || !isRepoId(cfg.model)) {
      await checkModelPath(cfg.model, src("model"));
    }
    const plan = cfg.plan;
    if (plan !== undefined && plan !== "full" && plan !== "streaming") {
      try {
        await Deno.stat(plan);
      } catch {
        throw new ConfigError(
          src("plan"),
          plan,
          `plan file not found: ${plan} (expected "full", "streaming" or a path to a plan JSON file)`,
        );
      }
    }
  }

  /** A local model path, or a hub repo id downloaded into the hub cache (HF_HOME). */
  async #resolveModel(source: string): Promise<string> {
    const cfg = this.config;
    if (localPathExists(cfg.model) || !isRepoId(cfg.model)) {
      await checkModelPath(cfg.model, source);
      return cfg.model;
    }
    this.reason = `downloading ${cfg.model} from the Hugging Face hub`;
    const tty = Deno.stderr.isTerminal();
    let bar: Progress | null = null;
    try {
      return await downloadModel(cfg.model, {
        ...cfg.hub,
        onFile: (file, size, from) => {
          bar?.done();
          bar = tty ? progress(`downloading ${file}`) : null;
          if (!tty) {
            this.log(
              `zigzag: downloading ${cfg.model}/${file} (${(size / 1e6).toFixed(1)} MB` +
                (from > 0 ? `, resuming at ${(from / 1e6).toFixed(1)} MB)` : ")"),
            );
          }
        },
        onProgress: (_file, done, total) => {
          bar?.update(done, total);
          this.reason = `downloading ${cfg.model}: ${_file} ${(done / 1e6).toFixed(1)} of ` +
            `${(total / 1e6).toFixed(1)} MB`;
        },
      });
    } catch (e) {
      if (e instanceof HubError) {
        throw new ConfigError(source, cfg.model, `no model found (not a local path; ${e.message})`);
      }
      throw e;
    } finally {
      (bar as Progress | null)?.done();
      this.reason = "loading the model";
    }
  }

  /** Names this server answers to in `model` fields. */
  acceptsModel(name: string): boolean {
    const m = this.config.model.replace(/\/+$/, "");
    return name === this.modelId || name === m || name === modelName(m);
  }

  /** Loads the model, builds the runner and the scheduler. Throws ConfigError naming the flag
   * or variable at fault. */
  async load(): Promise<Ready> {
    const cfg = this.config;
    const t0 = performance.now();
    const src = (k: string) => cfg.sources[k] ?? `--${k}`;
    const modelPath = await this.#resolveModel(src("model"));
    let chatOverride: { source: string; template: string } | undefined;
    if (cfg.chatTemplate !== undefined) {
      try {
        chatOverride = {
          source: cfg.chatTemplate,
          template: await Deno.readTextFile(cfg.chatTemplate),
        };
      } catch (e) {
        throw new ConfigError(
          src("chat-template"),
          cfg.chatTemplate,
          `cannot read: ${(e as Error).message}`,
        );
      }
    }
    let session: Session;
    try {
      session = await setup({
        model: modelPath,
        tokenizer: cfg.tokenizer,
        precision: cfg.precision,
        plan: cfg.plan,
        sink: cfg.sink,
        recent: cfg.recent,
        kvCacheMb: cfg.kvCacheMb,
        maxBatch: cfg.maxBatch,
        prefillChunk: cfg.prefillChunk,
        decodeSteps: cfg.decodeSteps,
        maxSeqLen: cfg.maxModelLen,
        quiet: !Deno.stderr.isTerminal(),
      });
    } catch (e) {
      throw explainLoadError(e, cfg, src);
    }
    await warmUp(session);
    let chat: ChatFormatter | null = null;
    const tok = session.model.tokenizer;
    if (tok) {
      try {
        chat = chatFormatter(tok, chatOverride);
      } catch (e) {
        throw new ConfigError(
          chatOverride ? src("chat-template") : src("model"),
          chatOverride ? cfg.chatTemplate : cfg.model,
          `bad chat template: ${(e as Error).message}`,
        );
      }
    } else if (chatOverride) {
      throw new ConfigError(src("chat-template"), cfg.chatTemplate, "the model has no tokenizer");
    }
    const scheduler = new Scheduler(session.runner, tok, {
      maxBatch: cfg.maxBatch,
      maxQueue: cfg.maxQueue,
      decodeSteps: cfg.decodeSteps,
    });
    this.ready = { session, scheduler, chat };
    if (this.state === "loading") this.state = "ready";
    this.reason = "";
    const r = session.runner;
    const c = session.model.config;
    if (cfg.plan === undefined) {
      this.log(
        "zigzag: no plan given: running `full` attention (every KV head keeps its whole cache). " +
          `Make a plan with \`deno task plan identify --model ${cfg.model} --budget 0.5 ` +
          "--out plan.json` (or, for a model with published DuoAttention gates, `deno task plan " +
          "import-duo --tsv full_attention_heads.tsv --budget 0.5 --mode zigzag --out plan.json`) " +
          "and pass --plan plan.json (or ZIGZAG_PLAN).",
      );
    }
    this.log(
      `zigzag: ready in ${((performance.now() - t0) / 1000).toFixed(1)}s: model ${this.modelId} ` +
        `(${c.architecture}, ${c.nLayers} layers, context ${r.maxSeqLen}), plan ${session.plan.mode}, ` +
        `${r.precision} on ${session.gpu.adapterName}, KV cache ${r.cache.numPages} pages of ` +
        `${r.cache.pageSize} tokens, max batch ${scheduler.maxBatch}, ${scheduler.decodeSteps} ` +
        `tokens per readback${chat ? `, chat template from ${chat.source}` : ""}`,
    );
    return this.ready;
  }
}

/** One short prefill and decode, so the first request does not pay for shader compilation. */
async function warmUp(s: Session): Promise<void> {
  const r = s.runner;
  const seq = r.cache.open();
  if (!seq) return;
  try {
    const n = Math.min(9, r.maxSeqLen - 2);
    const first = await r.prefill(
      seq,
      new Array(n).fill(Math.max(0, s.model.config.bosId)),
      GREEDY,
    );
    await r.decode(
      [{ seq, token: first.token, sampling: GREEDY }],
      Math.min(2, r.opts.maxDecodeSteps),
    );
  } finally {
    r.cache.close(seq);
  }
}

function localPathExists(p: string): boolean {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
}

/** `stories260K` from `../shared/models/stories260K/`, `SmolLM2-135M-Instruct` from a repo id. */
export function modelName(model: string): string {
  const m = model.replace(/\/+$/, "");
  return m.slice(m.lastIndexOf("/") + 1) || m;
}

/** Fails fast, naming the flag, when the model path holds no model at all. */
async function checkModelPath(model: string, source: string): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(model);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ConfigError(source, model, `no model found (no such file or directory)`);
    }
    throw new ConfigError(source, model, `no model found (${(e as Error).message})`);
  }
  if (!info.isDirectory) return;
  let hasModel = false;
  try {
    for await (const e of Deno.readDir(model)) {
      if (e.name === "config.json" || (e.name.endsWith(".bin") && !/^tok.*\.bin$/.test(e.name))) {
        hasModel = true;
        break;
      }
    }
  } catch (e) {
    throw new ConfigError(source, model, `no model found (${(e as Error).message})`);
  }
  if (!hasModel) {
    throw new ConfigError(
      source,
      model,
      "no model found (the directory has neither a Hugging Face config.json nor a llama2.c " +
        ".bin checkpoint)",
    );
  }
}

function explainLoadError(
  e: unknown,
  cfg: ServerConfig,
  src: (k: string) => string,
): Error {
  const msg = e instanceof Error ? e.message : String(e);
  if (e instanceof PlanError) return new ConfigError(src("plan"), cfg.plan, msg);
  if (e instanceof CacheExhaustedError) {
    return new ConfigError(src("kv-cache-mb"), cfg.kvCacheMb?.toString(), msg);
  }
  if (e instanceof GpuUnavailableError) return new ConfigError("WebGPU", undefined, msg);
  if (e instanceof ModelFormatError) {
    if (cfg.tokenizer !== undefined && msg.includes(cfg.tokenizer)) {
      return new ConfigError(src("tokenizer"), cfg.tokenizer, msg);
    }
    return new ConfigError(src("model"), cfg.model, `cannot load the model (${msg})`);
  }
  if (/--max-batch/.test(msg)) return new ConfigError(src("max-batch"), String(cfg.maxBatch), msg);
  return new ConfigError("startup", undefined, msg);
}
