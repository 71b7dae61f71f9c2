/**
 * The report corpus of the pairing step, and the SHA-256 digests that tie a pairing file and its
 * caches to the exact bytes they were made from.
 *
 * A corpus is a UTF-8 text file with one report per line. Reading it: a UTF-8 byte-order mark is
 * dropped, `\r\n` and `\n` both end a line, the bytes must be valid UTF-8 (an error names the
 * file and the line), blank lines (empty or only whitespace) are skipped and counted, and every
 * report keeps its 1-based line number in the file so a person can find it. A corpus without a
 * single report is refused.
 *
 * This is the pairing step's own reader until the shared `readTextLines` of nn/formats/text.ts
 * lands; it keeps the same rules so swapping it changes no pairing.
 */
import { createHash } from "node:crypto";
import { writeFileAtomic } from "../nn/formats/safe_write.ts";

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

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The corpus in `bytes` (the contents of `path`, which only names it in messages); see the
 * module comment for the rules.
 * @throws Error naming the file and line of invalid UTF-8, or the file when it has no report.
 */
export function parseCorpus(bytes: Uint8Array, path: string): Corpus {
  const sha256 = sha256Hex(bytes);
  let body = bytes;
  if (body.length >= 3 && body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf) {
    body = body.subarray(3);
  }
  let text: string;
  try {
    text = UTF8.decode(body);
  } catch {
    // Find the line: decode line by line until one fails.
    let start = 0, line = 1;
    for (;;) {
      let end = body.indexOf(0x0a, start);
      if (end < 0) end = body.length;
      try {
        UTF8.decode(body.subarray(start, end));
      } catch {
        throw new Error(`corpus ${path} line ${line}: not valid UTF-8 text`);
      }
      if (end >= body.length) break;
      start = end + 1;
      line++;
    }
    throw new Error(`corpus ${path}: not valid UTF-8 text`);
  }
  const raw = text.split("\n");
  if (raw.length > 0 && raw[raw.length - 1] === "") raw.pop();
  const reports: string[] = [];
  const lines: number[] = [];
  let blank = 0;
  for (let i = 0; i < raw.length; i++) {
    const line = raw[i].endsWith("\r") ? raw[i].slice(0, -1) : raw[i];
    if (line.trim() === "") {
      blank++;
      continue;
    }
    reports.push(line);
    lines.push(i + 1);
  }
  if (reports.length === 0) {
    throw new Error(
      `corpus ${path} has no reports (${raw.length} line(s), all blank): ` +
        `expected one report per line`,
    );
  }
  return {
    path,
    sha256,
    reports,
    lines: Int32Array.from(lines),
    totalLines: raw.length,
    blankLines: blank,
  };
}

/**
 * Read the report corpus at `path` (see the module comment).
 * @throws Error naming the file: unreadable, invalid UTF-8 (with the line), or no report.
 */
export async function readCorpus(path: string): Promise<Corpus> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`cannot read corpus ${path}: ${(e as Error).message}`);
  }
  return parseCorpus(bytes, path);
}
