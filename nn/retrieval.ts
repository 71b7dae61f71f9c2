/**
 * Streaming cosine top-k: for every query row, the k most similar key rows, without ever holding
 * the N x M score matrix. Keys are streamed in chunks; each chunk is scored against a block of
 * queries by the matmul kernel into a bounded tile, and a merge kernel folds that tile into a
 * running top-k per query. Everything is sized from the adapter's limits, so 300,000 images
 * against 1,000,000 reports run in pieces that each fit maxStorageBufferBindingSize.
 */
import {
  copyBytes,
  MAX_TOPK,
  normalizeRowsInPlaceKernel,
  normalizeRowsKernel,
  topkMergeKernel,
} from "../kernels/cosine_topk.ts";
import { gpu } from "../kernels/device.ts";
import { matmulKernel } from "../kernels/matmul.ts";
import { type Buf, pool, readback, upload } from "../kernels/runtime.ts";
import { Tensor } from "./tensor.ts";

/** Options for {@link cosineTopK}. */
export interface CosineTopKOptions {
  /** Row length d; required when both inputs are Float32Arrays. */
  dim?: number;
  /**
   * Divide rows by their L2 norm first (default true; zero rows stay zero and score 0). With
   * false the scores are plain dot products of the rows as given.
   */
  normalize?: boolean;
  /** Queries scored together (default: up to 8192, within the adapter's binding limit). */
  queryBlock?: number;
  /** Keys per streamed chunk (default: fills a score tile of at most 64 MiB). */
  keyChunk?: number;
  /** GPU memory for normalised queries + running lists kept while keys stream (default 1 GiB). */
  maxResidentBytes?: number;
  /**
   * Largest buffer this call binds (default: the adapter's maxStorageBufferBindingSize, at most
   * 1 GiB). Tensor inputs larger than this are copied in row ranges.
   */
  maxBufferBytes?: number;
}

/** Result of {@link cosineTopK}: row i's best k are at [i * k, (i + 1) * k), best first. */
export interface TopK {
  /** Key indices, N x k. */
  indices: Int32Array;
  /** Cosine similarities (or dot products with `normalize: false`), N x k. */
  scores: Float32Array;
  /** Number of query rows. */
  rows: number;
  /** Results per row. */
  k: number;
}

/** A [rows, d] float32 matrix from a Tensor or a flat Float32Array. */
interface Source {
  rows: number;
  data: Float32Array | null;
  tensor: Tensor | null;
}

function source(name: string, x: Tensor | Float32Array, d: number | undefined): Source {
  // d is only used for Float32Arrays; a tensor's row length is its second axis.
  if (x instanceof Tensor) {
    if (x.dtype !== "float32" || x.rank !== 2) {
      throw new RangeError(`cosineTopK: ${name} must be a float32 [rows, d] tensor, got ${x}`);
    }
    return { rows: x.shape[0], data: null, tensor: x };
  }
  if (!(x instanceof Float32Array)) {
    throw new TypeError(`cosineTopK: ${name} must be a Tensor or a Float32Array`);
  }
  if (d === undefined) throw new RangeError(`cosineTopK: ${name}: row length unknown`);
  if (x.length % d !== 0) {
    throw new RangeError(`cosineTopK: ${name} has ${x.length} values, not a multiple of d = ${d}`);
  }
  return { rows: x.length / d, data: x, tensor: null };
}

function bindLimit(opts: CosineTopKOptions): number {
  // A power of two: the pool rounds requests up to size classes, and never past one of these.
  const l = 2 **
    Math.floor(Math.log2(Math.min(gpu().adapter.limits.maxStorageBufferBindingSize, 2 ** 30)));
  return opts.maxBufferBytes === undefined ? l : Math.min(l, opts.maxBufferBytes);
}

/**
 * Copy rows [r0, r0 + rows) of `s` into `dst` (contiguous from its start), normalising each row
 * when `normalize`. Tensor sources larger than the binding limit are copied in a range first.
 */
function fill(
  s: Source,
  r0: number,
  rows: number,
  d: number,
  dst: Buf,
  normalize: boolean,
  limit: number,
): void {
  if (s.data) {
    upload(dst, s.data.subarray(r0 * d, (r0 + rows) * d));
    if (normalize) normalizeRowsInPlaceKernel(dst, rows, d);
    return;
  }
  const buf = s.tensor!.buf;
  if (buf.bytes <= limit) {
    normalizeRowsKernel(buf, dst, rows, d, r0, normalize);
    return;
  }
  copyBytes(buf, r0 * d * 4, dst, rows * d * 4);
  if (normalize) normalizeRowsInPlaceKernel(dst, rows, d);
}

/**
 * The `k` keys most similar to each query by cosine similarity, best first; equal scores are
 * ordered by lower key index. `queries` is [N, d], `keys` [M, d], as 2-D float32 Tensors or flat
 * Float32Arrays (then give `opts.dim`). Rows are L2-normalised inside (unless
 * `opts.normalize === false`). 1 <= k <= min(64, M). Never materialises N x M: keys stream in
 * chunks through a bounded score tile, so M and N may far exceed GPU buffer limits. Rows with
 * NaN score NaN and are never selected.
 *
 * Throws RangeError for mismatched row lengths, k out of range or bad block options.
 */
export async function cosineTopK(
  queries: Tensor | Float32Array,
  keys: Tensor | Float32Array,
  k: number,
  opts: CosineTopKOptions = {},
): Promise<TopK> {
  const tq = queries instanceof Tensor ? source("queries", queries, undefined) : null;
  const tk = keys instanceof Tensor ? source("keys", keys, undefined) : null;
  const dim = (tq ? (queries as Tensor).shape[1] : undefined) ??
    (tk ? (keys as Tensor).shape[1] : undefined) ?? opts.dim;
  if (dim === undefined) {
    throw new RangeError(
      "cosineTopK: both inputs are Float32Arrays: pass opts.dim (the row length)",
    );
  }
  const q = tq ?? source("queries", queries, dim);
  const kk = tk ?? source("keys", keys, dim);
  for (const [name, t] of [["queries", queries], ["keys", keys]] as const) {
    if (t instanceof Tensor && t.shape[1] !== dim) {
      throw new RangeError(`cosineTopK: ${name} ${t} has rows of ${t.shape[1]}, expected ${dim}`);
    }
  }
  if (opts.dim !== undefined && opts.dim !== dim) {
    throw new RangeError(`cosineTopK: opts.dim = ${opts.dim} but the tensors have d = ${dim}`);
  }
  if (!Number.isInteger(dim) || dim < 1) throw new RangeError(`cosineTopK: bad row length ${dim}`);
  const M = kk.rows, N = q.rows;
  if (!Number.isInteger(k) || k < 1 || k > Math.min(MAX_TOPK, M)) {
    throw new RangeError(
      `cosineTopK: k = ${k} must be an integer in 1..min(${MAX_TOPK}, keys = ${M})`,
    );
  }
  const normalize = opts.normalize ?? true;
  const indices = new Int32Array(N * k), scores = new Float32Array(N * k);
  if (N === 0) return { indices, scores, rows: 0, k };

  const limit = bindLimit(opts);
  const tileFloats = Math.floor(Math.min(limit, 64 * 2 ** 20) / 4);
  const maxRowsPerBuf = Math.floor(limit / (dim * 4));
  if (maxRowsPerBuf < 1) {
    throw new RangeError(`cosineTopK: one row of ${dim} floats exceeds the binding limit`);
  }
  const nb = Math.max(
    1,
    Math.min(N, opts.queryBlock ?? 8192, maxRowsPerBuf, Math.floor(limit / (8 * k))),
  );
  const mc = Math.max(
    1,
    Math.min(M, opts.keyChunk ?? Math.max(1, Math.floor(tileFloats / nb)), maxRowsPerBuf),
  );
  if (nb * mc > limit / 4) {
    throw new RangeError(`cosineTopK: queryBlock ${nb} x keyChunk ${mc} exceeds the binding limit`);
  }
  const blockBytes = nb * (dim + 2 * k) * 4;
  const blocksResident = Math.max(1, Math.floor((opts.maxResidentBytes ?? 2 ** 30) / blockBytes));

  const tile = pool.acquire(nb * mc * 4);
  const chunk = pool.acquire(mc * dim * 4);
  const held: Buf[] = [tile, chunk];
  try {
    for (let s0 = 0; s0 < N; s0 += blocksResident * nb) {
      // A super-batch of query blocks stays on the GPU while every key chunk streams past it.
      const blocks: { r0: number; rows: number; q: Buf; state: Buf }[] = [];
      for (let r0 = s0; r0 < Math.min(N, s0 + blocksResident * nb); r0 += nb) {
        const rows = Math.min(nb, N - r0);
        const qb = pool.acquire(rows * dim * 4), st = pool.acquire(rows * 2 * k * 4);
        held.push(qb, st);
        fill(q, r0, rows, dim, qb, normalize, limit);
        blocks.push({ r0, rows, q: qb, state: st });
      }
      for (let j0 = 0; j0 < M; j0 += mc) {
        const cols = Math.min(mc, M - j0);
        fill(kk, j0, cols, dim, chunk, normalize, limit);
        for (const b of blocks) {
          // Key-major tile: S[j][q] = keys[j] . queries[q] (A = key chunk, B = queries^T).
          matmulKernel(chunk, b.q, tile, {
            batch: 1,
            M: cols,
            N: b.rows,
            K: dim,
            sab: 0,
            sam: dim,
            sak: 1,
            sbb: 0,
            sbk: 1,
            sbn: dim,
          });
          topkMergeKernel(tile, b.state, b.rows, cols, b.rows, k, j0, j0 === 0);
        }
      }
      for (const b of blocks) {
        const raw = await readback(b.state, b.rows * 2 * k * 4);
        const f = new Float32Array(raw), u = new Int32Array(raw);
        for (let r = 0; r < b.rows; r++) {
          const o = (b.r0 + r) * k;
          scores.set(f.subarray(r * 2 * k, r * 2 * k + k), o);
          indices.set(u.subarray(r * 2 * k + k, r * 2 * k + 2 * k), o);
        }
        pool.release(b.q);
        pool.release(b.state);
        held.splice(held.indexOf(b.q), 1);
        held.splice(held.indexOf(b.state), 1);
      }
    }
  } finally {
    for (const b of held) pool.release(b);
  }
  return { indices, scores, rows: N, k };
}
