// AttentionInfluence (`deno task score`, identify/influence.ts, cli/score.ts): JSONL parsing and its
// errors, masking a plan's retrieval heads, ranking, the summary, the CLI's flag errors, and on the
// pass-key model with its shipped zigzag 50% plan: documents only retrieval can predict (a random
// string repeated, named codes asked for at the end) rank above ordinary filler, and the plain
// loss equals the CPU reference's.

import assert from "node:assert/strict";
import { logSumExp } from "./reference/log_softmax.ts";
import { Engine } from "../engine/engine.ts";
import { calibrationSet, fillerText } from "../identify/calibration.ts";
import {
  describeMasked,
  documentTokens,
  type InfluenceDoc,
  InfluenceInputError,
  type LogprobScorer,
  maskedHeads,
  maskPlan,
  meanNll,
  outputRecord,
  parseJsonl,
  rankInfluence,
  type ScoredDoc,
  scoreDocuments,
  summaryMarkdown,
  summaryPath,
  toJsonl,
} from "../identify/influence.ts";
import { loadModel } from "../model/load.ts";
import { mulberry32 } from "../model/random.ts";
import type { LoadedModel, Tokenizer } from "../model/types.ts";
import { loadPlanArg } from "../plans/resolve.ts";
import { layerAttention, type ResolvedPlan } from "../plans/types.ts";
import { CpuLlama } from "./reference/cpu_llama.ts";

const PASSKEY = "../shared/models/passkey-llama";
const ZIGZAG = "plans/shipped/passkey-llama.zigzag50.json";

function plan(kinds: ("retrieval" | "streaming")[][], sink = 4, recent = 8): ResolvedPlan {
  return { mode: "duo", sink, recent, layers: kinds.map((k) => layerAttention(k)) };
}

function scored(line: number, loss: number, maskedLoss: number, text = `doc ${line}`): ScoredDoc {
  const doc: InfluenceDoc = { line, record: { text, id: line }, text };
  return { doc, tokens: 10 + line, truncated: false, loss, maskedLoss };
}

const throwsNaming = (f: () => unknown, re: RegExp) =>
  assert.throws(f, (e: Error) => e instanceof InfluenceInputError && re.test(e.message));

Deno.test("influence: JSONL documents keep their fields; blank lines and CRLF are fine", () => {
  const docs = parseJsonl(
    '{"text": "one", "id": 1}\r\n\n  \n{"text": "two", "meta": {"a": [1]}}\n',
    "in.jsonl",
  );
  assert.deepEqual(docs.map((d) => [d.line, d.text]), [[1, "one"], [4, "two"]]);
  assert.deepEqual(docs[1].record, { text: "two", meta: { a: [1] } });
});

Deno.test("influence: JSONL errors name the file and line", () => {
  const ok = '{"text": "fine"}\n';
  throwsNaming(() => parseJsonl(ok + "\n{oops}\n", "d.jsonl"), /^d\.jsonl:3: not valid JSON/);
  throwsNaming(() => parseJsonl(ok + "[1, 2]", "d.jsonl"), /^d\.jsonl:2: expected a JSON object/);
  throwsNaming(() => parseJsonl(ok + "null", "d.jsonl"), /^d\.jsonl:2: expected a JSON object/);
  throwsNaming(() => parseJsonl(ok + '{"body": "x"}', "d.jsonl"), /^d\.jsonl:2: .*missing/);
  throwsNaming(() => parseJsonl(ok + '{"text": 3}', "d.jsonl"), /^d\.jsonl:2: .*got number/);
  throwsNaming(() => parseJsonl(ok + '{"text": ""}', "d.jsonl"), /^d\.jsonl:2: "text" is empty/);
  throwsNaming(() => parseJsonl("\n \n", "e.jsonl"), /^e\.jsonl: no documents/);
});

Deno.test("influence: loss is the mean NLL of tokens 1..; documents of < 2 tokens are refused", () => {
  assert.equal(meanNll(Float32Array.from([NaN, -1, -2, -3])), 2);
  assert.throws(() => meanNll([NaN]), RangeError);
  const tok = {
    encode: (t: string) => [0, ...Array.from(t, (ch) => ch.charCodeAt(0))],
  } as unknown as Tokenizer;
  const doc = (text: string): InfluenceDoc => ({ line: 7, record: { text }, text });
  assert.deepEqual(documentTokens(tok, doc("abc"), 10), {
    ids: [0, 97, 98, 99],
    truncated: false,
  });
  assert.deepEqual(documentTokens(tok, doc("abc"), 3), { ids: [0, 97, 98], truncated: true });
  throwsNaming(() => documentTokens(tok, doc("abc"), 1, "x.jsonl"), /^x\.jsonl:7: .*1 token/);
});

Deno.test("influence: masking turns the plan's retrieval heads streaming, the rest as the base", () => {
  const R = "retrieval" as const;
  const S = "streaming" as const;
  const full = plan([[R, R], [R, R], [R, R]]);
  const zig = plan([[R, R], [S, S], [R, R]], 2, 16);
  const m = maskPlan(full, zig);
  assert.deepEqual(m.layers.map((l) => l.kind), ["streaming", "retrieval", "streaming"]);
  assert.equal(m.mode, "zigzag");
  assert.deepEqual([m.sink, m.recent], [2, 16], "the window of the masking plan");
  assert.deepEqual([maskPlan(full, zig, { sink: 1, recent: 5 }).sink], [1]);
  assert.deepEqual(maskedHeads(full, m), [[0, 0], [0, 1], [2, 0], [2, 1]]);
  assert.equal(describeMasked(maskedHeads(full, m), 2), "layers 0, 2 (all KV heads)");
  // Masking with "full" makes everything streaming; a duo plan masks single heads.
  assert.equal(maskPlan(full, full).mode, "streaming");
  const duo = maskPlan(full, plan([[R, S], [S, S], [S, S]]));
  assert.equal(duo.mode, "duo");
  assert.deepEqual(duo.layers[0].kvHeadKinds, [S, R]);
  assert.equal(describeMasked(maskedHeads(full, duo), 2), "L0H0");
  // A base that is streaming already has nothing there to mask.
  assert.deepEqual(maskedHeads(zig, maskPlan(zig, zig)), [[0, 0], [0, 1], [2, 0], [2, 1]]);
  assert.deepEqual(maskedHeads(zig, maskPlan(zig, plan([[S, S], [R, R], [S, S]]))), []);
});

Deno.test("influence: ranking by masked - plain loss, ties in input order, output in input order", () => {
  const ranked = rankInfluence([
    scored(1, 2, 2.1), // 0.1
    scored(2, 3, 4), // 1
    scored(3, 2, 1.9), // -0.1
    scored(4, 1, 1.1), // 0.1 (tie with line 1, after it)
  ]);
  assert.deepEqual(ranked.map((r) => r.doc.line), [1, 2, 3, 4]);
  assert.deepEqual(ranked.map((r) => r.rank), [2, 1, 4, 3]);
  assert.ok(Math.abs(ranked[1].influence - 1) < 1e-12);
  assert.ok(Math.abs(ranked[1].relativeInfluence - 1 / 3) < 1e-12);
  const rec = outputRecord(ranked[1]);
  assert.deepEqual(Object.keys(rec), [
    "text",
    "id",
    "tokens",
    "truncated",
    "loss",
    "masked_loss",
    "influence",
    "relative_influence",
    "rank",
  ]);
  assert.equal(rec.id, 2);
  const lines = toJsonl(ranked).trimEnd().split("\n").map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((l) => l.rank), [2, 1, 4, 3]);
  // The paper's relative score: line 4 (0.1 / 1) above line 1 (0.1 / 2); line 2 stays first.
  assert.deepEqual(rankInfluence(ranked, "relative").map((r) => r.rank), [3, 1, 4, 2]);
  assert.equal(summaryPath("out/x.jsonl"), "out/x.md");
  assert.equal(summaryPath("out/x.json"), "out/x.json.md");
});

Deno.test("influence: the summary lists the top and bottom documents", () => {
  const meta = {
    model: "m",
    input: "in.jsonl",
    base: "full",
    plan: "p.json",
    masked: "layers 0, 1 (all KV heads)",
    sink: 4,
    recent: 32,
    precision: "f32",
  };
  const docs = Array.from({ length: 7 }, (_, i) => scored(i + 1, 2, 2 + i / 10, `t|${i}\nx`));
  const md = summaryMarkdown(rankInfluence(docs), meta, 2);
  assert.match(md, /^# AttentionInfluence\n/);
  assert.match(md, /7 documents, 98 tokens/);
  assert.match(md, /retrieval heads of `p\.json` streaming \(sink 4, recent 32\)/);
  assert.match(md, /## Top 2 \(highest influence\)\n\n\| rank[^\n]*\n[^\n]*\n\| 1 \| 7 \|/);
  assert.match(
    md,
    /## Bottom 2[^]*\| 6 \| 2 \|[^\n]*\n\| 7 \| 1 \| 11 \| 2\.0000 \| 2\.0000 \| 0\.0000/,
  );
  assert.match(md, /t\\\|0 x \|/, "pipes escaped, newlines flattened");
  const all = summaryMarkdown(rankInfluence(docs.slice(0, 3)), meta, 2);
  assert.match(all, /## All documents by influence/);
  assert.doesNotMatch(all, /## Top/);
});

Deno.test("influence: scoreDocuments scores each document on both scorers, any concurrency", async () => {
  // Fake scorers: log p = -1 per token on the base, -(1 + first id) on the masked one.
  let inFlight = 0;
  let most = 0;
  const scorer = (extra: (ids: number[]) => number): LogprobScorer => ({
    async promptLogprobs(ids) {
      most = Math.max(most, ++inFlight);
      await new Promise((r) => setTimeout(r, 1 + (ids[0] % 3)));
      inFlight--;
      const lp = new Float32Array(ids.length).fill(-1 - extra(ids));
      lp[0] = NaN;
      return { logprobs: lp };
    },
  });
  const docs = Array.from({ length: 5 }, (_, i): InfluenceDoc => ({
    line: i + 1,
    record: { text: "x" },
    text: "x",
  }));
  const tokenized = docs.map((_, i) => ({ ids: [i, 1, 2], truncated: i === 2 }));
  const seen: number[] = [];
  const out = await scoreDocuments(docs, tokenized, scorer(() => 0), scorer((ids) => ids[0]), {
    maxTokens: 3,
    concurrency: 2,
    onProgress: (done) => seen.push(done),
  });
  assert.deepEqual(out.map((s) => [s.loss, s.maskedLoss]), [[1, 1], [1, 2], [1, 3], [1, 4], [
    1,
    5,
  ]]);
  assert.deepEqual(out.map((s) => s.truncated), [false, false, true, false, false]);
  assert.deepEqual(seen, [3, 6, 9, 12, 15]);
  assert.equal(most, 4, "two documents at once, each on both scorers");
  const short: LogprobScorer = {
    promptLogprobs: () => Promise.resolve({ logprobs: new Float32Array(2) }),
  };
  await assert.rejects(
    () => scoreDocuments(docs, tokenized, short, short, { maxTokens: 3 }),
    /line 1: the base gave 2 log-probs for 3 tokens/,
  );
});

async function cli(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "cli/score.ts", ...args],
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("influence: bad flags and inputs are errors naming them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bad = `${dir}/bad.jsonl`;
    await Deno.writeTextFile(bad, '{"text": "a"}\n{"txt": "b"}\n');
    const cases: [string[], number, RegExp][] = [
      [["--bogus", "1"], 2, /error: unknown flag --bogus/],
      [[], 2, /missing required flag --input/],
      [["--input", bad, "--max-tokens-per-doc", "1"], 2, /--max-tokens-per-doc must be at least 2/],
      [["--input", bad, "--precision", "f8"], 2, /--precision must be one of f16, f32/],
      [["--input", bad, "--sink", "x"], 2, /--sink must be an integer/],
      [["--input", bad, "--rank-by", "loss"], 2, /--rank-by must be one of influence, relative/],
      [["--input", bad, "--batch", "65"], 2, /--batch must be at most 64/],
      [["--input", `${dir}/none.jsonl`], 2, /--input .*none\.jsonl/],
      [["--input", bad, "--output", bad], 2, /--output must differ from --input/],
      [["--input", bad], 1, /bad\.jsonl:2: "text" must be a string \(the field is missing\)/],
    ];
    for (const [args, code, re] of cases) {
      const r = await cli(args);
      assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, re, args.join(" "));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- on the GPU ------------------------------------------------------------------------------

/** `n` characters of random words and numbers (no repeats inside: only a second copy repeats). */
function randomString(seed: number, n: number): string {
  const r = mulberry32(seed);
  const words = "apple river candle window garden mountain teacher village".split(" ");
  let s = "";
  while (s.length < n) {
    s += (r() < 0.5 ? String(Math.floor(r() * 100000)) : words[Math.floor(r() * 8)]) + " ";
  }
  return s.trim();
}

Deno.test({
  name: "influence: on passkey-llama, documents only retrieval predicts rank above filler",
  ...{ sanitizeResources: false, sanitizeOps: false },
  fn: async () => {
    const model = await loadModel(PASSKEY) as LoadedModel;
    const tok = model.tokenizer!;
    const c = model.config;
    const window = { sink: 4, recent: 32 };
    const mask = await loadPlanArg(ZIGZAG, c, window);
    const base = await loadPlanArg("full", c, window);
    const masked = maskPlan(base, mask);
    assert.equal(
      describeMasked(maskedHeads(base, masked), c.nKvHeads),
      "layers 0, 1, 6, 7 (all KV heads)",
    );

    const retrieval = [
      ...[1, 2].map((s) => randomString(s, 140)).map((s) => `${s}\n${s}`),
      // Three named codes stated early, asked for at the end (the model's training format).
      calibrationSet(tok, { lengths: [400], samples: 1, seed: 3, needles: 3 })[0].text,
    ];
    const ordinary = [11, 12, 13].map((s) => fillerText(s, 300));
    const lines = [...retrieval, ...ordinary].map((text, i) => JSON.stringify({ text, i }));
    const docs = parseJsonl(lines.join("\n"), "docs.jsonl");
    const tokenized = docs.map((d) => documentTokens(tok, d, 512));
    const longest = Math.max(...tokenized.map((t) => t.ids.length));
    const engine = (p: ResolvedPlan) =>
      Engine.create({
        model,
        precision: "f32",
        plan: p,
        maxBatch: 32,
        maxSeqs: 1,
        prefillChunk: 256,
        decodeSteps: 1,
        maxModelLen: longest + 1,
        kvCacheBytes: 32 << 20,
        prefixCache: false,
        quiet: true,
      });
    const eb = await engine(base);
    const em = await engine(masked);
    let ranked;
    try {
      ranked = rankInfluence(
        await scoreDocuments(docs, tokenized, eb, em, {
          maxTokens: 512,
        }),
      );
    } finally {
      await em.close();
      await eb.close();
    }
    const fig = ranked.map((r) =>
      `${r.doc.line}: ${r.tokens} tokens loss ${r.loss.toFixed(4)} masked ${
        r.maskedLoss.toFixed(4)
      } influence ${r.influence.toFixed(4)} rank ${r.rank}`
    );
    console.log(fig.join("\n"));
    const worstRetrieval = Math.max(...ranked.slice(0, retrieval.length).map((r) => r.rank));
    const bestOrdinary = Math.min(...ranked.slice(retrieval.length).map((r) => r.rank));
    assert.ok(worstRetrieval < bestOrdinary, fig.join("\n"));
    for (const r of ranked.slice(0, retrieval.length)) {
      assert.ok(r.influence > 0.05, fig.join("\n"));
    }

    // The plain loss of one document (the named codes) against the CPU reference's, and the
    // masked loss against the reference under the masked plan.
    const k = 2;
    const ids = tokenized[k].ids;
    const cpuLoss = (p?: ResolvedPlan) => {
      const cpu = new CpuLlama(c, model.weights, p);
      let sum = 0;
      let logits = cpu.forward(ids[0], 0);
      for (let i = 1; i < ids.length; i++) {
        sum += logits[ids[i]] - logSumExp(logits);
        if (i < ids.length - 1) logits = cpu.forward(ids[i], i);
      }
      return -sum / (ids.length - 1);
    };
    const ref = cpuLoss();
    const refMasked = cpuLoss(masked);
    assert.ok(Math.abs(ranked[k].loss - ref) < 1e-3, `loss ${ranked[k].loss} vs CPU ${ref}`);
    assert.ok(
      Math.abs(ranked[k].maskedLoss - refMasked) < 1e-3,
      `masked loss ${ranked[k].maskedLoss} vs CPU ${refMasked}`,
    );
  },
});
