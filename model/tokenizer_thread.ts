// Encoding on a worker thread, so that a long prompt (seconds of BPE merging for megabytes of
// text) does not hold up the event loop: health probes, running streams and other requests go on
// meanwhile. The worker builds its own copy of the tokenizer from `Tokenizer.portable`, and runs
// encodes one at a time in arrival order.
//
// This one module is both sides: imported, it exports TokenizerThread; started as a worker, it
// answers encode messages.

import { HfTokenizer } from "./tokenizer_hf.ts";
import { Llama2cTokenizer } from "./tokenizer_llama2c.ts";
import type { PortableTokenizer, Tokenizer } from "./types.ts";

/** The tokenizer a portable description stands for. */
export function buildTokenizer(p: PortableTokenizer): Tokenizer {
  return p.kind === "llama2c"
    ? new Llama2cTokenizer(p.pieces, p.scores, p.maxTokenLength)
    : new HfTokenizer(p.tokenizerJson, p.tokenizerConfig, p.options);
}

interface EncodeMessage {
  id: number;
  text: string;
  addSpecialTokens: boolean;
}

type Reply = { id: number; ids: Int32Array } | { id: number; error: string };

export class TokenizerThread {
  #worker: Worker | null = null;
  #nextId = 0;
  readonly #pending = new Map<
    number,
    { resolve: (ids: number[]) => void; reject: (e: Error) => void }
  >();

  constructor(readonly portable: PortableTokenizer) {}

  /** Encodes `text` on the worker (started on first use). */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): Promise<number[]> {
    const worker = this.#worker ??= this.#start();
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      worker.postMessage(
        { id, text, addSpecialTokens: opts.addSpecialTokens ?? true } satisfies EncodeMessage,
      );
    });
  }

  /** Encodes waiting or running now. */
  get pending(): number {
    return this.#pending.size;
  }

  /** Stops the worker; encodes still pending reject. */
  close(): void {
    this.#worker?.terminate();
    this.#worker = null;
    this.#failAll(new Error("the tokenizer thread was stopped"));
  }

  #start(): Worker {
    const w = new Worker(import.meta.url, { type: "module" });
    w.postMessage(this.portable);
    w.onmessage = (e: MessageEvent<Reply>) => {
      const r = e.data;
      const p = this.#pending.get(r.id);
      if (!p) return;
      this.#pending.delete(r.id);
      if ("error" in r) p.reject(new Error(r.error));
      else p.resolve(Array.from(r.ids));
    };
    // A crashed worker fails what it held; the next encode starts a fresh one.
    w.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      w.terminate();
      if (this.#worker === w) this.#worker = null;
      this.#failAll(new Error(`the tokenizer thread failed: ${e.message}`));
    };
    // Do not keep the process alive for an idle worker.
    (w as unknown as { unref?: () => void }).unref?.();
    return w;
  }

  #failAll(e: Error): void {
    for (const p of this.#pending.values()) p.reject(e);
    this.#pending.clear();
  }
}

// ---- the worker side --------------------------------------------------------------------------

if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent) => void) | null;
    postMessage(m: Reply, transfer?: Transferable[]): void;
  };
  let tok: Tokenizer | null = null;
  scope.onmessage = (e: MessageEvent<PortableTokenizer | EncodeMessage>) => {
    const m = e.data;
    if ("kind" in m) {
      tok = buildTokenizer(m);
      return;
    }
    try {
      const ids = Int32Array.from(tok!.encode(m.text, { addSpecialTokens: m.addSpecialTokens }));
      scope.postMessage({ id: m.id, ids }, [ids.buffer]);
    } catch (err) {
      scope.postMessage({ id: m.id, error: (err as Error).message });
    }
  };
}
