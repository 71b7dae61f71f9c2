/**
 * The options `cli.ts train` and `cli.ts experiment` share: the models (the CLIP-like model of
 * the text side and the image backbone), the CLIP-IT settings and the optimisation, with their
 * usage lines, their parsing into a {@link TrainModelSpec} and {@link ClipItSettings} (problems
 * collected, never thrown), and the reading of `cli.ts pair`'s files for a dataset and corpus.
 */
import { join } from "node:path";
import { type ParseArgsConfig } from "node:util";
import { LORA_ROLES, parseLoraTargets } from "../clip/lora_targets.ts";
import { pairingFileName, readPairing } from "../clip/pairing.ts";
import type { Corpus } from "../clip/pairing_corpus.ts";
import type { ClipItSettings } from "../train/clipit_train.ts";
import type { Dataset, SplitName } from "../train/data/datasets.ts";
import { pairingSplit } from "../train/data/pairing_source.ts";
import type { SplitPairing } from "../train/pipeline.ts";
import { choiceOption, intOption, numberOption } from "./args.ts";
import type { TrainModelSpec } from "./models.ts";

/** The model options, for `parseArgs`. */
export const MODEL_OPTIONS = {
  model: { type: "string", default: "clip" },
  weights: { type: "string" },
  arch: { type: "string" },
  tokenizer: { type: "string" },
  "init-seed": { type: "string", default: "0" },
  backbone: { type: "string", default: "clip" },
  "backbone-arch": { type: "string" },
  "backbone-weights": { type: "string" },
} as const satisfies ParseArgsConfig["options"];

/** Usage lines of {@link MODEL_OPTIONS}. */
export const MODEL_USAGE =
  `  --model clip|conch    the CLIP-like model of the text side (default clip)
  --weights FILE|random its checkpoint (OpenCLIP, Hugging Face, CONCH); random: seeded init
  --arch NAME|FILE      its architecture (default: the config beside the weights)
  --tokenizer PATH      its tokenizer (default: beside the weights, else CLIP's BPE)
  --init-seed N         seed of --weights random (default 0)
  --backbone clip|timm  the image backbone: the CLIP's image tower (default) or a timm ViT
  --backbone-arch A     timm: uni, dinov2-vitl14-reg4, kaiko-vits16, ... or a config.json
  --backbone-weights F  timm: its weights (.safetensors, .bin, .pth)`;

/** The CLIP-IT options (stage 2), for `parseArgs`. */
export const CLIPIT_OPTIONS = {
  lambda: { type: "string" },
  "text-branch": { type: "string", default: "on" },
  "fusion-init": { type: "string" },
  "no-lora": { type: "boolean", default: false },
  "lora-rank": { type: "string" },
  "lora-alpha": { type: "string" },
  "lora-dropout": { type: "string" },
  "lora-targets": { type: "string" },
} as const satisfies ParseArgsConfig["options"];

/** Usage lines of {@link CLIPIT_OPTIONS}. */
export const CLIPIT_USAGE =
  `  --lambda X            weight of the distillation term (default 1; 0 = the ablation)
  --text-branch on|off  the text-branch head and late fusion (default on)
  --fusion-init identity|random  g starts as [I | 0] (out = z_v: CLIP-IT starts from the stage-1
                        model) or random as in the authors' code (default identity)
  --no-lora             train only the heads (the ablation)
  --lora-rank R         (default 16)   --lora-alpha A (default 8)   --lora-dropout P (default 0)
  --lora-targets LIST   ${LORA_ROLES.join(",")} or all (default attn,mlp,embedding,patch)`;

/** The optimisation options, for `parseArgs`. */
export const OPTIM_OPTIONS = {
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
} as const satisfies ParseArgsConfig["options"];

/** Usage lines of {@link OPTIM_OPTIONS}, with or without `--seed` (an experiment has seeds). */
export function optimUsage(withSeed = true): string {
  return `  --epochs N (10)  --batch N (64)  --lr X (1e-3)  --weight-decay X (1e-4)
  --optimizer adam|adamw (adam: coupled decay, as the authors)  --clip-grad X (0.5; 0 = off)
  --schedule none|cosine (none)  --warmup N (0)  --lr-min X (1e-4)
  --val-every N (0: each epoch end)  --early-stop N (0: off)  --best val_loss|balanced_accuracy
  ${withSeed ? "--seed N (0)  " : ""}--augment  --workers N  --log-every N (10)`;
}

type Values = Record<string, string | boolean | undefined>;
const str = (values: Values, k: string) => values[k] as string | undefined;

/**
 * The CLIP-IT and optimisation settings the options give (absent options stay undefined, so a
 * caller may lay them over defaults of its own); bad values and contradictions go to
 * `problems`.
 */
export function parseSettings(values: Values, problems: string[]): ClipItSettings {
  const v = (k: string) => str(values, k);
  let loraTargets;
  try {
    loraTargets = v("lora-targets") ? parseLoraTargets(v("lora-targets")!) : undefined;
  } catch (e) {
    problems.push((e as Error).message);
  }
  const textBranch = choiceOption("text-branch", v("text-branch"), ["on", "off"], problems);
  const settings: ClipItSettings = {
    epochs: intOption("epochs", v("epochs"), 1, problems),
    batchSize: intOption("batch", v("batch"), 1, problems),
    lr: numberOption("lr", v("lr"), problems, 0),
    weightDecay: numberOption("weight-decay", v("weight-decay"), problems, 0),
    optimizer: choiceOption("optimizer", v("optimizer"), ["adam", "adamw"] as const, problems),
    maxGradNorm: numberOption("clip-grad", v("clip-grad"), problems, 0),
    schedule: choiceOption("schedule", v("schedule"), ["none", "cosine"] as const, problems),
    warmupSteps: intOption("warmup", v("warmup"), 0, problems),
    lrMin: numberOption("lr-min", v("lr-min"), problems, 0),
    valEvery: intOption("val-every", v("val-every"), 0, problems),
    earlyStop: intOption("early-stop", v("early-stop"), 0, problems),
    bestBy: choiceOption("best", v("best"), ["val_loss", "balanced_accuracy"] as const, problems),
    logEvery: intOption("log-every", v("log-every"), 1, problems),
    seed: intOption("seed", v("seed"), -(2 ** 31), problems),
    augment: values.augment === true,
    workers: intOption("workers", v("workers"), 0, problems),
    lambda: numberOption("lambda", v("lambda"), problems, 0),
    textBranch: textBranch !== "off",
    fusionInit: choiceOption(
      "fusion-init",
      v("fusion-init"),
      ["identity", "random"] as const,
      problems,
    ),
    lora: {
      enabled: values["no-lora"] !== true,
      rank: intOption("lora-rank", v("lora-rank"), 1, problems),
      alpha: numberOption("lora-alpha", v("lora-alpha"), problems),
      dropout: numberOption("lora-dropout", v("lora-dropout"), problems, 0, 0.99),
      targets: loraTargets,
    },
  };
  if (values["no-lora"] === true && (v("lora-rank") || v("lora-alpha") || v("lora-targets"))) {
    problems.push("--no-lora contradicts --lora-rank / --lora-alpha / --lora-targets");
  }
  if (settings.schedule !== "cosine" && (v("warmup") || v("lr-min"))) {
    problems.push("--warmup / --lr-min need --schedule cosine");
  }
  return settings;
}

/**
 * The models the options name (see {@link MODEL_OPTIONS}); problems are collected. `weights`
 * is null for `--weights random`.
 */
export function parseModelSpec(values: Values, problems: string[]): TrainModelSpec {
  const v = (k: string) => str(values, k);
  if (!v("weights")) problems.push("--weights FILE|DIR|random is required");
  const random = v("weights") === "random";
  const family = choiceOption("model", v("model"), ["clip", "conch"] as const, problems);
  if (random && family === "clip" && !v("arch")) problems.push("--weights random needs --arch");
  const backbone = choiceOption("backbone", v("backbone"), ["clip", "timm"] as const, problems);
  if (backbone !== "timm" && (v("backbone-arch") || v("backbone-weights"))) {
    problems.push("--backbone-arch / --backbone-weights need --backbone timm");
  }
  const initSeed = intOption("init-seed", v("init-seed") ?? "0", -(2 ** 31), problems)!;
  return {
    family: family ?? "clip",
    arch: v("arch"),
    weights: random ? null : v("weights") ?? null,
    tokenizer: v("tokenizer"),
    initSeed,
    backbone: backbone ?? "clip",
    backboneArch: v("backbone-arch"),
    backboneWeights: v("backbone-weights") ?? null,
  };
}

/**
 * The pairing of each split, read from `dir` (the output folder of `cli.ts pair`) and checked
 * against the dataset and the corpus (`corpusLabel` names it in messages). The test split's
 * pairing is optional.
 */
export async function loadPairings(
  dir: string,
  ds: Dataset,
  corpus: Corpus,
  corpusLabel: string,
  label = "--pairing",
): Promise<Partial<Record<SplitName, SplitPairing>>> {
  const out: Partial<Record<SplitName, SplitPairing>> = {};
  for (const s of ds.splits) {
    const path = join(dir, pairingFileName(s.name));
    try {
      await Deno.stat(path);
    } catch {
      if (s.name === "test") continue; // pairing the test split is optional
      throw new Error(`${label} ${dir}: no ${pairingFileName(s.name)} (run cli.ts pair first)`);
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
