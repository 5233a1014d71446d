// One entry point for every model format:
// - a `.bin` file: a llama2.c checkpoint; tokenizer from `tokenizerPath`, else a `tok*.bin` /
//   `tokenizer.bin` next to it (none found: tokenizer null);
// - a directory (or a `config.json` / `*.safetensors` / index file inside one): Hugging Face;
// - a `.gguf` file: llama.cpp's format (model/gguf_model.ts), its own tokenizer unless
//   `tokenizerPath` is given.

import { openGgufModel } from "./gguf_model.ts";
import { loadHfModel, openHfModel } from "./hf.ts";
import { hostWeights } from "./tensors.ts";
import { loadLlama2c } from "./llama2c.ts";
import { HfTokenizer } from "./tokenizer_hf.ts";
import { Llama2cTokenizer } from "./tokenizer_llama2c.ts";
import { type AnyTensor, type LoadedModel, ModelFormatError, type Tokenizer } from "./types.ts";

export interface LoadOptions {
  /** Tokenizer to use: a llama2.c `.bin`, a `tokenizer.json`, or a directory holding one. */
  tokenizerPath?: string;
  /** Progress in bytes of weights read. */
  onProgress?: (done: number, total: number) => void;
  /** Leave a Hugging Face model's weights on disk (WeightTensors read on demand: the GPU upload
   * streams them); `close()` the model when done. llama2.c checkpoints are small and always
   * read whole. */
  lazy?: boolean;
}

function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

async function statOrThrow(path: string, what: string): Promise<Deno.FileInfo> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new ModelFormatError(`${path}: ${what} not found`);
    throw new ModelFormatError(`${path}: cannot access ${what}: ${(e as Error).message}`);
  }
}

/**
 * Loads a tokenizer: a `.bin` file is a llama2.c tokenizer (`vocabSize` tokens when given), a
 * `.json` file or a directory a Hugging Face `tokenizer.json`.
 */
export async function loadTokenizer(
  path: string,
  opts: { vocabSize?: number; bosId?: number; eosIds?: number[] } = {},
): Promise<Tokenizer> {
  const info = await statOrThrow(path, "tokenizer");
  if (info.isFile && path.endsWith(".bin")) {
    return await Llama2cTokenizer.load(path, opts.vocabSize);
  }
  if (info.isDirectory || path.endsWith(".json")) {
    return await HfTokenizer.load(path, { bosId: opts.bosId, eosIds: opts.eosIds });
  }
  throw new ModelFormatError(
    `${path}: unknown tokenizer format (expected a llama2.c .bin, a tokenizer.json or a directory)`,
  );
}

/** The llama2.c tokenizer next to a checkpoint: tok{vocab}.bin, tokenizer.bin, or the only
 * tok*.bin; null when there is none. */
async function findLlama2cTokenizer(dir: string, vocabSize: number): Promise<string | null> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && /^tok.*\.bin$/.test(e.name)) names.push(e.name);
    }
  } catch {
    return null;
  }
  for (const want of [`tok${vocabSize}.bin`, "tokenizer.bin"]) {
    if (names.includes(want)) return `${dir}/${want}`;
  }
  return names.length === 1 ? `${dir}/${names[0]}` : null;
}

/** Loads a model from a llama2.c `.bin` checkpoint or a Hugging Face directory. */
export function loadModel(
  path: string,
  opts: LoadOptions & { lazy: true },
): Promise<LoadedModel<AnyTensor>>;
export function loadModel(path: string, opts?: LoadOptions): Promise<LoadedModel>;
export async function loadModel(
  path: string,
  opts: LoadOptions = {},
): Promise<LoadedModel<AnyTensor>> {
  const info = await statOrThrow(path, "model path");
  const hf = async (dir: string): Promise<LoadedModel<AnyTensor>> => {
    if (!opts.lazy) return await loadHfModel(dir, opts);
    const m = await openHfModel(dir, opts);
    return {
      source: dir,
      config: m.config,
      weights: m.weights,
      tokenizer: m.tokenizer,
      close: m.close,
    };
  };
  if (info.isDirectory) {
    const checkpoint = await findLlama2cCheckpoint(path);
    if (checkpoint) return await loadModel(checkpoint, opts);
    return await hf(path);
  }
  const base = basename(path);
  if (
    base === "config.json" || base.endsWith(".safetensors") ||
    base === "model.safetensors.index.json"
  ) {
    return await hf(dirname(path));
  }
  if (base.endsWith(".gguf")) {
    const tokenizer = opts.tokenizerPath === undefined
      ? undefined
      : await loadTokenizer(opts.tokenizerPath);
    const m = await openGgufModel(path, tokenizer);
    if (opts.lazy) return m;
    try {
      return { ...m, weights: await hostWeights(m.weights), close: undefined };
    } finally {
      m.close?.();
    }
  }
  if (!base.endsWith(".bin")) {
    throw new ModelFormatError(
      `${path}: unknown model format (expected a llama2.c .bin checkpoint, a .gguf file or a ` +
        `Hugging Face directory)`,
    );
  }
  const { config, weights } = await loadLlama2c(path, opts.onProgress);
  let tokenizer: Tokenizer | null = null;
  if (opts.tokenizerPath !== undefined) {
    tokenizer = await loadTokenizer(opts.tokenizerPath, {
      vocabSize: config.vocabSize,
      bosId: config.bosId,
      eosIds: config.eosIds,
    });
  } else {
    const found = await findLlama2cTokenizer(dirname(path), config.vocabSize);
    if (found) tokenizer = await Llama2cTokenizer.load(found, config.vocabSize);
  }
  return { source: path, config, weights, tokenizer };
}

/** A directory without config.json holding one llama2.c checkpoint (besides tokenizers). */
async function findLlama2cCheckpoint(dir: string): Promise<string | null> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name === "config.json") return null;
    if (e.isFile && e.name.endsWith(".bin") && !/^tok.*\.bin$|^tokenizer\.bin$/.test(e.name)) {
      names.push(e.name);
    }
  }
  return names.length === 1 ? `${dir.replace(/\/$/, "")}/${names[0]}` : null;
}
