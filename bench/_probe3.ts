import { parseGateTsv, selectDuoHeads } from "../plans/duo_import.ts";
for (const d of Deno.readDirSync("../shared/duo-patterns")) {
  if (!d.isDirectory) continue;
  const g = parseGateTsv(
    Deno.readTextFileSync(`../shared/duo-patterns/${d.name}/full_attention_heads.tsv`),
  );
  const sel = selectDuoHeads(g, 0.5);
  const per = sel.map((r) => r.filter(Boolean).length);
  const mixed = per.filter((c) => c > 0 && c < g[0].length).length;
  console.log(d.name, g.length, g[0].length, "mixed", mixed, per.join(","));
}
