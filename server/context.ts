// What every route reads: the configuration, the loading state and, once loaded, the engine and
// the chat formatter.

import { type ChatFormatter, chatFormatter } from "../engine/chat.ts";
import { CacheExhaustedError, Engine, GpuUnavailableError } from "../engine/engine.ts";
import { downloadModel, HubError, isRepoId } from "../model/hub.ts";
import { ModelFormatError } from "../model/types.ts";
import { PlanError } from "../plans/schema.ts";
import { pathExists } from "../util/fs.ts";
import { type Progress, progress } from "../util/progress.ts";
import { ConfigError, type ServerConfig } from "./config.ts";
import { ApiError } from "./errors.ts";
import { PromptEncoder } from "./prompts.ts";

export type ServerState = "loading" | "ready" | "failed" | "draining";

export class ServerContext {
  state: ServerState = "loading";
  /** Why the server is not ready (for /health). */
  reason = "loading the model";
  /** The engine once loaded and warmed up; routes call engine(), which answers 503 before. */
  loadedEngine: Engine | null = null;
  /** The model's chat formatter (or --chat-template's); null when there is no template. */
  chat: ChatFormatter | null = null;
  /** Prompt text to ids (refusing what cannot fit, long texts off the event loop); null when the
   * model has no tokenizer. */
  prompts: PromptEncoder | null = null;
  readonly modelId: string;
  readonly startedAt = Date.now();

  constructor(readonly config: ServerConfig, readonly log: (line: string) => void = () => {}) {
    this.modelId = config.servedModelName ??
      (isRepoId(config.model) && !pathExists(config.model)
        ? config.model
        : modelName(config.model));
  }

  /** The loaded engine, or a 503 while loading or shutting down. */
  engine(): Engine {
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
    if (!this.loadedEngine) {
      throw new ApiError(
        503,
        `the model is not ready: ${this.reason}`,
        "service_unavailable",
        null,
        "model_not_ready",
        { "Retry-After": "5" },
      );
    }
    return this.loadedEngine;
  }

  /**
   * The checks that need no loading: a local model path holds a model, a plan file exists.
   * The server announces itself only after them, so a misconfigured start logs one line.
   */
  async preflight(): Promise<void> {
    const cfg = this.config;
    const src = (k: string) => cfg.sources[k] ?? `--${k}`;
    if (pathExists(cfg.model) || !isRepoId(cfg.model)) {
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
    if (pathExists(cfg.model) || !isRepoId(cfg.model)) {
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

  /** Loads the model and builds the engine (runner, cache, scheduler), then warms it up.
   * Throws ConfigError naming the flag or variable at fault. */
  async load(): Promise<Engine> {
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
    let engine: Engine;
    try {
      engine = await Engine.create({
        model: modelPath,
        tokenizer: cfg.tokenizer,
        precision: cfg.precision,
        kvDtype: cfg.kvDtype,
        weights: cfg.weights,
        plan: cfg.plan,
        sink: cfg.sink,
        recent: cfg.recent,
        compensation: cfg.compensation,
        kvCacheBytes: cfg.kvCacheMb === undefined ? undefined : cfg.kvCacheMb * (1 << 20),
        maxBatch: cfg.maxBatch,
        maxQueue: cfg.maxQueue,
        prefillChunk: cfg.prefillChunk,
        decodeSteps: cfg.decodeSteps,
        maxModelLen: cfg.maxModelLen,
        prefixCache: cfg.prefixCache,
        overlapDecode: cfg.overlapDecode,
        quiet: !Deno.stderr.isTerminal(),
        // The device on a thread of its own: a pending readback never holds up HTTP.
        gpuThread: true,
      });
    } catch (e) {
      throw explainLoadError(e, cfg, src);
    }
    try {
      await engine.warmUp();
      const tok = engine.tokenizer;
      if (tok) {
        try {
          this.chat = chatFormatter(tok, chatOverride);
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
    } catch (e) {
      await engine.close();
      throw e;
    }
    if (engine.tokenizer) this.prompts = new PromptEncoder(engine.tokenizer, engine.limits.context);
    this.loadedEngine = engine;
    if (this.state === "loading") this.state = "ready";
    this.reason = "";
    const c = engine.config;
    const limits = engine.limits;
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
        `(${c.architecture}, ${c.nLayers} layers, context ${limits.context}), plan ` +
        `${engine.plan.mode}, ${engine.precision}` +
        `${
          engine.shape.weights && engine.shape.weights !== "float"
            ? ` ${engine.shape.weights} weights`
            : ""
        }` +
        ` on ${engine.adapterName}, KV cache ` +
        `${engine.layout.kvDtype}, ${engine.layout.numPages} pages of ${engine.layout.pageSize} tokens, max batch ` +
        `${limits.maxBatch}, ${engine.stepsPerReadback} tokens per readback` +
        (engine.stepTiming
          ? ` (auto: ${engine.stepTiming.stepMs.toFixed(1)} ms per step, ` +
            `${engine.stepTiming.readbackWaitMs.toFixed(1)} ms per readback)`
          : "") +
        `, prefix cache ` +
        (engine.shape.prefixCache ? `on (${engine.layout.snapshotSlots} snapshot rings)` : "off") +
        (this.chat ? `, chat template from ${this.chat.source}` : ""),
    );
    return engine;
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
