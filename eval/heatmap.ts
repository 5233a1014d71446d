// An SVG heatmap of pass-key accuracy: rows are context lengths, columns key depths, each cell
// shaded from red (0%) to green (100%) and labelled with its accuracy.

import type { PasskeyCell } from "./passkey.ts";

const CELL_W = 56;
const CELL_H = 28;
const LEFT = 64;
const TOP = 48;

function escape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function color(acc: number): string {
  const r = Math.round(215 + (26 - 215) * acc);
  const g = Math.round(48 + (150 - 48) * acc);
  const b = Math.round(39 + (65 - 39) * acc);
  return `rgb(${r},${g},${b})`;
}

export function accuracyHeatmap(
  cells: PasskeyCell[],
  title: string,
  lengths: number[],
  depths: number[],
): string {
  const width = LEFT + depths.length * CELL_W + 16;
  const height = TOP + lengths.length * CELL_H + 36;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="8" y="18" font-size="13">${escape(title)}</text>`,
    `<text x="8" y="34" fill="#555">rows: length (tokens); columns: key depth</text>`,
  ];
  lengths.forEach((len, i) => {
    const y = TOP + i * CELL_H;
    out.push(`<text x="${LEFT - 6}" y="${y + 18}" text-anchor="end">${len}</text>`);
    depths.forEach((d, j) => {
      const x = LEFT + j * CELL_W;
      const c = cells.find((c) => c.length === len && c.depth === d);
      const acc = c && c.total ? c.correct / c.total : NaN;
      const fill = Number.isNaN(acc) ? "#eee" : color(acc);
      out.push(
        `<rect x="${x}" y="${y}" width="${CELL_W - 2}" height="${CELL_H - 2}" fill="${fill}"/>`,
        `<text x="${x + CELL_W / 2 - 1}" y="${y + 18}" text-anchor="middle" fill="white">${
          Number.isNaN(acc) ? "-" : `${Math.round(acc * 100)}%`
        }</text>`,
      );
    });
  });
  const yAxis = TOP + lengths.length * CELL_H + 16;
  depths.forEach((d, j) => {
    out.push(
      `<text x="${
        LEFT + j * CELL_W + CELL_W / 2 - 1
      }" y="${yAxis}" text-anchor="middle">${d}</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
