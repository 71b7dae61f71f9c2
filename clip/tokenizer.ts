/**
 * CLIP's byte-level BPE tokenizer (OpenAI CLIP / OpenCLIP `SimpleTokenizer` behaviour).
 *
 * Pipeline of `encode(text)`:
 * 1. clean (`clipCleanText`), as OpenCLIP's default "lower" clean-up: `ftfy.fix_text` (clip/ftfy.ts:
 *    mojibake repair, HTML references, ligatures, full/half-width forms, curly quotes, line breaks,
 *    control characters, NFC), then `html.unescape` twice (clip/html_entities.ts), strip, join
 *    the whitespace-separated words with one space, lower-case;
 * 2. split with CLIP's pattern
 *    `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
 *    (case-insensitive; characters matched by none of the alternatives, i.e. whitespace, are
 *    dropped);
 * 3. each piece -> UTF-8 bytes -> one printable "byte char" per byte (`bytes_to_unicode`);
 * 4. BPE: merge the adjacent pair of lowest merge rank until none is left; the last symbol of a
 *    piece carries the `</w>` end-of-word marker. Results are cached per piece.
 *
 * Vocabulary from a CLIP merges file (`bpe_simple_vocab_16e6.txt[.gz]`): 256 byte chars, the same
 * 256 with `</w>`, one entry per merge (lines 1..48894 of the file; line 0 is a header), then
 * `<start_of_text>` = 49406 and `<end_of_text>` = 49407: 49408 entries. A Hugging Face
 * `CLIPTokenizer` folder (`vocab.json` + `merges.txt`) is read as is, with its `<|startoftext|>` /
 * `<|endoftext|>` specials.
 *
 * Parity: ids checked against OpenCLIP's own tokenizer (tests/fixtures/make_tokenizer_fixture.py)
 * on over a hundred tricky strings (most of them ones ftfy changes) and the whole TCGA report
 * corpus; ftfy alone against ftfy on generated mojibake (tests/fixtures/make_ftfy_fixture.py).
 * Known residual differences: the JS engine's Unicode tables (used for \p{L}, \p{N},
 * lower-casing and normalisation) are a newer version than Python 3.11's, so characters assigned
 * after Unicode 14 may be classified differently; see clip/ftfy.ts for the ftfy details.
 */

import { checkInputFile } from "../nn/formats/input_file.ts";
import { fixText, PY_SPACE } from "./ftfy.ts";
import { htmlUnescape } from "./html_entities.ts";

/** Merges used by OpenAI CLIP: 49152 vocabulary slots - 256 bytes - 2 specials. */
export const CLIP_NUM_MERGES = 49152 - 256 - 2;

/** Default text context length of OpenAI CLIP / OpenCLIP (CONCH uses 128). */
export const CLIP_CONTEXT_LENGTH = 77;

/**
 * Whitespace as Python's `regex` module's `\s` sees it in the token pattern (differs from JS
 * `\s`: includes U+0085, excludes U+FEFF; unlike `str.isspace()` it excludes U+001C..U+001F).
 */
const WS = "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
/** Runs of `str.isspace()` characters, which `str.split()` and `str.strip()` remove. */
const WS_RUN = new RegExp(`[${PY_SPACE}]+`, "gu");
const STRIP_RE = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, "gu");

/**
 * The piece pattern, after lower-casing. Python's pattern is case-insensitive; on lower-cased
 * text that only matters in two places, spelled out here because JS `i` mode folds differently:
 * `'s` also matches `'ſ` (U+017F folds to s), and U+0345 (which folds to a Greek letter) is matched
 * by neither the letter class nor the "other" class in Python, so it is dropped like whitespace.
 */
function piecePattern(sot: string, eot: string): RegExp {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(
    `${esc(sot)}|${esc(eot)}|'[s\\u017f]|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|` +
      `[^${WS}\\p{L}\\p{N}\\u0345]+`,
    "gu",
  );
}

/**
 * CLIP's `bytes_to_unicode`: byte -> printable char. Printable Latin-1 bytes ('!'..'~',
 * '¡'..'¬', '®'..'ÿ') map to themselves; the other 68 bytes map to U+0100.. in byte order.
 * Returns the chars in CLIP's vocabulary order (printable bytes first) and the byte -> char table.
 */
function byteChars(): { order: string[]; byByte: string[] } {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const isPrintable = new Set(printable);
  const byByte = new Array<string>(256);
  const order = printable.map((b) => String.fromCharCode(b));
  for (const b of printable) byByte[b] = String.fromCharCode(b);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (isPrintable.has(b)) continue;
    byByte[b] = String.fromCharCode(0x100 + extra++);
    order.push(byByte[b]);
  }
  return { order, byByte };
}

/** Python's `str.strip()` (its whitespace set, not JS `trim`'s). */
function pyStrip(text: string): string {
  return text.replace(STRIP_RE, "");
}

/**
 * OpenCLIP's default text clean-up: `ftfy.fix_text`, `html.unescape` twice, strip, words split on
 * whitespace and joined with one space (`" ".join(text.split())`), lower-case. Returns the text
 * the piece pattern runs on.
 */
export function clipCleanText(text: string): string {
  const unescaped = pyStrip(htmlUnescape(htmlUnescape(fixText(text))));
  return pyStrip(unescaped.replace(WS_RUN, " ")).toLowerCase();
}

// ---------------------------------------------------------------------------------------------
// The tokenizer.

/** Options for `ClipTokenizer.fromMerges`. */
export interface MergesOptions {
  /**
   * How many merge lines (after the header) to use; default `CLIP_NUM_MERGES` (48894), and the
   * file must hold at least that many. Smaller values give a smaller vocabulary (tests).
   */
  numMerges?: number;
  /** Where the text came from, for error messages. */
  source?: string;
}

/** Pieces cached before the BPE cache is emptied (bounds memory on huge corpora). */
const CACHE_LIMIT = 200_000;

/** CLIP's byte-level BPE tokenizer; build with `load`, `fromMerges` or `fromHuggingFace`. */
export class ClipTokenizer {
  readonly #encoder: Map<string, number>;
  readonly #decoder: string[];
  readonly #ranks: Map<string, number>;
  readonly #byteToChar: string[];
  readonly #charToByte: Map<string, number>;
  readonly #pattern: RegExp;
  readonly #special: Map<string, number>;
  readonly #sot: number;
  readonly #eot: number;
  readonly #cache = new Map<string, number[]>();
  readonly #utf8 = new TextEncoder();

  private constructor(
    encoder: Map<string, number>,
    merges: [string, string][],
    sot: string,
    eot: string,
    source: string,
  ) {
    const sotId = encoder.get(sot);
    const eotId = encoder.get(eot);
    if (sotId === undefined || eotId === undefined) {
      throw new Error(`${source}: vocabulary lacks the special tokens ${sot} / ${eot}`);
    }
    this.#encoder = encoder;
    let size = 0;
    for (const id of encoder.values()) size = Math.max(size, id + 1);
    this.#decoder = new Array<string>(size);
    for (const [tok, id] of encoder) this.#decoder[id] = tok;
    // Later duplicates win, as Python's dict(zip(merges, range(n))) does.
    this.#ranks = new Map();
    merges.forEach(([a, b], i) => this.#ranks.set(a + " " + b, i));
    const { byByte } = byteChars();
    this.#byteToChar = byByte;
    this.#charToByte = new Map(byByte.map((c, b) => [c, b]));
    this.#pattern = piecePattern(sot, eot);
    this.#special = new Map([[sot, sotId], [eot, eotId]]);
    this.#sot = sotId;
    this.#eot = eotId;
  }

  /**
   * Loads a tokenizer from `path`: a CLIP merges file (gzip-compressed, detected by its magic
   * bytes, or plain text), or a directory holding Hugging Face `vocab.json` + `merges.txt`.
   * Throws (naming the path) when the file is missing or malformed.
   */
  static async load(path: string): Promise<ClipTokenizer> {
    let info: Deno.FileInfo;
    try {
      // Folders and regular files only: a FIFO or a device would block the read forever.
      info = await checkInputFile(path, { allowFolder: true });
    } catch (e) {
      throw new Error(`ClipTokenizer.load: cannot read ${(e as Error).message}`);
    }
    if (info.isDirectory) {
      const vocabPath = `${path}/vocab.json`;
      const mergesPath = `${path}/merges.txt`;
      let vocab: string, merges: string;
      try {
        [vocab, merges] = await Promise.all([
          Deno.readTextFile(vocabPath),
          Deno.readTextFile(mergesPath),
        ]);
      } catch (e) {
        throw new Error(
          `ClipTokenizer.load: ${path} is a directory but has no readable vocab.json + ` +
            `merges.txt: ${(e as Error).message}`,
        );
      }
      return ClipTokenizer.fromHuggingFace(vocab, merges, path);
    }
    const bytes = await Deno.readFile(path);
    let text: string;
    if (bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b) {
      try {
        const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
        text = await new Response(stream).text();
      } catch (e) {
        throw new Error(`ClipTokenizer.load: ${path}: bad gzip data: ${(e as Error).message}`);
      }
    } else {
      text = new TextDecoder().decode(bytes);
    }
    return ClipTokenizer.fromMerges(text, { source: path });
  }

  /**
   * Builds the OpenAI/OpenCLIP vocabulary from the text of a CLIP merges file (line 0 is a
   * header, then one "a b" merge per line). Special tokens `<start_of_text>` / `<end_of_text>`
   * get the last two ids (49406 / 49407 with the full file). Throws when the file has fewer merge
   * lines than requested or a merge line is not two symbols.
   */
  static fromMerges(text: string, options: MergesOptions = {}): ClipTokenizer {
    const source = options.source ?? "merges text";
    const want = options.numMerges ?? CLIP_NUM_MERGES;
    if (!Number.isInteger(want) || want < 0) {
      throw new Error(`${source}: numMerges must be a non-negative integer, got ${want}`);
    }
    const lines = text.split("\n").slice(1, want + 1);
    if (lines.length < want) {
      throw new Error(
        `${source}: expected ${want} merge lines after the header, found ${lines.length}`,
      );
    }
    const merges = parseMerges(lines, source, 1);
    const { order } = byteChars();
    const vocab = [...order, ...order.map((c) => c + "</w>"), ...merges.map(([a, b]) => a + b)];
    vocab.push("<start_of_text>", "<end_of_text>");
    const encoder = new Map<string, number>();
    vocab.forEach((tok, i) => encoder.set(tok, i)); // later duplicates win, as in Python
    return new ClipTokenizer(encoder, merges, "<start_of_text>", "<end_of_text>", source);
  }

  /**
   * Builds a tokenizer from Hugging Face `CLIPTokenizer` files: `vocab.json` (token -> id, as
   * JSON text or an already parsed object) and the text of `merges.txt` (header line, then the
   * merges; at most `CLIP_NUM_MERGES` are used, as HF does). Specials are `<|startoftext|>` and
   * `<|endoftext|>`. Throws on malformed JSON, non-integer ids or bad merge lines.
   */
  static fromHuggingFace(
    vocab: string | Record<string, number>,
    mergesText: string,
    source = "Hugging Face tokenizer",
  ): ClipTokenizer {
    let obj: unknown = vocab;
    if (typeof vocab === "string") {
      try {
        obj = JSON.parse(vocab);
      } catch (e) {
        throw new Error(`${source}: vocab.json is not valid JSON: ${(e as Error).message}`);
      }
    }
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
      throw new Error(`${source}: vocab.json must be an object mapping tokens to ids`);
    }
    const encoder = new Map<string, number>();
    for (const [tok, id] of Object.entries(obj)) {
      if (!Number.isInteger(id) || (id as number) < 0) {
        throw new Error(
          `${source}: vocab.json id of ${JSON.stringify(tok)} is not an integer >= 0`,
        );
      }
      encoder.set(tok, id as number);
    }
    const lines = mergesText.trim().split("\n").slice(1, CLIP_NUM_MERGES + 1);
    const merges = parseMerges(lines, `${source} merges.txt`, 1);
    return new ClipTokenizer(encoder, merges, "<|startoftext|>", "<|endoftext|>", source);
  }

  /** Id of the start-of-text token (49406 for CLIP). */
  get sotToken(): number {
    return this.#sot;
  }

  /** Id of the end-of-text token (49407 for CLIP); the largest id, so argmax finds it. */
  get eotToken(): number {
    return this.#eot;
  }

  /** Number of ids (largest id + 1): 49408 for CLIP. */
  get vocabSize(): number {
    return this.#decoder.length;
  }

  /** Token ids of `text` after CLIP's clean-up, without start/end tokens. */
  encode(text: string): number[] {
    const out: number[] = [];
    for (const m of clipCleanText(text).matchAll(this.#pattern)) {
      const ids = this.#pieceIds(m[0]);
      for (let i = 0; i < ids.length; i++) out.push(ids[i]);
    }
    return out;
  }

  /**
   * Text of `ids` as CLIP decodes it: byte chars back to bytes, UTF-8 decoded with U+FFFD for
   * invalid sequences, every `</w>` replaced by a space (so words end with a space). Special and
   * padding ids are decoded too (`<start_of_text>`, id 0 = "!"): slice them off first if unwanted.
   * Throws on an id outside the vocabulary.
   */
  decode(ids: ArrayLike<number>): string {
    const bytes: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const tok = this.#decoder[ids[i]];
      if (tok === undefined) {
        throw new Error(
          `ClipTokenizer.decode: id ${ids[i]} at position ${i} is not in the vocabulary`,
        );
      }
      for (const ch of tok) {
        const b = this.#charToByte.get(ch);
        if (b !== undefined) bytes.push(b);
        else for (const x of this.#utf8.encode(ch)) bytes.push(x); // not a byte char: as UTF-8
      }
    }
    return new TextDecoder().decode(new Uint8Array(bytes)).replaceAll("</w>", " ");
  }

  /**
   * Token rows for a batch: `<sot> ids <eot>` per text, cut to `contextLength` keeping `<eot>` in
   * the last slot (OpenCLIP), padded with 0. Returns row-major [N, contextLength] int32, N = the
   * number of texts (1 for a string). Throws if `contextLength` is not an integer >= 1.
   */
  tokenize(texts: string | string[], contextLength = CLIP_CONTEXT_LENGTH): Int32Array {
    if (!Number.isInteger(contextLength) || contextLength < 1) {
      throw new Error(
        `ClipTokenizer.tokenize: contextLength must be an integer >= 1, got ${contextLength}`,
      );
    }
    const list = typeof texts === "string" ? [texts] : texts;
    const out = new Int32Array(list.length * contextLength);
    for (let r = 0; r < list.length; r++) {
      const ids = this.encode(list[r]);
      const row = r * contextLength;
      out[row] = this.#sot;
      const n = Math.min(ids.length, contextLength - 1);
      for (let i = 0; i < n; i++) out[row + 1 + i] = ids[i];
      // Full row: [sot, ids..., eot] fits when ids.length + 2 <= contextLength; otherwise the
      // last slot is overwritten by eot.
      out[row + Math.min(ids.length + 1, contextLength - 1)] = this.#eot;
    }
    return out;
  }

  /** Ids of one regex piece (cached): special tokens map directly, others go through BPE. */
  #pieceIds(piece: string): number[] {
    const hit = this.#cache.get(piece);
    if (hit) return hit;
    const special = this.#special.get(piece);
    let ids: number[];
    if (special !== undefined) {
      ids = [special];
    } else {
      ids = [];
      for (const sym of this.#bpe(this.#byteEncode(piece))) {
        const id = this.#encoder.get(sym);
        if (id === undefined) {
          throw new Error(`ClipTokenizer: BPE symbol ${JSON.stringify(sym)} has no id`);
        }
        ids.push(id);
      }
    }
    if (this.#cache.size >= CACHE_LIMIT) this.#cache.clear();
    this.#cache.set(piece, ids);
    return ids;
  }

  /** UTF-8 bytes of `piece` as byte chars, one JS string element per byte. */
  #byteEncode(piece: string): string[] {
    const chars: string[] = [];
    let ascii = true;
    for (let i = 0; i < piece.length; i++) {
      if (piece.charCodeAt(i) >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) {
      for (let i = 0; i < piece.length; i++) chars.push(this.#byteToChar[piece.charCodeAt(i)]);
    } else {
      for (const b of this.#utf8.encode(piece)) chars.push(this.#byteToChar[b]);
    }
    return chars;
  }

  /** BPE over byte chars: merge the lowest-ranked adjacent pair, all its occurrences, repeat. */
  #bpe(chars: string[]): string[] {
    let word = chars;
    word[word.length - 1] += "</w>";
    while (word.length > 1) {
      let best = Infinity;
      let first = "";
      let second = "";
      for (let i = 0; i + 1 < word.length; i++) {
        const r = this.#ranks.get(word[i] + " " + word[i + 1]);
        if (r !== undefined && r < best) {
          best = r;
          first = word[i];
          second = word[i + 1];
        }
      }
      if (best === Infinity) break;
      const merged: string[] = [];
      for (let i = 0; i < word.length; i++) {
        if (i + 1 < word.length && word[i] === first && word[i + 1] === second) {
          merged.push(first + second);
          i++;
        } else {
          merged.push(word[i]);
        }
      }
      word = merged;
    }
    return word;
  }
}

/** Parses merge lines ("a b"); `offset` is the line number of lines[0] for error messages. */
function parseMerges(lines: string[], source: string, offset: number): [string, string][] {
  const merges: [string, string][] = [];
  for (let i = 0; i < lines.length; i++) {
    const parts = lines[i].trim().split(/\s+/);
    if (parts.length !== 2 || !parts[0]) {
      throw new Error(
        `${source}: merge line ${i + offset + 1} is not two symbols: ${JSON.stringify(lines[i])}`,
      );
    }
    merges.push([parts[0], parts[1]]);
  }
  return merges;
}

/**
 * Position of the end-of-text token in each row of `ids` ([N, contextLength], row-major): the
 * index of the first maximum (CLIP's `text.argmax(-1)`; `<eot>` has the largest id). Returns
 * Int32Array [N]. Throws if `ids.length` is not a multiple of `contextLength` or it is < 1.
 */
export function eotPositions(ids: Int32Array, contextLength: number): Int32Array {
  if (!Number.isInteger(contextLength) || contextLength < 1 || ids.length % contextLength !== 0) {
    throw new Error(
      `eotPositions: ${ids.length} ids do not split into rows of contextLength ${contextLength}`,
    );
  }
  const rows = ids.length / contextLength;
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const base = r * contextLength;
    let best = 0;
    for (let i = 1; i < contextLength; i++) if (ids[base + i] > ids[base + best]) best = i;
    out[r] = best;
  }
  return out;
}
