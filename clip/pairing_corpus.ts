/**
 * The report corpus of the pairing step, and the SHA-256 digests that tie a pairing file and its
 * caches to the exact bytes they were made from.
 *
 * A corpus is a text file with one report per line, read by the project's one corpus reader
 * (nn/formats/text.ts): a UTF-8 byte-order mark is dropped (UTF-16 is decoded when a BOM says
 * so), `\r\n`, `\n` and a lone `\r` end a line, the bytes must be valid UTF-8 without NUL bytes
 * (an error names the file and the line), blank lines (empty or only whitespace) are skipped and
 * counted, and every report keeps its 1-based line number in the file so a person can find it.
 * A corpus without a single report is refused.
 */
import { createHash } from "node:crypto";
import { writeFileAtomic } from "../nn/formats/safe_write.ts";
import { checkInputFile } from "../nn/formats/input_file.ts";
import { decodeTextLines, MAX_TEXT_BYTES } from "../nn/formats/text.ts";

/** A report corpus as read by {@link readCorpus}. */
export interface Corpus {
  /** The file it was read from, as given. */
  path: string;
  /** SHA-256 of the file's bytes (lower-case hex). */
  sha256: string;
  /** The reports: the non-blank lines, in file order (index = report index). */
  reports: string[];
  /** 1-based line number in the file of each report. */
  lines: Int32Array;
  /** Lines in the file (a final newline does not start another line). */
  totalLines: number;
  /** Blank lines skipped. */
  blankLines: number;
}

/** SHA-256 of `data` (bytes, or a string as UTF-8), lower-case hex. */
export function sha256Hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/**
 * SHA-256 of the file at `path`, read in 8 MiB pieces (a 2 GB checkpoint is never held whole).
 * Throws naming the file when it cannot be read.
 */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    const buf = new Uint8Array(8 << 20);
    for (;;) {
      const n = await file.read(buf);
      if (n === null) break;
      hash.update(buf.subarray(0, n));
    }
  } finally {
    file.close();
  }
  return hash.digest("hex");
}

/** One remembered digest of {@link cachedSha256File}. */
interface DigestEntry {
  size: number;
  mtime: number;
  sha256: string;
}

/**
 * SHA-256 of the file at `path`, remembered in the JSON file `memo` by absolute path, size and
 * modification time, so a 600 MB checkpoint is hashed once and not on every run. A memo that
 * cannot be read is ignored (and rewritten); one that cannot be written only costs the next
 * run a re-hash.
 */
export async function cachedSha256File(path: string, memo: string): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  const key = await Deno.realPath(path);
  const mtime = info.mtime?.getTime() ?? -1;
  let table: Record<string, DigestEntry> = {};
  try {
    const parsed = JSON.parse(await Deno.readTextFile(memo));
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) table = parsed;
  } catch {
    // no memo yet, or an unreadable one: start afresh
  }
  const hit = table[key];
  if (hit && hit.size === info.size && hit.mtime === mtime && typeof hit.sha256 === "string") {
    return hit.sha256;
  }
  const sha256 = await sha256File(path);
  table[key] = { size: info.size, mtime, sha256 };
  await writeFileAtomic(memo, JSON.stringify(table, null, 1) + "\n").catch(() => undefined);
  return sha256;
}

/**
 * The corpus in `bytes` (the contents of `path`, which only names it in messages), read by the
 * project's one corpus reader (`decodeTextLines` of nn/formats/text.ts; see the module comment).
 * @throws Error naming the file and line of invalid UTF-8 or a NUL byte (BOM-less UTF-16), or
 * the file when it has no report.
 */
export function parseCorpus(bytes: Uint8Array, path: string): Corpus {
  const t = decodeTextLines(bytes, `corpus ${path}`);
  return {
    path,
    sha256: sha256Hex(bytes),
    reports: t.lines,
    lines: Int32Array.from(t.lineNumbers),
    totalLines: t.lines.length + t.skippedBlank,
    blankLines: t.skippedBlank,
  };
}

/**
 * Read the report corpus at `path` (see the module comment).
 * @throws Error naming the file: missing or not a regular file (a FIFO is never opened),
 * unreadable, larger than MAX_TEXT_BYTES, invalid UTF-8 (with the line), or no report.
 */
export async function readCorpus(path: string): Promise<Corpus> {
  let bytes: Uint8Array;
  try {
    const st = await checkInputFile(path);
    if (st.size > MAX_TEXT_BYTES) {
      throw new Error(`${st.size} bytes is more than ${MAX_TEXT_BYTES}`);
    }
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`cannot read corpus ${(e as Error).message}`);
  }
  return parseCorpus(bytes, path);
}
