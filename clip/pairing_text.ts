/**
 * The text side of pairing: every report of the corpus tokenized, encoded by the pairing model's
 * text tower and L2-normalised, once, with an on-disk cache.
 *
 * Two modes:
 * - truncate (the paper's): one row per report, its tokens cut to the context as the model's own
 *   tokenizer does (77 for CLIP, 128 for CONCH); a report with more tokens is counted as
 *   truncated.
 * - chunk (`--chunk`): the report's whole token sequence is split into context-sized windows,
 *   each with the start/end tokens, and every window is embedded; pairing then scores a report
 *   by its best window. The first window is exactly the truncated row.
 *
 * The cache (`corpus-<key>.safetensors` in the cache folder) is keyed by everything that decides
 * the embeddings: the weights' SHA-256, the model configuration, the tokenizer's content, the
 * context, the mode and the corpus' SHA-256; the full key is stored in the file's metadata and
 * compared on load, so a stale or foreign file is recomputed, never used.
 */
import { noGrad } from "../nn/autograd.ts";
import { tidy } from "../nn/tensor.ts";
import { SafetensorsFile, writeSafetensors } from "../nn/formats/safetensors.ts";
import type { TextEncoder, TextTokenizer } from "./backbone.ts";
import { ConchTokenizer } from "./conch_tokenizer.ts";
import type { Corpus } from "./pairing_corpus.ts";
import { sha256Hex } from "./pairing_corpus.ts";
import { ClipTokenizer } from "./tokenizer.ts";

/**
 * A tokenizer that can cut a long text into context-sized windows itself. CLIP's and CONCH's
 * tokenizers are handled by {@link tokenWindows} without it; another tokenizer implements this
 * to support `--chunk` and the truncation count.
 */
export interface WindowTokenizer extends TextTokenizer {
  /**
   * Row-major [w, contextLength] ids, w >= 1: the text's tokens in consecutive windows, each row
   * formatted like a `tokenize` row; the first row equals `tokenize([text], contextLength)`.
   */
  windows(text: string, contextLength: number): Int32Array;
}

/** Start-token / end-token tokenizers (CLIP's, and whole-word ones that follow its ids). */
interface StartEndTokenizer {
  encode(text: string): number[];
}

function startEnd(tok: TextTokenizer): { start: number; end: number } | null {
  if (tok instanceof ClipTokenizer) return { start: tok.sotToken, end: tok.eotToken };
  const t = tok as unknown as Record<string, unknown>;
  if (
    typeof t.encode === "function" && typeof t.startId === "number" &&
    typeof t.eotId === "number"
  ) {
    return { start: t.startId, end: t.eotId };
  }
  return null;
}

/** `ids` cut into windows of `room`, each `before + part + after`, padded with `pad` to `ctx`. */
function frame(
  ids: readonly number[],
  room: number,
  ctx: number,
  before: readonly number[],
  after: readonly number[],
  pad: number,
): Int32Array {
  const w = Math.max(1, Math.ceil(ids.length / room));
  const out = new Int32Array(w * ctx).fill(pad);
  for (let r = 0; r < w; r++) {
    const row = [...before, ...ids.slice(r * room, (r + 1) * room), ...after];
    out.set(row, r * ctx);
  }
  return out;
}

/**
 * The windows of `text` for a context of `ctx` tokens: row-major [w, ctx] ids, w >= 1, the first
 * row equal to `tokenizer.tokenize([text], ctx)`. Supports {@link WindowTokenizer}s, CLIP's
 * tokenizer, CONCH's, and tokenizers with `encode(text)`, `startId` and `eotId` that frame rows
 * as CLIP does (start, tokens, end, zeros).
 * @throws Error for any other tokenizer, or a context too short to hold a token.
 */
export function tokenWindows(tokenizer: TextTokenizer, text: string, ctx: number): Int32Array {
  const custom = (tokenizer as Partial<WindowTokenizer>).windows;
  if (typeof custom === "function") return custom.call(tokenizer, text, ctx);
  if (tokenizer instanceof ConchTokenizer) {
    const { before, after } = tokenizer.bpe.template;
    // CONCH's rows: the template within ctx - 1 columns, then one placeholder pad column.
    const room = ctx - 1 - before.length - after.length;
    if (room < 1) throw new Error(`tokenWindows: context ${ctx} leaves no room for a token`);
    return frame(tokenizer.bpe.encodeOrdinary(text), room, ctx, before, after, tokenizer.padId);
  }
  const se = startEnd(tokenizer);
  if (se) {
    const room = ctx - 2;
    if (room < 1) throw new Error(`tokenWindows: context ${ctx} leaves no room for a token`);
    const ids = (tokenizer as unknown as StartEndTokenizer).encode(text);
    return frame(ids, room, ctx, [se.start], [se.end], 0);
  }
  throw new Error(
    "--chunk (and counting truncated reports) needs a tokenizer that can cut windows: CLIP's, " +
      "CONCH's, or one implementing WindowTokenizer.windows",
  );
}

/** Whether {@link tokenWindows} can cut windows with `tokenizer`. */
export function canWindow(tokenizer: TextTokenizer): boolean {
  return typeof (tokenizer as Partial<WindowTokenizer>).windows === "function" ||
    tokenizer instanceof ConchTokenizer || startEnd(tokenizer) !== null;
}

/** The embedded corpus: one row per report (truncate) or per window (chunk). */
export interface CorpusEmbeddings {
  /** Float32 [rows, d], each row L2-normalised. */
  embeds: Float32Array;
  /** Row length d. */
  dim: number;
  /** Rows: reports (truncate) or windows (chunk). */
  rows: number;
  /** Report index of each row: [rows]; the identity in truncate mode. */
  owner: Int32Array;
  /** Most windows of one report (1 in truncate mode). */
  maxWindows: number;
  /** Reports longer than the context (truncated, or split into windows); null when unknown. */
  truncated: number | null;
  /** Whether the rows are windows (chunk mode). */
  chunk: boolean;
  /** Whether they came from the cache. */
  cached: boolean;
  /** The cache file (read or written), or null without a cache. */
  cacheFile: string | null;
}

/** Options of {@link embedCorpus}. */
export interface EmbedCorpusOptions {
  /** Split reports into context-sized windows (see the module comment). Default false. */
  chunk?: boolean;
  /** Token rows per GPU batch (default 64). */
  batch?: number;
  /** Cache folder (must exist); none when omitted. */
  cacheDir?: string;
  /**
   * What identifies the model and tokenizer in the cache key (weights SHA-256, configuration,
   * tokenizer content). Required with `cacheDir`.
   */
  modelKey?: string;
  /** Stop between batches when aborted (throws the signal's reason). */
  signal?: AbortSignal;
  /** Rows embedded so far, of `total` (not called for a cache hit). */
  onProgress?: (done: number, total: number) => void;
}

/** Divide each row of `x` [rows, d] by its L2 norm (float64 sum); -1 if all finite, else the row. */
export function normalizeRows(x: Float32Array, d: number): number {
  for (let r = 0; r * d < x.length; r++) {
    let s = 0;
    for (let j = r * d; j < (r + 1) * d; j++) s += x[j] * x[j];
    if (!Number.isFinite(s)) return r;
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let j = r * d; j < (r + 1) * d; j++) x[j] *= inv;
  }
  return -1;
}

async function readCache(
  file: string,
  key: string,
  dim: number,
): Promise<{ embeds: Float32Array; owner: Int32Array } | null> {
  let st: SafetensorsFile;
  try {
    st = await SafetensorsFile.open(file);
  } catch {
    return null;
  }
  try {
    if (st.metadata.key !== key) return null;
    const e = st.entry("embeds"), o = st.entry("owner");
    if (e.dtype !== "F32" || e.shape.length !== 2 || e.shape[1] !== dim) return null;
    if (o.dtype !== "I32" || o.shape.length !== 1 || o.shape[0] !== e.shape[0]) return null;
    const embeds = await st.readFloat32("embeds");
    const raw = await st.read("owner");
    const owner = new Int32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
    return { embeds, owner };
  } catch {
    return null;
  } finally {
    st.close();
  }
}

/**
 * The L2-normalised text embeddings of every report of `corpus` through `encoder`, tokenized by
 * `tokenizer` at the encoder's context (see the module comment for both modes and the cache).
 * @throws Error naming the report's line when an embedding is not finite; Error from
 * {@link tokenWindows} when `chunk` is asked of a tokenizer that cannot cut windows.
 */
export async function embedCorpus(
  encoder: TextEncoder,
  tokenizer: TextTokenizer,
  corpus: Corpus,
  opts: EmbedCorpusOptions = {},
): Promise<CorpusEmbeddings> {
  const ctx = encoder.contextLength, d = encoder.embedDim;
  const chunk = opts.chunk ?? false;
  const batch = opts.batch ?? 64;
  if (!Number.isInteger(batch) || batch < 1) {
    throw new RangeError(`embedCorpus: batch must be a positive integer, got ${batch}`);
  }
  if (opts.cacheDir !== undefined && opts.modelKey === undefined) {
    throw new Error("embedCorpus: a cache folder needs opts.modelKey");
  }
  const M = corpus.reports.length;
  // Windows (or truncated rows) of every report, and how many were too long.
  const windowed = chunk || canWindow(tokenizer);
  const rowsOf: Int32Array[] = [];
  let long = 0;
  let maxWindows = 1;
  for (let r = 0; r < M; r++) {
    if (windowed) {
      const w = tokenWindows(tokenizer, corpus.reports[r], ctx);
      const n = w.length / ctx;
      if (n > 1) long++;
      if (chunk) {
        rowsOf.push(w);
        maxWindows = Math.max(maxWindows, n);
        continue;
      }
    }
    rowsOf.push(tokenizer.tokenize([corpus.reports[r]], ctx));
  }
  const owner = new Int32Array(rowsOf.reduce((a, w) => a + w.length / ctx, 0));
  const ids = new Int32Array(owner.length * ctx);
  let at = 0;
  rowsOf.forEach((w, r) => {
    ids.set(w, at * ctx);
    owner.fill(r, at, at + w.length / ctx);
    at += w.length / ctx;
  });
  const rows = owner.length;
  const truncated = windowed ? long : null;

  const key = opts.cacheDir === undefined ? "" : sha256Hex(JSON.stringify({
    what: "clipit-pairing corpus embeddings/1",
    model: opts.modelKey,
    context: ctx,
    chunk,
    corpus: corpus.sha256,
    rows,
  }));
  const cacheFile = opts.cacheDir === undefined
    ? null
    : `${opts.cacheDir}/corpus-${key.slice(0, 16)}.safetensors`;
  const base = { dim: d, rows, maxWindows, truncated, chunk, cacheFile };
  if (cacheFile) {
    const hit = await readCache(cacheFile, key, d);
    if (hit && hit.owner.length === rows && hit.owner.every((o, i) => o === owner[i])) {
      return { ...base, embeds: hit.embeds, owner, cached: true };
    }
  }

  const embeds = new Float32Array(rows * d);
  opts.onProgress?.(0, rows);
  for (let i = 0; i < rows; i += batch) {
    opts.signal?.throwIfAborted();
    const n = Math.min(batch, rows - i);
    const out = noGrad(() => tidy(() => encoder.encode(ids.subarray(i * ctx, (i + n) * ctx))));
    let vals: Float32Array;
    try {
      vals = await out.toFloat32Array();
    } finally {
      out.dispose();
    }
    if (vals.length !== n * d) {
      throw new Error(
        `${encoder.name}: ${n} texts gave ${vals.length} values, expected ${n} x ${d}`,
      );
    }
    const bad = normalizeRows(vals, d);
    if (bad >= 0) {
      const r = owner[i + bad];
      throw new Error(
        `corpus ${corpus.path} line ${corpus.lines[r]} (report ${r}): its text embedding is not ` +
          `finite (NaN or Inf from ${encoder.name})`,
      );
    }
    embeds.set(vals, i * d);
    opts.onProgress?.(i + n, rows);
  }
  if (cacheFile) {
    await writeSafetensors(cacheFile, {
      embeds: { dtype: "F32", shape: [rows, d], data: embeds },
      owner: { dtype: "I32", shape: [rows], data: owner },
    }, { key, corpus: corpus.path, corpus_sha256: corpus.sha256, chunk: String(chunk) });
  }
  return { ...base, embeds, owner, cached: false };
}
