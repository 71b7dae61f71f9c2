/**
 * A whole-word tokenizer over a fixed vocabulary, for small text towers trained from scratch
 * (the built-in demo's report world) where CLIP's 49408-entry BPE would only waste embedding
 * rows. It follows CLIP's id conventions where the model depends on them: rows start with a
 * start token, end with an end-of-text token, are padded with 0, and the end-of-text id is the
 * largest id, because CLIP pools each text at the position of its largest id
 * (clip/tokenizer.ts `eotPositions`).
 *
 * Ids: 0 padding, 1 start, 2 unknown word, 3 .. 3 + words - 1 the words in sorted order, then
 * end-of-text = vocabSize - 1. Texts are lower-cased and split into runs of `a-z0-9`; anything
 * else separates words and carries no token.
 */
import type { TextTokenizer } from "./backbone.ts";

/** The JSON form of a {@link WordTokenizer} (what a run folder saves). */
export interface WordTokenizerJson {
  /** Always "word". */
  type: "word";
  /** The vocabulary, sorted and unique. */
  words: string[];
}

const PAD = 0;
const START = 1;
const UNKNOWN = 2;
const FIRST_WORD = 3;

/** Splits a text into the words a {@link WordTokenizer} sees: lower-case runs of `a-z0-9`. */
export function splitWords(text: string): string[] {
  return text.toLowerCase().match(/[a-z0-9]+/g) ?? [];
}

/** A tokenizer mapping each known word to one id (see the module comment for the ids). */
export class WordTokenizer implements TextTokenizer {
  /** The vocabulary, sorted and unique; word `words[i]` has id `i + 3`. */
  readonly words: readonly string[];
  /** Number of ids: padding, start, unknown, the words and end-of-text. */
  readonly vocabSize: number;
  /** Id of the start token (1). */
  readonly startId: number = START;
  /** Id of words not in the vocabulary (2). */
  readonly unknownId: number = UNKNOWN;
  /** Id of the end-of-text token: the largest id, `vocabSize - 1`. */
  readonly eotId: number;
  private readonly ids: Map<string, number>;

  private constructor(words: string[]) {
    this.words = Object.freeze(words);
    this.ids = new Map(words.map((w, i) => [w, i + FIRST_WORD]));
    this.eotId = words.length + FIRST_WORD;
    this.vocabSize = this.eotId + 1;
  }

  /**
   * A tokenizer over `words` (order and duplicates do not matter: the vocabulary is sorted and
   * made unique, so the same set always gives the same ids).
   * @throws Error naming a word that is not lower-case `a-z0-9`, or when `words` is empty.
   */
  static fromWords(words: Iterable<string>): WordTokenizer {
    const unique = [...new Set(words)].sort();
    if (unique.length === 0) throw new Error("WordTokenizer: the vocabulary is empty");
    for (const w of unique) {
      if (!/^[a-z0-9]+$/.test(w)) {
        throw new Error(
          `WordTokenizer: vocabulary word ${JSON.stringify(w)} is not lower-case a-z0-9 ` +
            `(the tokenizer could never produce it)`,
        );
      }
    }
    return new WordTokenizer(unique);
  }

  /**
   * Rebuild a tokenizer from {@link toJSON}'s object (or its parsed text).
   * @throws Error when `json` is not a word tokenizer's JSON.
   */
  static fromJSON(json: unknown): WordTokenizer {
    const j = json as Partial<WordTokenizerJson> | null;
    if (!j || j.type !== "word" || !Array.isArray(j.words)) {
      throw new Error('WordTokenizer.fromJSON: expected {"type": "word", "words": [...]}');
    }
    if (!j.words.every((w) => typeof w === "string")) {
      throw new Error("WordTokenizer.fromJSON: every vocabulary entry must be a string");
    }
    return WordTokenizer.fromWords(j.words);
  }

  /** The JSON form: `{type: "word", words}`. */
  toJSON(): WordTokenizerJson {
    return { type: "word", words: [...this.words] };
  }

  /** Ids of a text's words, without start and end tokens (unknown words map to 2). */
  encode(text: string): number[] {
    return splitWords(text).map((w) => this.ids.get(w) ?? UNKNOWN);
  }

  /**
   * Row-major [texts.length, contextLength] ids: start, the first `contextLength - 2` words,
   * end-of-text, then zeros (OpenCLIP truncates the same way: the last kept slot becomes EOT).
   * @throws RangeError when `contextLength` is below 2 (no room for start and end tokens).
   */
  tokenize(texts: string[], contextLength: number): Int32Array {
    if (!Number.isInteger(contextLength) || contextLength < 2) {
      throw new RangeError(`WordTokenizer.tokenize: contextLength ${contextLength} is below 2`);
    }
    const out = new Int32Array(texts.length * contextLength); // zeros: padding
    texts.forEach((text, r) => {
      const ids = this.encode(text).slice(0, contextLength - 2);
      const base = r * contextLength;
      out[base] = START;
      out.set(ids, base + 1);
      out[base + 1 + ids.length] = this.eotId;
    });
    return out;
  }

  /** The words of one row of ids (special tokens and padding dropped; unknown as "<unk>"). */
  decode(ids: ArrayLike<number>): string {
    const out: string[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id === PAD || id === START || id === this.eotId) continue;
      out.push(id === UNKNOWN ? "<unk>" : this.words[id - FIRST_WORD] ?? "<unk>");
    }
    return out.join(" ");
  }
}
