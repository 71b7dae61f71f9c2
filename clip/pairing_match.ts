/**
 * Matching images to reports: cosine top-k of L2-normalised image embeddings against the
 * corpus' report (or window) embeddings, through nn/retrieval.ts's streaming `cosineTopK`.
 *
 * In chunk mode a report's score is the maximum over its windows. `cosineTopK` returns the best
 * k' windows per image, k' = k x (most windows of one report), clamped to what it supports (64)
 * and to the number of windows. Walking those windows best first and keeping the first window of
 * each report gives the exact top-k reports, whenever k distinct reports appear among them; that
 * is guaranteed without the clamp. For an image where the clamp left fewer than k distinct
 * reports, its scores against every window are computed on the CPU (float64 sums) and reduced
 * exactly; how many images needed that is reported.
 */
import { cosineTopK } from "../nn/retrieval.ts";
import type { CorpusEmbeddings } from "./pairing_text.ts";

/** The most results per query `cosineTopK` supports. */
export const MAX_K = 64;

/** Top-k reports per image. */
export interface ReportTopK {
  /** Report indices [N * k], best first (ties: lower report index first). */
  indices: Int32Array;
  /** Cosine similarities [N * k]. */
  scores: Float32Array;
  /** Reports per image. */
  k: number;
  /** Windows asked of cosineTopK per image (k in truncate mode). */
  kPrime: number;
  /** Whether k' was clamped below k x max windows (chunk mode). */
  clamped: boolean;
  /** Images whose top-k was completed on the CPU because of the clamp. */
  cpuRows: number;
}

/** Exact top-k reports of one image by max over windows, on the CPU. */
function cpuRow(
  q: Float32Array,
  text: CorpusEmbeddings,
  k: number,
  reports: number,
): { idx: number[]; score: number[] } {
  const d = text.dim;
  const best = new Float64Array(reports).fill(-Infinity);
  for (let w = 0; w < text.rows; w++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += q[j] * text.embeds[w * d + j];
    const r = text.owner[w];
    if (s > best[r]) best[r] = s;
  }
  const order = Array.from({ length: reports }, (_, r) => r)
    .sort((a, b) => best[b] - best[a] || a - b).slice(0, k);
  return { idx: order, score: order.map((r) => best[r]) };
}

/**
 * The top `k` reports for each row of `images` (float32 [N, d], L2-normalised) among the
 * `reports` reports embedded in `text` (see the module comment for chunk mode).
 * @throws RangeError when k is not in 1..min(64, reports) or the row lengths differ.
 */
export async function topKReports(
  images: Float32Array,
  text: CorpusEmbeddings,
  reports: number,
  k: number,
): Promise<ReportTopK> {
  if (!Number.isInteger(k) || k < 1 || k > Math.min(MAX_K, reports)) {
    throw new RangeError(
      `k = ${k} must be an integer in 1..${Math.min(MAX_K, reports)} (at most ${MAX_K}, and ` +
        `at most the ${reports} reports of the corpus)`,
    );
  }
  const d = text.dim;
  if (images.length % d !== 0) {
    throw new RangeError(`topKReports: ${images.length} image values are not rows of ${d}`);
  }
  const N = images.length / d;
  const want = k * text.maxWindows;
  const kPrime = Math.min(MAX_K, want, text.rows);
  const clamped = kPrime < Math.min(want, text.rows);
  const indices = new Int32Array(N * k), scores = new Float32Array(N * k);
  if (N === 0) return { indices, scores, k, kPrime, clamped, cpuRows: 0 };
  const top = await cosineTopK(images, text.embeds, kPrime, { dim: d, normalize: false });
  if (!text.chunk) {
    return { indices: top.indices, scores: top.scores, k, kPrime, clamped, cpuRows: 0 };
  }
  let cpuRows = 0;
  const seen = new Set<number>();
  for (let i = 0; i < N; i++) {
    seen.clear();
    let got = 0;
    for (let j = 0; j < kPrime && got < k; j++) {
      const r = text.owner[top.indices[i * kPrime + j]];
      if (seen.has(r)) continue;
      seen.add(r);
      indices[i * k + got] = r;
      scores[i * k + got] = top.scores[i * kPrime + j];
      got++;
    }
    if (got < k) {
      cpuRows++;
      const row = cpuRow(images.subarray(i * d, (i + 1) * d), text, k, reports);
      indices.set(row.idx, i * k);
      scores.set(row.score, i * k);
    }
  }
  return { indices, scores, k, kPrime, clamped, cpuRows };
}

/** A histogram of `values` in `bins` equal bins over [lo, hi] (the values' own range). */
export interface Histogram {
  /** Lower edge of the first bin. */
  lo: number;
  /** Upper edge of the last bin. */
  hi: number;
  /** Values per bin; the last bin includes `hi`. */
  counts: number[];
}

/** {@link Histogram} of `values` in `bins` bins over their range (one bin when all equal). */
export function histogram(values: ArrayLike<number>, bins = 20): Histogram {
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < values.length; i++) {
    lo = Math.min(lo, values[i]);
    hi = Math.max(hi, values[i]);
  }
  const counts = new Array<number>(bins).fill(0);
  if (values.length === 0) return { lo: 0, hi: 0, counts };
  const width = (hi - lo) / bins;
  for (let i = 0; i < values.length; i++) {
    const b = width > 0 ? Math.min(bins - 1, Math.floor((values[i] - lo) / width)) : 0;
    counts[b]++;
  }
  return { lo, hi, counts };
}
