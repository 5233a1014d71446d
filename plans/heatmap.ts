// An SVG heatmap of a plan's scores: one row per layer, one cell per KV head (scores.kv_heads,
// when the method scored heads) and a last column with the layer score (scores.layers), each
// column group shaded from its own minimum (white) to maximum (dark red). Retrieval layers
// (zigzag) get a thick outline and an "R"; retrieval KV heads (duo) an outlined cell.

import type { Plan } from "./schema.ts";

const CELL = 28;
const LEFT = 72;
const TOP = 56;

function escape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

function shade(v: number, lo: number, hi: number): string {
  const t = hi > lo ? Math.min(1, Math.max(0, (v - lo) / (hi - lo))) : 0;
  // white -> #b2182b
  const mix = (a: number, b: number) => Math.round(a + (b - a) * t);
  return `rgb(${mix(255, 178)},${mix(255, 24)},${mix(255, 43)})`;
}

function fmt(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 100 || a < 0.01 ? v.toExponential(1) : v.toPrecision(2);
}

/** The heatmap of `plan` as a standalone SVG document. */
export function heatmapSvg(plan: Plan, title?: string): string {
  const L = plan.model.num_layers;
  const H = plan.model.num_kv_heads;
  const kv = plan.scores?.kv_heads;
  const layers = plan.scores?.layers ?? (kv ? kv.map((r) => r.reduce((a, b) => a + b, 0)) : []);
  const headCols = kv ? H : 0;
  const width = Math.max(320, LEFT + (headCols + 1) * CELL + (headCols > 0 ? 12 : 0) + 72);
  const height = TOP + L * CELL + 40;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
  );
  const head = title ??
    `${plan.mode} plan, ${plan.provenance.method}, budget ${plan.provenance.budget}`;
  out.push(`<text x="8" y="16" font-size="13">${escape(head)}</text>`);
  out.push(
    `<text x="8" y="32" fill="#555">rows: layers; columns: ${
      kv ? "KV heads, then the layer score" : "layer score"
    }</text>`,
  );
  const flat = kv ? kv.flat() : [];
  const [hlo, hhi] = flat.length ? [Math.min(...flat), Math.max(...flat)] : [0, 0];
  const [llo, lhi] = layers.length ? [Math.min(...layers), Math.max(...layers)] : [0, 0];
  const layerX = LEFT + headCols * CELL + (headCols > 0 ? 12 : 0);
  for (let h = 0; h < headCols; h++) {
    out.push(
      `<text x="${LEFT + h * CELL + CELL / 2}" y="${TOP - 6}" text-anchor="middle">h${h}</text>`,
    );
  }
  out.push(`<text x="${layerX + CELL / 2}" y="${TOP - 6}" text-anchor="middle">layer</text>`);
  for (let l = 0; l < L; l++) {
    const y = TOP + l * CELL;
    const retrieval = plan.mode === "zigzag"
      ? plan.layers?.[l] === "retrieval"
      : plan.mode === "duo"
      ? (plan.heads?.[l] ?? []).some((k) => k === "retrieval")
      : plan.mode === "full";
    out.push(
      `<text x="${LEFT - 8}" y="${y + CELL / 2 + 4}" text-anchor="end"${
        retrieval && plan.mode === "zigzag" ? ' font-weight="bold"' : ""
      }>${retrieval && plan.mode === "zigzag" ? "R " : ""}L${l}</text>`,
    );
    for (let h = 0; h < headCols; h++) {
      const v = kv![l][h];
      const chosen = plan.mode === "duo" && plan.heads?.[l]?.[h] === "retrieval";
      out.push(
        `<rect x="${LEFT + h * CELL}" y="${y}" width="${CELL}" height="${CELL}" fill="${
          shade(v, hlo, hhi)
        }" stroke="${chosen ? "black" : "#ddd"}" stroke-width="${chosen ? 2.5 : 1}">` +
          `<title>layer ${l} KV head ${h}: ${v}</title></rect>`,
      );
    }
    if (layers.length) {
      const v = layers[l];
      out.push(
        `<rect x="${layerX}" y="${y}" width="${CELL}" height="${CELL}" fill="${
          shade(v, llo, lhi)
        }" stroke="#ddd"><title>layer ${l}: ${v}</title></rect>`,
        `<text x="${layerX + CELL + 4}" y="${y + CELL / 2 + 4}" fill="#555">${fmt(v)}</text>`,
      );
    }
    if (retrieval && plan.mode === "zigzag") {
      out.push(
        `<rect x="${LEFT - 1}" y="${y + 1}" width="${layerX + CELL - LEFT + 2}" ` +
          `height="${CELL - 2}" fill="none" stroke="black" stroke-width="2.5"/>`,
      );
    }
  }
  const legend = plan.mode === "zigzag"
    ? "outlined rows (R): retrieval layers"
    : plan.mode === "duo"
    ? "outlined cells: retrieval KV heads"
    : "";
  out.push(`<text x="8" y="${TOP + L * CELL + 24}" fill="#555">${escape(legend)}</text>`);
  out.push("</svg>");
  return out.join("\n") + "\n";
}
