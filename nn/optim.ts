/**
 * Optimisers (SGD, Adam, AdamW), gradient-norm clipping and a cosine learning-rate schedule.
 *
 * Each optimiser updates its parameters in place with one WGSL kernel per parameter
 * (`kernels/optim.ts`), keeping its state (momentum, moments) in GPU tensors it owns. `step()`
 * only records dispatches: nothing is read back, so a training loop runs ahead of the GPU until
 * the caller reads a value (the loss, say) every few steps.
 *
 * A training step:
 * ```ts
 * tidy(() => {
 *   const loss = lossOf(model, batch);
 *   backward(loss);
 *   clipGradNorm(model.trainableParameters(), 0.5);
 *   opt.step();
 *   opt.zeroGrad();
 * });
 * ```
 */
import {
  adamKernel,
  clipScaleKernel,
  scaleByKernel,
  sgdKernel,
  sumSquaresGroups,
  sumSquaresKernel,
} from "../kernels/optim.ts";
import { empty, keep, type Tensor, zeros } from "./tensor.ts";
import { writeTensor } from "./ops/inplace.ts";

/** An optimiser's state for one parameter. */
export interface ParamState {
  /** The optimiser's state tensors, shaped like the parameter (SGD: momentum; Adam: m, v). */
  tensors: Tensor[];
  /** Updates this parameter has had (1-based once updated; Adam's bias correction uses it). */
  step: number;
}

/** What every optimiser does. */
export abstract class Optimizer {
  /** The parameters this optimiser updates. */
  readonly params: Tensor[];
  /** The current learning rate. */
  lr: number;
  /** Number of `step()` calls so far. */
  stepCount = 0;
  /**
   * Per-parameter state, created on a parameter's first update: its tensors and how many updates
   * it has had (PyTorch counts steps per parameter: one without a gradient is not counted).
   */
  protected state = new Map<Tensor, ParamState>();

  /**
   * Take the parameters to update (float32, each listed once; otherwise throws) and the learning
   * rate (>= 0). `name` prefixes error messages.
   */
  constructor(params: Iterable<Tensor>, lr: number, name: string) {
    this.params = [...params];
    if (!(lr >= 0)) throw new RangeError(`${name}: learning rate must be >= 0, got ${lr}`);
    const dup = this.params.find((p, i) => this.params.indexOf(p) !== i);
    if (dup) throw new Error(`${name}: parameter ${dup} is listed twice`);
    for (const p of this.params) {
      if (p.dtype !== "float32") throw new Error(`${name}: parameter ${p} is not float32`);
    }
    this.lr = lr;
  }

  /** Change the learning rate (for schedules). */
  setLr(lr: number): void {
    if (!(lr >= 0)) throw new RangeError(`setLr: learning rate must be >= 0, got ${lr}`);
    this.lr = lr;
  }

  /**
   * Update every parameter that has a gradient (others are skipped, as in PyTorch). Records GPU
   * work only; never reads back.
   */
  step(): void {
    this.stepCount++;
    for (const p of this.params) {
      if (!p.grad) continue;
      if (p.grad.size !== p.size) {
        throw new Error(`optimizer: gradient [${p.grad.shape}] does not match parameter ${p}`);
      }
      let s = this.state.get(p);
      if (!s) {
        s = { tensors: this.initState(p).map((t) => keep(t)), step: 0 };
        this.state.set(p, s);
      }
      s.step++;
      this.update(p, p.grad, s.tensors, s.step);
    }
  }

  /**
   * The state of parameter `p`: its update count and state tensors (SGD: momentum; Adam: m, v),
   * or undefined before its first update. The tensors are the optimiser's own: read, don't keep.
   */
  getState(p: Tensor): Readonly<ParamState> | undefined {
    return this.state.get(p);
  }

  /**
   * Restore parameter `p`'s state (for resuming): its update count and the values of its state
   * tensors, in {@link getState}'s order. Throws naming the parameter when `p` is not one of
   * this optimiser's or the values do not fit.
   */
  setState(p: Tensor, step: number, values: Float32Array[]): void {
    if (!this.params.includes(p)) {
      throw new Error(`setState: ${p} is not updated by this optimiser`);
    }
    if (!Number.isInteger(step) || step < 0) {
      throw new RangeError(`setState: ${p}: step must be a non-negative integer, got ${step}`);
    }
    const fresh = this.initState(p);
    if (values.length !== fresh.length) {
      fresh.forEach((t) => t.dispose());
      throw new Error(
        `setState: ${p}: ${values.length} state arrays, the optimiser keeps ${fresh.length}`,
      );
    }
    fresh.forEach((t, i) => {
      if (values[i].length !== t.size) {
        fresh.forEach((f) => f.dispose());
        throw new Error(
          `setState: ${p}: state ${i} has ${values[i].length} values, expected ${t.size}`,
        );
      }
    });
    fresh.forEach((t, i) => writeTensor(t, values[i]));
    this.state.get(p)?.tensors.forEach((t) => t.dispose());
    this.state.set(p, { tensors: fresh.map((t) => keep(t)), step });
  }

  /** Release every parameter's gradient (call after `step()`). */
  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** Release the optimiser's state tensors (the parameters are left alone). */
  dispose(): void {
    for (const s of this.state.values()) s.tensors.forEach((t) => t.dispose());
    this.state.clear();
  }

  /** Fresh state tensors for a parameter (zeros). */
  protected abstract initState(p: Tensor): Tensor[];
  /** Record one parameter's update; `step` is its 1-based update count. */
  protected abstract update(p: Tensor, grad: Tensor, state: Tensor[], step: number): void;
}

/** Options for {@link SGD}. */
export interface SGDOptions {
  /** Learning rate (>= 0). */
  lr: number;
  /** Momentum factor (default 0: plain SGD, no state). */
  momentum?: number;
  /** Nesterov momentum (needs momentum > 0). */
  nesterov?: boolean;
  /** L2 penalty added to the gradient (default 0). */
  weightDecay?: number;
}

/**
 * Stochastic gradient descent, as torch.optim.SGD (dampening 0):
 * `g += wd * p; b = momentum * b + g; p -= lr * (nesterov ? g + momentum * b : b)`.
 */
export class SGD extends Optimizer {
  /** Momentum factor (0: no momentum buffer). */
  readonly momentum: number;
  /** Whether the update uses Nesterov momentum. */
  readonly nesterov: boolean;
  /** L2 penalty coefficient added to the gradient. */
  readonly weightDecay: number;

  /** SGD over `params`; throws RangeError on negative momentum or Nesterov without momentum. */
  constructor(params: Iterable<Tensor>, opts: SGDOptions) {
    super(params, opts.lr, "SGD");
    this.momentum = opts.momentum ?? 0;
    this.nesterov = opts.nesterov ?? false;
    this.weightDecay = opts.weightDecay ?? 0;
    if (this.momentum < 0) throw new RangeError(`SGD: momentum must be >= 0, got ${this.momentum}`);
    if (this.nesterov && this.momentum <= 0) {
      throw new RangeError("SGD: nesterov momentum requires momentum > 0");
    }
  }

  /** The momentum buffer (zeros shaped like `p`), or nothing without momentum. */
  protected initState(p: Tensor): Tensor[] {
    return this.momentum > 0 ? [zeros(p.shape)] : [];
  }

  /** Record the SGD update of `p` in place (one kernel). */
  protected update(p: Tensor, grad: Tensor, state: Tensor[]): void {
    sgdKernel(p.buf, grad.buf, state[0]?.buf ?? null, p.size, {
      lr: this.lr,
      momentum: this.momentum,
      weightDecay: this.weightDecay,
      nesterov: this.nesterov,
    });
  }
}

/** Options for {@link Adam} and {@link AdamW}. */
export interface AdamOptions {
  /** Learning rate (>= 0). */
  lr: number;
  /** Decay rates of the first and second moments (default [0.9, 0.999]). */
  betas?: [number, number];
  /** Added to the denominator (default 1e-8). */
  eps?: number;
  /** Weight decay (default 0 for Adam, 1e-2 for AdamW, as in PyTorch). */
  weightDecay?: number;
}

/**
 * Adam, as torch.optim.Adam: the weight decay is an L2 term added to the gradient,
 * `g += wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)`.
 */
export class Adam extends Optimizer {
  /** Decay rate of the first moment (mean of gradients), in [0, 1). */
  readonly beta1: number;
  /** Decay rate of the second moment (mean of squared gradients), in [0, 1). */
  readonly beta2: number;
  /** Added to the denominator for stability. */
  readonly eps: number;
  /** Weight-decay coefficient (an L2 term for Adam, decoupled for AdamW). */
  readonly weightDecay: number;
  /** True for AdamW: decay applied to the weight, not the gradient. */
  protected readonly decoupled: boolean = false;

  /**
   * Adam over `params`; throws RangeError on betas outside [0, 1) or negative eps. `name` and
   * `defaultDecay` (the weight decay when `opts` has none) let {@link AdamW} reuse it.
   */
  constructor(params: Iterable<Tensor>, opts: AdamOptions, name = "Adam", defaultDecay = 0) {
    super(params, opts.lr, name);
    [this.beta1, this.beta2] = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? defaultDecay;
    for (const b of [this.beta1, this.beta2]) {
      if (!(b >= 0 && b < 1)) throw new RangeError(`${name}: betas must be in [0, 1), got ${b}`);
    }
    if (!(this.eps >= 0)) throw new RangeError(`${name}: eps must be >= 0, got ${this.eps}`);
  }

  /** The first and second moments, zeros shaped like `p`. */
  protected initState(p: Tensor): Tensor[] {
    return [zeros(p.shape), zeros(p.shape)];
  }

  /** Record the Adam update of `p`, `m` and `v` in place (one kernel); `step` is 1-based. */
  protected update(p: Tensor, grad: Tensor, [m, v]: Tensor[], step: number): void {
    adamKernel(p.buf, grad.buf, m.buf, v.buf, p.size, {
      lr: this.lr,
      beta1: this.beta1,
      beta2: this.beta2,
      eps: this.eps,
      weightDecay: this.weightDecay,
      decoupled: this.decoupled,
      step,
    });
  }
}

/**
 * AdamW, as torch.optim.AdamW: decoupled weight decay `p *= 1 - lr * wd`, then the Adam update
 * without an L2 term. Default weight decay 1e-2.
 */
export class AdamW extends Adam {
  /** Always true: the decay shrinks the weight directly instead of adding to the gradient. */
  protected override readonly decoupled: boolean = true;

  /** AdamW over `params`; weight decay defaults to 1e-2. */
  constructor(params: Iterable<Tensor>, opts: AdamOptions) {
    super(params, opts, "AdamW", 1e-2);
  }
}

/**
 * Clip gradients by their total L2 norm, as torch.nn.utils.clip_grad_norm_: every gradient is
 * multiplied by `min(1, maxNorm / (norm + 1e-6))`, where `norm` is the L2 norm of all gradients
 * together. Parameters without a gradient are skipped. Everything happens on the GPU (no
 * readback); returns the total norm before clipping as a scalar tensor (shape []), which the
 * caller owns and may read.
 *
 * A non-finite norm (a NaN or Inf anywhere in the gradients, or an overflowing sum of squares)
 * is returned as NaN and leaves every gradient as it is: nothing is scaled by 0 or NaN, and
 * clipGradNorm never touches the parameters. A trainer reads the norm and stops (or skips the
 * step) when it is NaN; `opt.step()` would apply the non-finite gradients.
 */
export function clipGradNorm(params: Iterable<Tensor>, maxNorm: number): Tensor {
  if (!(maxNorm > 0)) throw new RangeError(`clipGradNorm: maxNorm must be > 0, got ${maxNorm}`);
  const grads = [...params].map((p) => p.grad).filter((g): g is Tensor => g !== null);
  if (grads.length === 0) return zeros([]);
  const norm = empty([]);
  const count = grads.reduce((s, g) => s + sumSquaresGroups(g.size), 0);
  const partials = empty([count]);
  const scale = empty([1]);
  let offset = 0;
  for (const g of grads) {
    sumSquaresKernel(g.buf, g.size, partials.buf, offset);
    offset += sumSquaresGroups(g.size);
  }
  clipScaleKernel(partials.buf, count, maxNorm, norm.buf, scale.buf);
  for (const g of grads) scaleByKernel(g.buf, g.size, scale.buf, 0);
  // Safe to release now: the dispatches recorded above run before any later reuse.
  partials.dispose();
  scale.dispose();
  return norm;
}

/** Options for {@link cosineSchedule}. */
export interface CosineScheduleOptions {
  /** Peak learning rate, reached at the end of the warm-up. */
  lrMax: number;
  /** Final learning rate (PyTorch's `eta_min`, default 0). */
  lrMin?: number;
  /** Steps of the whole schedule (warm-up included). */
  totalSteps: number;
  /** Linear warm-up steps (default 0). */
  warmupSteps?: number;
}

/**
 * A learning-rate schedule: linear warm-up from `lrMax / warmupSteps` to `lrMax` over
 * `warmupSteps` steps, then cosine annealing to `lrMin` at `totalSteps` (PyTorch's
 * CosineAnnealingLR with `T_max = totalSteps - warmupSteps`), and `lrMin` after. Returns
 * `lr(step)` for a 0-based step.
 */
export function cosineSchedule(opts: CosineScheduleOptions): (step: number) => number {
  const { lrMax, totalSteps } = opts;
  const lrMin = opts.lrMin ?? 0;
  const warmup = opts.warmupSteps ?? 0;
  if (!(totalSteps > 0) || !(warmup >= 0) || warmup > totalSteps) {
    throw new RangeError(
      `cosineSchedule: need 0 <= warmupSteps (${warmup}) <= totalSteps (${totalSteps}), ` +
        `totalSteps > 0`,
    );
  }
  return (step: number) => {
    if (step < warmup) return lrMax * (step + 1) / warmup;
    const span = totalSteps - warmup;
    const t = span === 0 ? 1 : Math.min(1, (step - warmup) / span);
    return lrMin + 0.5 * (lrMax - lrMin) * (1 + Math.cos(Math.PI * t));
  };
}
