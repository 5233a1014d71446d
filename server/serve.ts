// Running the server: listen at once, load the model in the background (/health answers 503 until
// it is ready), and shut down gracefully: stop accepting, let running requests finish within the
// grace period, cancel what is left, close the listener.

import type { Hono } from "hono";
import { createApp } from "./app.ts";
import type { ServerConfig } from "./config.ts";
import { ServerContext } from "./context.ts";
import type { AppBindings } from "./generation.ts";
import { WatchedListener } from "./listener.ts";

export interface Server {
  ctx: ServerContext;
  app: Hono;
  /** The listener, or null under `deno serve` (which listens itself, and so cannot tell a
   * non-streamed request that its client left: see server/listener.ts). */
  listener: WatchedListener | null;
  /** e.g. http://127.0.0.1:8000 (null without a listener). */
  url: string | null;
  /** Settles when loading ends; rejects with the ConfigError that stopped it. */
  loaded: Promise<void>;
  /** Graceful stop; resolves once the listener is closed and the engine is closed. */
  shutdown(graceS?: number): Promise<void>;
}

export interface StartOptions {
  /** Log lines (start-up, ready, shutdown). Default: stderr. */
  log?: (line: string) => void;
  /** false: do not listen (`deno serve` listens with the exported fetch). Default true. */
  listen?: boolean;
}

export function startServer(config: ServerConfig, opts: StartOptions = {}): Server {
  const log = opts.log ?? ((l: string) => console.error(l));
  const ctx = new ServerContext(config, log);
  const app = createApp(ctx);
  let listener: WatchedListener | null = null;
  let url: string | null = null;
  if (opts.listen ?? true) {
    listener = new WatchedListener(
      config.host,
      config.port,
      (req, clientGone) => app.fetch(req, { clientGone } satisfies AppBindings),
    );
    const addr = listener.addr;
    const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
    url = `http://${host}:${addr.port}`;
  }
  // Announce only a start that passed the cheap checks; a failed one is reported by `loaded`.
  const loaded = ctx.preflight().then(() => {
    if (url) log(`zigzag: listening on ${url}`);
    return ctx.load();
  }).then(() => {}, (e) => {
    ctx.state = "failed";
    ctx.reason = e instanceof Error ? e.message : String(e);
    throw e;
  });
  // The caller decides what a failed start means (main.ts exits); never an unhandled rejection.
  loaded.catch(() => {});

  let stopping: Promise<void> | null = null;
  const shutdown = (graceS = config.graceS): Promise<void> => {
    stopping ??= (async () => {
      ctx.state = "draining";
      ctx.reason = "shutting down";
      const engine = ctx.loadedEngine;
      if (engine) {
        engine.stopAccepting();
        const busy = engine.running + engine.waiting;
        if (busy > 0) log(`zigzag: shutting down: ${busy} request(s) get ${graceS}s to finish`);
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise<"late">((
          r,
        ) => (timer = setTimeout(() => r("late"), graceS * 1000)));
        const how = await Promise.race([engine.idle(), late]);
        clearTimeout(timer);
        if (how === "late") {
          log(
            `zigzag: grace period over: cancelling ${engine.running + engine.waiting} request(s)`,
          );
        }
        await engine.close();
      }
      ctx.prompts?.close();
      // Lets responses that are being written (the last SSE events) go out.
      await listener?.shutdown();
    })();
    return stopping;
  };
  return { ctx, app, listener, url, loaded, shutdown };
}
