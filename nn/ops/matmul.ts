/**
 * Differentiable batched matrix product with transpose flags and an optional bias epilogue, and
 * `linear`: a Linear layer's product with its bias and activation fused into the same dispatch.
 */
import { ACTIVATION_WGSL, activationGradExpr } from "../../kernels/activation.ts";
import { matmulKernel } from "../../kernels/matmul.ts";
import { needsGrad, record } from "../autograd.ts";
import { empty, numel, type Tensor } from "../tensor.ts";
import { map } from "./elementwise.ts";
import { sumTo } from "./reduce.ts";

/** Options for {@link matmul}. */
export interface MatmulOptions {
  /** Use A's last two axes swapped: A is [..., K, M]. */
  transposeA?: boolean;
  /** Use B's last two axes swapped: B is [..., N, K]. */
  transposeB?: boolean;
  /** Added to every row of the result: shape [N]. */
  bias?: Tensor | null;
}

/**
 * `op(A) op(B) (+ bias)` over the last two axes, batched over the leading ones. Batch axes must
 * be equal, or one side must have none (it is then shared by every batch: a Linear layer's weight).
 * A [..., M, K] with a 2-D B is folded into one [M', K] product, the fast case.
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const tA = opts.transposeA ?? false, tB = opts.transposeB ?? false;
  const bias = opts.bias ?? null;
  if (a.rank < 2 || b.rank < 2) {
    throw new RangeError(`matmul: inputs need at least 2 axes, got ${a} and ${b}`);
  }
  const [ar, ac] = a.shape.slice(-2), [br, bc] = b.shape.slice(-2);
  const M = tA ? ac : ar, K = tA ? ar : ac;
  const Kb = tB ? bc : br, N = tB ? br : bc;
  if (K !== Kb) {
    throw new RangeError(
      `matmul: inner sizes differ: ${a}${tA ? "^T" : ""} x ${b}${tB ? "^T" : ""} (${K} vs ${Kb})`,
    );
  }
  if (bias && (bias.rank !== 1 || bias.shape[0] !== N)) {
    throw new RangeError(`matmul: bias ${bias} must be [${N}]`);
  }
  const aBatch = a.shape.slice(0, -2), bBatch = b.shape.slice(0, -2);
  let batchShape: readonly number[];
  let batch: number, Mrows = M;
  let sab: number, sbb: number;
  if (bBatch.length === 0 && !tA) {
    // Fold A's batch into its rows: one big product (Linear layers).
    batchShape = aBatch;
    batch = 1;
    Mrows = numel(aBatch) * M;
    sab = 0;
    sbb = 0;
  } else if (aBatch.length === 0 || bBatch.length === 0 || sameShape(aBatch, bBatch)) {
    batchShape = aBatch.length ? aBatch : bBatch;
    batch = numel(batchShape);
    sab = aBatch.length ? M * K : 0;
    sbb = bBatch.length ? K * N : 0;
  } else {
    throw new RangeError(`matmul: batch shapes of ${a} and ${b} must match (or one be absent)`);
  }
  const y = empty([...batchShape, M, N]);
  matmulKernel(a.buf, b.buf, y.buf, {
    batch,
    M: Mrows,
    N,
    K,
    sab,
    sam: tA ? 1 : K,
    sak: tA ? M : 1,
    sbb,
    sbk: tB ? 1 : N,
    sbn: tB ? K : 1,
  }, bias?.buf ?? null);
  const parents = bias ? [a, b, bias] : [a, b];
  return record(y, "matmul", parents, (g) => {
    let ga: Tensor | null = null, gb: Tensor | null = null;
    if (a.requiresGrad) {
      const full = tA
        ? matmul(b, g, { transposeA: tB, transposeB: true })
        : matmul(g, b, { transposeB: !tB });
      ga = sumTo(full, a.shape);
      full.dispose();
    }
    if (b.requiresGrad && batch === 1 && Mrows !== M) {
      // Folded case: dB is one product over all rows, not a batch of products summed later.
      const a2 = a.view([Mrows, K]), g2 = g.view([Mrows, N]);
      gb = tB ? matmul(g2, a2, { transposeA: true }) : matmul(a2, g2, { transposeA: true });
      a2.dispose();
      g2.dispose();
    } else if (b.requiresGrad) {
      const full = tB
        ? matmul(g, a, { transposeA: true, transposeB: tA })
        : matmul(a, g, { transposeA: !tA });
      gb = sumTo(full, b.shape);
      full.dispose();
    }
    const gbias = bias?.requiresGrad ? sumTo(g, [N]) : null;
    return [ga, gb, gbias];
  });
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

// ---- linear ----------------------------------------------------------------------------------

/** Activations {@link linear} applies in the matmul's epilogue. */
export type LinearActivation = "none" | "relu" | "gelu" | "quickGelu";

/** Options for {@link linear}. */
export interface LinearOpOptions {
  /** Applied to x W^T + b in the same dispatch (default "none"). */
  activation?: LinearActivation;
}

const KERNEL_ACT = { relu: "relu", gelu: "gelu", quickGelu: "quick_gelu" } as const;

/**
 * act(x W^T + b), torch.nn.functional.linear followed by an activation, as one matmul dispatch:
 * x [..., in] (float32), weight [out, in], bias [out] or null -> [..., out]. The activation uses
 * the same WGSL as the elementwise ops (`gelu` is exact GELU, `quickGelu` x sigmoid(1.702 x)).
 * When a gradient is needed the dispatch also stores the pre-activation x W^T + b; the backward
 * differentiates the activation there, then runs the two matmuls of a Linear's backward.
 * Differentiable in x, weight and bias; throws a RangeError on mismatched shapes.
 */
export function linear(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null = null,
  opts: LinearOpOptions = {},
): Tensor {
  const act = opts.activation ?? "none";
  if (act !== "none" && !Object.hasOwn(KERNEL_ACT, act)) {
    throw new RangeError(`linear: unknown activation "${act}" (use none, relu, gelu, quickGelu)`);
  }
  if (weight.rank !== 2 || x.rank < 1 || x.shape[x.rank - 1] !== weight.shape[1]) {
    throw new RangeError(`linear: input ${x} does not match weight ${weight} ([out, in])`);
  }
  if (x.dtype !== "float32" || weight.dtype !== "float32") {
    throw new TypeError(`linear: ${x} and ${weight} must be float32`);
  }
  const [N, K] = weight.shape;
  if (bias && (bias.rank !== 1 || bias.shape[0] !== N)) {
    throw new RangeError(`linear: bias ${bias} must be [${N}]`);
  }
  if (act === "none" && x.rank >= 2) return matmul(x, weight, { transposeB: true, bias });
  const rows = numel(x.shape.slice(0, -1));
  const shape = [...x.shape.slice(0, -1), N];
  const y = empty(shape);
  const parents = bias ? [x, weight, bias] : [x, weight];
  const z = act !== "none" && needsGrad(...parents) ? empty(shape) : null;
  matmulKernel(
    x.buf,
    weight.buf,
    y.buf,
    {
      batch: 1,
      M: rows,
      N,
      K,
      sab: 0,
      sam: K,
      sak: 1,
      sbb: 0,
      sbk: 1,
      sbn: K,
    },
    bias?.buf ?? null,
    undefined,
    {
      activation: act === "none" ? "none" : KERNEL_ACT[act],
      pre: z?.buf ?? null,
    },
  );
  return record(y, "linear", parents, (g) => {
    // dL/dz = g * act'(z) ([rows, N]), then a Linear's backward with it.
    let dz = g.view([rows, N]);
    if (act !== "none") {
      const k = KERNEL_ACT[act];
      const d = map(`${k}_grad`, `a * ${activationGradExpr(k, "b")}`, [g, z!], 0, ACTIVATION_WGSL);
      dz.dispose();
      dz = d.view([rows, N]);
      d.dispose();
    }
    let gx: Tensor | null = null, gw: Tensor | null = null;
    if (x.requiresGrad) {
      const full = matmul(dz, weight); // [rows, N] x [N, K]
      gx = full.view(x.shape);
      full.dispose();
    }
    if (weight.requiresGrad) {
      const x2 = x.view([rows, K]);
      gw = matmul(dz, x2, { transposeA: true }); // [N, rows] x [rows, K]
      x2.dispose();
    }
    const gb = bias?.requiresGrad ? sumTo(dz, [N]) : null;
    dz.dispose();
    return [gx, gw, gb];
  }, z ? [z] : []);
}
