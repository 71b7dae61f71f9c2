/**
 * Byte-level BPE tokenizers read from a Hugging Face `tokenizer.json`, and CONCH's tokenizer on
 * top of one.
 *
 * {@link ByteLevelBpeTokenizer} implements the subset of the `tokenizers` pipeline that
 * byte-level BPE files use (GPT-2 style; CONCH's `conch_byte_level_bpe_uncased.json`):
 * 1. added tokens (`added_tokens`, matched leftmost-longest on the raw text, as the library's
 *    Aho-Corasick split) become their ids; the text between them goes through the steps below,
 *    piece by piece;
 * 2. normalizers: NFD / NFC / NFKD / NFKC, StripAccents (drops every combining mark, general
 *    category M, as `tokenizers` does), Lowercase (per character, no final-sigma rule);
 * 3. the ByteLevel pre-tokenizer: a leading space is added to each piece that lacks one
 *    (`add_prefix_space`), the piece is split with GPT-2's pattern
 *    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (\s as
 *    Oniguruma's Unicode White_Space set), and each part's UTF-8 bytes become GPT-2's printable
 *    byte characters;
 * 4. BPE: the adjacent pair of lowest merge rank is merged until none is left; symbols are looked
 *    up in `vocab`;
 * 5. the `TemplateProcessing` post-processor adds the special tokens around the sequence.
 * Anything outside that subset (other normalizers, pre-tokenizers, BPE options such as dropout
 * or a word suffix) throws naming the field, rather than tokenizing differently.
 *
 * {@link ConchTokenizer} is CONCH's `tokenize()`: `<start_of_text>` + at most 125 tokens +
 * `<end_of_text>`, padded with `<pad>` (0) to 127, plus one more `<pad>` column that CONCH's text
 * tower drops (its class token takes that place): rows of 128.
 */
import type { TextTokenizer } from "./backbone.ts";

type Json = Record<string, unknown>;

/** Oniguruma's `\s` with Unicode (White_Space): differs from JS `\s` (U+0085 yes, U+FEFF no). */
const WS = "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
/** GPT-2's pre-tokenization pattern with that `\s`. */
const GPT2_PATTERN = new RegExp(
  `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^${WS}\\p{L}\\p{N}]+|[${WS}]+(?![^${WS}])|[${WS}]+`,
  "gu",
);

/** GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the rest map to U+0100... */
function byteCharTable(): string[] {
  const table = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
    table[b] = String.fromCharCode(printable ? b : 0x100 + extra++);
  }
  return table;
}
const BYTE_CHARS = byteCharTable();
const UTF8 = new TextEncoder();

type Normalizer = (s: string) => string;

function normalizerOf(spec: unknown, where: string): Normalizer {
  if (spec === null || spec === undefined) return (s) => s;
  const n = spec as Json;
  switch (n.type) {
    case "Sequence": {
      const list = (n.normalizers as unknown[] ?? []).map((x) => normalizerOf(x, where));
      return (s) => list.reduce((acc, f) => f(acc), s);
    }
    case "NFD":
    case "NFC":
    case "NFKD":
    case "NFKC":
      return (s) => s.normalize(n.type as string);
    case "StripAccents":
      return (s) => s.replace(/\p{M}/gu, "");
    case "Lowercase":
      // Per character, as the Rust library maps each char on its own.
      return (s) => {
        let out = "";
        for (const ch of s) out += ch.toLowerCase();
        return out;
      };
    default:
      throw new Error(`${where}: normalizer "${String(n.type)}" is not supported`);
  }
}

/** One added (special) token of a tokenizer.json. */
interface AddedToken {
  id: number;
  content: string;
}

/** The special tokens a post-processor puts around a sequence. */
export interface BpeTemplate {
  /** Ids before the sequence. */
  before: number[];
  /** Ids after the sequence. */
  after: number[];
}

function templateOf(spec: unknown, where: string): BpeTemplate {
  if (spec === null || spec === undefined) return { before: [], after: [] };
  const p = spec as Json;
  if (p.type === "ByteLevel") return { before: [], after: [] }; // offsets only
  if (p.type !== "TemplateProcessing") {
    throw new Error(`${where}: post_processor "${String(p.type)}" is not supported`);
  }
  const specials = (p.special_tokens ?? {}) as Record<string, { ids: number[] }>;
  const t: BpeTemplate = { before: [], after: [] };
  let seenSequence = false;
  for (const item of p.single as Json[]) {
    if ("Sequence" in item) {
      if (seenSequence) throw new Error(`${where}: a template with two sequences`);
      seenSequence = true;
    } else if ("SpecialToken" in item) {
      const id = (item.SpecialToken as Json).id as string;
      const ids = specials[id]?.ids;
      if (!ids) throw new Error(`${where}: template special token "${id}" has no ids`);
      (seenSequence ? t.after : t.before).push(...ids);
    }
  }
  return t;
}

/** A byte-level BPE tokenizer from a `tokenizer.json` (see the module comment). */
export class ByteLevelBpeTokenizer {
  /** Where it was read from (for messages). */
  readonly source: string;
  /** Token -> id. */
  readonly vocab: ReadonlyMap<string, number>;
  /** One past the largest id. */
  readonly vocabSize: number;
  /** Added tokens by content. */
  readonly added: ReadonlyMap<string, number>;
  /** Special tokens the post-processor puts before / after the sequence. */
  readonly template: BpeTemplate;
  readonly #ranks = new Map<string, number>();
  readonly #normalize: Normalizer;
  readonly #prefixSpace: boolean;
  readonly #useRegex: boolean;
  readonly #ignoreMerges: boolean;
  readonly #addedPattern: RegExp | null;
  readonly #cache = new Map<string, number[]>();

  /** Build from a parsed tokenizer.json; `source` labels errors. Throws on unsupported parts. */
  constructor(json: unknown, source: string) {
    this.source = source;
    const where = source;
    const root = json as Json;
    const model = root?.model as Json | undefined;
    if (!model || model.type !== "BPE") {
      throw new Error(`${where}: model type "${String(model?.type)}" is not BPE`);
    }
    for (const key of ["dropout", "continuing_subword_prefix", "end_of_word_suffix"]) {
      if (model[key] !== null && model[key] !== undefined && model[key] !== "") {
        throw new Error(
          `${where}: BPE option ${key} = ${JSON.stringify(model[key])} is not supported`,
        );
      }
    }
    if (model.byte_fallback === true) {
      throw new Error(`${where}: BPE byte_fallback is not supported`);
    }
    this.#ignoreMerges = model.ignore_merges === true;
    const vocab = new Map(Object.entries(model.vocab as Record<string, number>));
    const merges = model.merges as (string | string[])[];
    merges.forEach((m, i) => {
      const [a, b] = typeof m === "string" ? m.split(" ") : m;
      this.#ranks.set(`${a} ${b}`, i);
    });
    const added = new Map<string, number>();
    for (const t of (root.added_tokens ?? []) as (AddedToken & Json)[]) {
      if (t.normalized || t.lstrip || t.rstrip || t.single_word) {
        throw new Error(
          `${where}: added token "${t.content}" uses normalized / lstrip / rstrip / single_word`,
        );
      }
      added.set(t.content, t.id);
      vocab.set(t.content, t.id);
    }
    this.vocab = vocab;
    this.added = added;
    this.vocabSize = Math.max(...vocab.values()) + 1;
    this.#normalize = normalizerOf(root.normalizer, where);
    const pre = root.pre_tokenizer as Json | null;
    if (!pre || pre.type !== "ByteLevel") {
      throw new Error(`${where}: pre_tokenizer "${String(pre?.type)}" is not ByteLevel`);
    }
    this.#prefixSpace = pre.add_prefix_space === true;
    this.#useRegex = pre.use_regex !== false;
    this.template = templateOf(root.post_processor, where);
    const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    // Longest first: a JS alternation takes the first alternative that matches at the leftmost
    // position, so this is leftmost-longest like the library's Aho-Corasick matcher.
    const contents = [...added.keys()].sort((a, b) => b.length - a.length);
    this.#addedPattern = contents.length ? new RegExp(contents.map(esc).join("|"), "gu") : null;
  }

  /** Read a `tokenizer.json` file; errors name it. */
  static async fromFile(path: string): Promise<ByteLevelBpeTokenizer> {
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (e) {
      throw new Error(`cannot read tokenizer ${path}: ${(e as Error).message}`);
    }
    return new ByteLevelBpeTokenizer(JSON.parse(text), path);
  }

  /** The id of a token string; throws naming it when it is not in the vocabulary. */
  id(token: string): number {
    const id = this.vocab.get(token);
    if (id === undefined) throw new Error(`${this.source}: no token "${token}" in the vocabulary`);
    return id;
  }

  /** BPE of one pre-token (already byte characters). */
  #bpe(word: string): number[] {
    const hit = this.#cache.get(word);
    if (hit) return hit;
    let ids: number[];
    const whole = this.vocab.get(word);
    if (this.#ignoreMerges && whole !== undefined) ids = [whole];
    else {
      let parts = [...word];
      while (parts.length > 1) {
        let best = -1, bestRank = Infinity;
        for (let i = 0; i < parts.length - 1; i++) {
          const r = this.#ranks.get(`${parts[i]} ${parts[i + 1]}`);
          if (r !== undefined && r < bestRank) [best, bestRank] = [i, r];
        }
        if (best < 0) break;
        // Merge every occurrence of the best pair, left to right (non-overlapping).
        const [a, b] = [parts[best], parts[best + 1]];
        const next: string[] = [];
        for (let i = 0; i < parts.length; i++) {
          if (i < parts.length - 1 && parts[i] === a && parts[i + 1] === b) {
            next.push(a + b);
            i++;
          } else next.push(parts[i]);
        }
        parts = next;
      }
      ids = parts.map((p) => this.id(p));
    }
    if (this.#cache.size > 100_000) this.#cache.clear();
    this.#cache.set(word, ids);
    return ids;
  }

  /** A piece of text between added tokens -> ids. */
  #encodePiece(piece: string, out: number[]): void {
    let s = this.#normalize(piece);
    if (s.length === 0) return;
    if (this.#prefixSpace && !s.startsWith(" ")) s = " " + s;
    const parts = this.#useRegex ? s.match(GPT2_PATTERN) ?? [] : [s];
    for (const part of parts) {
      let chars = "";
      for (const b of UTF8.encode(part)) chars += BYTE_CHARS[b];
      out.push(...this.#bpe(chars));
    }
  }

  /** Token ids of `text` without the post-processor's special tokens. */
  encodeOrdinary(text: string): number[] {
    const out: number[] = [];
    let at = 0;
    if (this.#addedPattern) {
      this.#addedPattern.lastIndex = 0;
      for (const m of text.matchAll(this.#addedPattern)) {
        this.#encodePiece(text.slice(at, m.index), out);
        out.push(this.added.get(m[0])!);
        at = m.index! + m[0].length;
      }
    }
    this.#encodePiece(text.slice(at), out);
    return out;
  }

  /**
   * Token ids with the post-processor's special tokens, the sequence cut (from the right) so the
   * whole fits `maxLength` when given, as the library's truncation does.
   */
  encode(text: string, maxLength?: number): number[] {
    let ids = this.encodeOrdinary(text);
    const { before, after } = this.template;
    if (maxLength !== undefined) {
      const room = Math.max(0, maxLength - before.length - after.length);
      if (ids.length > room) ids = ids.slice(0, room);
    }
    return [...before, ...ids, ...after];
  }
}

/**
 * CONCH's tokenizer (its `get_tokenizer()` + `tokenize()`): `<start_of_text>`, the text's
 * tokens, `<end_of_text>`, `<pad>` (0) up to contextLength - 1, then one more `<pad>`.
 */
export class ConchTokenizer implements TextTokenizer {
  /** The byte-level BPE underneath (CONCH's `conch_byte_level_bpe_uncased.json`). */
  readonly bpe: ByteLevelBpeTokenizer;
  /** Id of `<pad>`. */
  readonly padId: number;

  /** Wrap a tokenizer.json that has CONCH's `<pad>`, `<start_of_text>`, `<end_of_text>`. */
  constructor(bpe: ByteLevelBpeTokenizer) {
    this.bpe = bpe;
    this.padId = bpe.id("<pad>");
    bpe.id("<start_of_text>");
    bpe.id("<end_of_text>");
  }

  /** Read CONCH's `tokenizer.json` (any byte-level BPE file with its three special tokens). */
  static async fromFile(path: string): Promise<ConchTokenizer> {
    return new ConchTokenizer(await ByteLevelBpeTokenizer.fromFile(path));
  }

  /** One past the largest id (32007 for CONCH). */
  get vocabSize(): number {
    return this.bpe.vocabSize;
  }

  /**
   * Row-major [texts.length, contextLength] ids: each row as CONCH's `tokenize` with
   * `max_length = contextLength - 1`, truncation and padding, plus the placeholder pad column.
   * Throws a RangeError for a context shorter than 3.
   */
  tokenize(texts: string[], contextLength: number): Int32Array {
    if (!(Number.isInteger(contextLength) && contextLength >= 3)) {
      throw new RangeError(
        `ConchTokenizer: context length must be an integer >= 3, got ${contextLength}`,
      );
    }
    const out = new Int32Array(texts.length * contextLength).fill(this.padId);
    texts.forEach((t, i) => out.set(this.bpe.encode(t, contextLength - 1), i * contextLength));
    return out;
  }
}
