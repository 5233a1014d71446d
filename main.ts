// zigzag's generation server.
//
//   deno task start --model ../shared/models/stories260K [--port 8000] [--plan FILE] ...
//   deno serve -A main.ts                 (settings from environment variables, or after `--`)
//
// Listens at once; /health answers 503 until the model is loaded. A start-up misconfiguration
// (no model, a missing plan, ...) exits with status 1 and one line naming the flag or variable,
// e.g. `zigzag: ZIGZAG_MODEL=/models: no model found (...)`. SIGTERM / SIGINT stop accepting,
// give running requests --grace-s seconds, then exit. Flags: `deno task start --help`.

import { ConfigError, parseServerConfig, startupWarnings, USAGE } from "./server/config.ts";
import { startServer } from "./server/serve.ts";

function fail(line: string): never {
  console.error(line);
  Deno.exit(1);
}

/** `deno serve` listens itself with the exported fetch; `deno run` does not. */
function underDenoServe(): boolean {
  try {
    const argv = Deno.readTextFileSync("/proc/self/cmdline").split("\0");
    return argv[1] === "serve";
  } catch {
    return Deno.env.get("ZIGZAG_DENO_SERVE") === "1";
  }
}

let config;
try {
  config = parseServerConfig(Deno.args);
} catch (e) {
  if (e instanceof ConfigError) fail(e.line);
  throw e;
}
if (config === "help") {
  console.log(USAGE);
  Deno.exit(0);
}
for (const line of startupWarnings(config)) console.error(line);

const serveMode = import.meta.main && underDenoServe();
const server = startServer(config, { listen: import.meta.main && !serveMode });
if (import.meta.main) {
  server.loaded.catch(async (e) => {
    console.error(
      e instanceof ConfigError ? e.line : `zigzag: start-up failed: ${(e as Error).message}`,
    );
    // The GPU thread that failed is still going away: a hard exit during its device's teardown
    // can crash the process (exit 139 instead of 1). Close the listener, let it finish, then go.
    await server.shutdown(0).catch(() => {});
    await new Promise((r) => setTimeout(r, 250));
    Deno.exit(1);
  });
  const stop = (signal: string) => {
    console.error(`zigzag: ${signal}: shutting down`);
    server.shutdown().then(() => Deno.exit(0), (e) => fail(`zigzag: shutdown: ${e}`));
  };
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    try {
      Deno.addSignalListener(sig, () => stop(sig));
    } catch { /* signals not available on this platform */ }
  }
}

const fetch = (req: Request): Response | Promise<Response> => server.app.fetch(req);

/**
 * For `deno serve`. Under `deno run` (this module listens itself) the getter hides `fetch` from
 * Deno's declarative-server check, which would otherwise warn "did you mean deno serve?".
 */
export default {
  get fetch() {
    return serveMode || !import.meta.main ? fetch : undefined;
  },
};
