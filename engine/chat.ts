// Chat prompts: messages -> text with the model's Jinja chat template (tokenizer_config.json or
// chat_template.jinja, see model/tokenizer_hf.ts) or one given with --chat-template, then token
// ids. A rendered template that already starts with the BOS text is encoded without adding BOS
// again; llama2.c tokenizers have no BOS text, so their templates render `bos_token` as "" and
// the encoder adds BOS as it does for any prompt.

import { Template } from "@huggingface/jinja";
import { HfTokenizer } from "../model/tokenizer_hf.ts";
import type { ChatMessage, Tokenizer } from "../model/types.ts";

export interface ChatFormatter {
  /** Where the template came from (for logs and errors). */
  readonly source: string;
  render(messages: ChatMessage[], addGenerationPrompt: boolean): string;
  /** How a rendered chat is encoded: without BOS when it already starts with the BOS text. */
  encodeOptions(text: string): { addSpecialTokens: boolean };
  encode(messages: ChatMessage[], addGenerationPrompt: boolean): number[];
}

/** Special-token strings a template may use ({{ bos_token }}, ...). */
function specialTokens(tok: Tokenizer): Record<string, string> {
  if (!(tok instanceof HfTokenizer)) return { bos_token: "", eos_token: "" };
  const text = (id: number) => (id >= 0 ? tok.decodeWithSpecial([id]) : "");
  return { bos_token: text(tok.bosId), eos_token: text(tok.eosIds[0] ?? -1) };
}

/**
 * The chat formatter for a tokenizer: `override` (template source) wins, else the tokenizer's
 * own template; null when there is neither.
 */
export function chatFormatter(
  tok: Tokenizer,
  override?: { source: string; template: string },
): ChatFormatter | null {
  const special = specialTokens(tok);
  let render: (m: ChatMessage[], gen: boolean) => string;
  let source: string;
  if (override) {
    const t = new Template(override.template);
    render = (messages, gen) => t.render({ ...special, messages, add_generation_prompt: gen });
    source = override.source;
  } else if (tok.applyChatTemplate) {
    render = (m, gen) => tok.applyChatTemplate!(m, gen);
    source = "tokenizer_config.json";
  } else {
    return null;
  }
  const bos = special.bos_token;
  const encodeOptions = (text: string) => ({
    addSpecialTokens: !(bos !== "" && text.startsWith(bos)),
  });
  return {
    source,
    render,
    encodeOptions,
    encode: (messages, gen) => {
      const text = render(messages, gen);
      return tok.encode(text, encodeOptions(text));
    },
  };
}
