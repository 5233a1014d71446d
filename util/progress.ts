// A one-line progress bar with an ETA, drawn only when stderr is a terminal.

export interface Progress {
  update(done: number, total: number, note?: string): void;
  done(note?: string): void;
}

export function progress(label: string, force = false): Progress {
  const tty = force || Deno.stderr.isTerminal();
  const start = performance.now();
  const enc = new TextEncoder();
  let last = 0;
  return {
    update(done, total, note = "") {
      if (!tty) return;
      const now = performance.now();
      if (now - last < 100 && done < total) return;
      last = now;
      const frac = total > 0 ? Math.min(1, done / total) : 0;
      const width = 30;
      const bar = "#".repeat(Math.round(frac * width)).padEnd(width, ".");
      const elapsed = (now - start) / 1000;
      const eta = frac > 0 ? elapsed / frac - elapsed : 0;
      const line = `\r${label} [${bar}] ${(frac * 100).toFixed(0)}% ` +
        `${elapsed.toFixed(1)}s eta ${eta.toFixed(1)}s ${note}`;
      Deno.stderr.writeSync(enc.encode(line.padEnd(100)));
    },
    done(note = "") {
      if (!tty) return;
      const elapsed = ((performance.now() - start) / 1000).toFixed(1);
      Deno.stderr.writeSync(
        enc.encode(`\r${label}: done in ${elapsed}s ${note}`.padEnd(100) + "\n"),
      );
    },
  };
}
