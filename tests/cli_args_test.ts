import assert from "node:assert/strict";
import { checkLogitBias, SAMPLING_FLAGS, samplingFlags } from "../cli/flags.ts";
import {
  MAX_BIAS_VALUE,
  MAX_LOGIT_BIAS,
  MAX_PENALTY,
  MAX_REPETITION_PENALTY,
  MAX_TOP_LOGPROBS,
} from "../engine/request.ts";
import { CliError, parseArgs } from "../util/args.ts";

const spec = { booleans: ["verbose", "dry-run"], values: ["out", "budget", "mode", "n"] } as const;

Deno.test("parseArgs: value forms, booleans, positionals", () => {
  const a = parseArgs(
    ["run", "--out", "x.json", "--budget=0.5", "--verbose", "--no-dry-run", "pos", "--", "--out"],
    spec,
  );
  assert.deepEqual(a.positionals, ["run", "pos", "--out"]);
  assert.equal(a.string("out"), "x.json");
  assert.equal(a.number("budget", { min: 0, max: 1 }), 0.5);
  assert.equal(a.boolean("verbose"), true);
  assert.equal(a.boolean("dry-run"), false);
  assert.equal(a.has("dry-run"), true);
  assert.equal(a.optionalString("mode"), undefined);
  assert.equal(a.optionalNumber("n"), undefined);
  assert.equal(parseArgs(["--verbose=false"], spec).boolean("verbose"), false);
  assert.equal(parseArgs(["--n", "-3"], spec).number("n", { integer: true }), -3);
  assert.equal(parseArgs(["--mode", "duo"], spec).choice("mode", ["duo", "zigzag"]), "duo");
});

Deno.test("parseArgs: errors are CliErrors naming the flag", () => {
  const err = (f: () => unknown, re: RegExp) =>
    assert.throws(f, (e: Error) => e instanceof CliError && re.test(e.message));
  err(() => parseArgs(["--bogus", "1"], spec), /unknown flag --bogus/);
  err(() => parseArgs(["--out"], spec), /--out needs a value/);
  err(() => parseArgs(["--out", "--verbose"], spec), /--out needs a value/);
  err(() => parseArgs(["--out", "a", "--out=b"], spec), /--out given twice/);
  err(() => parseArgs(["--verbose=yes"], spec), /--verbose takes no value/);
  err(() => parseArgs([], spec).string("out"), /missing required flag --out/);
  err(() => parseArgs(["--budget", "abc"], spec).number("budget"), /--budget must be a number/);
  err(() => parseArgs(["--budget", ""], spec).number("budget"), /--budget must be a number/);
  err(
    () => parseArgs(["--n", "1.5"], spec).number("n", { integer: true }),
    /--n must be an integer/,
  );
  err(
    () => parseArgs(["--budget", "2"], spec).number("budget", { max: 1 }),
    /--budget must be at most 1/,
  );
  err(() => parseArgs(["--n", "0"], spec).number("n", { min: 1 }), /--n must be at least 1/);
  err(
    () => parseArgs(["--mode", "x"], spec).choice("mode", ["duo", "zigzag"]),
    /--mode must be one of duo, zigzag/,
  );
  err(() => parseArgs([], spec).choice("mode", ["duo", "zigzag"]), /missing required flag --mode/);
});

Deno.test("parseArgs: an exclusive lower bound", () => {
  assert.equal(parseArgs(["--budget", "0.1"], spec).number("budget", { above: 0 }), 0.1);
  assert.throws(
    () => parseArgs(["--budget", "0"], spec).number("budget", { above: 0 }),
    (e: Error) => e instanceof CliError && /--budget must be greater than 0/.test(e.message),
  );
});

Deno.test("sampling flags: the server's ranges, --logit-bias ID:BIAS pairs", () => {
  const sampling = (argv: string[]) => samplingFlags(parseArgs(argv, { values: SAMPLING_FLAGS }));
  assert.deepEqual(sampling([]), { temperature: 0, seed: 0 });
  assert.deepEqual(
    sampling([
      "--presence-penalty",
      `${-MAX_PENALTY}`,
      "--frequency-penalty",
      "0.5",
      "--repetition-penalty",
      `${MAX_REPETITION_PENALTY}`,
      "--logit-bias",
      ` 300:${MAX_BIAS_VALUE}, 7:-1.5,9:0`,
      "--top-logprobs",
      `${MAX_TOP_LOGPROBS}`,
    ]),
    {
      temperature: 0,
      seed: 0,
      presencePenalty: -MAX_PENALTY,
      frequencyPenalty: 0.5,
      repetitionPenalty: MAX_REPETITION_PENALTY,
      logitBias: [[300, MAX_BIAS_VALUE], [7, -1.5]],
      topLogprobs: MAX_TOP_LOGPROBS,
    },
  );
  // Settings that change nothing are left out, as the server leaves them out.
  assert.deepEqual(
    sampling(["--presence-penalty", "0", "--repetition-penalty", "1", "--top-logprobs", "0"]),
    { temperature: 0, seed: 0 },
  );
  const err = (argv: string[], re: RegExp) =>
    assert.throws(() => sampling(argv), (e: Error) => e instanceof CliError && re.test(e.message));
  err(["--presence-penalty", `${MAX_PENALTY + 1}`], /--presence-penalty must be at most 2/);
  err(["--frequency-penalty", "-2.5"], /--frequency-penalty must be at least -2/);
  err(["--repetition-penalty", "0"], /--repetition-penalty must be greater than 0/);
  err(["--repetition-penalty", "101"], /--repetition-penalty must be at most 100/);
  err(["--top-logprobs", "21"], /--top-logprobs must be at most 20/);
  err(["--top-logprobs", "1.5"], /--top-logprobs must be an integer/);
  err(["--logit-bias", "5"], /--logit-bias must be comma-separated ID:BIAS pairs.*"5"/);
  err(["--logit-bias", "5:x"], /--logit-bias must be comma-separated ID:BIAS pairs/);
  err(["--logit-bias", "-5:1"], /--logit-bias must be comma-separated ID:BIAS pairs/);
  err(["--logit-bias", "5:101"], /--logit-bias: the bias of token 5 must lie in \[-100, 100\]/);
  err(["--logit-bias", "5:1,5:2"], /--logit-bias: token 5 is given twice/);
  const tooMany = Array.from({ length: MAX_LOGIT_BIAS + 1 }, (_, i) => `${i}:1`).join(",");
  err(["--logit-bias", tooMany], /--logit-bias: at most 300 entries/);
  assert.throws(
    () => checkLogitBias({ temperature: 0, logitBias: [[1, 1], [512, 1]] }, 512),
    (e: Error) =>
      e instanceof CliError && /--logit-bias: token 512 is outside the vocabulary/.test(e.message),
  );
  checkLogitBias({ temperature: 0, logitBias: [[511, 1]] }, 512);
});

const STORIES = decodeURIComponent(
  new URL("../../shared/models/stories260K", import.meta.url).pathname,
);

/** `deno task generate` on stories260K (greedy, f32, the prompt "Once upon a time" as ids). */
async function generate(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "cli/generate.ts",
      "--model",
      STORIES,
      "--prompt-ids",
      "1,403,407,261,378",
      "--precision",
      "f32",
      ...args,
    ],
    cwd: new URL("..", import.meta.url),
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

interface GenerateJson {
  generated_ids: number[];
  top_logprobs?: { id: number; logprob: number }[][];
}

async function generateJson(args: string[]): Promise<GenerateJson> {
  const out = await generate([...args, "--json"]);
  assert.equal(out.code, 0, out.stderr);
  return JSON.parse(out.stdout.split("\n").filter((l) => l.startsWith("{")).pop()!);
}

Deno.test(
  "generate: --logit-bias, penalties and --top-logprobs reach the sampler",
  { sanitizeResources: false, sanitizeOps: false },
  async (t) => {
    const greedy = (await generateJson(["--max-tokens", "40"])).generated_ids;
    assert.equal(greedy.length, 40);
    assert.equal(
      (await generateJson(["--max-tokens", "40"])).top_logprobs,
      undefined,
      "no top_logprobs unless asked",
    );

    await t.step("a bias of 100 forces a token", async () => {
      assert.notEqual(greedy[0], 300);
      const ids = (await generateJson(["--logit-bias", "300:100", "--max-tokens", "5"]))
        .generated_ids;
      assert.deepEqual(ids, Array(5).fill(300));
    });

    await t.step("greedy with strong penalties never repeats a token", async () => {
      // The plain greedy output repeats tokens (the test means something), as in
      // tests/server_sampling_test.ts over HTTP.
      assert.ok(new Set(greedy).size < greedy.length, `greedy ${greedy} never repeats`);
      const ids = (await generateJson([
        "--max-tokens",
        "40",
        "--frequency-penalty",
        "2",
        "--presence-penalty",
        "2",
        "--repetition-penalty",
        "50",
      ])).generated_ids;
      assert.equal(ids.length, 40);
      assert.equal(new Set(ids).size, ids.length, `repeats: ${ids}`);
    });

    await t.step("--top-logprobs 3: three entries per token, the greedy one first", async () => {
      const r = await generateJson(["--max-tokens", "8", "--top-logprobs", "3"]);
      assert.deepEqual(r.generated_ids, greedy.slice(0, 8));
      assert.equal(r.top_logprobs!.length, 8);
      r.top_logprobs!.forEach((top, i) => {
        assert.equal(top.length, 3, JSON.stringify(top));
        assert.equal(top[0].id, r.generated_ids[i]);
        for (let k = 1; k < 3; k++) assert.ok(top[k].logprob <= top[k - 1].logprob);
        assert.ok(top.every((e) => Number.isInteger(e.id) && e.logprob <= 0));
      });
    });

    await t.step("bad values exit 2 naming the flag", async () => {
      for (
        const [args, re] of [
          [["--logit-bias", "5"], /error: --logit-bias must be comma-separated ID:BIAS pairs/],
          [["--presence-penalty", "3"], /error: --presence-penalty must be at most 2/],
          [["--logit-bias", "512:1"], /error: --logit-bias: token 512 is outside the vocabulary/],
        ] as const
      ) {
        const out = await generate(["--max-tokens", "2", ...args]);
        assert.equal(out.code, 2, out.stderr);
        assert.match(out.stderr, re);
        assert.equal(out.stdout, "");
      }
    });
  },
);
