/**
 * Reverse-mode automatic differentiation, micrograd-style: every op that produces a tensor from
 * inputs that need gradients attaches a {@link Node} (its parents and a closure mapping the output
 * gradient to the parents' gradients); `backward` walks the graph in reverse topological order.
 */
import { mapKernel } from "../kernels/elementwise.ts";
import { empty, keep, ones, Tensor } from "./tensor.ts";

/** How an op's output gets its parents' gradients. */
export interface Node {
  /** The op's name, for error messages. */
  op: string;
  /** The op's inputs, in the order `backward` returns their gradients. */
  parents: Tensor[];
  /** Gradients for each parent (null where a parent needs none), shaped like the parent. */
  backward: (grad: Tensor) => (Tensor | null)[];
  /** Tensors the op created only for its backward pass; released after `backward`. */
  saved: Tensor[];
}

let gradEnabled = true;

/** True unless inside {@link noGrad}. */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Run `fn` without recording gradients (inference, optimiser updates). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** True when an op with these inputs must record a node. */
export function needsGrad(...inputs: (Tensor | null | undefined)[]): boolean {
  return gradEnabled && inputs.some((t) => t?.requiresGrad);
}

/**
 * Attach a backward node to `out` when any parent needs a gradient; otherwise dispose `saved`
 * (nothing will read it). Returns `out`.
 */
export function record(
  out: Tensor,
  op: string,
  parents: Tensor[],
  backward: Node["backward"],
  saved: Tensor[] = [],
): Tensor {
  if (!needsGrad(...parents)) {
    for (const s of saved) s.dispose();
    return out;
  }
  out.requiresGrad = true;
  out.node = { op, parents, backward, saved };
  return out;
}

/** A tensor that shares `t`'s values but is cut from the graph. */
export function detach(t: Tensor): Tensor {
  return t.view(t.shape);
}

function accumulate(a: Tensor, b: Tensor): Tensor {
  const out = empty(a.shape);
  const v = (t: Tensor) => ({ buf: t.buf, strides: [1], offset: 0 });
  mapKernel("grad_accumulate", "a + b", [v(a), v(b)], v(out), [a.size]);
  a.dispose();
  b.dispose();
  return out;
}

/** Options for {@link backward}. */
export interface BackwardOptions {
  /** The gradient of the output (default: ones, so `loss` is usually a scalar). */
  grad?: Tensor;
  /** Keep the graph's saved tensors for a second backward pass. */
  retainGraph?: boolean;
}

/**
 * Compute d(output)/d(leaf) for every leaf with `requiresGrad` reachable from `output`, adding
 * it into `leaf.grad` (call the optimiser's `zeroGrad()` between steps). Intermediate gradients
 * and the tensors ops saved for backward are released as soon as they are used.
 */
export function backward(output: Tensor, opts: BackwardOptions = {}): void {
  if (!output.requiresGrad) {
    throw new Error(
      `backward(): ${output} does not require grad (no input had requiresGrad, or noGrad was on)`,
    );
  }
  // Topological order: parents before children.
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const visit = (root: Tensor) => {
    const stack: [Tensor, number][] = [[root, 0]];
    seen.add(root);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const parents = top[0].node?.parents ?? [];
      if (top[1] < parents.length) {
        const p = parents[top[1]++];
        if (p.requiresGrad && !seen.has(p)) {
          seen.add(p);
          stack.push([p, 0]);
        }
      } else {
        order.push(top[0]);
        stack.pop();
      }
    }
  };
  visit(output);

  const grads = new Map<Tensor, Tensor>();
  const seed = opts.grad ? opts.grad.view(opts.grad.shape) : ones(output.shape);
  if (seed.size !== output.size) {
    throw new RangeError(`backward(): grad [${seed.shape}] does not match [${output.shape}]`);
  }
  grads.set(output, seed);
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i];
      const g = grads.get(t);
      if (!g) continue;
      grads.delete(t);
      const node = t.node;
      if (!node) {
        // A leaf: keep its gradient beyond any tidy scope.
        t.grad = keep(t.grad ? accumulate(t.grad, g) : g);
        continue;
      }
      const pg = node.backward(g);
      g.dispose();
      node.parents.forEach((p, j) => {
        const gp = pg[j];
        if (!gp) return;
        if (!p.requiresGrad) return gp.dispose();
        if (gp.size !== p.size) {
          throw new Error(`${node.op} backward: gradient [${gp.shape}] for input [${p.shape}]`);
        }
        const old = grads.get(p);
        grads.set(p, old ? accumulate(old, gp) : gp);
      });
      if (!opts.retainGraph) {
        for (const s of node.saved) s.dispose();
        t.node = null;
      }
    }
  } finally {
    gradEnabled = prev;
    for (const g of grads.values()) g.dispose();
  }
}

export { Tensor };
