// A tiny flag parser shared by the command-line tools.
//
//   const args = parseArgs(Deno.args, { booleans: ["verbose"], values: ["out", "budget"] });
//   const out = args.string("out");              // required: throws CliError naming --out
//   const budget = args.number("budget", { min: 0, max: 1 });
//   const verbose = args.boolean("verbose");
//
// Accepted forms: `--name value`, `--name=value`, `--flag` (boolean), `--flag=true|false`,
// `--no-flag` (boolean false). `--` ends the flags; everything else is a positional. Unknown flags,
// a value flag without a value, or a flag given twice are errors. Errors are CliErrors, which
// `runMain` prints without a stack trace and turns into exit code 2.

/** A usage error: bad, missing or unknown flags. Its message names the flag. */
export class CliError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CliError";
  }
}

export interface ArgSpec {
  /** Flags that take no value. */
  booleans?: readonly string[];
  /** Flags that take a value. */
  values?: readonly string[];
}

export interface NumberOptions {
  integer?: boolean;
  min?: number;
  /** Exclusive lower bound: the value must be greater. */
  above?: number;
  max?: number;
}

export class Args {
  readonly positionals: string[];
  readonly #values: Map<string, string>;
  readonly #booleans: Map<string, boolean>;
  readonly #spec: ArgSpec;

  constructor(
    positionals: string[],
    values: Map<string, string>,
    booleans: Map<string, boolean>,
    spec: ArgSpec,
  ) {
    this.positionals = positionals;
    this.#values = values;
    this.#booleans = booleans;
    this.#spec = spec;
  }

  #checkDeclared(name: string, kind: "booleans" | "values") {
    if (!(this.#spec[kind] ?? []).includes(name)) {
      throw new Error(`flag --${name} is not declared in ${kind}`); // a programming error
    }
  }

  /** Whether the flag was given at all. */
  has(name: string): boolean {
    return this.#values.has(name) || this.#booleans.has(name);
  }

  /** A boolean flag; false when absent. */
  boolean(name: string): boolean {
    this.#checkDeclared(name, "booleans");
    return this.#booleans.get(name) ?? false;
  }

  /** An optional value flag. */
  optionalString(name: string): string | undefined {
    this.#checkDeclared(name, "values");
    return this.#values.get(name);
  }

  /** A required value flag. */
  string(name: string): string {
    const v = this.optionalString(name);
    if (v === undefined) throw new CliError(`missing required flag --${name}`);
    return v;
  }

  /** An optional number flag, checked against the options. */
  optionalNumber(name: string, opts: NumberOptions = {}): number | undefined {
    const raw = this.optionalString(name);
    if (raw === undefined) return undefined;
    const v = raw.trim() === "" ? NaN : Number(raw);
    const what = opts.integer ? "an integer" : "a number";
    if (!Number.isFinite(v) || (opts.integer && !Number.isInteger(v))) {
      throw new CliError(`--${name} must be ${what}, got ${JSON.stringify(raw)}`);
    }
    if (opts.min !== undefined && v < opts.min) {
      throw new CliError(`--${name} must be at least ${opts.min}, got ${raw}`);
    }
    if (opts.above !== undefined && v <= opts.above) {
      throw new CliError(`--${name} must be greater than ${opts.above}, got ${raw}`);
    }
    if (opts.max !== undefined && v > opts.max) {
      throw new CliError(`--${name} must be at most ${opts.max}, got ${raw}`);
    }
    return v;
  }

  /** A required number flag. */
  number(name: string, opts: NumberOptions = {}): number {
    const v = this.optionalNumber(name, opts);
    if (v === undefined) throw new CliError(`missing required flag --${name}`);
    return v;
  }

  /** An optional flag whose value must be one of `choices`. */
  optionalChoice<T extends string>(name: string, choices: readonly T[]): T | undefined {
    const raw = this.optionalString(name);
    if (raw === undefined) return undefined;
    if (!(choices as readonly string[]).includes(raw)) {
      throw new CliError(
        `--${name} must be one of ${choices.join(", ")}, got ${JSON.stringify(raw)}`,
      );
    }
    return raw as T;
  }

  /** A required flag whose value must be one of `choices`. */
  choice<T extends string>(name: string, choices: readonly T[]): T {
    const v = this.optionalChoice(name, choices);
    if (v === undefined) {
      throw new CliError(`missing required flag --${name} (one of ${choices.join(", ")})`);
    }
    return v;
  }
}

/** Parses argv against a spec; throws CliError on unknown or malformed flags. */
export function parseArgs(argv: readonly string[], spec: ArgSpec = {}): Args {
  const booleanNames = new Set(spec.booleans ?? []);
  const valueNames = new Set(spec.values ?? []);
  const positionals: string[] = [];
  const values = new Map<string, string>();
  const booleans = new Map<string, boolean>();
  const seen = (name: string) => {
    if (values.has(name) || booleans.has(name)) throw new CliError(`flag --${name} given twice`);
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("--") || arg === "--") {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const inline = eq < 0 ? undefined : arg.slice(eq + 1);
    if (name === "") throw new CliError(`malformed flag ${JSON.stringify(arg)}`);

    if (booleanNames.has(name)) {
      seen(name);
      if (inline === undefined || inline === "true") booleans.set(name, true);
      else if (inline === "false") booleans.set(name, false);
      else throw new CliError(`--${name} takes no value (or =true / =false), got ${inline}`);
    } else if (valueNames.has(name)) {
      seen(name);
      if (inline !== undefined) {
        values.set(name, inline);
      } else {
        const next = argv[i + 1];
        if (next === undefined || (next.startsWith("--") && next.length > 2)) {
          throw new CliError(`flag --${name} needs a value`);
        }
        values.set(name, next);
        i++;
      }
    } else if (name.startsWith("no-") && booleanNames.has(name.slice(3)) && inline === undefined) {
      seen(name.slice(3));
      booleans.set(name.slice(3), false);
    } else {
      throw new CliError(`unknown flag --${name}`);
    }
  }
  return new Args(positionals, values, booleans, spec);
}

/**
 * Runs a CLI entry point: a CliError prints `error: ...` and exits 2; any other error prints its
 * message (no stack trace) and exits 1. `main` may return an exit code.
 */
export async function runMain(
  main: () => Promise<number | void> | number | void,
  /** Printed after a usage error, e.g. "run `tool --help` for usage". */
  usageHint?: string,
): Promise<never> {
  let code = 0;
  try {
    code = (await main()) ?? 0;
  } catch (e) {
    if (e instanceof CliError) {
      console.error(`error: ${e.message}`);
      if (usageHint) console.error(usageHint);
      code = 2;
    } else {
      console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
      code = 1;
    }
  }
  Deno.exit(code);
}

/** `--flag a,b,c` as positive integers (undefined when the flag is absent). */
export function intList(raw: string | undefined, flag: string): number[] | undefined {
  if (raw === undefined) return undefined;
  const v = raw.split(",").map((s) => Number(s.trim()));
  if (v.length === 0 || v.some((x) => !Number.isInteger(x) || x < 1)) {
    throw new CliError(`--${flag} must be a comma-separated list of positive integers, got ${raw}`);
  }
  return v;
}
