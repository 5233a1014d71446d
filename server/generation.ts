// What the generation routes share: prompts to token ids, sampling fields to SamplingParams,
// submitting to the scheduler (with the client's disconnect wired to cancellation) and SSE.

import type { Context } from "hono";
import { streamSSE } from "hono/streaming";
import {
  DrainingError,
  type GenerationChunk,
  type GenerationRequest,
  type GenerationResult,
  type Job,
  QueueFullError,
} from "../engine/scheduler.ts";
import type { SamplingParams } from "../gpu/runner.ts";
import { HfTokenizer } from "../model/tokenizer_hf.ts";
import type { Tokenizer } from "../model/types.ts";
import type { Ready, ServerContext } from "./context.ts";
import { ApiError, badField } from "./errors.ts";

/** Checks a request's `model` field: absent, or a name this server answers to. */
export function checkModel(ctx: ServerContext, model: string | null | undefined): void {
  if (model === undefined || model === null) return;
  if (!ctx.acceptsModel(model)) {
    throw new ApiError(
      404,
      `model: the model \`${model}\` does not exist; this server serves \`${ctx.modelId}\``,
      "invalid_request_error",
      "model",
      "model_not_found",
    );
  }
}

/** The tokenizer, or a 400 on `field` saying text needs one. */
export function needTokenizer(r: Ready, field: string): Tokenizer {
  const tok = r.session.model.tokenizer;
  if (!tok) {
    throw badField(field, "this model has no tokenizer: send token ids", "no_tokenizer");
  }
  return tok;
}

/** Token ids of a prompt given as text or as ids; checks ids against the vocabulary. */
export function promptIds(r: Ready, prompt: string | number[], field: string): number[] {
  let ids: number[];
  if (typeof prompt === "string") {
    ids = needTokenizer(r, field).encode(prompt);
  } else {
    ids = prompt;
    const vocab = r.session.model.config.vocabSize;
    const bad = ids.findIndex((id) => id >= vocab);
    if (bad >= 0) {
      throw badField(
        `${field}[${bad}]`,
        `token id ${ids[bad]} is outside the vocabulary (${vocab})`,
      );
    }
  }
  if (ids.length === 0) throw badField(field, "the prompt is empty");
  return ids;
}

export interface SamplingBody {
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  seed?: number | null;
}

export function samplingOf(b: SamplingBody, defaultTemperature: number): SamplingParams {
  const s: SamplingParams = { temperature: b.temperature ?? defaultTemperature };
  if (b.top_p != null) s.topP = b.top_p;
  if (b.top_k != null && b.top_k > 0) s.topK = b.top_k;
  if (b.min_p != null) s.minP = b.min_p;
  // The GPU RNG takes a u32 seed.
  if (b.seed != null) s.seed = Number(BigInt.asUintN(32, BigInt(b.seed)));
  return s;
}

/** Checks stop ids against the vocabulary. */
export function checkStopIds(r: Ready, ids: number[] | null | undefined, field: string): number[] {
  const vocab = r.session.model.config.vocabSize;
  (ids ?? []).forEach((id, i) => {
    if (id >= vocab) {
      throw badField(`${field}[${i}]`, `token id ${id} is outside the vocabulary (${vocab})`);
    }
  });
  return ids ?? [];
}

/**
 * Queues a request: a 400 when it can never fit (naming `promptField` or max_tokens), 429 when
 * the queue is full, 503 while shutting down. The client's disconnect cancels it.
 */
export function startJob(
  c: Context,
  r: Ready,
  req: GenerationRequest,
  promptField: string,
): Job {
  if (req.stopStrings?.length) needTokenizer(r, "stop");
  const fit = r.scheduler.fitError(req.promptIds.length, req.maxTokens);
  if (fit) {
    throw badField(
      fit.field === "prompt" ? promptField : "max_tokens",
      fit.message,
      "context_length_exceeded",
    );
  }
  let job: Job;
  try {
    job = r.scheduler.submit(req);
  } catch (e) {
    if (e instanceof QueueFullError) {
      throw new ApiError(429, e.message + "; retry later", "rate_limit_error", null, "queue_full", {
        "Retry-After": "1",
      });
    }
    if (e instanceof DrainingError) {
      throw new ApiError(503, e.message, "service_unavailable", null, "shutting_down");
    }
    throw e;
  }
  // The signal may also fire after a normal finish: cancel() is a no-op then.
  const signal = c.req.raw.signal;
  if (signal.aborted) job.cancel();
  else signal.addEventListener("abort", () => job.cancel(), { once: true });
  return job;
}

/** A finished job's result, or the error it ended with (500). */
export async function resultOf(job: Job): Promise<GenerationResult> {
  const res = await job.result;
  if (res.finishReason === "error") {
    throw new ApiError(
      500,
      `generation failed: ${res.error}`,
      "server_error",
      null,
      "engine_error",
    );
  }
  return res;
}

/** OpenAI's finish_reason (a cancelled request has no client left to read it). */
export function finishReason(res: GenerationResult): "stop" | "length" {
  return res.finishReason === "length" ? "length" : "stop";
}

export function usage(res: GenerationResult) {
  return {
    prompt_tokens: res.promptTokens,
    completion_tokens: res.ids.length,
    total_tokens: res.promptTokens + res.ids.length,
  };
}

/** A token's text for logprobs (special tokens spelled out where the tokenizer knows them). */
export function tokenText(tok: Tokenizer | null, id: number): string {
  if (!tok) return `${id}`;
  if (tok instanceof HfTokenizer) return tok.decodeWithSpecial([id]);
  return tok.decode([id]);
}

export interface SseHandlers {
  /** Events for one readback's chunk. */
  chunk(c: GenerationChunk): unknown[];
  /** Events after the last chunk (before `[DONE]`). */
  end(res: GenerationResult): unknown[];
}

/** Streams a job as server-sent events, one write per readback, ending with `data: [DONE]`. */
export function streamJob(c: Context, job: Job, h: SseHandlers): Response {
  return streamSSE(c, async (stream) => {
    stream.onAbort(() => job.cancel());
    for await (const chunk of job.chunks()) {
      if (stream.aborted) break;
      const events = h.chunk(chunk);
      if (events.length) {
        await stream.write(events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join(""));
      }
    }
    const res = await job.result;
    if (stream.aborted || res.finishReason === "cancelled") return;
    const events = res.finishReason === "error"
      ? [{
        error: {
          message: `generation failed: ${res.error}`,
          type: "server_error",
          param: null,
          code: "engine_error",
        },
      }]
      : h.end(res);
    await stream.write(
      events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join("") + "data: [DONE]\n\n",
    );
  });
}

/** A short random id with a prefix, e.g. `cmpl-3f9c...`. */
export function requestId(prefix: string): string {
  const b = crypto.getRandomValues(new Uint8Array(12));
  return `${prefix}-${Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("")}`;
}
