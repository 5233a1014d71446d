// Prometheus text exposition format (version 0.0.4): HELP and TYPE lines, then samples.

import type { Histogram } from "../engine/metrics.ts";

export type Labels = Record<string, string>;

function labelText(l: Labels): string {
  const parts = Object.entries(l).map(([k, v]) =>
    `${k}="${v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"')}"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

function num(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

export class Exposition {
  #lines: string[] = [];

  #head(name: string, type: string, help: string) {
    this.#lines.push(`# HELP ${name} ${help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`);
    this.#lines.push(`# TYPE ${name} ${type}`);
  }

  gauge(name: string, help: string, samples: [Labels, number][] | number): this {
    this.#head(name, "gauge", help);
    for (
      const [l, v] of typeof samples === "number" ? [[{}, samples] as [Labels, number]] : samples
    ) {
      this.#lines.push(`${name}${labelText(l)} ${num(v)}`);
    }
    return this;
  }

  counter(name: string, help: string, samples: [Labels, number][] | number): this {
    this.#head(name, "counter", help);
    for (
      const [l, v] of typeof samples === "number" ? [[{}, samples] as [Labels, number]] : samples
    ) {
      this.#lines.push(`${name}${labelText(l)} ${num(v)}`);
    }
    return this;
  }

  histogram(name: string, help: string, h: Histogram): this {
    this.#head(name, "histogram", help);
    h.bounds.forEach((b, i) => this.#lines.push(`${name}_bucket{le="${num(b)}"} ${h.counts[i]}`));
    this.#lines.push(`${name}_bucket{le="+Inf"} ${h.count}`);
    this.#lines.push(`${name}_sum ${num(h.sum)}`);
    this.#lines.push(`${name}_count ${h.count}`);
    return this;
  }

  toString(): string {
    return this.#lines.join("\n") + "\n";
  }
}
