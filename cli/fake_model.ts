// deno task fake-model --preset NAME --out DIR [--layers N] [--dtype bf16|f16|f32] [--seed S]
//   [--shard-mb N]
//
// Writes a random-weight checkpoint of a real layout (model/fake_checkpoint.ts) as a Hugging Face
// repository: config.json, generation_config.json, sharded safetensors and their index.

import { FAKE_PRESETS, writeFakeCheckpoint } from "../model/fake_checkpoint.ts";
import { CliError, parseArgs, runMain } from "../util/args.ts";
import { progress } from "../util/progress.ts";

const USAGE = "usage: deno task fake-model --preset NAME --out DIR [--layers N] " +
  "[--dtype bf16|f16|f32] [--seed S] [--shard-mb N]\npresets: " +
  Object.keys(FAKE_PRESETS).join(", ");

async function main(): Promise<number> {
  const a = parseArgs(Deno.args, {
    booleans: ["help"],
    values: ["preset", "out", "layers", "dtype", "seed", "shard-mb"],
  });
  if (a.boolean("help")) {
    console.log(USAGE);
    return 0;
  }
  const preset = a.string("preset");
  if (!(preset in FAKE_PRESETS)) {
    throw new CliError(
      `--preset: unknown preset "${preset}" (one of ${Object.keys(FAKE_PRESETS).join(", ")})`,
    );
  }
  const out = a.string("out");
  const shardMb = a.optionalNumber("shard-mb", { min: 1 });
  const bar = progress(`writing ${preset} to ${out}`);
  const t0 = performance.now();
  const ck = await writeFakeCheckpoint(out, {
    preset,
    layers: a.optionalNumber("layers", { integer: true, min: 1 }),
    dtype: a.optionalChoice("dtype", ["bf16", "f16", "f32"] as const),
    seed: a.optionalNumber("seed", { integer: true, min: 0 }),
    shardBytes: shardMb === undefined ? undefined : shardMb * 1e6,
    onProgress: (done, total) => bar.update(done, total),
  });
  bar.done();
  console.log(
    `${out}: ${ck.config.nLayers} layers, ${ck.shards.length} shard(s), ` +
      `${(ck.totalBytes / 1e9).toFixed(2)} GB in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return 0;
}

if (import.meta.main) runMain(main, USAGE);
