// Tokenizers: llama2.c (tok512.bin against run.c's goldens) and Hugging Face tokenizer.json
// (passkey-llama goldens, SmolLM2), chat templates.

import assert from "node:assert/strict";
import { Llama2cTokenizer } from "../model/tokenizer_llama2c.ts";
import { HfTokenizer } from "../model/tokenizer_hf.ts";
import { loadTokenizer } from "../model/load.ts";
import { TokenizerThread } from "../model/tokenizer_thread.ts";

const shared = (p: string) =>
  decodeURIComponent(new URL(`../../shared/${p}`, import.meta.url).pathname);
const STORIES = shared("models/stories260K");
const PASSKEY = shared("models/passkey-llama");
const SMOLLM2 = shared("tokenizers/smollm2-135m/tokenizer.json");

interface StoriesGolden {
  prompt: string;
  prompt_ids: number[];
  next_ids: number[];
  text: string;
}

/** run.c's encode merge loop, verbatim (O(n^2) per merge), as an oracle for our heap version. */
function naiveMerge(t: Llama2cTokenizer, tokens: number[]): number[] {
  const key = (id: number) => String.fromCharCode(...t.pieces[id]);
  const lookup = new Map<string, number>();
  t.pieces.forEach((_, i) => {
    if (!lookup.has(key(i))) lookup.set(key(i), i);
  });
  tokens = tokens.slice();
  for (;;) {
    let bestScore = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i < tokens.length - 1; i++) {
      const id = lookup.get(key(tokens[i]) + key(tokens[i + 1])) ?? -1;
      if (id !== -1 && t.scores[id] > bestScore) {
        bestScore = t.scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) return tokens;
    tokens[bestIdx] = bestId;
    tokens.splice(bestIdx + 1, 1);
  }
}

Deno.test("llama2.c tokenizer (tok512.bin)", async (t) => {
  const tok = await Llama2cTokenizer.load(`${STORIES}/tok512.bin`, 512);
  const golden: StoriesGolden[] = JSON.parse(await Deno.readTextFile(`${STORIES}/golden.json`));
  assert.equal(tok.vocabSize, 512);
  assert.equal(tok.bosId, 1);
  assert.deepEqual(tok.eosIds, [1]);

  await t.step("encodes every golden prompt exactly as run.c", () => {
    assert.ok(golden.length >= 4);
    for (const g of golden) assert.deepEqual(tok.encode(g.prompt), g.prompt_ids, g.prompt);
  });

  await t.step("decodes golden outputs to run.c's printed text", () => {
    for (const g of golden) {
      const gen = g.next_ids.at(-1) === 1 ? g.next_ids.slice(0, -1) : g.next_ids;
      assert.equal(tok.decode([g.prompt_ids[0], ...gen]), g.text, g.prompt);
    }
  });

  await t.step("round trips text, incl. byte fallback for multi-byte UTF-8", () => {
    const texts = [
      "",
      "Once upon a time",
      " leading space",
      "  two\n\nnew lines\t tab",
      "Héllo wörld — ünïcödé 🙂 中文 ✓",
      "<s> not special </s> <0x41>",
    ];
    for (const s of texts) {
      const ids = tok.encode(s);
      assert.equal(ids[0], 1);
      assert.equal(tok.decode(ids), s, JSON.stringify(s));
    }
    // "中" (E4 B8 AD) is not in tok512: it is encoded as its UTF-8 bytes + 3; "é" is a token.
    assert.ok(!tok.pieces.some((p) => new TextDecoder().decode(p) === "中"));
    const ids = tok.encode("中");
    assert.deepEqual(ids.slice(-3), [0xe4 + 3, 0xb8 + 3, 0xad + 3]);
    assert.equal(tok.decode(ids), "中");
    assert.deepEqual([...tok.decodePiece(0, 0xe4 + 3)], [0xe4]);
    assert.equal(new TextDecoder().decode(tok.pieces[tok.encode("é")[2]]), "é");
    assert.deepEqual(tok.encode("", { addSpecialTokens: false }), []);
    assert.equal(tok.encode("hi", { addSpecialTokens: false })[0] !== 1, true);
  });

  await t.step("heap merge equals run.c's naive merge loop", () => {
    // Unmerged tokens as run.c builds them: BOS, dummy prefix, one per codepoint (or its bytes).
    const unmergedOf = (s: string): number[] => {
      const find = (bytes: Uint8Array) =>
        tok.pieces.findIndex((p) => p.length === bytes.length && p.every((b, i) => b === bytes[i]));
      const out = [1];
      if (s.length) out.push(find(new Uint8Array([32])));
      for (const ch of s) {
        const bytes = new TextEncoder().encode(ch);
        const id = find(bytes);
        if (id >= 0) out.push(id);
        else out.push(...[...bytes].map((b) => b + 3));
      }
      return out;
    };
    let seed = 12345;
    const rnd = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
    const alphabet = "abcdefghijklmnopqrstuvwxyz     .,!'\"\nTheLilyTom é中";
    const texts = golden.map((g) => g.text.slice(0, 400));
    for (let k = 0; k < 40; k++) {
      let s = "";
      const n = Math.floor(rnd() * 60);
      for (let i = 0; i < n; i++) s += alphabet[Math.floor(rnd() * alphabet.length)];
      texts.push(s);
    }
    for (const s of texts) {
      assert.deepEqual(tok.encode(s), naiveMerge(tok, unmergedOf(s)), JSON.stringify(s));
    }
  });
});

Deno.test("HF tokenizer: passkey-llama (byte level + BOS post-processor)", async (t) => {
  const tok = await HfTokenizer.load(PASSKEY);
  assert.equal(tok.bosId, 256);
  assert.deepEqual(tok.eosIds, [257]);
  assert.equal(tok.vocabSize, 259);
  assert.equal(tok.applyChatTemplate, undefined);

  await t.step("encodes golden prompts to prompt_ids", async () => {
    const golden: { prompt: string; prompt_ids: number[] }[] = JSON.parse(
      await Deno.readTextFile(`${PASSKEY}/golden.json`),
    );
    for (const g of golden) {
      assert.deepEqual(tok.encode(g.prompt), g.prompt_ids);
      // Independently: BOS followed by the UTF-8 bytes.
      assert.deepEqual(g.prompt_ids, [256, ...new TextEncoder().encode(g.prompt)]);
      assert.equal(tok.decode(g.prompt_ids), g.prompt);
    }
    const streaming: { prompts: { prompt: string; input_ids: number[] }[] } = JSON.parse(
      await Deno.readTextFile(`${PASSKEY}/golden_streaming.json`),
    );
    for (const g of streaming.prompts) assert.deepEqual(tok.encode(g.prompt), g.input_ids);
  });

  await t.step("multi-byte text, special tokens, addSpecialTokens=false", () => {
    const s = "naïve 🙂";
    const ids = tok.encode(s);
    assert.deepEqual(ids, [256, ...new TextEncoder().encode(s)]);
    assert.equal(tok.decode(ids), s);
    assert.deepEqual(tok.encode("ab", { addSpecialTokens: false }), [97, 98]);
    assert.equal(tok.decode([97, 257, 98]), "ab");
    assert.equal(tok.decodeWithSpecial([256, 97]), "<s>a");
  });

  await t.step("loadTokenizer picks HF for a directory or .json", async () => {
    const a = await loadTokenizer(PASSKEY);
    const b = await loadTokenizer(`${PASSKEY}/tokenizer.json`);
    assert.deepEqual(a.encode("hi"), [256, 104, 105]);
    assert.deepEqual(b.encode("hi"), [256, 104, 105]);
  });

  await t.step("chat template from tokenizer_config.json", async () => {
    const dir = await Deno.makeTempDir({ prefix: "zigzag_tok_" });
    try {
      await Deno.writeTextFile(
        `${dir}/tokenizer.json`,
        await Deno.readTextFile(`${PASSKEY}/tokenizer.json`),
      );
      const cfg = JSON.parse(await Deno.readTextFile(`${PASSKEY}/tokenizer_config.json`));
      cfg.chat_template = "{{ bos_token }}{% for m in messages %}" +
        "{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}" +
        "[{{ m.role }}]: {{ m.content }}\n{% endfor %}" +
        "{% if add_generation_prompt %}[assistant]:{% endif %}";
      await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify(cfg));
      const chat = await HfTokenizer.load(dir);
      const text = chat.applyChatTemplate!([{ role: "user", content: "hi" }], true);
      assert.equal(text, "<s>[user]: hi\n[assistant]:");
      // The rendered text carries "<s>"; encoding it without specials gives one BOS.
      const ids = chat.encode(text, { addSpecialTokens: false });
      assert.equal(ids[0], 256);
      assert.notEqual(ids[1], 256);
      assert.throws(() => chat.applyChatTemplate!([{ role: "system", content: "x" }], false));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});

Deno.test("HF tokenizer: SmolLM2 (BPE, digits split, no BOS)", async () => {
  const tok = await HfTokenizer.load(SMOLLM2, { bosId: 1, eosIds: [2] });
  assert.equal(tok.vocabSize, 49152);
  const vocab: Record<string, number> = JSON.parse(await Deno.readTextFile(SMOLLM2)).model.vocab;
  // Independent expectations from the vocab itself: whole words, "Ġ" for a leading space,
  // one token per digit (Digits pre-tokenizer with individual_digits).
  assert.deepEqual(tok.encode("Hello world"), [vocab["Hello"], vocab["Ġworld"]]);
  assert.deepEqual(tok.encode("123"), [vocab["1"], vocab["2"], vocab["3"]]);
  for (const s of ["Hello world 123, héllo!", "  spaces\n\ttabs 🙂", "The pass key is 48213."]) {
    assert.equal(tok.decode(tok.encode(s)), s);
  }
  // Special tokens in the text are recognised; decode leaves them out.
  const im = tok.encode("<|im_start|>user");
  assert.equal(im[0], 1);
  assert.equal(tok.decode(im), "user");
  assert.equal(tok.bosId, 1);
  assert.deepEqual(tok.eosIds, [2]);

  const chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + " +
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  const chat = await HfTokenizer.load(SMOLLM2, { chatTemplate: chatml });
  const text = chat.applyChatTemplate!([
    { role: "system", content: "Be brief." },
    { role: "user", content: "Hi" },
  ], true);
  assert.equal(
    text,
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
  );
  const ids = chat.encode(text);
  assert.equal(ids.filter((x) => x === 1).length, 3);
  assert.equal(ids.filter((x) => x === 2).length, 2);
});

/** Texts that stress the bytes-per-token bound: long words, repeats, digits, multi-byte text. */
const BOUND_TEXTS = [
  "Once upon a time, there was a little girl named Lily. She loved to play outside.",
  "the the the the the the the the the the the the the the the the the the",
  "internationalization antidisestablishmentarianism pneumonoultramicroscopic",
  "0123456789 3.14159265358979 2026-12-02 +1-555-0100",
  "Grüße aus Köln! 東京タワー 🚀🚀🚀 naïve café — “quotes”",
  "\n\n\t\t    spaces    and\ttabs\n",
  "x".repeat(3000),
];

Deno.test("tokenizers: maxBytesPerToken bounds every encoding; the thread encodes the same", async (t) => {
  const utf8 = (s: string) => new TextEncoder().encode(s).length;
  const tokenizers = [
    ["tok512.bin", await Llama2cTokenizer.load(`${STORIES}/tok512.bin`, 512)],
    ["passkey-llama", await loadTokenizer(PASSKEY)],
    ["SmolLM2", await loadTokenizer(SMOLLM2)],
  ] as const;
  for (const [name, tok] of tokenizers) {
    await t.step(`${name}: no token stands for more than maxBytesPerToken bytes`, () => {
      const per = tok.maxBytesPerToken;
      assert.ok(per !== undefined && per >= 1, `${name}: a bound (${per})`);
      for (const text of BOUND_TEXTS) {
        const ids = tok.encode(text, { addSpecialTokens: false });
        // Each token's own text is at most `per` bytes, and the token count is at least the
        // bound the server refuses prompts by.
        for (const id of ids) assert.ok(utf8(tok.decode([id])) <= per, `${name}: token ${id}`);
        assert.ok(ids.length >= Math.floor(utf8(text) / per), `${name}: ${text.slice(0, 20)}`);
      }
    });
    await t.step(`${name}: a worker thread encodes exactly as this thread`, async () => {
      const thread = new TokenizerThread(tok.portable!);
      try {
        const text = BOUND_TEXTS.join(" ").repeat(40);
        const [a, b] = await Promise.all([
          thread.encode(text),
          thread.encode(text, { addSpecialTokens: false }),
        ]);
        assert.deepEqual(a, tok.encode(text));
        assert.deepEqual(b, tok.encode(text, { addSpecialTokens: false }));
      } finally {
        thread.close();
      }
    });
  }

  await t.step("the event loop runs while the thread encodes a long text", async () => {
    const tok = tokenizers[0][1];
    const thread = new TokenizerThread(tok.portable);
    try {
      await thread.encode("warm up");
      // ~1 s of merging for stories260K's tokenizer here; timers every 10 ms meanwhile.
      const text = "Once upon a time there was a little girl. ".repeat(8000);
      let worst = 0;
      let last = performance.now();
      const timer = setInterval(() => {
        const now = performance.now();
        worst = Math.max(worst, now - last);
        last = now;
      }, 10);
      const t0 = performance.now();
      const ids = await thread.encode(text);
      const took = performance.now() - t0;
      clearInterval(timer);
      assert.equal(ids.length, tok.encode(text).length);
      assert.ok(took > 200, `the encode took ${took.toFixed(0)} ms: too short to show anything`);
      // Timers fire late by the time the machine's cores are needed elsewhere (the suite runs
      // in parallel: 148 ms seen), never by the encode: an encode on this thread would hold a
      // timer for all of its duration.
      assert.ok(
        worst < took / 2,
        `a timer waited ${worst.toFixed(0)} ms of the ${took.toFixed(0)} ms encode`,
      );
    } finally {
      thread.close();
    }
  });

  await t.step("tokenizer.json pipelines that may drop text promise no bound", () => {
    const base = JSON.parse(Deno.readTextFileSync(SMOLLM2));
    const variants: [string, Record<string, unknown>][] = [
      ["a whitespace-splitting pre-tokenizer", { pre_tokenizer: { type: "WhitespaceSplit" } }],
      ["a Strip normalizer", {
        normalizer: { type: "Strip", strip_left: true, strip_right: true },
      }],
      ["a WordPiece model", { model: { ...base.model, type: "WordPiece" } }],
    ];
    for (const [what, change] of variants) {
      const tj = { ...base, ...change };
      assert.equal(new HfTokenizer(tj).maxBytesPerToken, undefined, what);
    }
    // NFKC can compose 3 jamo (9 bytes) into one syllable (3 bytes): the bound triples.
    const nfkc = new HfTokenizer({ ...base, normalizer: { type: "NFKC" } });
    assert.equal(nfkc.maxBytesPerToken, 3 * new HfTokenizer(base).maxBytesPerToken!);
  });
});
