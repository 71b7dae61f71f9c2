/**
 * The training loop every trainer shares (stage-1 heads, CLIP-IT, the contrastive baseline):
 * epochs of batches, a learning-rate schedule, validation during the epoch, the best checkpoint
 * by validation loss or balanced accuracy, early stopping, resumable checkpoints, and the three
 * ways a run ends early:
 *
 * - a NaN or infinite loss: the run stops with {@link NonFiniteLossError} naming the step; the
 *   last checkpoint on disk was written after its losses were read and found finite, so it is a
 *   good one to resume from (with a lower learning rate, say);
 * - an abort signal (Ctrl-C in the CLI): the loop finishes the step in flight, writes the
 *   resumable checkpoint and throws {@link TrainingInterrupted};
 * - early stopping: `earlyStop` validations in a row without improvement.
 *
 * Nothing here waits on the GPU per step: a step only records work; the loss tensors of the last
 * `logEvery` steps are read back together (one wait), logged to `metrics.jsonl` and checked.
 */
import type { Tensor } from "../nn/tensor.ts";
import { RUN_FILES, type RunDir } from "./run.ts";
import type { TrainStateMeta } from "./checkpoint.ts";

/** What one training step recorded: scalar tensors ([] each) that the loop reads and disposes. */
export interface StepOutput {
  /** The logged scalars; `loss` is required (others: `ce`, `distill`, `grad_norm`, ...). */
  scalars: Record<string, Tensor> & { loss: Tensor };
  /** Images in the batch (for images/s). */
  size: number;
}

/** The result of a validation pass. */
export interface ValResult {
  /** Mean loss over the validation set. */
  loss: number;
  /** Fraction of correct predictions. */
  accuracy: number;
  /** Mean per-class recall (the paper's metric). */
  balanced_accuracy: number;
  /** Anything else the trainer measures (`ce`, `distill`, `retrieval_accuracy`, ...). */
  [key: string]: number;
}

/** What the loop needs from a trainer. */
export interface LoopHooks<B extends { end: number }> {
  /** Batches per epoch (for the progress bar, the ETA and the schedule). */
  stepsPerEpoch: number;
  /** Samples per epoch: a batch whose `end` reaches it closes the epoch. */
  epochLength: number;
  /** The batches of `epoch` from position `from` of its order (a batch's `end`). */
  batches(epoch: number, from: number): AsyncIterable<B>;
  /** Record one optimisation step (forward, backward, clip, update) at learning rate `lr`. */
  step(batch: B, step: number, lr: number): StepOutput;
  /** Release a batch's tensors. */
  release(batch: B): void;
  /** Evaluate on the validation split. */
  validate(step: number): Promise<ValResult>;
  /** Write a training checkpoint (train/checkpoint.ts) with `meta` to `path`. */
  save(path: string, meta: TrainStateMeta): Promise<void>;
}

/** Options of {@link trainLoop}. */
export interface LoopOptions {
  /** Epochs to train (>= 1). */
  epochs: number;
  /**
   * Validate every this many steps (and after the last one); 0 (default): at the end of every
   * epoch. Each validation writes the resumable checkpoint, and the best one when it improves.
   */
  valEvery?: number;
  /** Read back and log the losses every this many steps (default 10). */
  logEvery?: number;
  /** Stop after this many validations without improvement (0: never; default 0). */
  earlyStop?: number;
  /** Which validation number decides the best checkpoint (default "val_loss"). */
  bestBy?: "val_loss" | "balanced_accuracy";
  /** The learning rate of a 0-based step. */
  lr: (step: number) => number;
  /** Stop at the next step boundary, writing a resumable checkpoint. */
  signal?: AbortSignal;
  /** Called after every step and validation. */
  onProgress?: (p: LoopProgress) => void;
  /** Where to start (from a checkpoint's metadata); default: the beginning. */
  start?: LoopState;
}

/** The loop's position and bookkeeping, saved in every checkpoint. */
export interface LoopState {
  /** Optimiser steps taken. */
  step: number;
  /** The current epoch (0-based). */
  epoch: number;
  /** Position in the epoch's sample order where the next batch starts. */
  position: number;
  /** The best validation so far (by `bestBy`) and its step. */
  best: { value: number; step: number } | null;
  /** Validations since the best one. */
  stale: number;
}

/** What the progress callback sees. */
export interface LoopProgress {
  /** "train" after a step, "val" after a validation. */
  phase: "train" | "val";
  /** Steps taken. */
  step: number;
  /** Steps of the whole run (epochs x steps per epoch). */
  totalSteps: number;
  /** The current epoch (0-based). */
  epoch: number;
  /** The last loss read back (NaN before the first read). */
  loss: number;
  /** Images per second over the last logging window. */
  imagesPerSecond: number;
  /** The validation result, for phase "val". */
  val?: ValResult;
}

/** How a run ended. */
export interface LoopResult {
  /** The final position (what the last checkpoint holds). */
  state: LoopState;
  /** True when early stopping ended it. */
  stoppedEarly: boolean;
  /** Every validation, in order. */
  validations: (ValResult & { step: number })[];
  /**
   * Wall-clock seconds spent waiting for the next batch (decoding, and its upload, which waits
   * while the GPU still runs the previous step), in the steps (recording, and the GPU at each
   * loss readback), validation and checkpoints.
   */
  seconds: { data: number; train: number; validate: number; checkpoint: number };
}

/** A NaN or infinite loss: the run stopped at `step`; the last checkpoint predates it. */
export class NonFiniteLossError extends Error {
  /** Builds the error for the (0-based) step whose loss was not finite. */
  constructor(readonly step: number, readonly values: Record<string, number>) {
    super(
      `the loss became ${values.loss} at step ${step + 1} (${
        Object.entries(values).map(([k, v]) => `${k} ${v}`).join(", ")
      }); training stopped and the last good checkpoint was kept`,
    );
    this.name = "NonFiniteLossError";
  }
}

/** The abort signal fired; a resumable checkpoint was written at `step`. */
export class TrainingInterrupted extends Error {
  /** Builds the error for a run stopped after `step` steps. */
  constructor(readonly step: number, readonly checkpoint: string) {
    super(`interrupted after step ${step}; checkpoint ${checkpoint}`);
    this.name = "TrainingInterrupted";
  }
}

/**
 * Train with `hooks` (see the module comment). Validation results, logged losses and the final
 * position are written to `run`; checkpoints to `run`'s `last` and `best` files.
 */
export async function trainLoop<B extends { end: number }>(
  run: RunDir,
  hooks: LoopHooks<B>,
  opts: LoopOptions,
): Promise<LoopResult> {
  const logEvery = Math.max(1, opts.logEvery ?? 10);
  const valEvery = opts.valEvery ?? 0;
  const bestBy = opts.bestBy ?? "val_loss";
  const earlyStop = opts.earlyStop ?? 0;
  if (!(Number.isInteger(opts.epochs) && opts.epochs >= 1)) {
    throw new RangeError(`epochs must be a positive integer, got ${opts.epochs}`);
  }
  const state: LoopState = structuredClone(
    opts.start ?? { step: 0, epoch: 0, position: 0, best: null, stale: 0 },
  );
  const totalSteps = opts.epochs * hooks.stepsPerEpoch;
  const validations: (ValResult & { step: number })[] = [];
  type Pending = { step: number; epoch: number; lr: number; scalars: Record<string, Tensor> };
  let pending: Pending[] = [];
  let windowImages = 0, windowStart = performance.now();
  let lastLoss = NaN, imagesPerSecond = 0;

  const meta = (): TrainStateMeta => ({ ...state, best: state.best });
  const seconds = { data: 0, train: 0, validate: 0, checkpoint: 0 };
  const timed = async <T>(what: keyof typeof seconds, f: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await f();
    } finally {
      seconds[what] += (performance.now() - t0) / 1000;
    }
  };
  const save = (path: string) => timed("checkpoint", () => hooks.save(path, meta()));

  /** Read the pending losses (one wait), log them, throw on a non-finite one. */
  const drain = async () => {
    if (pending.length === 0) return;
    const batch = pending;
    pending = [];
    const values = await Promise.all(
      batch.map(async (p) => {
        const names = Object.keys(p.scalars);
        const nums = await Promise.all(names.map((n) => p.scalars[n].item()));
        for (const t of Object.values(p.scalars)) t.dispose();
        return Object.fromEntries(names.map((n, i) => [n, nums[i]]));
      }),
    );
    const seconds = (performance.now() - windowStart) / 1000;
    imagesPerSecond = windowImages / Math.max(seconds, 1e-9);
    windowImages = 0;
    windowStart = performance.now();
    const records = batch.map((p, i) => ({
      type: "train",
      step: p.step + 1,
      epoch: p.epoch,
      ...values[i],
      lr: p.lr,
      images_per_s: imagesPerSecond,
    }));
    const bad = values.findIndex((v) => !Object.values(v).every(Number.isFinite));
    await run.log(...(bad < 0 ? records : records.slice(0, bad + 1)));
    if (bad >= 0) throw new NonFiniteLossError(batch[bad].step, values[bad]);
    lastLoss = values[values.length - 1].loss;
  };

  /** Validate (during `epoch`), keep the best checkpoint, write the last one; true = stop. */
  const validate = async (epoch: number): Promise<boolean> => {
    await timed("train", drain);
    const v = await timed("validate", () => hooks.validate(state.step));
    validations.push({ ...v, step: state.step });
    await run.log({ type: "val", step: state.step, epoch, ...v });
    const value = bestBy === "val_loss" ? v.loss : v.balanced_accuracy;
    const better = state.best === null ||
      (bestBy === "val_loss" ? value < state.best.value : value > state.best.value);
    if (better && Number.isFinite(value)) {
      state.best = { value, step: state.step };
      state.stale = 0;
      await save(run.path(RUN_FILES.best));
    } else state.stale++;
    await save(run.path(RUN_FILES.last));
    opts.onProgress?.({
      phase: "val",
      step: state.step,
      totalSteps,
      epoch,
      loss: lastLoss,
      imagesPerSecond,
      val: v,
    });
    return earlyStop > 0 && state.stale >= earlyStop;
  };

  const interrupted = () => opts.signal?.aborted ?? false;
  let stoppedEarly = false;
  try {
    outer: while (state.epoch < opts.epochs) {
      const epoch = state.epoch;
      let waited = performance.now();
      for await (const batch of hooks.batches(epoch, state.position)) {
        seconds.data += (performance.now() - waited) / 1000;
        if (interrupted()) {
          hooks.release(batch);
          break outer;
        }
        const lr = opts.lr(state.step);
        let out: StepOutput;
        const t0 = performance.now();
        try {
          out = hooks.step(batch, state.step, lr);
        } finally {
          hooks.release(batch);
        }
        seconds.train += (performance.now() - t0) / 1000;
        pending.push({ step: state.step, epoch, lr, scalars: out.scalars });
        windowImages += out.size;
        state.step++;
        state.position = batch.end;
        if (pending.length >= logEvery) await timed("train", drain);
        opts.onProgress?.({
          phase: "train",
          step: state.step,
          totalSteps,
          epoch,
          loss: lastLoss,
          imagesPerSecond,
        });
        const epochEnd = state.position >= hooks.epochLength;
        if (epochEnd) {
          // Checkpoints written from here on resume at the next epoch.
          state.epoch++;
          state.position = 0;
        }
        const last = state.epoch >= opts.epochs;
        const due = valEvery > 0 ? state.step % valEvery === 0 || last : epochEnd;
        if (due && await validate(epoch)) {
          stoppedEarly = true;
          break outer;
        }
        waited = performance.now();
      }
      if (interrupted()) break;
      if (state.epoch === epoch) {
        // An epoch that ended without a batch reaching its end (bad images skipped at the end).
        state.epoch++;
        state.position = 0;
        const last = state.epoch >= opts.epochs;
        if ((valEvery === 0 || last) && await validate(epoch)) {
          stoppedEarly = true;
          break;
        }
      }
    }
    if (interrupted()) {
      await drain();
      const path = run.path(RUN_FILES.last);
      await save(path);
      throw new TrainingInterrupted(state.step, path);
    }
    await timed("train", drain);
  } finally {
    for (const p of pending) for (const t of Object.values(p.scalars)) t.dispose();
  }
  return { state, stoppedEarly, validations, seconds };
}
