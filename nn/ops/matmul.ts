/**
 * Differentiable batched matrix product with transpose flags and an optional bias epilogue.
 */
import { matmulKernel } from "../../kernels/matmul.ts";
import { record } from "../autograd.ts";
import { empty, numel, type Tensor } from "../tensor.ts";
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
