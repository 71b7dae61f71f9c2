/**
 * `cli.ts train`: one training run of a stage into a run folder (train/pipeline.ts does the
 * work; this file parses, checks and prints).
 *
 *   deno run -A cli.ts train --stage baseline --dataset crc --root data/crc \
 *     --weights quiltnet/ --out runs/baseline-s0
 *   deno run -A cli.ts train --stage clipit --dataset crc --root data/crc \
 *     --weights quiltnet/ --corpus reports.txt --pairing pairing/ \
 *     --init-head runs/baseline-s0/model.safetensors --out runs/clipit-s0
 *
 * Everything cheap is checked before anything expensive: the options, the dataset, the corpus,
 * the pairing files against both, the model files, the run folder. Ctrl-C stops after the
 * current step with a resumable checkpoint; `--resume RUN` continues it with the options stored
 * in its config.json. Exit status: 0 done, 1 failure while working (a NaN loss names its step),
 * 2 bad arguments or inputs, 130 interrupted.
 */
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { adapterInfo, init } from "../kernels/device.ts";
import { checkOutputPath } from "../nn/formats/safe_write.ts";
import { LORA_ROLES, parseLoraTargets } from "../clip/lora_targets.ts";
import { pairingFileName, randomPairing, readPairing } from "../clip/pairing.ts";
import { type Corpus, readCorpus } from "../clip/pairing_corpus.ts";
import type { Dataset, SplitName } from "../train/data/datasets.ts";
import { pairingSplit } from "../train/data/pairing_source.ts";
import type { ClipItSettings } from "../train/clipit_train.ts";
import { NonFiniteLossError, TrainingInterrupted } from "../train/loop.ts";
import { formatReportTable } from "../train/metrics_table.ts";
import { runStage, type SplitPairing, STAGES } from "../train/pipeline.ts";
import { environmentInfo, RUN_FILES, RunDir } from "../train/run.ts";
import {
  choiceOption,
  DATASET_OPTIONS,
  DATASET_USAGE,
  datasetArgs,
  interruptOnCtrlC,
  intOption,
  numberOption,
  openDatasetArgs,
} from "./args.ts";
import { prepareTrainModels, type TrainModelSpec } from "./models.ts";
import { Progress } from "./progress.ts";

const USAGE = `usage: deno run -A cli.ts train --stage STAGE --dataset KIND --root DIR
                         --weights FILE|DIR|random [--arch NAME|FILE] --out RUN [options]
       deno run -A cli.ts train --resume RUN

Trains one stage of CLIP-IT (or a baseline) into the run folder RUN: config.json,
metrics.jsonl, checkpoints, model.safetensors (LoRA merged), eval.json, report.html.

Stage:
  --stage S             baseline (frozen backbone + linear head), text-baseline (frozen text
                        encoder on the paired report + MLP head), clipit, contrastive
Data:
${DATASET_USAGE}
  --corpus FILE         the report corpus (text stages)
  --pairing DIR|random  the output folder of \`cli.ts pair\` (its pairs-<split>.jsonl are checked
                        against this dataset and corpus), or random reports (the ablation)
Models:
  --model clip|conch    the CLIP-like model of the text side (default clip)
  --weights FILE|random its checkpoint (OpenCLIP, Hugging Face, CONCH); random: seeded init
  --arch NAME|FILE      its architecture (default: the config beside the weights)
  --tokenizer PATH      its tokenizer (default: beside the weights, else CLIP's BPE)
  --backbone clip|timm  the image backbone: the CLIP's image tower (default) or a timm ViT
  --backbone-arch A     timm: uni, dinov2-vitl14-reg4, kaiko-vits16, ... or a config.json
  --backbone-weights F  timm: its weights (.safetensors, .bin, .pth)
CLIP-IT:
  --lambda X            weight of the distillation term (default 1; 0 = the ablation)
  --text-branch on|off  the text-branch head and late fusion (default on)
  --fusion-init identity|random  g starts as [I | 0] (out = z_v: CLIP-IT starts from the stage-1
                        model) or random as in the authors' code (default identity)
  --no-lora             train only the heads (the ablation)
  --lora-rank R         (default 16)   --lora-alpha A (default 8)   --lora-dropout P (default 0)
  --lora-targets LIST   ${LORA_ROLES.join(",")} or all (default attn,mlp,embedding,patch)
  --init-head FILE      a baseline run's model.safetensors to start fc from
Optimisation:
  --epochs N (10)  --batch N (64)  --lr X (1e-3)  --weight-decay X (1e-4)
  --optimizer adam|adamw (adam: coupled decay, as the authors)  --clip-grad X (0.5; 0 = off)
  --schedule none|cosine (none)  --warmup N (0)  --lr-min X (1e-4)
  --val-every N (0: each epoch end)  --early-stop N (0: off)  --best val_loss|balanced_accuracy
  --seed N (0)  --augment  --workers N  --log-every N (10)
Runs:
  --out RUN             a new run folder
  --resume RUN          continue RUN from its last checkpoint with its stored options
  --feature-cache DIR   share stage-1 feature caches between runs (default: the run folder)
  --quiet               no progress bars
  -h, --help            this text

Exit status: 0 done, 1 failure while working, 2 bad arguments or inputs, 130 interrupted
(continue with --resume RUN).`;

const OPTIONS = {
  stage: { type: "string" },
  ...DATASET_OPTIONS,
  corpus: { type: "string" },
  pairing: { type: "string" },
  "pairing-seed": { type: "string" },
  model: { type: "string", default: "clip" },
  weights: { type: "string" },
  arch: { type: "string" },
  tokenizer: { type: "string" },
  "init-seed": { type: "string", default: "0" },
  backbone: { type: "string", default: "clip" },
  "backbone-arch": { type: "string" },
  "backbone-weights": { type: "string" },
  lambda: { type: "string" },
  "text-branch": { type: "string", default: "on" },
  "fusion-init": { type: "string" },
  "no-lora": { type: "boolean", default: false },
  "lora-rank": { type: "string" },
  "lora-alpha": { type: "string" },
  "lora-dropout": { type: "string" },
  "lora-targets": { type: "string" },
  "init-head": { type: "string" },
  epochs: { type: "string" },
  batch: { type: "string" },
  lr: { type: "string" },
  "weight-decay": { type: "string" },
  optimizer: { type: "string" },
  "clip-grad": { type: "string" },
  schedule: { type: "string" },
  warmup: { type: "string" },
  "lr-min": { type: "string" },
  "val-every": { type: "string" },
  "early-stop": { type: "string" },
  best: { type: "string" },
  seed: { type: "string" },
  augment: { type: "boolean", default: false },
  workers: { type: "string" },
  "log-every": { type: "string" },
  out: { type: "string" },
  resume: { type: "string" },
  "feature-cache": { type: "string" },
  quiet: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

/** Options a resumed run may change (they do not change what is computed). */
const RESUME_MAY_SET = new Set(["resume", "quiet", "workers", "help"]);

/** The pairing of each split, read from `dir` and checked against the dataset and corpus. */
async function loadPairings(
  dir: string,
  ds: Dataset,
  corpus: Corpus,
  corpusLabel: string,
): Promise<Partial<Record<SplitName, SplitPairing>>> {
  const out: Partial<Record<SplitName, SplitPairing>> = {};
  for (const s of ds.splits) {
    const path = join(dir, pairingFileName(s.name));
    try {
      await Deno.stat(path);
    } catch {
      if (s.name === "test") continue; // pairing the test split is optional
      throw new Error(`--pairing ${dir}: no ${pairingFileName(s.name)} (run cli.ts pair first)`);
    }
    const expected = pairingSplit(ds, s);
    const p = await readPairing(path, {
      split: s.name,
      ids: expected.ids,
      labels: s.labels,
      classes: ds.classes,
      corpus: { sha256: corpus.sha256, reports: corpus.reports.length, label: corpusLabel },
    });
    const n = s.labels.length;
    const reports = new Int32Array(n), scores = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      reports[i] = p.indices[i * p.k];
      scores[i] = p.scores[i * p.k];
    }
    out[s.name] = { reports, scores };
  }
  return out;
}

/** Run `train` with the arguments after the command name (see the module comment). */
export async function trainCommand(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (e) {
    console.error(`train: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  let resumeRun: RunDir | null = null;
  if (values.resume) {
    const extra = Object.keys(values).filter((k) =>
      !RESUME_MAY_SET.has(k) && args.some((a) => a === `--${k}` || a.startsWith(`--${k}=`))
    );
    if (extra.length) {
      console.error(
        `train: --resume continues a run with the options it was started with; drop ` +
          `${extra.map((k) => `--${k}`).join(", ")} (or start a new run with --out)`,
      );
      return 2;
    }
    try {
      resumeRun = await RunDir.open(values.resume);
      if (!(await resumeRun.has(RUN_FILES.last))) {
        throw new Error(`--resume ${values.resume}: no ${RUN_FILES.last} to continue from`);
      }
    } catch (e) {
      console.error(`train: ${(e as Error).message}`);
      return 2;
    }
    const stored = resumeRun.config.args as string[] | undefined;
    if (!Array.isArray(stored)) {
      console.error(`train: --resume ${values.resume}: its config.json has no stored arguments`);
      return 2;
    }
    const keep = args.filter((a) => a === "--quiet" || a.startsWith("--workers"));
    ({ values } = parseArgs({
      args: [...stored, ...keep],
      options: OPTIONS,
      strict: true,
      allowPositionals: false,
    }));
  }

  // ---- options ----
  const problems: string[] = [];
  const stage = choiceOption("stage", values.stage, STAGES, problems);
  if (!values.stage) problems.push(`--stage is required (${STAGES.join(", ")})`);
  const data = datasetArgs(values, problems);
  const needsPairing = stage === "clipit" || stage === "contrastive" || stage === "text-baseline";
  if (needsPairing && !values.corpus) problems.push(`--stage ${stage} needs --corpus FILE`);
  if (needsPairing && !values.pairing) problems.push(`--stage ${stage} needs --pairing DIR|random`);
  if (!needsPairing && (values.pairing || values.corpus)) {
    problems.push(`--stage ${stage} uses no reports: drop --pairing / --corpus`);
  }
  if (!values.weights) problems.push("--weights FILE|DIR|random is required");
  const random = values.weights === "random";
  if (random && values.model === "clip" && !values.arch) {
    problems.push("--weights random needs --arch");
  }
  const family = choiceOption("model", values.model, ["clip", "conch"] as const, problems);
  const backbone = choiceOption("backbone", values.backbone, ["clip", "timm"] as const, problems);
  if (backbone !== "timm" && (values["backbone-arch"] || values["backbone-weights"])) {
    problems.push("--backbone-arch / --backbone-weights need --backbone timm");
  }
  if (!resumeRun && !values.out) problems.push("--out RUN (a new run folder) or --resume RUN");
  const textBranch = choiceOption("text-branch", values["text-branch"], ["on", "off"], problems);
  if (stage !== "clipit") {
    for (const f of ["lambda", "init-head", "lora-targets", "fusion-init"] as const) {
      if (values[f] !== undefined) problems.push(`--${f} is for --stage clipit`);
    }
  }
  let loraTargets;
  try {
    loraTargets = values["lora-targets"] ? parseLoraTargets(values["lora-targets"]) : undefined;
  } catch (e) {
    problems.push((e as Error).message);
  }
  const settings: ClipItSettings = {
    epochs: intOption("epochs", values.epochs, 1, problems),
    batchSize: intOption("batch", values.batch, 1, problems),
    lr: numberOption("lr", values.lr, problems, 0),
    weightDecay: numberOption("weight-decay", values["weight-decay"], problems, 0),
    optimizer: choiceOption("optimizer", values.optimizer, ["adam", "adamw"] as const, problems),
    maxGradNorm: numberOption("clip-grad", values["clip-grad"], problems, 0),
    schedule: choiceOption("schedule", values.schedule, ["none", "cosine"] as const, problems),
    warmupSteps: intOption("warmup", values.warmup, 0, problems),
    lrMin: numberOption("lr-min", values["lr-min"], problems, 0),
    valEvery: intOption("val-every", values["val-every"], 0, problems),
    earlyStop: intOption("early-stop", values["early-stop"], 0, problems),
    bestBy: choiceOption(
      "best",
      values.best,
      ["val_loss", "balanced_accuracy"] as const,
      problems,
    ),
    logEvery: intOption("log-every", values["log-every"], 1, problems),
    seed: intOption("seed", values.seed, -(2 ** 31), problems),
    augment: values.augment,
    workers: intOption("workers", values.workers, 0, problems),
    lambda: numberOption("lambda", values.lambda, problems, 0),
    textBranch: textBranch !== "off",
    fusionInit: choiceOption(
      "fusion-init",
      values["fusion-init"],
      ["identity", "random"] as const,
      problems,
    ),
    lora: {
      enabled: !values["no-lora"],
      rank: intOption("lora-rank", values["lora-rank"], 1, problems),
      alpha: numberOption("lora-alpha", values["lora-alpha"], problems),
      dropout: numberOption("lora-dropout", values["lora-dropout"], problems, 0, 0.99),
      targets: loraTargets,
    },
  };
  if (
    values["no-lora"] && (values["lora-rank"] || values["lora-alpha"] || values["lora-targets"])
  ) {
    problems.push("--no-lora contradicts --lora-rank / --lora-alpha / --lora-targets");
  }
  if (settings.schedule !== "cosine" && (values.warmup || values["lr-min"])) {
    problems.push("--warmup / --lr-min need --schedule cosine");
  }
  const initSeed = intOption("init-seed", values["init-seed"], -(2 ** 31), problems)!;
  const pairingSeed = intOption("pairing-seed", values["pairing-seed"], -(2 ** 31), problems);
  if (problems.length) {
    console.error(`train: ${problems.join("; ")}\n\n${USAGE}`);
    return 2;
  }
  const quiet = values.quiet;
  const out = resumeRun ? resumeRun.dir : values.out!;

  // ---- inputs, checked before any model work ----
  let ds: Dataset, corpus: Corpus | undefined;
  let pairing: Partial<Record<SplitName, SplitPairing>> | undefined;
  let models;
  try {
    ds = await openDatasetArgs(data);
    if (values.corpus) corpus = await readCorpus(values.corpus);
    if (values.pairing === "random") {
      const seed = pairingSeed ?? settings.seed ?? 0;
      pairing = {};
      for (const s of ds.splits) {
        const r = randomPairing(s.labels.length, corpus!.reports.length, 1, seed + s.name.length);
        pairing[s.name] = {
          reports: r.indices,
          scores: new Float32Array(r.indices.length).fill(NaN),
        };
      }
    } else if (values.pairing) {
      pairing = await loadPairings(values.pairing, ds, corpus!, `--corpus ${values.corpus}`);
    }
    if (values["init-head"]) await Deno.stat(values["init-head"]);
    if (!resumeRun) {
      await Deno.mkdir(out, { recursive: true });
      await checkOutputPath(join(out, RUN_FILES.config), { label: "--out" });
    }
    const spec: TrainModelSpec = {
      family: family!,
      arch: values.arch,
      weights: random ? null : values.weights!,
      tokenizer: values.tokenizer,
      initSeed,
      backbone: backbone!,
      backboneArch: values["backbone-arch"],
      backboneWeights: values["backbone-weights"] ?? null,
    };
    models = await prepareTrainModels(spec, values["feature-cache"] ?? out);
  } catch (e) {
    console.error(`train: ${(e as Error).message}`);
    return 2;
  }

  const gpu = await init();
  let run: RunDir;
  if (resumeRun) run = resumeRun;
  else {
    try {
      run = await RunDir.create(out, {
        command: "train",
        args,
        stage,
        settings,
        dataset: {
          kind: ds.kind,
          root: ds.root,
          classes: ds.classes,
          splits: Object.fromEntries(ds.splits.map((s) => [s.name, s.labels.length])),
        },
        corpus: corpus
          ? { path: resolve(corpus.path), sha256: corpus.sha256, reports: corpus.reports.length }
          : null,
        pairing: values.pairing ?? null,
        models: models.describe,
        init_head: values["init-head"] ?? null,
        environment: { ...environmentInfo(), adapter: adapterInfo() },
        created: new Date().toISOString(),
      });
    } catch (e) {
      console.error(`train: ${(e as Error).message}`);
      return 2;
    }
  }
  if (!quiet) {
    const counts = ds.splits.map((s) => `${s.name} ${s.labels.length}`).join(", ");
    console.error(
      `train: ${stage} on ${ds.kind}:${ds.root} (${ds.classes.length} classes; ${counts})` +
        `${resumeRun ? `, resuming ${run.dir}` : ` into ${run.dir}`} on ` +
        `${gpu.adapter.description || "WebGPU"}`,
    );
  }
  const ctrlC = interruptOnCtrlC("train");
  let bar: Progress | null = null, features: Progress | null = null;
  try {
    const loaded = models;
    const result = await runStage(
      run,
      stage!,
      {
        dataset: ds,
        corpus,
        pairing,
        load: () => loaded.load(),
        tokenizer: models.tokenizer,
        initHead: values["init-head"],
        featureCache: values["feature-cache"],
        backboneKey: models.backboneKey,
      },
      settings,
      {
        resume: resumeRun !== null,
        signal: ctrlC.signal,
        onFeatures: (split, done, total) => {
          if (quiet) return;
          if (!features || features.label !== `features ${split}`) {
            features = new Progress(`features ${split}`, total, "images", quiet);
          }
          features.update(done);
        },
        onProgress: (p) => {
          if (quiet) return;
          bar ??= new Progress("train", p.totalSteps, "steps", quiet);
          if (p.phase === "train") {
            bar.update(
              p.step,
              `loss ${Number.isFinite(p.loss) ? p.loss.toFixed(4) : "-"}  ` +
                `${p.imagesPerSecond.toFixed(1)} images/s`,
            );
          } else {
            console.error(
              `\nval at step ${p.step}: loss ${p.val!.loss.toFixed(4)}, balanced accuracy ` +
                `${(100 * p.val!.balanced_accuracy).toFixed(2)}%`,
            );
          }
        },
      },
    );
    if (result.test) console.log(formatReportTable(result.test));
    console.log(
      `train: ${result.steps} steps; run folder ${run.dir} (${RUN_FILES.model}, ` +
        `${RUN_FILES.eval}, ${RUN_FILES.report})`,
    );
    return 0;
  } catch (e) {
    if (e instanceof TrainingInterrupted) {
      console.error(`train: ${e.message}; continue with --resume ${run.dir}`);
      return 130;
    }
    if (e instanceof NonFiniteLossError) {
      console.error(`train: ${e.message} (${run.dir}/${RUN_FILES.last})`);
      return 1;
    }
    throw e;
  } finally {
    ctrlC.release();
  }
}
