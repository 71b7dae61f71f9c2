/**
 * The stage-2 trainer end to end on a tiny folder dataset and a random-weight tiny CLIP: the run
 * folder's files, exact resumption (N steps, stop, resume N more = 2N uninterrupted within
 * 1e-6), a NaN loss stopping the run at its step with the last good checkpoint kept, and a
 * mismatched pairing refused.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { encode } from "fast-png";
import { loadClip } from "../clip/load.ts";
import { ClipImageBackbone, ClipTextEncoder } from "../clip/backbone.ts";
import { openDataset, type Split } from "../train/data/datasets.ts";
import { RUN_FILES, RunDir } from "../train/run.ts";
import { type ClipItSettings, clipItTrainables, trainClipIt } from "../train/clipit_train.ts";
import { NonFiniteLossError, TrainingInterrupted } from "../train/loop.ts";
import { Rng } from "../nn/rng.ts";
import { loraAdapters } from "../nn/lora.ts";
import { DataLoader } from "../train/data/loader.ts";
import { predictBatches } from "../train/evaluate.ts";
import { loadInferenceModel, saveInferenceModel } from "../train/models.ts";
import { runStage } from "../train/pipeline.ts";
import { gpuTest } from "./util.ts";

const FIX = fileURLToPath(new URL("./fixtures/", import.meta.url));

/** A folder dataset: 3 classes x `per` 32x32 PNGs, class c tinted towards channel c. */
export async function tinyFolderDataset(dir: string, per = 8, seed = 0): Promise<string> {
  const rng = new Rng(seed);
  for (const [c, name] of ["alpha", "beta", "gamma"].entries()) {
    await Deno.mkdir(join(dir, name), { recursive: true });
    for (let i = 0; i < per; i++) {
      const data = new Uint8Array(32 * 32 * 3);
      for (let p = 0; p < 32 * 32; p++) {
        for (let ch = 0; ch < 3; ch++) {
          data[p * 3 + ch] = Math.min(255, Math.floor(rng.next() * 160 + (ch === c ? 90 : 0)));
        }
      }
      await Deno.writeFile(
        join(dir, name, `${name}-${i}.png`),
        encode({ width: 32, height: 32, data, channels: 3 }),
      );
    }
  }
  return dir;
}

/** Token rows [M, 16] for the fixture CLIP (vocab 48: <sot> 46, <eot> 47). */
function tinyReports(M: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  const ids = new Int32Array(M * 16);
  for (let m = 0; m < M; m++) {
    const n = 2 + rng.int(10);
    ids[m * 16] = 46;
    for (let j = 1; j <= n; j++) ids[m * 16 + j] = 1 + rng.int(45);
    ids[m * 16 + n + 1] = 47;
  }
  return ids;
}

async function setup(root: string) {
  const ds = await openDataset("folder", root, { valFraction: 0.25, testFraction: 0.25, seed: 1 });
  const split = (n: string) => ds.splits.find((s) => s.name === n)!;
  const clip = await loadClip(FIX + "clipit_init_openclip.safetensors", {
    arch: FIX + "clipit_tiny_config.json",
  });
  const pairing = (s: Split) => Int32Array.from(s.labels, (l, i) => l * 4 + (i % 4));
  return {
    ds,
    clip,
    inputs: {
      classes: ds.classes,
      train: split("train"),
      val: split("val"),
      test: split("test"),
      trainReports: pairing(split("train")),
      valReports: pairing(split("val")),
      reportIds: tinyReports(12, 5),
      backbone: ClipImageBackbone.fromClip(clip),
      textEncoder: new ClipTextEncoder(clip),
    },
  };
}

const SETTINGS: ClipItSettings = {
  epochs: 2,
  batchSize: 4,
  lr: 1e-3,
  logEvery: 2,
  valEvery: 2,
  workers: 0,
  lora: { rank: 4, alpha: 8 },
  schedule: "cosine",
  warmupSteps: 1,
};

async function weights(
  model: Parameters<typeof clipItTrainables>[0],
  text: Parameters<typeof clipItTrainables>[1],
) {
  const out = new Map<string, Float32Array>();
  for (const [k, t] of clipItTrainables(model, text)) out.set(k, await t.toFloat32Array());
  return out;
}

gpuTest("clipit train: run folder, metrics, checkpoints and a test report", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const { inputs, clip } = await setup(await tinyFolderDataset(join(tmp, "data")));
    const run = await RunDir.create(join(tmp, "run"), { test: true });
    const r = await trainClipIt(run, inputs, SETTINGS);
    for (const f of [RUN_FILES.config, RUN_FILES.metrics, RUN_FILES.last, RUN_FILES.best]) {
      assert.ok(await run.has(f), `${f} written`);
    }
    const records = await run.metrics();
    const train = records.filter((x) => x.type === "train");
    const val = records.filter((x) => x.type === "val");
    assert.equal(train.length, r.state.step);
    assert.ok(train.every((x) => Number.isFinite(x.loss as number) && "distill" in x));
    assert.ok(val.length >= 2, "validated during and at the end of the epochs");
    assert.ok(records.some((x) => x.type === "test"));
    assert.ok(r.test && r.test.n === inputs.test.labels.length);
    r.model.dispose();
    clip.dispose();
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

gpuTest("clipit train: N steps, stop, resume N more = 2N uninterrupted (1e-6)", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const root = await tinyFolderDataset(join(tmp, "data"));
    // Uninterrupted.
    const a = await setup(root);
    const runA = await RunDir.create(join(tmp, "a"), {});
    const ra = await trainClipIt(runA, a.inputs, { ...SETTINGS, earlyStop: 0 });
    const wa = await weights(ra.model, a.inputs.textEncoder);
    const total = ra.state.step;
    // Stopped half-way by the abort signal, then resumed in a fresh process state.
    const b = await setup(root);
    const runB = await RunDir.create(join(tmp, "b"), {});
    const stop = new AbortController();
    await assert.rejects(
      trainClipIt(runB, b.inputs, SETTINGS, {
        signal: stop.signal,
        onProgress: (p) => {
          if (p.phase === "train" && p.step === Math.floor(total / 2)) stop.abort();
        },
      }),
      TrainingInterrupted,
    );
    b.clip.dispose();
    const c = await setup(root);
    const rc = await trainClipIt(await RunDir.open(join(tmp, "b")), c.inputs, SETTINGS, {
      resume: true,
    });
    assert.equal(rc.state.step, total);
    const wc = await weights(rc.model, c.inputs.textEncoder);
    for (const [name, x] of wa) {
      const y = wc.get(name)!;
      let worst = 0;
      for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i] - y[i]));
      assert.ok(worst <= 1e-6, `${name}: resumed run differs by ${worst}`);
    }
    // The resumed log reads as one run: each step once.
    const steps = (await runB.metrics()).filter((x) => x.type === "train").map((x) => x.step);
    assert.deepEqual(steps, Array.from({ length: total }, (_, i) => i + 1));
    for (const s of [a, c]) s.clip.dispose();
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

gpuTest("clipit train: a NaN loss stops the run naming the step", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const { inputs, clip } = await setup(await tinyFolderDataset(join(tmp, "data")));
    const D = inputs.backbone.featureDim;
    const weight = new Float32Array(3 * D);
    weight[0] = NaN;
    const run = await RunDir.create(join(tmp, "run"), {});
    await assert.rejects(
      trainClipIt(run, { ...inputs, initHead: { weight, bias: new Float32Array(3) } }, SETTINGS),
      (e) => e instanceof NonFiniteLossError && e.step === 0 && /step 1\b/.test(e.message),
    );
    assert.equal(await run.has(RUN_FILES.last), false, "no checkpoint of a NaN state");
    const logged = (await run.metrics()).filter((x) => x.type === "train");
    assert.equal(logged.length, 1);
    clip.dispose();
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

gpuTest("clipit train: a pairing of the wrong length or range is refused", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const { inputs, clip } = await setup(await tinyFolderDataset(join(tmp, "data")));
    const run = await RunDir.create(join(tmp, "run"), {});
    await assert.rejects(
      trainClipIt(run, { ...inputs, trainReports: inputs.trainReports.slice(1) }, SETTINGS),
      /train pairing has \d+ entries for \d+ images/,
    );
    await assert.rejects(
      trainClipIt(run, { ...inputs, trainReports: inputs.trainReports.map(() => 99) }, SETTINGS),
      /names report 99 of 12/,
    );
    clip.dispose();
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

gpuTest(
  "clipit: the exported model (LoRA merged) predicts what the trained one did (1e-5)",
  async () => {
    const tmp = await Deno.makeTempDir();
    try {
      const { inputs, clip } = await setup(await tinyFolderDataset(join(tmp, "data")));
      const run = await RunDir.create(join(tmp, "run"), {});
      const r = await trainClipIt(run, inputs, { ...SETTINGS, epochs: 1 });
      const probsOf = async (model: typeof r.model) => {
        model.eval();
        const loader = new DataLoader(inputs.test, {
          batchSize: 4,
          size: 32,
          mean: model.backbone.mean,
          std: model.backbone.std,
          shuffle: false,
          workers: 0,
        });
        try {
          return (await predictBatches(loader.batches(0), (x) => ({
            logits: model.forward(x).logits,
          }), 3)).probs;
        } finally {
          await loader.close();
        }
      };
      assert.ok(loraAdapters(r.model.backbone).size > 0, "trained with adapters");
      const before = await probsOf(r.model);
      const path = join(tmp, "model.safetensors");
      await saveInferenceModel(r.model, path, { classes: inputs.classes, stage: "clipit" });
      assert.equal(loraAdapters(r.model.backbone).size, 0, "merged");
      const { model, meta } = await loadInferenceModel(path);
      assert.deepEqual(meta.classes, inputs.classes);
      const after = await probsOf(model);
      let worst = 0;
      for (let i = 0; i < before.length; i++) {
        worst = Math.max(
          worst,
          Math.abs(before[i] - after[i]),
        );
      }
      assert.ok(worst <= 1e-5, `merged predictions differ by ${worst}`);
      model.dispose();
      r.model.dispose();
      clip.dispose();
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
);

gpuTest("clipit: a class missing from the training split is refused, naming it", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const ds = await openDataset("folder", await tinyFolderDataset(join(tmp, "data"), 4), {
      valFraction: 0.25,
    });
    const train = ds.splits.find((s) => s.name === "train")!;
    const keep = [...train.labels.keys()].filter((i) => ds.classes[train.labels[i]] !== "gamma");
    const noGamma = {
      ...train,
      labels: Int32Array.from(keep, (i) => train.labels[i]),
      source: {
        kind: "files" as const,
        paths: keep.map((i) => (train.source as { paths: string[] }).paths[i]),
      },
    };
    const run = await RunDir.create(join(tmp, "run"), {});
    await assert.rejects(
      runStage(run, "clipit", {
        dataset: { ...ds, splits: ds.splits.map((s) => s.name === "train" ? noGamma : s) },
        load: () => Promise.reject(new Error("models must not be loaded")),
      }, SETTINGS),
      /class "gamma" has no image in the train split/,
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
