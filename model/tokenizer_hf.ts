// Hugging Face `tokenizer.json` tokenizers through npm:@huggingface/tokenizers, with the chat
// template of `tokenizer_config.json` (or `chat_template.jinja`) rendered by npm:@huggingface/jinja.
//
// encode() runs the tokenizer's own pipeline including its post-processor, so BOS is added exactly
// when the post-processor adds it (the passkey-llama tokenizer: BOS then the UTF-8 bytes).

import { Tokenizer as HfTok } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import {
  type ChatMessage,
  ModelFormatError,
  type PortableTokenizer,
  type Tokenizer,
} from "./types.ts";

export interface EncodeOptions {
  /** Run the post-processor's special tokens (BOS...). Default true. Pass false to encode text
   * that already carries them, e.g. a rendered chat template starting with `<s>`. */
  addSpecialTokens?: boolean;
}

export interface HfTokenizerOptions {
  /** Used when tokenizer_config.json names no bos_token (e.g. from the model's config.json). */
  bosId?: number;
  /** Added to the tokenizer's own eos_token id (e.g. the model's config/generation_config ids). */
  eosIds?: number[];
  /** Chat template to use instead of the one in tokenizer_config.json. */
  chatTemplate?: string;
}

function tokenString(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return null;
}

const utf8Bytes = (s: string) => new TextEncoder().encode(s).length;

/**
 * How many times shorter a normalizer can make a text (in UTF-8 bytes), or undefined when it can
 * drop text without bound. Unicode normalization and lowercasing shrink by at most 3: NFC/NFKC
 * compose a 9-byte Hangul jamo triple into one 3-byte syllable, and U+212A KELVIN SIGN (3 bytes)
 * lowercases to "k".
 */
function normalizerShrink(n: unknown): number | undefined {
  if (n === null || n === undefined) return 1;
  const t = n as {
    type?: string;
    normalizers?: unknown[];
    pattern?: { String?: string };
    content?: string;
  };
  switch (t.type) {
    case "Sequence": {
      let f = 1;
      for (const x of t.normalizers ?? []) {
        const g = normalizerShrink(x);
        if (g === undefined) return undefined;
        f *= g;
      }
      return f;
    }
    case "NFC":
    case "NFD":
    case "NFKC":
    case "NFKD":
    case "Lowercase":
      return 3;
    case "Prepend":
    case "ByteLevel":
      return 1;
    case "Replace": {
      const from = t.pattern?.String;
      if (from === undefined || !t.content) return undefined;
      return Math.max(1, utf8Bytes(from) / utf8Bytes(t.content));
    }
    default:
      return undefined;
  }
}

/** Whether a pre-tokenizer keeps every byte of its input (whitespace splitters drop theirs). */
function keepsText(p: unknown): boolean {
  if (p === null || p === undefined) return true;
  const t = p as { type?: string; pretokenizers?: unknown[]; behavior?: string };
  switch (t.type) {
    case "Sequence":
      return (t.pretokenizers ?? []).every(keepsText);
    case "ByteLevel":
    case "Metaspace":
    case "Digits":
    case "UnicodeScripts":
      return true;
    case "Split":
    case "Punctuation":
      return t.behavior !== "Removed";
    default:
      return false;
  }
}

/**
 * The most UTF-8 bytes of input one token of a BPE tokenizer.json can stand for, or undefined
 * where none can be promised. A vocabulary piece stands for at most its own bytes (byte-level
 * pieces: one byte per character), an added token for its content, an unknown or byte-fallback
 * token for one character; normalizers that shrink text multiply the bound.
 */
function maxBytesPerToken(tj: Record<string, unknown>): number | undefined {
  const model = tj.model as { type?: string; vocab?: Record<string, number> } | undefined;
  if (model?.type !== "BPE" || !model.vocab || !keepsText(tj.pre_tokenizer)) return undefined;
  const added = (tj.added_tokens ?? []) as {
    content: string;
    lstrip?: boolean;
    rstrip?: boolean;
  }[];
  // An added token that strips the whitespace beside it swallows any run of it.
  if (added.some((t) => t.lstrip || t.rstrip)) return undefined;
  const shrink = normalizerShrink(tj.normalizer);
  if (shrink === undefined) return undefined;
  const byteLevel = JSON.stringify(tj.pre_tokenizer ?? null).includes('"ByteLevel"');
  let max = 4;
  for (const piece of Object.keys(model.vocab)) {
    max = Math.max(max, byteLevel ? [...piece].length : utf8Bytes(piece));
  }
  for (const t of added) max = Math.max(max, utf8Bytes(t.content));
  return Math.ceil(max * shrink);
}

function pickTemplate(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    const named = v as { name?: string; template?: string }[];
    const d = named.find((t) => t.name === "default") ?? named[0];
    return typeof d?.template === "string" ? d.template : null;
  }
  return null;
}

export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosIds: number[];
  /** The underlying @huggingface/tokenizers instance. */
  readonly raw: HfTok;
  /** The chat template source, or null. */
  readonly chatTemplate: string | null;
  /** Renders a chat with the template; absent when there is none. */
  readonly applyChatTemplate?: (messages: ChatMessage[], addGenerationPrompt: boolean) => string;
  readonly maxBytesPerToken?: number;
  readonly portable: PortableTokenizer;
  private specialTokens: Record<string, string> = {};

  /**
   * @param tokenizerJson parsed tokenizer.json
   * @param tokenizerConfig parsed tokenizer_config.json ({} when there is none)
   */
  constructor(
    tokenizerJson: Record<string, unknown>,
    tokenizerConfig: Record<string, unknown> = {},
    opts: HfTokenizerOptions = {},
  ) {
    this.raw = new HfTok(tokenizerJson, tokenizerConfig);
    this.maxBytesPerToken = maxBytesPerToken(tokenizerJson);
    this.portable = { kind: "hf", tokenizerJson, tokenizerConfig, options: opts };
    let maxId = -1;
    for (const id of this.raw.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;

    for (const key of ["bos_token", "eos_token", "pad_token", "unk_token"]) {
      const s = tokenString(tokenizerConfig[key]);
      if (s !== null) this.specialTokens[key] = s;
    }
    const idOf = (key: string): number | undefined => {
      const s = this.specialTokens[key];
      return s === undefined ? undefined : this.raw.token_to_id(s);
    };
    this.bosId = idOf("bos_token") ?? opts.bosId ?? -1;
    const eos: number[] = [];
    const own = idOf("eos_token");
    for (const id of [...(own === undefined ? [] : [own]), ...(opts.eosIds ?? [])]) {
      if (!eos.includes(id)) eos.push(id);
    }
    this.eosIds = eos;

    this.chatTemplate = opts.chatTemplate ?? pickTemplate(tokenizerConfig.chat_template);
    if (this.chatTemplate !== null) {
      const template = new Template(this.chatTemplate);
      this.applyChatTemplate = (messages, addGenerationPrompt) =>
        template.render({
          ...this.specialTokens,
          messages,
          add_generation_prompt: addGenerationPrompt,
        });
    }
  }

  /** Loads `tokenizer.json` (a path to it, or a directory holding it) plus `tokenizer_config.json`
   * and `chat_template.jinja` next to it when present. */
  static async load(path: string, opts: HfTokenizerOptions = {}): Promise<HfTokenizer> {
    const file = path.endsWith(".json") ? path : `${path.replace(/\/$/, "")}/tokenizer.json`;
    const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".";
    const readJson = async (p: string, required: boolean) => {
      let text: string;
      try {
        text = await Deno.readTextFile(p);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound && !required) return null;
        if (e instanceof Deno.errors.NotFound) {
          throw new ModelFormatError(`${p}: tokenizer file not found`);
        }
        throw new ModelFormatError(`${p}: cannot read: ${(e as Error).message}`);
      }
      try {
        return JSON.parse(text) as Record<string, unknown>;
      } catch (e) {
        throw new ModelFormatError(`${p}: bad JSON: ${(e as Error).message}`);
      }
    };
    const tj = (await readJson(file, true))!;
    const tc = (await readJson(`${dir}/tokenizer_config.json`, false)) ?? {};
    let chatTemplate = opts.chatTemplate;
    if (chatTemplate === undefined && pickTemplate(tc.chat_template) === null) {
      try {
        chatTemplate = await Deno.readTextFile(`${dir}/chat_template.jinja`);
      } catch {
        // none
      }
    }
    try {
      return new HfTokenizer(tj, tc, { ...opts, chatTemplate });
    } catch (e) {
      if (e instanceof ModelFormatError) throw e;
      throw new ModelFormatError(`${file}: cannot build tokenizer: ${(e as Error).message}`);
    }
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    return this.raw.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  /** Text of `ids`, special tokens (BOS, EOS, ...) left out. */
  decode(ids: number[]): string {
    return this.raw.decode(ids, { skip_special_tokens: true });
  }

  /** Text of `ids` with special tokens kept. */
  decodeWithSpecial(ids: number[]): string {
    return this.raw.decode(ids, { skip_special_tokens: false });
  }
}
