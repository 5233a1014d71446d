// The layer rules, read off the import graph: data flows routes -> engine -> runner -> kernels,
// plans feed the cache and the runner, cache/ is pure bookkeeping, and nothing but bench/ and
// tests/ reach into bench/ or tests/. Every .ts file's static imports and re-exports (and literal
// dynamic imports) with a relative specifier are resolved to repo paths and checked against RULES.
//
// The scanner is a small tokenizer, not a regular expression over the text, so imports written in
// comments, strings, templates or after a regex literal are not mistaken for real ones; the
// self-check below feeds it such cases.

import assert from "node:assert/strict";

/** The layer rules: one row per rule. Folders are repo-relative prefixes ending in "/". */
type Rule =
  | {
    /** Files these rows apply to ("*": every file), less those under `except`. */
    from: readonly string[];
    except?: readonly string[];
    /** Folders those files must not import from. */
    deny: readonly string[];
    why: string;
  }
  | {
    /** A folder that may hold only files with these endings. */
    folder: string;
    only: readonly string[];
    why: string;
  };

export const RULES: readonly Rule[] = [
  {
    from: ["routes/", "server/"],
    deny: ["gpu/"],
    why: "the HTTP layer reaches the GPU only through engine/",
  },
  {
    from: ["gpu/"],
    deny: ["engine/", "server/", "routes/"],
    why: "the runner and kernels sit below the engine",
  },
  {
    from: ["cache/"],
    deny: ["gpu/", "engine/", "server/", "routes/"],
    why: "cache/ is pure bookkeeping",
  },
  {
    from: ["plans/"],
    deny: ["identify/", "gpu/", "engine/"],
    why: "plans/ is plan data; identification tooling lives in identify/",
  },
  {
    // tests/ are the top layer: bench_test.ts tests bench/'s GPU-free pieces.
    from: ["*"],
    except: ["bench/", "tests/"],
    deny: ["bench/"],
    why: "the bench measures the product, which never depends on it",
  },
  {
    from: ["*"],
    except: ["tests/"],
    deny: ["tests/"],
    why: "test helpers are not product code",
  },
  { folder: "wgsl/", only: [".wgsl"], why: "kernel sources; their TypeScript side is in gpu/" },
];

const CODE = [".ts", ".tsx", ".mts", ".js", ".mjs", ".jsx"];
const SKIP_DIRS = new Set([".git", "node_modules"]);

export interface Violation {
  file: string;
  /** The imported repo path (for a folder-contents rule, the file itself). */
  target: string;
  rule: string;
}

function ruleName(r: Rule): string {
  if ("folder" in r) return `${r.folder} holds only ${r.only.join(", ")}: ${r.why}`;
  const who = r.from.includes("*") ? "anything" : r.from.join(", ");
  const but = r.except ? ` outside ${r.except.join(", ")}` : "";
  return `${who}${but} must not import ${r.deny.join(", ")}: ${r.why}`;
}

export function format(v: Violation): string {
  return `${v.file} -> ${v.target} (${v.rule})`;
}

// ---- the scanner -------------------------------------------------------------------------------

type Tok = { t: "id" | "str" | "punct" | "other"; v: string };

/** After these tokens a `/` starts a regex literal, not a division. */
const REGEX_AFTER_PUNCT = new Set("(,=:[!&|?{};+-*%<>~^".split(""));
const REGEX_AFTER_WORD = new Set([
  "return",
  "typeof",
  "instanceof",
  "in",
  "of",
  "new",
  "delete",
  "void",
  "throw",
  "case",
  "do",
  "else",
  "yield",
  "await",
]);

/** Identifiers, string literals and punctuation of a JS/TS source; comments, template text and
 * regex literals are consumed and never yield tokens that look like imports. */
export function tokenize(src: string): Tok[] {
  const out: Tok[] = [];
  // What each open `{` belongs to: a block/object, or a template's `${`.
  const braces: ("code" | "template")[] = [];
  let i = 0;
  const n = src.length;
  const last = () => out[out.length - 1];

  /** Reads template text from i (just after ` or }) to the closing ` or the next ${. */
  const templateText = () => {
    while (i < n) {
      const c = src[i];
      if (c === "\\") i += 2;
      else if (c === "`") {
        i++;
        out.push({ t: "other", v: "`template`" });
        return;
      } else if (c === "$" && src[i + 1] === "{") {
        i += 2;
        braces.push("template");
        out.push({ t: "punct", v: "(" }); // an expression follows
        return;
      } else i++;
    }
  };

  while (i < n) {
    const c = src[i];
    if (/\s/.test(c)) {
      i++;
    } else if (c === "/" && src[i + 1] === "/") {
      while (i < n && src[i] !== "\n") i++;
    } else if (c === "/" && src[i + 1] === "*") {
      const end = src.indexOf("*/", i + 2);
      i = end < 0 ? n : end + 2;
    } else if (c === '"' || c === "'") {
      let j = i + 1;
      let v = "";
      while (j < n && src[j] !== c && src[j] !== "\n") {
        if (src[j] === "\\") {
          v += src[j + 1] ?? "";
          j += 2;
        } else v += src[j++];
      }
      out.push({ t: "str", v });
      i = j + 1;
    } else if (c === "`") {
      i++;
      templateText();
    } else if (c === "{") {
      braces.push("code");
      out.push({ t: "punct", v: c });
      i++;
    } else if (c === "}") {
      i++;
      if (braces.pop() === "template") {
        out.push({ t: "punct", v: ")" });
        templateText();
      } else out.push({ t: "punct", v: c });
    } else if (c === "/") {
      const p = last();
      const regex = !p || (p.t === "punct" && REGEX_AFTER_PUNCT.has(p.v)) ||
        (p.t === "id" && REGEX_AFTER_WORD.has(p.v));
      if (!regex) {
        out.push({ t: "punct", v: c });
        i++;
        continue;
      }
      let j = i + 1;
      let cls = false;
      while (j < n && src[j] !== "\n") {
        const d = src[j];
        if (d === "\\") j++;
        else if (d === "[") cls = true;
        else if (d === "]") cls = false;
        else if (d === "/" && !cls) break;
        j++;
      }
      j++;
      while (j < n && /[a-z]/i.test(src[j])) j++;
      out.push({ t: "other", v: "/regex/" });
      i = j;
    } else if (/[A-Za-z_$]/.test(c)) {
      let j = i + 1;
      while (j < n && /[\w$]/.test(src[j])) j++;
      out.push({ t: "id", v: src.slice(i, j) });
      i = j;
    } else if (/[0-9]/.test(c)) {
      let j = i + 1;
      while (j < n && /[\w.]/.test(src[j])) j++;
      out.push({ t: "other", v: src.slice(i, j) });
      i = j;
    } else {
      out.push({ t: "punct", v: c });
      i++;
    }
  }
  return out;
}

/** Tokens that may stand between `import`/`export` and `from` in a module declaration. */
function clause(t: Tok): boolean {
  return t.t === "id" || (t.t === "punct" && "{},*".includes(t.v));
}

/** The module specifiers a source imports or re-exports, in order. */
export function specifiers(src: string): string[] {
  const toks = tokenize(src);
  const out: string[] = [];
  /** From j on, the string after the first `from` of an import/export clause, if any. */
  const fromClause = (j: number) => {
    for (; j < toks.length && clause(toks[j]); j++) {
      if (toks[j].v === "from" && toks[j + 1]?.t === "str") return toks[j + 1].v;
    }
    return null;
  };
  for (let i = 0; i < toks.length; i++) {
    const tok = toks[i];
    if (tok.t !== "id" || (i > 0 && toks[i - 1].v === ".")) continue;
    const next = toks[i + 1];
    if (!next) break;
    if (tok.v === "import") {
      if (next.t === "str") out.push(next.v); // import "x"
      else if (next.v === "(" && toks[i + 2]?.t === "str" && toks[i + 3]?.v === ")") {
        out.push(toks[i + 2].v); // import("x")
      } else if (next.v !== "." && next.v !== "(") {
        const s = fromClause(i + 1);
        if (s !== null) out.push(s);
      }
    } else if (tok.v === "export") {
      const j = next.v === "type" ? i + 2 : i + 1;
      if (toks[j]?.v === "*" || toks[j]?.v === "{") {
        const s = fromClause(j);
        if (s !== null) out.push(s);
      }
    }
  }
  return out;
}

/** A relative specifier as a repo path ("a/../b/c.ts" -> "b/c.ts"); null for a package. */
export function resolve(file: string, spec: string): string | null {
  if (!spec.startsWith("./") && !spec.startsWith("../")) return null;
  const parts = file.split("/").slice(0, -1);
  for (const p of spec.split("/")) {
    if (p === "." || p === "") continue;
    if (p === ".." && parts.length > 0 && parts[parts.length - 1] !== "..") parts.pop();
    else parts.push(p);
  }
  return parts.join("/");
}

// ---- the checker -------------------------------------------------------------------------------

const under = (path: string, folders: readonly string[]) =>
  folders.some((f) => f === "*" || path.startsWith(f));

/** Checks a tree given as repo path -> source (sources of non-code files are not read). */
export function check(tree: Record<string, string>, rules: readonly Rule[] = RULES): Violation[] {
  const out: Violation[] = [];
  for (const [file, src] of Object.entries(tree).sort(([a], [b]) => (a < b ? -1 : 1))) {
    for (const r of rules) {
      if ("folder" in r && file.startsWith(r.folder) && !r.only.some((e) => file.endsWith(e))) {
        out.push({ file, target: file, rule: ruleName(r) });
      }
    }
    if (!CODE.some((e) => file.endsWith(e))) continue;
    for (const spec of specifiers(src)) {
      const target = resolve(file, spec);
      if (target === null) continue;
      for (const r of rules) {
        if ("folder" in r) continue;
        if (!under(file, r.from) || (r.except && under(file, r.except))) continue;
        if (under(target, r.deny)) out.push({ file, target, rule: ruleName(r) });
      }
    }
  }
  return out;
}

/** Every file of the repo (less .git and node_modules), code files with their source. */
async function readTree(root: string): Promise<Record<string, string>> {
  const tree: Record<string, string> = {};
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(`${root}${dir}`)) {
      if (e.isSymlink || SKIP_DIRS.has(e.name)) continue;
      const path = `${dir}${e.name}`;
      if (e.isDirectory) await walk(`${path}/`);
      else {
        tree[path] = CODE.some((x) => path.endsWith(x))
          ? await Deno.readTextFile(`${root}${path}`)
          : "";
      }
    }
  };
  await walk("");
  return tree;
}

// ---- tests -------------------------------------------------------------------------------------

Deno.test("architecture self-check: wrong imports are reported, right ones are not", () => {
  const tree: Record<string, string> = {
    // Wrong, in every syntax the scanner must see.
    "routes/x.ts": `import { getGpu } from "../gpu/device.ts";\n`,
    "server/multi.ts": `import {\n  a,\n  type B,\n} from "../gpu/runner.ts";\n`,
    "server/types.ts": `import type { Sampled } from "../gpu/runner.ts";`,
    "server/side.ts": `import '../gpu/pipelines.ts'`,
    "server/dyn.ts": `const m = await import("../gpu/device.ts");`,
    "gpu/k.ts": `export * from "../engine/engine.ts";\nexport type { R } from "../routes/r.ts";`,
    "gpu/ns.ts": `export * as e from "../server/context.ts";`,
    "cache/m.ts":
      `import { Buf } from "../gpu/buffers.ts";\nimport { p } from "../plans/types.ts";`,
    "plans/resolve.ts": `import { probe } from "../identify/probe.ts";`,
    "plans/sub/deep.ts": `import { E } from "../../engine/engine.ts";`,
    "engine/e.ts": `import { managerStats } from "../bench/kv.ts";`,
    "bench/b.ts": `import { CpuLlama } from "../tests/reference/cpu_llama.ts";`,
    "main.ts": `import { x } from "./bench/bench.ts";`,
    "routes/after_regex.ts": `const re = /"/g;\nimport { y } from "../gpu/device.ts";\n`,
    "wgsl/helper.ts": `export const x = 1;`,
    // Right: allowed edges, packages, and imports that are only text.
    "routes/y.ts": `import { Engine } from "../engine/engine.ts";\nimport { Hono } from "hono";`,
    "routes/text.ts": [
      `// import { getGpu } from "../gpu/device.ts";`,
      `/* export * from "../gpu/runner.ts"; */`,
      `const s = "import x from '../gpu/device.ts'";`,
      "const t = `import ${a} from \"../gpu/device.ts\" ${`nested ${'../gpu/x.ts'}`}`;",
      `const u = import.meta.url; const v = a / b / c; x.import("../gpu/device.ts");`,
      `export { local };`,
      `import from from "../engine/from.ts";`,
    ].join("\n"),
    "gpu/ok.ts": `import { CacheLayout } from "../cache/layout.ts";\nexport { a } from "./b.ts";`,
    "plans/ok.ts": `import type { ModelConfig } from "../model/types.ts";`,
    "engine/ok.ts": `import { ModelRunner } from "../gpu/runner.ts";`,
    "tests/t.ts":
      `import { managerStats } from "../bench/kv.ts";\nimport { g } from "./gpu_helpers.ts";`,
    "bench/ok.ts": `import { Fit } from "./kv.ts";`,
    "wgsl/attention.wgsl": `// import "../gpu/x.ts" is not WGSL and is not read`,
    "README.md": `import { getGpu } from "./gpu/device.ts";`,
  };
  const got = check(tree).map((v) => `${v.file} -> ${v.target}`);
  for (const v of check(tree)) console.log(`  self-check: ${format(v)}`);
  assert.deepEqual(got, [
    "bench/b.ts -> tests/reference/cpu_llama.ts",
    "cache/m.ts -> gpu/buffers.ts",
    "engine/e.ts -> bench/kv.ts",
    "gpu/k.ts -> engine/engine.ts",
    "gpu/k.ts -> routes/r.ts",
    "gpu/ns.ts -> server/context.ts",
    "main.ts -> bench/bench.ts",
    "plans/resolve.ts -> identify/probe.ts",
    "plans/sub/deep.ts -> engine/engine.ts",
    "routes/after_regex.ts -> gpu/device.ts",
    "routes/x.ts -> gpu/device.ts",
    "server/dyn.ts -> gpu/device.ts",
    "server/multi.ts -> gpu/runner.ts",
    "server/side.ts -> gpu/pipelines.ts",
    "server/types.ts -> gpu/runner.ts",
    "wgsl/helper.ts -> wgsl/helper.ts",
  ]);
  // The message names the rule that was broken.
  assert.equal(
    format(check({ "routes/x.ts": tree["routes/x.ts"] })[0]),
    "routes/x.ts -> gpu/device.ts (routes/, server/ must not import gpu/: the HTTP layer " +
      "reaches the GPU only through engine/)",
  );
  assert.deepEqual(specifiers(tree["routes/text.ts"]), ["../engine/from.ts"]);
  assert.equal(resolve("a/b/c.ts", "../../d.ts"), "d.ts");
  assert.equal(resolve("a/c.ts", "./x/../y.ts"), "a/y.ts");
  assert.equal(resolve("a.ts", "npm:zod@3"), null);
});

Deno.test("architecture: the repo's imports follow the layer rules", async () => {
  const root = new URL("../", import.meta.url).pathname;
  const tree = await readTree(root);
  const files = Object.keys(tree).filter((f) => CODE.some((e) => f.endsWith(e)));
  // The scan saw the tree: the main folders' files and their imports.
  for (const f of ["main.ts", "cache/manager.ts", "gpu/runner.ts", "tests/architecture_test.ts"]) {
    assert.ok(f in tree, `${f} not found`);
  }
  assert.ok(specifiers(tree["cache/manager.ts"]).includes("./page_pool.ts"));
  const violations = check(tree);
  for (const v of violations) console.log(format(v));
  assert.equal(
    violations.length,
    0,
    `${violations.length} import(s) against the layer rules in ${files.length} files:\n` +
      violations.map(format).join("\n"),
  );
});
