/**
 * Reading a text corpus (one report or caption per line): the one reader every command uses, so
 * that a byte-order mark, an encoding mistake or a blank line is treated the same everywhere.
 *
 * Rules of {@link readTextLines} / {@link decodeTextLines}:
 * - UTF-8, with a leading byte-order mark (EF BB BF) removed (kept, it would change the first
 *   line's tokens). A BOM saying UTF-16 (FF FE little-endian, FE FF big-endian) decodes the file
 *   as UTF-16.
 * - Invalid UTF-8 is refused, naming the line and the byte (a lenient decoder would replace it
 *   with U+FFFD silently). A NUL byte is refused too: it means UTF-16 (or binary) without a
 *   byte-order mark, which would otherwise become lines of garbage.
 * - Lines end at `\n`, `\r\n` or a lone `\r` (Python's universal newlines). A final line break
 *   does not add a line.
 * - Blank lines (only whitespace) are skipped and counted; every kept line keeps its original
 *   1-based line number, so a pairing file or an error can point into the file.
 * - A corpus without any non-blank line is refused, and so is a file that is not a regular file
 *   (a FIFO would block) or is larger than {@link MAX_TEXT_BYTES}.
 */
import { checkInputFile } from "./input_file.ts";

/** Largest corpus read, in bytes (a JavaScript string holds at most about 512 M characters). */
export const MAX_TEXT_BYTES = 256 * 1024 * 1024;

/** The non-blank lines of a corpus and where they came from. */
export interface TextLines {
  /** The kept lines, in file order, without their line breaks. */
  lines: string[];
  /** The 1-based line number in the file of each kept line. */
  lineNumbers: number[];
  /** Blank (whitespace-only) lines skipped. */
  skippedBlank: number;
  /** How the bytes were decoded. */
  encoding: "utf-8" | "utf-16le" | "utf-16be";
  /** Whether the file started with a byte-order mark (removed). */
  bom: boolean;
}

/** Options of {@link readTextLines}. */
export interface TextOptions {
  /** How the user named the file (e.g. `--texts`); messages start with it. */
  label?: string;
}

/** 1-based line of byte `offset` (counting `\n`, `\r\n` and lone `\r` as breaks). */
function lineAt(bytes: Uint8Array, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset; i++) {
    if (bytes[i] === 0x0a) line++;
    else if (bytes[i] === 0x0d && bytes[i + 1] !== 0x0a) line++;
  }
  return line;
}

/** Offset of the first byte that is not valid UTF-8 (RFC 3629), or -1. */
function firstInvalidUtf8(b: Uint8Array, from: number): number {
  let i = from;
  while (i < b.length) {
    const c = b[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    let n: number, min: number;
    if (c >= 0xc2 && c <= 0xdf) (n = 1), (min = 0x80);
    else if (c >= 0xe0 && c <= 0xef) (n = 2), (min = 0x800);
    else if (c >= 0xf0 && c <= 0xf4) (n = 3), (min = 0x10000);
    else return i;
    let cp = c & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const cc = b[i + k];
      if (cc === undefined || (cc & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return -1;
}

/**
 * Decode a corpus's bytes and split it into non-blank lines (see the module comment).
 * `where` starts every message (e.g. `--texts reports.txt`).
 * @throws Error naming `where` and the line: invalid UTF-8, a NUL byte (BOM-less UTF-16),
 * invalid UTF-16, or no non-blank line at all.
 */
export function decodeTextLines(bytes: Uint8Array, where: string): TextLines {
  let encoding: TextLines["encoding"] = "utf-8";
  let start = 0;
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) start = 3;
  else if (bytes[0] === 0xff && bytes[1] === 0xfe) (encoding = "utf-16le"), (start = 2);
  else if (bytes[0] === 0xfe && bytes[1] === 0xff) (encoding = "utf-16be"), (start = 2);
  let text: string;
  if (encoding === "utf-8") {
    const nul = bytes.indexOf(0, start);
    if (nul >= 0) {
      throw new Error(
        `${where}: line ${lineAt(bytes, nul)} holds a NUL byte (offset ${nul}): UTF-16 text ` +
          `without a byte-order mark, or not text at all; save it as UTF-8`,
      );
    }
    const bad = firstInvalidUtf8(bytes, start);
    if (bad >= 0) {
      throw new Error(
        `${where}: line ${lineAt(bytes, bad)} is not valid UTF-8 (byte 0x${
          bytes[bad].toString(16).padStart(2, "0")
        } at offset ${bad}); save the file as UTF-8`,
      );
    }
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(
      bytes.subarray(start),
    );
  } else {
    try {
      text = new TextDecoder(encoding, { fatal: true, ignoreBOM: true }).decode(
        bytes.subarray(start),
      );
    } catch {
      throw new Error(
        `${where}: starts with a ${encoding.toUpperCase()} byte-order mark but is not valid ` +
          `${encoding.toUpperCase()} (odd length or an unpaired surrogate)`,
      );
    }
    const nul = text.indexOf("\0");
    if (nul >= 0) {
      const line = text.slice(0, nul).split(/\r\n|\r|\n/).length;
      throw new Error(`${where}: line ${line} holds a NUL character; not a text corpus`);
    }
  }
  const pieces = text.split(/\r\n|\r|\n/);
  if (pieces.length > 0 && pieces[pieces.length - 1] === "") pieces.pop();
  const lines: string[] = [];
  const lineNumbers: number[] = [];
  let skippedBlank = 0;
  pieces.forEach((p, i) => {
    if (p.trim() === "") skippedBlank++;
    else {
      lines.push(p);
      lineNumbers.push(i + 1);
    }
  });
  if (lines.length === 0) {
    throw new Error(
      `${where}: no text lines (${
        pieces.length === 0 ? "the file is empty" : `${pieces.length} blank line(s)`
      }); nothing to embed`,
    );
  }
  return { lines, lineNumbers, skippedBlank, encoding, bom: start > 0 };
}

/**
 * Read a text corpus: one entry per non-blank line (see the module comment for the rules).
 * @throws Error naming `opts.label`, the path and, for encoding problems, the line: missing or
 * not a regular file, larger than {@link MAX_TEXT_BYTES}, invalid UTF-8, BOM-less UTF-16, empty.
 */
export async function readTextLines(path: string, opts: TextOptions = {}): Promise<TextLines> {
  const where = opts.label ? `${opts.label} ${path}` : path;
  const st = await checkInputFile(path, opts);
  if (st.size > MAX_TEXT_BYTES) {
    throw new Error(
      `${where}: ${st.size} bytes is more than the ${MAX_TEXT_BYTES} bytes a corpus may have`,
    );
  }
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`${where}: cannot be read (${(e as Error).message})`);
  }
  return decodeTextLines(bytes, where);
}
