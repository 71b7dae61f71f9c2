/**
 * Neural-network ops: softmax / log-softmax, layer norm, GELU and friends, cross-entropy, L2
 * normalisation and cosine similarity, dropout. Row ops (everything over the last axis) are fused
 * one-workgroup-per-row kernels (kernels/softmax.ts and neighbours); activations are single map
 * kernels. All are differentiable.
 */
import { ACTIVATION_WGSL } from "../../kernels/activation.ts";
import { crossEntropyBackward, crossEntropyForward } from "../../kernels/cross_entropy.ts";
import { dropoutKernel } from "../../kernels/dropout.ts";
import {
  layerNormBackwardInput,
  layerNormBackwardParams,
  layerNormForward,
} from "../../kernels/layernorm.ts";
import { l2NormBackward, l2NormForward } from "../../kernels/l2norm.ts";
import { reduceKernel } from "../../kernels/reduce.ts";
import { softmaxBackward, softmaxForward } from "../../kernels/softmax.ts";
import { noGrad, record } from "../autograd.ts";
import { empty, numel, type Tensor } from "../tensor.ts";
import { map } from "./elementwise.ts";
import { matmul } from "./matmul.ts";
import { permute, reshape } from "./shape.ts";

function checkFloat(x: Tensor, op: string, what = "input"): void {
  if (x.dtype !== "float32") throw new TypeError(`${op}: ${what} ${x} must be float32`);
}

/** [rows, n] of a tensor seen as rows of its last axis. */
function rowsOf(x: Tensor): [number, number] {
  const n = x.shape[x.rank - 1];
  return [numel(x.shape.slice(0, -1)), n];
}

/**
 * Apply `f` (which works on the last axis) along `axis`: directly for the last axis, otherwise
 * between two permutes that swap `axis` with the last one (two extra copies).
 */
function alongAxis(x: Tensor, axis: number, op: string, f: (t: Tensor) => Tensor): Tensor {
  if (x.rank === 0) throw new RangeError(`${op}: ${x} has no axis`);
  const a = axis < 0 ? axis + x.rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= x.rank) {
    throw new RangeError(`${op}: axis ${axis} out of range for ${x}`);
  }
  if (a === x.rank - 1) return f(x);
  const perm = [...x.shape.keys()];
  [perm[a], perm[x.rank - 1]] = [perm[x.rank - 1], perm[a]];
  const xp = permute(x, perm);
  const yp = f(xp);
  const y = permute(yp, perm); // a swap is its own inverse
  if (!y.requiresGrad) {
    // Nothing references the intermediates; with gradients they belong to the graph (tidy them).
    xp.dispose();
    yp.dispose();
  }
  return y;
}

// ---- softmax ---------------------------------------------------------------------------------

function softmaxLast(x: Tensor, log: boolean): Tensor {
  const op = log ? "logSoftmax" : "softmax";
  checkFloat(x, op);
  const [rows, n] = rowsOf(x);
  const y = empty(x.shape);
  softmaxForward(x.buf, y.buf, rows, n, log);
  const out = y.view(y.shape); // saved: the caller may dispose y before backward
  return record(y, op, [x], (g) => {
    const dx = empty(x.shape);
    softmaxBackward(out.buf, g.buf, dx.buf, rows, n, log);
    return [dx];
  }, [out]);
}

/**
 * softmax(x) along `axis` (default the last; other axes cost two transposing copies). Stable for
 * any finite inputs (the row max is subtracted). As in PyTorch, -Infinity entries get probability
 * 0, while a NaN or +Infinity in a row (or a row of all -Infinity) makes that row NaN.
 * Throws on int32 input or an axis out of range.
 */
export function softmax(x: Tensor, axis = -1): Tensor {
  return alongAxis(x, axis, "softmax", (t) => softmaxLast(t, false));
}

/** log(softmax(x)) along `axis`, computed as (x - max) - log(sum exp(x - max)). */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  return alongAxis(x, axis, "logSoftmax", (t) => softmaxLast(t, true));
}

// ---- layer norm ------------------------------------------------------------------------------

/** The checks of {@link layerNorm}'s inputs; returns [rows, n]. */
function layerNormDims(
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
  eps: number,
  op: string,
): [number, number] {
  checkFloat(x, op);
  if (x.rank === 0) throw new RangeError(`${op}: ${x} has no axis to normalise`);
  const [rows, n] = rowsOf(x);
  for (const [t, what] of [[weight, "weight"], [bias, "bias"]] as const) {
    if (!t) continue;
    checkFloat(t, op, what);
    if (t.rank !== 1 || t.shape[0] !== n) {
      throw new RangeError(`${op}: ${what} ${t} must be [${n}] for input ${x}`);
    }
  }
  if (!(eps >= 0)) throw new RangeError(`${op}: eps must be >= 0, got ${eps}`);
  return [rows, n];
}

/**
 * Record the layer norm node: y (already computed from x into `y` with `stats`) as a function of
 * x, weight and bias.
 */
function recordLayerNorm(
  y: Tensor,
  stats: Tensor,
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
  rows: number,
  n: number,
): Tensor {
  const parents = [x, ...(weight ? [weight] : []), ...(bias ? [bias] : [])];
  return record(y, "layerNorm", parents, (g) => {
    let dx: Tensor | null = null, dw: Tensor | null = null, db: Tensor | null = null;
    if (x.requiresGrad) {
      dx = empty(x.shape);
      layerNormBackwardInput(x.buf, weight?.buf ?? null, g.buf, stats.buf, dx.buf, rows, n);
    }
    if (weight?.requiresGrad) dw = empty([n]);
    if (bias?.requiresGrad) db = empty([n]);
    if (dw || db) {
      layerNormBackwardParams(x.buf, g.buf, stats.buf, dw?.buf ?? null, db?.buf ?? null, rows, n);
    }
    return [dx, ...(weight ? [dw] : []), ...(bias ? [db] : [])];
  }, [stats]);
}

/**
 * Layer normalisation over the last axis of x [..., D]: (x - mean) / sqrt(var + eps) * weight +
 * bias with the biased variance (PyTorch's `layer_norm`). `weight` and `bias` are [D] or null.
 * Gradients for x, weight and bias (the latter two by a deterministic column reduction).
 */
export function layerNorm(
  x: Tensor,
  weight: Tensor | null = null,
  bias: Tensor | null = null,
  eps = 1e-5,
): Tensor {
  const [rows, n] = layerNormDims(x, weight, bias, eps, "layerNorm");
  const y = empty(x.shape);
  const stats = empty([rows, 2]);
  layerNormForward(x.buf, weight?.buf ?? null, bias?.buf ?? null, y.buf, stats.buf, rows, n, eps);
  return recordLayerNorm(y, stats, x, weight, bias, rows, n);
}

/**
 * A residual add and the layer norm after it, in one kernel: returns `[h, layerNorm(h)]` with
 * h = x + r (same shapes; a transformer block's `h = x + attn(...)` followed by `ln_2(h)`).
 * Saves a dispatch and a pass over h. Differentiable in x, r, weight and bias, exactly as
 * `add` then {@link layerNorm}.
 */
export function addLayerNorm(
  x: Tensor,
  r: Tensor,
  weight: Tensor | null = null,
  bias: Tensor | null = null,
  eps = 1e-5,
): [Tensor, Tensor] {
  const [rows, n] = layerNormDims(x, weight, bias, eps, "addLayerNorm");
  if (
    r.dtype !== x.dtype || r.shape.length !== x.shape.length ||
    r.shape.some((d, i) => d !== x.shape[i])
  ) {
    throw new RangeError(`addLayerNorm: residual ${r} must have the shape of ${x}`);
  }
  const hBuf = empty(x.shape), y = empty(x.shape), stats = empty([rows, 2]);
  layerNormForward(
    x.buf,
    weight?.buf ?? null,
    bias?.buf ?? null,
    y.buf,
    stats.buf,
    rows,
    n,
    eps,
    {},
    { res: r.buf, h: hBuf.buf },
  );
  const h = record(hBuf, "add", [x, r], (g) => [
    x.requiresGrad ? g.view(g.shape) : null,
    r.requiresGrad ? g.view(g.shape) : null,
  ]);
  return [h, recordLayerNorm(y, stats, h, weight, bias, rows, n)];
}

// ---- activations -----------------------------------------------------------------------------

/**
 * Exact (erf) GELU, x * Phi(x), PyTorch's default `gelu`: the WGSL `gelu` of
 * kernels/activation.ts (shared with the matmul epilogue; accuracy stated there).
 */
export function gelu(x: Tensor): Tensor {
  checkFloat(x, "gelu");
  const y = map("gelu", "gelu(a)", [x], 0, ACTIVATION_WGSL);
  return record(y, "gelu", [x], (g) => [
    map("gelu_grad", "a * gelu_grad(b)", [g, x], 0, ACTIVATION_WGSL),
  ]);
}

/** x * sigmoid(1.702 x), the GELU approximation of OpenAI's CLIP (kernels/activation.ts). */
export function quickGelu(x: Tensor): Tensor {
  checkFloat(x, "quickGelu");
  const y = map("quick_gelu", "quick_gelu(a)", [x], 0, ACTIVATION_WGSL);
  return record(y, "quickGelu", [x], (g) => [
    map("quick_gelu_grad", "a * quick_gelu_grad(b)", [g, x], 0, ACTIVATION_WGSL),
  ]);
}

/** x for x > 0, slope * x otherwise (gradient slope at 0, like PyTorch). */
export function leakyRelu(x: Tensor, slope = 0.01): Tensor {
  checkFloat(x, "leakyRelu");
  const y = map("leaky_relu", "select(a * p.s, a, a > 0.0)", [x], slope);
  return record(y, "leakyRelu", [x], (g) => [
    map("leaky_relu_grad", "select(a * p.s, a, b > 0.0)", [g, x], slope),
  ]);
}

// ---- cross-entropy ---------------------------------------------------------------------------

/** Options for {@link crossEntropy}. */
export interface CrossEntropyOptions {
  /** "mean" (default) and "sum" give a scalar [], "none" the per-row losses [B]. */
  reduction?: "mean" | "sum" | "none";
  /** Mix the one-hot target with the uniform distribution: eps in [0, 1] (default 0). */
  labelSmoothing?: number;
}

/**
 * Cross-entropy of `logits` [B, C] against int32 class indices `labels` [B], with the
 * log-softmax fused in (like `torch.nn.functional.cross_entropy`). Gradient w.r.t. logits only.
 *
 * Labels outside [0, C): they live on the GPU and checking them would cost a readback, so the
 * kernel checks them instead and never reads out of bounds; such a row's loss (and so a mean or
 * sum) and its gradient are NaN. Check your labels on the CPU before upload for a clear error.
 */
export function crossEntropy(
  logits: Tensor,
  labels: Tensor,
  opts: CrossEntropyOptions = {},
): Tensor {
  const reduction = opts.reduction ?? "mean";
  const smooth = opts.labelSmoothing ?? 0;
  checkFloat(logits, "crossEntropy", "logits");
  if (logits.rank !== 2) throw new RangeError(`crossEntropy: logits ${logits} must be [B, C]`);
  const [B, C] = logits.shape;
  if (labels.dtype !== "int32" || labels.rank !== 1 || labels.shape[0] !== B) {
    throw new TypeError(`crossEntropy: labels ${labels} must be int32 [${B}]`);
  }
  if (!(smooth >= 0 && smooth <= 1)) {
    throw new RangeError(`crossEntropy: labelSmoothing must be in [0, 1], got ${smooth}`);
  }
  if (!["mean", "sum", "none"].includes(reduction)) {
    throw new RangeError(`crossEntropy: unknown reduction "${reduction}"`);
  }
  const rowLoss = empty([B]);
  const lse = empty([B]);
  crossEntropyForward(logits.buf, labels.buf, rowLoss.buf, lse.buf, B, C, smooth);
  let out = rowLoss;
  if (reduction !== "none") {
    out = empty([]);
    reduceKernel(reduction, rowLoss.buf, out.buf, 1, B, 1);
    rowLoss.dispose();
  }
  const lab = labels.view(labels.shape); // saved: the caller may dispose labels before backward
  return record(out, "crossEntropy", [logits], (g) => {
    const dx = empty(logits.shape);
    const scale = reduction === "mean" ? 1 / B : 1;
    crossEntropyBackward(
      logits.buf,
      lab.buf,
      lse.buf,
      g.buf,
      dx.buf,
      B,
      C,
      smooth,
      scale,
      reduction === "none" ? 1 : 0,
    );
    return [dx];
  }, [lse, lab]);
}

// ---- L2 normalisation and cosine similarity ---------------------------------------------------

function l2Last(x: Tensor, eps: number): Tensor {
  checkFloat(x, "l2Normalize");
  const [rows, n] = rowsOf(x);
  const y = empty(x.shape);
  const norm = empty([rows]);
  l2NormForward(x.buf, y.buf, norm.buf, rows, n, eps);
  const out = y.view(y.shape);
  return record(y, "l2Normalize", [x], (g) => {
    const dx = empty(x.shape);
    l2NormBackward(out.buf, g.buf, norm.buf, dx.buf, rows, n, eps);
    return [dx];
  }, [out, norm]);
}

/**
 * x / max(||x||, eps) along `axis` (default the last), like torch.nn.functional.normalize with
 * p = 2. Rows with norm below eps are scaled by 1 / eps (a zero row stays zero).
 */
export function l2Normalize(x: Tensor, axis = -1, eps = 1e-12): Tensor {
  if (!(eps > 0)) throw new RangeError(`l2Normalize: eps must be > 0, got ${eps}`);
  return alongAxis(x, axis, "l2Normalize", (t) => l2Last(t, eps));
}

/**
 * Cosine similarities of the rows of a [N, d] and b [M, d]: the [N, M] matrix
 * l2Normalize(a) l2Normalize(b)^T (rows normalised with `eps` as in {@link l2Normalize}).
 * Differentiable in both; the normalised rows are kept only for the backward.
 */
export function cosineSimilarity(a: Tensor, b: Tensor, eps = 1e-12): Tensor {
  checkFloat(a, "cosineSimilarity", "a");
  checkFloat(b, "cosineSimilarity", "b");
  if (a.rank !== 2 || b.rank !== 2 || a.shape[1] !== b.shape[1]) {
    throw new RangeError(`cosineSimilarity: need a [N, d] and b [M, d], got ${a} and ${b}`);
  }
  if (!(eps > 0)) throw new RangeError(`cosineSimilarity: eps must be > 0, got ${eps}`);
  const [N, d] = a.shape, M = b.shape[0];
  const na = empty(a.shape), nb = empty(b.shape);
  const ra = empty([N]), rb = empty([M]);
  l2NormForward(a.buf, na.buf, ra.buf, N, d, eps);
  l2NormForward(b.buf, nb.buf, rb.buf, M, d, eps);
  const y = noGrad(() => matmul(na, nb, { transposeB: true }));
  return record(y, "cosineSimilarity", [a, b], (g) => {
    let ga: Tensor | null = null, gb: Tensor | null = null;
    if (a.requiresGrad) {
      const gna = matmul(g, nb); // [N, M] x [M, d]
      ga = empty(a.shape);
      l2NormBackward(na.buf, gna.buf, ra.buf, ga.buf, N, d, eps);
      gna.dispose();
    }
    if (b.requiresGrad) {
      const gnb = matmul(g, na, { transposeA: true }); // [M, N] x [N, d]
      gb = empty(b.shape);
      l2NormBackward(nb.buf, gnb.buf, rb.buf, gb.buf, M, d, eps);
      gnb.dispose();
    }
    return [ga, gb];
  }, [na, nb, ra, rb]);
}

// ---- dropout ---------------------------------------------------------------------------------

/** Options for {@link dropout}. */
export interface DropoutOptions {
  /** Mask seed (an integer); the same seed gives the same mask. Default: a fresh random seed. */
  seed?: number;
  /** When false, dropout is the identity (evaluation mode). Default true. */
  training?: boolean;
}

/**
 * Zero each element with probability `p` and scale the rest by 1 / (1 - p). The mask is a hash of
 * (element index, seed) computed on the GPU (see kernels/dropout.ts); the backward regenerates
 * it, so nothing is stored. `p = 0` or `training: false` returns x unchanged (a view). Throws on
 * p outside [0, 1] or a non-integer seed.
 */
export function dropout(x: Tensor, p: number, opts: DropoutOptions = {}): Tensor {
  checkFloat(x, "dropout");
  if (!(p >= 0 && p <= 1)) throw new RangeError(`dropout: p must be in [0, 1], got ${p}`);
  if (p === 0 || opts.training === false) return reshape(x, x.shape);
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 32);
  const y = empty(x.shape);
  dropoutKernel(x.buf, y.buf, x.size, p, seed);
  return record(y, "dropout", [x], (g) => {
    const dx = empty(g.shape);
    dropoutKernel(g.buf, dx.buf, g.size, p, seed);
    return [dx];
  });
}
