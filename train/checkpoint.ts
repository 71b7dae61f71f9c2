/**
 * Training checkpoints: everything a run needs to continue exactly where it stopped, in one
 * safetensors file written atomically (a crash mid-write leaves the previous checkpoint):
 *
 * - `param/<name>`: every trainable tensor (LoRA adapters, heads), by the trainer's names;
 * - `optim/<i>/<name>`: the optimiser's state tensors of that parameter (Adam: 0 = m, 1 = v);
 * - metadata `train_state`: JSON with the step, epoch, position in the epoch's order, each
 *   parameter's optimiser step count, the learning rate, the best validation result so far, the
 *   early-stopping counter, and whatever else the trainer records (RNG seeds, ...).
 *
 * Loading checks every name and shape before writing anything, and names the file and the first
 * tensor that does not fit.
 */
import type { Optimizer } from "../nn/optim.ts";
import type { Tensor } from "../nn/tensor.ts";
import { writeTensor } from "../nn/ops/inplace.ts";
import { SafetensorsFile, writeSafetensors } from "../nn/formats/safetensors.ts";

/** The JSON part of a checkpoint: the trainer's own counters (see the module comment). */
export type TrainStateMeta = Record<string, unknown> & {
  /** Optimiser steps taken. */
  step: number;
};

const META_KEY = "train_state";

/**
 * Write `params` (name -> trainable tensor), `opt`'s state for them and `meta` to `path`
 * atomically. Reads the tensors back from the GPU (all requests issued at once).
 */
export async function saveTrainState(
  path: string,
  params: Map<string, Tensor>,
  opt: Optimizer | null,
  meta: TrainStateMeta,
): Promise<void> {
  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  const reads: Promise<void>[] = [];
  const steps: Record<string, number> = {};
  const add = (name: string, t: Tensor) =>
    reads.push(
      t.toFloat32Array().then((data) => {
        tensors[name] = { dtype: "F32", shape: [...t.shape], data };
      }),
    );
  for (const [name, t] of params) {
    add(`param/${name}`, t);
    const s = opt?.getState(t);
    if (!s) continue;
    steps[name] = s.step;
    s.tensors.forEach((st, i) => add(`optim/${i}/${name}`, st));
  }
  await Promise.all(reads);
  const full = { ...meta, optimizer_steps: steps, optimizer_step_count: opt?.stepCount ?? 0 };
  await writeSafetensors(path, tensors, { [META_KEY]: JSON.stringify(full) });
}

/**
 * Load a checkpoint written by {@link saveTrainState} into `params` and `opt`. The file must hold
 * exactly the same parameter names and shapes (an error names the first that differs); returns
 * the metadata.
 */
export async function loadTrainState(
  path: string,
  params: Map<string, Tensor>,
  opt: Optimizer | null,
): Promise<TrainStateMeta> {
  const f = await SafetensorsFile.open(path);
  try {
    const raw = f.metadata[META_KEY];
    if (!raw) throw new Error(`${path}: not a training checkpoint (no "${META_KEY}" metadata)`);
    const meta = JSON.parse(raw) as TrainStateMeta & {
      optimizer_steps?: Record<string, number>;
      optimizer_step_count?: number;
    };
    const entries = f.entries();
    for (const [name, t] of params) {
      const e = entries.get(`param/${name}`);
      if (!e) {
        throw new Error(`${path}: tensor "${name}" of this run is missing from the checkpoint`);
      }
      if (e.shape.length !== t.shape.length || e.shape.some((d, i) => d !== t.shape[i])) {
        throw new Error(
          `${path}: tensor "${name}" has shape [${e.shape}] in the checkpoint but [${t.shape}] ` +
            `in this run (different model, LoRA rank or number of classes?)`,
        );
      }
    }
    for (const key of entries.keys()) {
      if (key.startsWith("param/") && !params.has(key.slice(6))) {
        throw new Error(`${path}: tensor "${key.slice(6)}" of the checkpoint is not in this run`);
      }
    }
    for (const [name, t] of params) writeTensor(t, await f.readFloat32(`param/${name}`));
    if (opt) {
      const steps = meta.optimizer_steps ?? {};
      for (const [name, t] of params) {
        if (steps[name] === undefined) continue;
        const values: Float32Array[] = [];
        for (let i = 0; entries.has(`optim/${i}/${name}`); i++) {
          values.push(await f.readFloat32(`optim/${i}/${name}`));
        }
        opt.setState(t, steps[name], values);
      }
      opt.stepCount = meta.optimizer_step_count ?? meta.step;
    }
    return meta;
  } finally {
    f.close();
  }
}
