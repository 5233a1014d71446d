import assert from "node:assert/strict";
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
