/**
 * Scaled dot-product attention: a fused flash-style op (`attention`) and the textbook composition
 * of matmul, softmax and matmul (`attentionUnfused`) that materialises the T x T scores, kept for
 * benchmarks and as a second opinion in tests.
 */
import {
  attentionBackwardKernel,
  type AttentionDims,
  attentionForwardKernel,
  type FlashTile,
  MAX_HEAD_DIM,
  type TileMode,
} from "../../kernels/attention.ts";
import { NEG_BIG } from "../../kernels/wgsl.ts";
import { record } from "../autograd.ts";
import { empty, type Tensor, tensor } from "../tensor.ts";
import { add, scale as scaleBy } from "./elementwise.ts";
import { matmul } from "./matmul.ts";
import { softmax } from "./nn.ts";

/** Options for {@link attention} and {@link attentionUnfused}. */
export interface AttentionOptions {
  /** Mask future keys: query i sees keys j <= i (top-left aligned, as PyTorch's `is_causal`). */
  causal?: boolean;
  /** Multiplies the scores q k^T; default 1 / sqrt(D). */
  scale?: number;
  /**
   * {@link attention} only: force the kernels' tile mode (tests and benchmarks; default: the
   * device's choice, see kernels/attention.ts).
   */
  tiles?: TileMode;
  /** {@link attention} with `tiled` kernels only: force their thread grid (tests, benchmarks). */
  flash?: FlashTile;
  /** {@link attention} with `tiled` kernels only: use subgroup operations or not (default: the device's choice). */
  subgroups?: boolean;
}

function dims(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions, op: string): AttentionDims {
  for (const [n, t] of [["q", q], ["k", k], ["v", v]] as const) {
    if (t.rank !== 4 || t.dtype !== "float32") {
      throw new RangeError(`${op}: ${n} must be float32 [B, H, T, D], got ${t}`);
    }
  }
  const [B, H, Tq, D] = q.shape;
  const [Bk, Hk, Tk, Dk] = k.shape;
  if (Bk !== B || Hk !== H || Dk !== D) {
    throw new RangeError(`${op}: k ${k} does not match q ${q} in B, H or D`);
  }
  if (v.shape.some((s, i) => s !== k.shape[i])) {
    throw new RangeError(`${op}: v ${v} must have k's shape [${k.shape}]`);
  }
  if (D < 1 || D > MAX_HEAD_DIM) {
    throw new RangeError(`${op}: head dim D=${D} must be in 1..${MAX_HEAD_DIM}`);
  }
  if (Tq < 1 || Tk < 1) throw new RangeError(`${op}: empty sequence (Tq=${Tq}, Tk=${Tk})`);
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  if (!Number.isFinite(scale)) throw new RangeError(`${op}: scale ${scale} is not finite`);
  return { bh: B * H, tq: Tq, tk: Tk, d: D, scale, causal: opts.causal ?? false };
}

/**
 * softmax(scale * q k^T + mask) v, fused: q [B, H, Tq, D], k and v [B, H, Tk, D] (D <= 128)
 * give [B, H, Tq, D]. Extra memory is one float per query row (the log-sum-exp, kept for
 * backward); backward recomputes the probabilities tile by tile. Differentiable in q, k and v.
 * Throws a RangeError naming the tensor on a bad shape.
 */
export function attention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): Tensor {
  const d = dims(q, k, v, opts, "attention");
  const out = empty(q.shape);
  const lse = empty([d.bh * d.tq]);
  const launch = { tiles: opts.tiles, flash: opts.flash, subgroups: opts.subgroups };
  attentionForwardKernel(q.buf, k.buf, v.buf, out.buf, lse.buf, d, launch);
  const o = out.view(out.shape); // saved: the caller may dispose `out` before backward
  return record(out, "attention", [q, k, v], (g) => {
    const delta = empty([d.bh * d.tq]);
    const dq = q.requiresGrad ? empty(q.shape) : null;
    const kv = k.requiresGrad || v.requiresGrad;
    const dk = kv ? empty(k.shape) : null;
    const dv = kv ? empty(v.shape) : null;
    attentionBackwardKernel(
      q.buf,
      k.buf,
      v.buf,
      o.buf,
      lse.buf,
      g.buf,
      delta.buf,
      dq?.buf ?? null,
      dk?.buf ?? null,
      dv?.buf ?? null,
      d,
      launch,
    );
    delta.dispose();
    return [dq, dk, dv];
  }, [o, lse]);
}

/**
 * The same function as {@link attention}, computed the textbook way: scores = scale * q k^T
 * ([B, H, Tq, Tk] in memory), an additive causal mask of NEG_BIG (kernels/wgsl.ts), the fused row softmax of `nn.ts`,
 * then probabilities times v. Every step is an existing differentiable op, so backward comes from
 * autograd; the intermediates belong to the caller's `tidy` scope. For benchmarks and
 * cross-checks; prefer {@link attention}.
 */
export function attentionUnfused(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): Tensor {
  const d = dims(q, k, v, opts, "attentionUnfused");
  let s = scaleBy(matmul(q, k, { transposeB: true }), d.scale);
  if (d.causal) {
    const mask = new Float32Array(d.tq * d.tk);
    for (let i = 0; i < d.tq; i++) {
      for (let j = i + 1; j < d.tk; j++) mask[i * d.tk + j] = NEG_BIG;
    }
    s = add(s, tensor(mask, [d.tq, d.tk]));
  }
  return matmul(softmax(s, -1), v);
}
