// The scheduling policy: which queued requests to admit, which prompts to prefill and by how much,
// which sequences to decode and for how many steps. Pure decisions over what it is shown; the
// engine (engine/engine.ts) allocates the cache and runs the model.
//
// Admission: first come first served, while a batch row, a cache slot and enough pages are free.
// A request is admitted only when the pool can hold its worst case (prompt + max_tokens + one
// readback of overshoot), counting what running requests may still claim, so a running sequence
// never waits for memory and the loop cannot deadlock; a request that does not fit waits in the
// queue until others finish. Pages of its prompt that the prefix cache holds are shared, not
// claimed again (but taking idle ones out of the cache uses up free room).
// Prefill: up to `prefillBudget` prompt tokens per iteration, oldest first, so a long prompt is
// spread over several iterations and running sequences keep decoding in between.
// Decode: every running sequence together, `decodeSteps` tokens per readback (fewer when every
// sequence needs fewer, or the context ends); with overlap, the next decode of the same rows is
// queued behind the one in flight (decodeAhead).

import type { CacheLayout } from "../cache/layout.ts";
import { RequestTooLargeError } from "./request.ts";

/** What the policy reads of a request. */
export interface RequestView {
  readonly promptTokens: number;
  readonly maxTokens: number;
  /** Prompt tokens in the cache. */
  readonly prefilled: number;
  /** Tokens generated so far. */
  readonly generated: number;
  /** Positions written to the cache. */
  readonly cachedTokens: number;
  /** Pages held (0 before admission). */
  readonly pagesHeld: number;
  /** Before admission: pages of its prompt the prefix cache holds (it will share them), and how
   * many of those no sequence holds now (they leave the free room when it takes them). */
  readonly prefixPages: number;
  readonly prefixIdlePages: number;
  readonly cancelled: boolean;
}

/** The free part of the cache, as the cache manager counts it. */
export interface CacheRoom {
  freePages: number;
  freeSlots: number;
}

export interface Admission<R> {
  /** Requests to admit now, from the head of the queue. */
  admit: R[];
  /** Requests that can never fit, even with nothing else running (to fail). */
  unfit: R[];
}

export interface PrefillWork<R> {
  request: R;
  /** Prompt tokens to feed, from `request.prefilled` on. */
  tokens: number;
  /** The prompt's last piece: it samples the first token. */
  last: boolean;
}

export interface DecodeWork<R> {
  batch: R[];
  steps: number;
}

/** The sizes a request is checked against. */
export class EngineLimits {
  constructor(
    /** Longest sequence, prompt + generated tokens. */
    readonly context: number,
    /** Sequences decoded together. */
    readonly maxBatch: number,
    /** Tokens per readback. */
    readonly decodeSteps: number,
    /** Prompt tokens prefilled per iteration. */
    readonly prefillBudget: number,
    readonly layout: CacheLayout,
  ) {}

  /** Pages a request may hold at most: prompt + max_tokens - 1 fed positions, plus up to one
   * readback of overshoot (the batch decodes `steps` tokens even for a sequence needing fewer). */
  worstPages(promptTokens: number, maxTokens: number): number {
    const positions = maxTokens <= 1
      ? promptTokens
      : Math.min(this.context, promptTokens + maxTokens - 1 + this.decodeSteps - 1);
    return this.layout.pagesFor(positions);
  }

  /**
   * Why a request of this size can never run here, or null. `field` "prompt": the prompt alone
   * fills the context; "max_tokens": prompt + max_tokens exceed the context or the KV pool.
   */
  fitError(promptTokens: number, maxTokens: number): RequestTooLargeError | null {
    const ctx = this.context;
    if (promptTokens >= ctx) {
      return new RequestTooLargeError(
        "prompt",
        `the prompt has ${promptTokens} tokens but the context is ${ctx} tokens ` +
          `(prompt + max_tokens must be at most ${ctx})`,
      );
    }
    if (promptTokens + maxTokens > ctx) {
      return new RequestTooLargeError(
        "max_tokens",
        `prompt (${promptTokens} tokens) + max_tokens (${maxTokens}) = ` +
          `${promptTokens + maxTokens} exceeds the context of ${ctx} tokens`,
      );
    }
    const need = this.worstPages(promptTokens, maxTokens);
    if (need > this.layout.numPages) {
      return new RequestTooLargeError(
        "max_tokens",
        `prompt (${promptTokens} tokens) + max_tokens (${maxTokens}) need ${need} KV-cache ` +
          `pages but the pool has ${this.layout.numPages} (raise --kv-cache-mb)`,
      );
    }
    return null;
  }

  /** The most tokens a request with this prompt may ask for (context and KV pool permitting). */
  maxNewTokens(promptTokens: number): number {
    let m = this.context - promptTokens;
    const { numPages, pageSize } = this.layout;
    if (numPages > 0) m = Math.min(m, numPages * pageSize - promptTokens - this.decodeSteps + 2);
    return Math.max(0, m);
  }
}

export class Scheduler {
  /** Tokens per readback asked for, at most limits.decodeSteps (`--decode-steps auto` lowers
   * it; admission still reserves a readback of limits.decodeSteps). */
  stepsPerReadback: number;

  constructor(readonly limits: EngineLimits) {
    this.stepsPerReadback = limits.decodeSteps;
  }

  /** Pages running requests may still claim beyond what they hold. */
  reservedPages(running: readonly RequestView[]): number {
    let n = 0;
    for (const r of running) {
      n += Math.max(0, this.limits.worstPages(r.promptTokens, r.maxTokens) - r.pagesHeld);
    }
    return n;
  }

  /** Which of the queue's head to admit beside `running`, given the cache's free room. */
  admit<R extends RequestView>(
    waiting: readonly R[],
    running: readonly RequestView[],
    room: CacheRoom,
  ): Admission<R> {
    const out: Admission<R> = { admit: [], unfit: [] };
    let reserved = this.reservedPages(running);
    let slots = room.freeSlots;
    let active = running.length;
    for (const r of waiting) {
      if (active >= this.limits.maxBatch) break;
      const worst = this.limits.worstPages(r.promptTokens, r.maxTokens);
      // Cached pages it shares are not claimed again; idle ones it takes leave the free room.
      const need = worst - r.prefixPages + r.prefixIdlePages;
      if (need > room.freePages - reserved || slots === 0) {
        // It waits for running requests to return memory; with none running it never could
        // (submit() rules that out, so this is only a safety net against a stuck queue).
        if (active > 0) break;
        out.unfit.push(r);
        continue;
      }
      out.admit.push(r);
      reserved += need;
      slots--;
      active++;
    }
    return out;
  }

  /** Prompt pieces to prefill this iteration, oldest prompt first, within the budget. */
  prefill<R extends RequestView>(prefilling: readonly R[]): PrefillWork<R>[] {
    const work: PrefillWork<R>[] = [];
    let budget = this.limits.prefillBudget;
    for (const r of prefilling) {
      if (budget <= 0) break;
      if (r.cancelled) continue;
      const tokens = Math.min(r.promptTokens - r.prefilled, budget);
      budget -= tokens;
      work.push({ request: r, tokens, last: r.prefilled + tokens === r.promptTokens });
    }
    return work;
  }

  /** One batched decode of every decoding sequence, or null when there are none. */
  decode<R extends RequestView>(decoding: readonly R[]): DecodeWork<R> | null {
    const batch = decoding.filter((r) => !r.cancelled);
    if (batch.length === 0) return null;
    return { batch, steps: Math.max(1, this.#steps(batch, 0)) };
  }

  /** Steps of a decode of `batch` queued behind `inFlight` steps of it: a readback's worth, no
   * more than the most tokens a row still needs, nor than any row's context has room for. */
  #steps(batch: readonly RequestView[], inFlight: number): number {
    let steps = this.stepsPerReadback;
    let most = 0;
    for (const r of batch) {
      most = Math.max(most, r.maxTokens - r.generated - inFlight);
      steps = Math.min(steps, this.limits.context - r.cachedTokens);
    }
    return Math.min(steps, most);
  }

  /**
   * The decode to queue behind one in flight (`batch`, `inFlight` steps each) before its tokens
   * are known: the same rows, when every one of them is still decoding and needs tokens beyond
   * those in flight; else null (the chain breaks: new prompts join, finished rows leave).
   * Overshoot stays as without overlap: a row needing fewer than `steps` more runs at most
   * decodeSteps - 1 extra positions.
   */
  decodeAhead<R extends RequestView>(
    decoding: readonly R[],
    batch: readonly R[],
    inFlight: number,
  ): DecodeWork<R> | null {
    const live = decoding.filter((r) => !r.cancelled);
    if (live.length !== batch.length || live.some((r, i) => r !== batch[i])) return null;
    if (batch.some((r) => r.maxTokens - r.generated - inFlight <= 0)) return null;
    const steps = this.#steps(batch, inFlight);
    return steps < 1 ? null : { batch: [...batch], steps };
  }
}
