// Server configuration from flags and environment variables (a flag wins over its variable).
// Every error names where the bad value came from (`--max-batch` or `ZIGZAG_MAX_BATCH`), so a
// container's one log line says what to fix.

import {
  KV_DTYPES,
  type KvDtype,
  type Precision,
  WEIGHT_CHOICES,
  type WeightChoice,
} from "../engine/engine.ts";
import type { HubOptions } from "../model/hub.ts";
import { CliError, parseArgs } from "../util/args.ts";

/** The README's default model (a Hugging Face repo id). */
export const DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct";

export interface ServerConfig {
  model: string;
  tokenizer?: string;
  plan?: string;
  sink?: number;
  recent?: number;
  /** The plan's streaming heads keep the compensation token (--compensation). */
  compensation?: boolean;
  host: string;
  port: number;
  kvCacheMb?: number;
  maxBatch: number;
  maxQueue: number;
  /** Tokens per readback, or "auto" (timed at warm-up). */
  decodeSteps: number | "auto";
  prefillChunk?: number;
  maxModelLen?: number;
  apiKey?: string;
  precision?: Precision;
  /** How the KV cache stores keys and values (default: the precision). */
  kvDtype?: KvDtype;
  /** How matmul weights are stored (default float: the precision). */
  weights?: WeightChoice;
  /** Automatic prefix caching (default on; `--no-prefix-cache`, ZIGZAG_PREFIX_CACHE=0). */
  prefixCache?: boolean;
  /** Queue the next decode steps before a readback is awaited (default on;
   * `--no-overlap-decode`, ZIGZAG_OVERLAP_DECODE=0). */
  overlapDecode?: boolean;
  /** A Jinja chat template file used instead of (or in the absence of) the tokenizer's. */
  chatTemplate?: string;
  /** Name the API reports for the model (default: the model directory's or repo's name). */
  servedModelName?: string;
  /** Seconds running requests get to finish after SIGTERM. */
  graceS: number;
  /** Largest request body, MiB. */
  maxBodyMb: number;
  /** Origins (`https://app.example.com`) answered with CORS headers; none by default. */
  allowedOrigins?: string[];
  /** Hub download settings (default: HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_OFFLINE). */
  hub?: HubOptions;
  /** Where each setting came from, e.g. { model: "ZIGZAG_MODEL" }, for error messages. */
  sources: Record<string, string>;
}

/** A configuration problem; `source` is the flag or variable, `value` what it held. */
export class ConfigError extends Error {
  constructor(readonly source: string, readonly value: string | undefined, message: string) {
    super(message);
    this.name = "ConfigError";
  }

  /** The one line printed before exiting: `zigzag: ZIGZAG_MODEL=/models: no model found (...)`. */
  get line(): string {
    const what = this.value === undefined ? this.source : `${this.source}=${this.value}`;
    return `zigzag: ${what}: ${this.message}`;
  }
}

export const USAGE = `usage: deno task start [flags]   (or: deno serve -A main.ts)

flags (environment variable in brackets; a flag wins):
  --model PATH|REPO     llama2.c .bin / directory or Hugging Face directory or repo id
                        [ZIGZAG_MODEL] (default ${DEFAULT_MODEL}); a repo id is downloaded
                        once into $HF_HOME/hub (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE apply)
  --tokenizer PATH      tokenizer, when it is not beside the model [ZIGZAG_TOKENIZER]
  --plan full|streaming|FILE   attention plan [ZIGZAG_PLAN] (default full)
  --sink N --recent N   override the plan's streaming window [ZIGZAG_SINK, ZIGZAG_RECENT]
                        (a plan's per-layer "windows" give way: every layer gets this one)
  --compensation        streaming heads also keep RazorAttention's compensation token (the mean
                        key and value of the tokens past their window) [ZIGZAG_COMPENSATION=1]
                        (default: the plan's "compensation")
  --host HOST           [ZIGZAG_HOST] (default 127.0.0.1)
  --port N              [PORT] (default 8000; 0 picks a free port)
  --kv-cache-mb N       KV-cache budget in MiB [ZIGZAG_KV_CACHE_MB] (default 256)
  --max-batch N         sequences decoded together, <= 64 [ZIGZAG_MAX_BATCH] (default 16)
  --max-queue N         requests waiting for a batch slot; more get 429 [ZIGZAG_MAX_QUEUE]
                        (default 256)
  --decode-steps N|auto tokens per readback [ZIGZAG_DECODE_STEPS] (default 8; auto: at most 8,
                        the fewest whose GPU time covers a readback's wait, timed at warm-up)
  --prefill-chunk N     prompt tokens per prefill forward [ZIGZAG_PREFILL_CHUNK] (default 128)
  --max-model-len N     context served (default: the model's) [ZIGZAG_MAX_MODEL_LEN]
  --no-prefix-cache     recompute every prompt from token 0 (default: automatic prefix caching:
                        requests resume from the pages and ring snapshots of earlier ones)
                        [ZIGZAG_PREFIX_CACHE=0]
  --no-overlap-decode   wait for each readback before queueing more decode steps (default:
                        the next steps are queued first, so the GPU works through the wait;
                        the same tokens either way) [ZIGZAG_OVERLAP_DECODE=0]
  --api-key KEY         require "Authorization: Bearer KEY" (or "X-Api-Key: KEY") on /v1/*,
                        /tokenize, /detokenize [ZIGZAG_API_KEY; prefer it: a flag is visible
                        to every local user in the process list]
  --allowed-origins LIST  comma-separated origins (https://app.example.com) a browser may call
                        the API from (CORS) [ZIGZAG_ALLOWED_ORIGINS] (default none)
  --precision f16|f32   [ZIGZAG_PRECISION] (default f16 where the adapter has it)
  --kv-dtype f16|f32|int8|int4   how the KV cache stores keys and values, scales included in
                        every byte count [ZIGZAG_KV_DTYPE] (default: the precision)
  --weights native|float|q8_0|q4_0   matmul weights: a GGUF's own quantized blocks (native, the
                        default; float for other checkpoints), the precision, or quantized on load
                        to GGUF's Q8_0 / Q4_0 blocks (the embedding stays in the precision)
                        [ZIGZAG_WEIGHTS]
  --chat-template FILE  Jinja chat template instead of tokenizer_config.json's
                        [ZIGZAG_CHAT_TEMPLATE]
  --served-model-name NAME   model id in the API [ZIGZAG_SERVED_MODEL_NAME]
  --grace-s N           seconds running requests get after SIGTERM [ZIGZAG_GRACE_S] (default 30)
  --max-body-mb N       largest request body in MiB [ZIGZAG_MAX_BODY_MB] (default 16)`;

interface NumSpec {
  flag: string;
  env: string;
  integer?: boolean;
  min?: number;
  max?: number;
}

const VALUE_FLAGS = [
  "model",
  "tokenizer",
  "plan",
  "sink",
  "recent",
  "host",
  "port",
  "kv-cache-mb",
  "max-batch",
  "max-queue",
  "decode-steps",
  "prefill-chunk",
  "max-model-len",
  "api-key",
  "precision",
  "kv-dtype",
  "weights",
  "chat-template",
  "served-model-name",
  "grace-s",
  "max-body-mb",
  "allowed-origins",
] as const;

/** `https://a.com, http://b.com:8443` as origins; each a bare scheme://host[:port]. */
function parseOrigins(raw: string, source: string): string[] {
  const list = raw.split(",").map((o) => o.trim()).filter((o) => o !== "");
  if (list.length === 0) {
    throw new ConfigError(source, raw, "expected a comma-separated list of origins");
  }
  return list.map((o) => {
    let u: URL | undefined;
    try {
      u = new URL(o);
    } catch { /* reported below */ }
    // No path, query, fragment or user: the href is the origin and a slash.
    if (!u || !/^https?:$/.test(u.protocol) || u.href !== `${u.origin}/`) {
      throw new ConfigError(
        source,
        raw,
        `\`${o}\` is not an origin; expected scheme://host[:port], e.g. https://app.example.com`,
      );
    }
    // The form browsers send in `Origin`: lower-case host, no default port, no trailing slash.
    return u.origin;
  });
}

/**
 * Warnings to log at start-up: settings that work but that an operator should change. A key given
 * as a flag is readable by every local user in /proc/PID/cmdline (and `ps`); the variable is not.
 */
export function startupWarnings(cfg: ServerConfig): string[] {
  const out: string[] = [];
  if (cfg.sources["api-key"] === "--api-key") {
    out.push(
      "zigzag: warning: --api-key is visible to every local user in the process list " +
        "(/proc/PID/cmdline); set ZIGZAG_API_KEY instead",
    );
  }
  return out;
}

export function parseServerConfig(
  argv: readonly string[],
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): ServerConfig | "help" {
  // `deno serve main.ts -- --flag` passes the `--` through.
  const args = argv[0] === "--" ? argv.slice(1) : argv;
  let a;
  try {
    a = parseArgs(args, {
      booleans: ["help", "no-prefix-cache", "no-overlap-decode", "compensation"],
      values: VALUE_FLAGS,
    });
  } catch (e) {
    if (e instanceof CliError) throw new ConfigError("flags", undefined, e.message);
    throw e;
  }
  if (a.boolean("help")) return "help";
  if (a.positionals.length > 0) {
    throw new ConfigError("flags", undefined, `unexpected argument ${a.positionals[0]}`);
  }
  const sources: Record<string, string> = {};
  const str = (flag: string, envName: string): string | undefined => {
    const f = a.optionalString(flag);
    if (f !== undefined) {
      sources[flag] = `--${flag}`;
      return f;
    }
    const v = env(envName);
    if (v !== undefined && v !== "") {
      sources[flag] = envName;
      return v;
    }
    return undefined;
  };
  const num = (s: NumSpec): number | undefined => {
    const raw = str(s.flag, s.env);
    if (raw === undefined) return undefined;
    const v = raw.trim() === "" ? NaN : Number(raw);
    const src = sources[s.flag];
    if (!Number.isFinite(v) || (s.integer && !Number.isInteger(v))) {
      throw new ConfigError(src, raw, `must be ${s.integer ? "an integer" : "a number"}`);
    }
    if (s.min !== undefined && v < s.min) throw new ConfigError(src, raw, `must be >= ${s.min}`);
    if (s.max !== undefined && v > s.max) throw new ConfigError(src, raw, `must be <= ${s.max}`);
    return v;
  };
  const model = str("model", "ZIGZAG_MODEL") ?? DEFAULT_MODEL;
  sources.model ??= "--model";
  const precision = str("precision", "ZIGZAG_PRECISION");
  if (precision !== undefined && precision !== "f16" && precision !== "f32") {
    throw new ConfigError(sources.precision, precision, "must be f16 or f32");
  }
  const kvDtype = str("kv-dtype", "ZIGZAG_KV_DTYPE");
  if (kvDtype !== undefined && !(KV_DTYPES as readonly string[]).includes(kvDtype)) {
    throw new ConfigError(sources["kv-dtype"], kvDtype, `must be one of ${KV_DTYPES.join(", ")}`);
  }
  const weights = str("weights", "ZIGZAG_WEIGHTS");
  if (weights !== undefined && !(WEIGHT_CHOICES as readonly string[]).includes(weights)) {
    throw new ConfigError(
      sources.weights,
      weights,
      `must be one of ${WEIGHT_CHOICES.join(", ")}`,
    );
  }
  /** A switch variable's value (1/0, true/false, on/off, yes/no), undefined when unset. */
  const envSwitch = (name: string, variable: string): boolean | undefined => {
    const v = env(variable);
    if (v === undefined || v === "") return undefined;
    sources[name] = variable;
    const on = ["1", "true", "on", "yes"].includes(v.toLowerCase());
    const off = ["0", "false", "off", "no"].includes(v.toLowerCase());
    if (!on && !off) throw new ConfigError(variable, v, "must be 1/0, true/false or on/off");
    return on;
  };
  /** An on-by-default switch: off by `--no-NAME` or VAR=0. */
  const onUnless = (name: string, variable: string): boolean => {
    if (a.boolean(`no-${name}`)) {
      sources[name] = `--no-${name}`;
      return false;
    }
    return envSwitch(name, variable) ?? true;
  };
  /** A switch on by `--NAME` or VAR=1, else undefined (the default of what it overrides). */
  const onIf = (name: string, variable: string): boolean | undefined => {
    if (a.boolean(name)) {
      sources[name] = `--${name}`;
      return true;
    }
    return envSwitch(name, variable);
  };
  const prefixCache = onUnless("prefix-cache", "ZIGZAG_PREFIX_CACHE");
  const overlapDecode = onUnless("overlap-decode", "ZIGZAG_OVERLAP_DECODE");
  const cfg: ServerConfig = {
    model,
    prefixCache,
    overlapDecode,
    compensation: onIf("compensation", "ZIGZAG_COMPENSATION"),
    tokenizer: str("tokenizer", "ZIGZAG_TOKENIZER"),
    plan: str("plan", "ZIGZAG_PLAN"),
    sink: num({ flag: "sink", env: "ZIGZAG_SINK", integer: true, min: 0 }),
    recent: num({ flag: "recent", env: "ZIGZAG_RECENT", integer: true, min: 1 }),
    host: str("host", "ZIGZAG_HOST") ?? "127.0.0.1",
    port: num({ flag: "port", env: "PORT", integer: true, min: 0, max: 65535 }) ?? 8000,
    kvCacheMb: num({ flag: "kv-cache-mb", env: "ZIGZAG_KV_CACHE_MB", min: 0.001 }),
    maxBatch: num({ flag: "max-batch", env: "ZIGZAG_MAX_BATCH", integer: true, min: 1, max: 64 }) ??
      16,
    maxQueue: num({ flag: "max-queue", env: "ZIGZAG_MAX_QUEUE", integer: true, min: 0 }) ?? 256,
    decodeSteps: str("decode-steps", "ZIGZAG_DECODE_STEPS")?.trim() === "auto"
      ? "auto"
      : num({ flag: "decode-steps", env: "ZIGZAG_DECODE_STEPS", integer: true, min: 1, max: 64 }) ??
        8,
    prefillChunk: num({
      flag: "prefill-chunk",
      env: "ZIGZAG_PREFILL_CHUNK",
      integer: true,
      min: 1,
      max: 4096,
    }),
    maxModelLen: num({ flag: "max-model-len", env: "ZIGZAG_MAX_MODEL_LEN", integer: true, min: 2 }),
    apiKey: str("api-key", "ZIGZAG_API_KEY"),
    precision: precision as Precision | undefined,
    kvDtype: kvDtype as KvDtype | undefined,
    weights: weights as WeightChoice | undefined,
    chatTemplate: str("chat-template", "ZIGZAG_CHAT_TEMPLATE"),
    servedModelName: str("served-model-name", "ZIGZAG_SERVED_MODEL_NAME"),
    graceS: num({ flag: "grace-s", env: "ZIGZAG_GRACE_S", min: 0 }) ?? 30,
    maxBodyMb: num({ flag: "max-body-mb", env: "ZIGZAG_MAX_BODY_MB", min: 0.001 }) ?? 16,
    sources,
  };
  const origins = str("allowed-origins", "ZIGZAG_ALLOWED_ORIGINS");
  if (origins !== undefined) {
    cfg.allowedOrigins = parseOrigins(origins, sources["allowed-origins"]);
  }
  return cfg;
}

/** A config for tests and embedding: defaults for everything not given. */
export function serverConfig(o: Partial<ServerConfig> & { model: string }): ServerConfig {
  return {
    host: "127.0.0.1",
    port: 0,
    maxBatch: 16,
    maxQueue: 256,
    decodeSteps: 8,
    graceS: 30,
    maxBodyMb: 16,
    sources: {},
    ...o,
  };
}
