// The model runner on a worker thread. Deno's `mapAsync` holds the thread that calls it until the
// adapter has finished the submitted work (measured on llvmpipe: a 280 ms kernel, a 262-314 ms
// timer gap on the same thread, 6-9 ms with the device in a worker), so a server whose GPU lives
// on its HTTP thread answers nobody, /health included, while a readback is pending. The engine
// keeps its scheduler, cache manager, jobs and metrics on the calling thread and sends the
// runner's few calls (prefill, decode, submitDecode, collectDecode, evaluate, evaluateLogprobs,
// copyRing, destroy) here as messages; the worker owns the device, the weights and the KV buffers.
//
// This one module is both sides: imported, it exports RunnerThread; started as a worker, it
// builds the runner and answers calls.

import { CacheExhaustedError } from "../cache/layout.ts";
import type { SeqCache } from "../cache/manager.ts";
import { getGpu, GpuUnavailableError, type Precision, resolvePrecision } from "../gpu/device.ts";
import type { Decoded, DecodeRow, ModelRunner, Sampled, SamplingParams } from "../gpu/runner.ts";
import type { PromptLogprobs } from "../gpu/logprobs.ts";
import { loadModel } from "../model/load.ts";
import type { BufferLimits } from "../cache/layout.ts";
import type { ResolvedPlan } from "../plans/types.ts";
import { createRunner, type RunnerSizes } from "./runners.ts";

/** What the engine needs of a runner: the calls it awaits. ModelRunner has them. */
export interface EngineRunner {
  prefill(
    seq: SeqCache,
    tokens: number[],
    sampling: SamplingParams,
    opts?: { sample?: boolean; prompt?: readonly number[] },
  ): Promise<Sampled>;
  decode(batch: DecodeRow[], steps: number): Promise<Decoded>;
  /** Queues a decode without waiting for it (ModelRunner.submitDecode: `chained` continues the
   * previous decode's rows from the tokens it sampled last, on the GPU). */
  submitDecode(batch: DecodeRow[], steps: number, opts?: { chained?: boolean }): Promise<void>;
  /** Reads back the oldest decode queued by submitDecode. */
  collectDecode(): Promise<Decoded>;
  evaluate(
    seq: SeqCache,
    tokens: number[],
    rows: number[],
  ): Promise<{ hidden: Float32Array[]; logits: Float32Array[] }>;
  /** Teacher-forced prompt log-probabilities (gpu/logprobs.ts), reduced where the runner runs. */
  evaluateLogprobs(seq: SeqCache, tokens: number[], topK: number): Promise<PromptLogprobs>;
  /** Copies one ring slot onto another (prefix-cache snapshots), in call order. */
  copyRing(from: number, to: number): Promise<void>;
  destroy(): void;
}

/** How the worker builds its runner: the same inputs as `createRunner`, as plain data. */
export interface RunnerSpec {
  model: string;
  tokenizer?: string;
  plan: ResolvedPlan;
  sizes: Omit<RunnerSizes, "precision">;
  precision?: Precision;
}

/** What the worker reports once its runner is built. */
export interface RunnerReady {
  precision: Precision;
  adapterName: string;
  limits: BufferLimits;
}

type Call =
  | { op: "prefill"; args: Parameters<EngineRunner["prefill"]> }
  | { op: "decode"; args: Parameters<EngineRunner["decode"]> }
  | { op: "submitDecode"; args: Parameters<EngineRunner["submitDecode"]> }
  | { op: "collectDecode"; args: [] }
  | { op: "evaluate"; args: Parameters<EngineRunner["evaluate"]> }
  | { op: "evaluateLogprobs"; args: Parameters<EngineRunner["evaluateLogprobs"]> }
  | { op: "copyRing"; args: Parameters<EngineRunner["copyRing"]> };

type ToWorker = { kind: "build"; spec: RunnerSpec } | { kind: "call"; id: number; call: Call };

type FromWorker =
  | { kind: "progress"; bytes: number }
  | { kind: "ready"; ready: RunnerReady }
  | { kind: "failed"; error: SentError }
  | { kind: "result"; id: number; value: unknown }
  | { kind: "error"; id: number; error: SentError };

/** An error as it crosses threads: the classes callers tell apart keep their class. */
interface SentError {
  name: string;
  message: string;
}

function sendable(e: unknown): SentError {
  return e instanceof Error
    ? { name: e.name, message: e.message }
    : { name: "Error", message: String(e) };
}

function revive(e: SentError): Error {
  if (e.name === "CacheExhaustedError") return new CacheExhaustedError(e.message);
  if (e.name === "GpuUnavailableError") return new GpuUnavailableError(e.message);
  const err = new Error(e.message);
  err.name = e.name;
  return err;
}

export class RunnerThread implements EngineRunner {
  #nextId = 0;
  readonly #pending = new Map<
    number,
    { resolve: (v: never) => void; reject: (e: Error) => void }
  >();

  private constructor(readonly worker: Worker, readonly ready: RunnerReady) {
    worker.onmessage = (e: MessageEvent<FromWorker>) => {
      const m = e.data;
      if (m.kind !== "result" && m.kind !== "error") return;
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (m.kind === "error") p.reject(revive(m.error));
      else p.resolve(m.value as never);
    };
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      this.#failAll(new Error(`the GPU thread failed: ${e.message}`));
    };
  }

  /** Starts the worker and builds the runner there; rejects with the build's error. */
  static start(spec: RunnerSpec, onUploadBytes?: (bytes: number) => void): Promise<RunnerThread> {
    const worker = new Worker(import.meta.url, { type: "module" });
    return new Promise((resolve, reject) => {
      worker.onmessage = (e: MessageEvent<FromWorker>) => {
        const m = e.data;
        if (m.kind === "progress") onUploadBytes?.(m.bytes);
        else if (m.kind === "ready") resolve(new RunnerThread(worker, m.ready));
        else if (m.kind === "failed") {
          worker.terminate();
          reject(revive(m.error));
        }
      };
      worker.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        worker.terminate();
        reject(new Error(`the GPU thread failed to start: ${e.message}`));
      };
      worker.postMessage({ kind: "build", spec } satisfies ToWorker);
    });
  }

  #call<T>(call: Call): Promise<T> {
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: never) => void, reject });
      this.worker.postMessage({ kind: "call", id, call } satisfies ToWorker);
    });
  }

  prefill(...args: Parameters<EngineRunner["prefill"]>) {
    return this.#call<Sampled>({ op: "prefill", args });
  }

  decode(...args: Parameters<EngineRunner["decode"]>) {
    return this.#call<Decoded>({ op: "decode", args });
  }

  submitDecode(...args: Parameters<EngineRunner["submitDecode"]>) {
    return this.#call<void>({ op: "submitDecode", args });
  }

  collectDecode() {
    return this.#call<Decoded>({ op: "collectDecode", args: [] });
  }

  evaluate(...args: Parameters<EngineRunner["evaluate"]>) {
    return this.#call<{ hidden: Float32Array[]; logits: Float32Array[] }>({
      op: "evaluate",
      args,
    });
  }

  evaluateLogprobs(...args: Parameters<EngineRunner["evaluateLogprobs"]>) {
    return this.#call<PromptLogprobs>({ op: "evaluateLogprobs", args });
  }

  copyRing(...args: Parameters<EngineRunner["copyRing"]>) {
    return this.#call<void>({ op: "copyRing", args });
  }

  /** Ends the worker, and with it the device and every buffer it held. */
  destroy(): void {
    this.worker.terminate();
    this.#failAll(new Error("the GPU thread was stopped"));
  }

  #failAll(e: Error): void {
    for (const p of this.#pending.values()) p.reject(e);
    this.#pending.clear();
  }
}

// ---- the worker side --------------------------------------------------------------------------

if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
    postMessage(m: FromWorker, transfer?: Transferable[]): void;
  };
  let runner: ModelRunner | null = null;
  // Calls run one at a time in arrival order, as the engine issues them.
  let queue: Promise<unknown> = Promise.resolve();

  const build = async (spec: RunnerSpec) => {
    try {
      const gpu = await getGpu();
      const precision = resolvePrecision(gpu, spec.precision);
      const model = await loadModel(spec.model, { tokenizerPath: spec.tokenizer, lazy: true });
      // The model's files stay open as long as the worker (as an engine keeps its model's).
      runner = await createRunner(gpu, model, spec.plan, {
        ...spec.sizes,
        precision,
        onUploadBytes: (bytes) => scope.postMessage({ kind: "progress", bytes }),
      });
      const l = gpu.limits;
      scope.postMessage({
        kind: "ready",
        ready: {
          precision,
          adapterName: gpu.adapterName,
          limits: {
            maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
            maxBufferSize: l.maxBufferSize,
          },
        },
      });
    } catch (e) {
      scope.postMessage({ kind: "failed", error: sendable(e) });
    }
  };

  const run = async (id: number, call: Call) => {
    try {
      const r = runner!;
      if (call.op === "collectDecode") {
        // Only the mapAsync call holds the queue (it returns once the GPU is done); the next
        // call (a decode queued ahead) runs during the ~10 ms until its promise settles.
        r.collectDecode().then(
          (value) => scope.postMessage({ kind: "result", id, value }),
          (e) => scope.postMessage({ kind: "error", id, error: sendable(e) }),
        );
        return;
      }
      const value = call.op === "prefill"
        ? await r.prefill(...call.args)
        : call.op === "decode"
        ? await r.decode(...call.args)
        : call.op === "submitDecode"
        ? await r.submitDecode(...call.args)
        : call.op === "copyRing"
        ? await r.copyRing(...call.args)
        : call.op === "evaluateLogprobs"
        ? await r.evaluateLogprobs(...call.args)
        : await r.evaluate(...call.args);
      scope.postMessage({ kind: "result", id, value });
    } catch (e) {
      scope.postMessage({ kind: "error", id, error: sendable(e) });
    }
  };

  scope.onmessage = (e: MessageEvent<ToWorker>) => {
    const m = e.data;
    if (m.kind === "build") queue = queue.then(() => build(m.spec));
    else {
      const { id, call } = m;
      queue = queue.then(() => run(id, call));
    }
  };
}
