/**
 * `cli.ts experiment`: the paper's experiment for one dataset and one backbone (train/
 * experiment.ts does the work; this file parses, checks, pairs and prints):
 *
 *   deno run -A cli.ts experiment --dataset crc --root NCT-CRC-HE --corpus reports.txt \
 *     --model conch --weights weights/conch/pytorch_model.bin --backbone timm \
 *     --backbone-arch uni --backbone-weights weights/uni/pytorch_model.bin --out exp/crc-uni
 *   deno run -A cli.ts experiment --demo --out exp/demo
 *
 * The baseline and CLIP-IT over `--seeds` seeds plus the ablations, each a run folder
 * `DIR/<variant>-s<seed>`; the table in `DIR/results.md` and `DIR/results.json`, printed at the
 * end. The pairing comes from `--pairing DIR` (`cli.ts pair`'s output) or is made into
 * `DIR/pairing` with the text-side model (or `--pair-model/--pair-weights`). Rerunning the same
 * command continues: finished runs are skipped, an interrupted one resumes from its checkpoint,
 * the pairing reuses its caches. Exit status: 0 done, 1 failure while working, 2 bad arguments
 * or inputs (or a run folder made with other options), 130 interrupted (rerun to continue).
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { adapterInfo, init } from "../kernels/device.ts";
import { checkOutputPath } from "../nn/formats/safe_write.ts";
import { datasetFingerprint } from "../clip/pairing.ts";
import { type Corpus, readCorpus, sha256File, sha256Hex } from "../clip/pairing_corpus.ts";
import { type PairingModel, runPairing } from "../clip/pairing_run.ts";
import type { ClipItSettings } from "../train/clipit_train.ts";
import type { Dataset, SplitName } from "../train/data/datasets.ts";
import { loaderImageSource, pairingDataset, pairingSplit } from "../train/data/pairing_source.ts";
import {
  DEFAULT_VARIANTS,
  ExperimentInterrupted,
  ExperimentMismatchError,
  type ExperimentSettings,
  planExperiment,
  runExperiment,
  VARIANTS,
} from "../train/experiment.ts";
import { NonFiniteLossError, TrainingInterrupted } from "../train/loop.ts";
import type { SplitPairing, StageInputs } from "../train/pipeline.ts";
import { environmentInfo } from "../train/run.ts";
import {
  DATASET_OPTIONS,
  DATASET_USAGE,
  datasetArgs,
  interruptOnCtrlC,
  intOption,
  listOption,
  numberOption,
  openDatasetArgs,
} from "./args.ts";
import { BASELINE, CLIPIT as STAGE, PRETRAIN, WORLD } from "./demo.ts";
import { prepareDemoWorld } from "./demo_setup.ts";
import { loadPairingModel, prepareTrainModels } from "./models.ts";
import { Progress } from "./progress.ts";
import {
  CLIPIT_OPTIONS,
  CLIPIT_USAGE,
  loadPairings,
  MODEL_OPTIONS,
  MODEL_USAGE,
  OPTIM_OPTIONS,
  optimUsage,
  parseModelSpec,
  parseSettings,
} from "./train_options.ts";

const USAGE = `usage: deno run -A cli.ts experiment --dataset KIND --root DIR --corpus FILE
                              --weights FILE|DIR|random [model options] --out DIR [options]
       deno run -A cli.ts experiment --demo --out DIR [options]

The paper's experiment for one dataset and one backbone: the unimodal baseline and CLIP-IT
over several seeds, and the ablations, each a run folder DIR/<variant>-s<seed> (CLIP-IT's fc
starts from the same seed's baseline head); the paper-style table (balanced accuracy on the
test split, mean +/- std, unimodal -> CLIP-IT, delta) in DIR/results.md and DIR/results.json,
printed at the end. Run the same command again to continue an interrupted experiment.

Experiment:
  --out DIR             the experiment folder (created; an earlier run of it is continued)
  --seeds N             seeds 0..N-1 (default 3)
  --variants LIST       beside the baseline (always run): ${VARIANTS.slice(1).join(", ")},
                        or all (default ${DEFAULT_VARIANTS.slice(1).join(",")})
  --baseline-epochs N   the baseline's epochs (default --epochs)
  --baseline-batch N    the baseline's batch size (default --batch)
  --baseline-lr X       the baseline's learning rate (default --lr)
  --demo                the demo's synthetic world and tiny CLIP instead of real data and
                        weights (the demo's settings unless given); --fresh redoes them
Data:
${DATASET_USAGE}
  --corpus FILE         the report corpus
  --pairing DIR         the output folder of \`cli.ts pair\` for this dataset and corpus
                        (default: pair into DIR/pairing with the pairing model below)
Models:
${MODEL_USAGE}
Pairing model (default: the model above; the paper pairs with CONCH):
  --pair-model clip|conch  --pair-weights FILE|DIR|random  --pair-arch NAME|FILE
  --pair-tokenizer PATH    --pair-k N (reports kept per image, default 5)
CLIP-IT (the ablations change one of these):
${CLIPIT_USAGE}
Optimisation (--seed is replaced by --seeds):
${optimUsage(false)}
  --feature-cache DIR   stage-1 feature caches (default DIR/features, shared by the seeds)
  --quiet               no progress bars
  -h, --help            this text

Exit status: 0 done, 1 failure while working, 2 bad arguments or inputs (or a run folder made
with other options), 130 interrupted (run the same command again to continue).`;

const { seed: _seed, ...OPTIM_NO_SEED } = OPTIM_OPTIONS;

const OPTIONS = {
  ...DATASET_OPTIONS,
  corpus: { type: "string" },
  pairing: { type: "string" },
  ...MODEL_OPTIONS,
  "pair-model": { type: "string" },
  "pair-weights": { type: "string" },
  "pair-arch": { type: "string" },
  "pair-tokenizer": { type: "string" },
  "pair-k": { type: "string" },
  ...CLIPIT_OPTIONS,
  ...OPTIM_NO_SEED,
  out: { type: "string" },
  seeds: { type: "string", default: "3" },
  variants: { type: "string" },
  "baseline-epochs": { type: "string" },
  "baseline-batch": { type: "string" },
  "baseline-lr": { type: "string" },
  demo: { type: "boolean", default: false },
  fresh: { type: "boolean", default: false },
  "feature-cache": { type: "string" },
  quiet: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

/** Test hooks: an abort signal that acts as Ctrl-C. */
export interface ExperimentHooks {
  /** Aborting it stops the experiment as Ctrl-C does (a resumable checkpoint, exit 130). */
  signal?: AbortSignal;
}

/** `obj` without its undefined fields (recursively for plain objects): overrides to lay over
 * defaults. */
function defined<T extends object>(obj: T): Partial<T> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined) continue;
    out[k] = v && typeof v === "object" && !Array.isArray(v) ? defined(v) : v;
  }
  return out as Partial<T>;
}

/** `base` with the defined fields of `over` (and of `over.lora`) laid over it. */
function over(base: ClipItSettings, o: Partial<ClipItSettings>): ClipItSettings {
  return { ...base, ...o, lora: { ...base.lora, ...o.lora } };
}

/** SHA-256 of each split's top-1 reports: the pairing's content, for the runs' fingerprint. */
function pairingDigest(p: Partial<Record<SplitName, SplitPairing>>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(p).map(([k, v]) => [k, sha256Hex(new Uint8Array(v!.reports.buffer))]),
  );
}

/** The dataset's content: classes and every split's fingerprint (its ids and labels). */
function datasetDigest(ds: Dataset): Record<string, unknown> {
  return {
    kind: ds.kind,
    classes: ds.classes,
    splits: Object.fromEntries(
      ds.splits.map((s) => {
        const p = pairingSplit(ds, s);
        return [s.name, datasetFingerprint(p.ids, p.labels, ds.classes)];
      }),
    ),
  };
}

/** Interrupted by the signal (Ctrl-C or the test hook) while pairing. */
class PairingInterrupted extends Error {
  constructor() {
    super("interrupted while pairing");
    this.name = "PairingInterrupted";
  }
}

/** Pair every split of `ds` into `dir` with `model` (resuming from its caches), then read it. */
async function pairInto(
  dir: string,
  ds: Dataset,
  corpus: Corpus,
  model: PairingModel,
  k: number,
  opts: { signal: AbortSignal; quiet: boolean; workers?: number; corpusLabel: string },
): Promise<Partial<Record<SplitName, SplitPairing>>> {
  await Deno.mkdir(dir, { recursive: true });
  const bar = new Progress("pair", 1, "items", opts.quiet);
  const ac = new AbortController();
  const onAbort = () => ac.abort(new PairingInterrupted());
  opts.signal.addEventListener("abort", onAbort);
  if (opts.signal.aborted) onAbort();
  try {
    await runPairing(
      model,
      corpus,
      pairingDataset(ds),
      loaderImageSource(ds, {
        size: model.image.imageSize,
        mean: model.image.mean,
        std: model.image.std,
        interpolation: model.image.interpolation,
        batch: 16,
        workers: opts.workers ?? 1,
      }),
      {
        out: dir,
        k: Math.min(k, corpus.reports.length),
        signal: ac.signal,
        onProgress: (p) => {
          // Only the work done now: cached corpus embeddings and image chunks are not shown.
          if (p.stage === "match" || p.stage === "write") return;
          if (p.stage === "corpus" ? p.cached : p.cached === p.total) return;
          bar.total = p.total;
          bar.update(p.done);
        },
      },
    );
  } catch (e) {
    if (ac.signal.aborted) throw new PairingInterrupted();
    throw e;
  } finally {
    opts.signal.removeEventListener("abort", onAbort);
  }
  return await loadPairings(dir, ds, corpus, opts.corpusLabel, "pairing");
}

/** Run `experiment` with the arguments after the command name (see the module comment). */
export async function experimentCommand(
  args: string[],
  hooks: ExperimentHooks = {},
): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (e) {
    console.error(`experiment: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }

  // ---- options ----
  const problems: string[] = [];
  const demo = values.demo;
  if (!values.out) problems.push("--out DIR is required");
  const seedCount = intOption("seeds", values.seeds, 1, problems) ?? 3;
  const variantList = listOption(values.variants);
  const variants = variantList?.includes("all")
    ? [...VARIANTS]
    : [...new Set(["baseline", ...(variantList ?? DEFAULT_VARIANTS)])];
  for (const v of variants) {
    if (!(VARIANTS as readonly string[]).includes(v)) {
      problems.push(`--variants: unknown variant "${v}" (use ${VARIANTS.join(", ")} or all)`);
    }
  }
  const pairFlags = ["pair-model", "pair-weights", "pair-arch", "pair-tokenizer"] as const;
  const given = (k: string) => args.some((a) => a === `--${k}` || a.startsWith(`--${k}=`));
  let data, spec;
  if (demo) {
    const realOnly = [
      ...Object.keys(DATASET_OPTIONS),
      ...Object.keys(MODEL_OPTIONS),
      ...pairFlags,
      "corpus",
      "pairing",
    ].filter(given);
    if (realOnly.length) {
      problems.push(
        `--demo uses the synthetic world and its tiny CLIP: drop ${
          realOnly.map((k) => `--${k}`).join(", ")
        }`,
      );
    }
  } else {
    if (values.fresh) problems.push("--fresh is for --demo");
    data = datasetArgs(values, problems);
    if (!values.corpus) problems.push("--corpus FILE is required");
    spec = parseModelSpec(values, problems);
    if (values.pairing && pairFlags.some(given)) {
      problems.push("--pairing DIR is an existing pairing: drop the --pair-* options");
    }
    if (pairFlags.some(given) && !values["pair-weights"]) {
      problems.push("--pair-model / --pair-arch / --pair-tokenizer need --pair-weights");
    }
    if (values["pair-weights"] === "random" && values["pair-model"] !== "conch") {
      if (!values["pair-arch"]) problems.push("--pair-weights random needs --pair-arch");
    }
    if (
      values["pair-model"] !== undefined && !["clip", "conch"].includes(values["pair-model"])
    ) {
      problems.push(`--pair-model must be clip or conch, got "${values["pair-model"]}"`);
    }
  }
  const pairK = intOption("pair-k", values["pair-k"], 1, problems) ?? 5;
  const overrides = defined(parseSettings(values, problems));
  const baselineOverrides = defined({
    epochs: intOption("baseline-epochs", values["baseline-epochs"], 1, problems),
    batchSize: intOption("baseline-batch", values["baseline-batch"], 1, problems),
    lr: numberOption("baseline-lr", values["baseline-lr"], problems, 0),
  });
  if (problems.length) {
    console.error(`experiment: ${problems.join("; ")}\n\n${USAGE}`);
    return 2;
  }
  const settings: ExperimentSettings = demo
    ? {
      clipit: over(STAGE, overrides),
      baseline: over(over(BASELINE, overrides), baselineOverrides),
    }
    : {
      clipit: over({}, overrides),
      baseline: over(over({}, overrides), baselineOverrides),
    };
  const seeds = Array.from({ length: seedCount }, (_, i) => i);
  const out = resolve(values.out!);
  const quiet = values.quiet;
  const featureCache = values["feature-cache"] ?? `${out}/features`;
  const plan = planExperiment(out, variants, seeds, settings);
  const needsPairing = plan.some((r) => r.pairing === "top1");

  // ---- inputs, checked before any model work ----
  let ds: Dataset | undefined, corpus: Corpus | undefined;
  let pairing: Partial<Record<SplitName, SplitPairing>> | undefined;
  let models: Awaited<ReturnType<typeof prepareTrainModels>> | undefined;
  try {
    await Deno.mkdir(out, { recursive: true });
    await Deno.mkdir(featureCache, { recursive: true });
    for (const f of ["results.md", "results.json"]) {
      await checkOutputPath(`${out}/${f}`, { label: "--out" });
    }
    if (!demo) {
      ds = await openDatasetArgs(data!);
      if (!ds.splits.some((s) => s.name === "test")) {
        throw new Error(
          `${ds.kind}:${ds.root} has no test split: the experiment reports test metrics ` +
            `(set --test-fraction)`,
        );
      }
      corpus = await readCorpus(values.corpus!);
      if (values.pairing) {
        pairing = await loadPairings(values.pairing, ds, corpus, `--corpus ${values.corpus}`);
      }
      models = await prepareTrainModels(spec!);
      for (const note of models.notes) console.error(`experiment: note: ${note}`);
    }
  } catch (e) {
    console.error(`experiment: ${(e as Error).message}`);
    return 2;
  }

  const gpu = await init();
  const say = (line: string) => {
    if (!quiet) console.error(line);
  };
  const ctrlC = interruptOnCtrlC("experiment");
  const signal = hooks.signal ? AbortSignal.any([ctrlC.signal, hooks.signal]) : ctrlC.signal;
  try {
    let inputs: StageInputs, fingerprint: Record<string, unknown>;
    let backboneLabel: string, textLabel: string, pairingLabel: string;
    if (demo) {
      const setup = await prepareDemoWorld(out, {
        world: WORLD,
        pretrain: PRETRAIN,
        fresh: values.fresh,
        quiet,
        label: "experiment",
      });
      ds = setup.dataset;
      corpus = setup.corpus;
      if (needsPairing) {
        const { model, dispose } = await setup.pairingModel();
        try {
          pairing = await pairInto(`${out}/pairing`, ds, corpus, model, pairK, {
            signal,
            quiet,
            workers: settings.clipit.workers,
            corpusLabel: "the world's corpus",
          });
        } finally {
          dispose();
        }
      }
      inputs = {
        dataset: ds,
        corpus,
        tokenizer: setup.tokenizer,
        load: async () => {
          const m = await setup.loadTiny();
          return { backbone: m.backbone, textEncoder: m.textEncoder, logitScale: m.logitScale };
        },
        backboneKey: `demo-tiny:${await sha256File(setup.clipPath)}`,
        featureCache,
      };
      fingerprint = { models: { demo_clip_sha256: await sha256File(setup.clipPath) } };
      backboneLabel = "demo-tiny CLIP image tower (synthetic)";
      textLabel = "demo-tiny CLIP text tower";
      pairingLabel = "demo-tiny CLIP";
    } else {
      const m = models!;
      if (needsPairing && !pairing) {
        const pw = values["pair-weights"];
        const family = (pw ? values["pair-model"] ?? "clip" : spec!.family) as "clip" | "conch";
        say(`experiment: pairing into ${out}/pairing`);
        let loaded;
        try {
          loaded = await loadPairingModel(
            family,
            pw ? values["pair-arch"] : spec!.arch,
            pw ? (pw === "random" ? null : pw) : spec!.weights,
            pw ? values["pair-tokenizer"] : spec!.tokenizer,
            spec!.initSeed,
            `${out}/pairing`,
          );
        } catch (e) {
          // The pairing model's files (weights, config, tokenizer) are inputs.
          console.error(`experiment: pairing model: ${(e as Error).message}`);
          return 2;
        }
        const { model, dispose } = loaded;
        try {
          pairing = await pairInto(`${out}/pairing`, ds!, corpus!, model, pairK, {
            signal,
            quiet,
            workers: settings.clipit.workers,
            corpusLabel: `--corpus ${values.corpus}`,
          });
        } finally {
          dispose();
        }
      }
      inputs = {
        dataset: ds!,
        corpus,
        tokenizer: m.tokenizer,
        load: () => m.load(),
        backboneKey: m.backboneKey,
        featureCache,
      };
      const d = m.describe;
      fingerprint = {
        models: {
          family: d.family,
          config: d.config,
          weights_sha256: d.weights_sha256,
          init_seed: spec!.weights ? null : spec!.initSeed,
          backbone: d.backbone,
          backbone_arch: d.backbone_arch,
          backbone_weights_sha256: d.backbone_weights_sha256,
          backbone_random: d.backbone === "timm" && !spec!.backboneWeights,
        },
      };
      const name = (d.config as { name?: string }).name ?? spec!.arch ?? spec!.family;
      backboneLabel = spec!.backbone === "timm"
        ? `${spec!.backboneArch}${spec!.backboneWeights ? "" : " (random weights)"}`
        : `${name} image tower${spec!.weights ? "" : " (random weights)"}`;
      textLabel = `${name} text tower${spec!.weights ? "" : " (random weights)"}`;
      pairingLabel = values.pairing
        ? `--pairing ${values.pairing}`
        : values["pair-weights"]
        ? `${values["pair-model"] ?? "clip"} ${values["pair-weights"]}`
        : `the text-side model`;
    }
    const dataset = ds!;
    const counts = dataset.splits.map((s) => `${s.name} ${s.labels.length}`).join(", ");
    say(
      `experiment: ${dataset.kind}:${dataset.root} (${dataset.classes.length} classes; ` +
        `${counts}); ${plan.length} runs (${variants.join(", ")} x seeds ${seeds.join(", ")}) ` +
        `into ${out} on ${gpu.adapter.description || "WebGPU"}`,
    );
    let bar: Progress | null = null, features: Progress | null = null;
    const result = await runExperiment(out, plan, {
      ...inputs,
      pairing,
      fingerprint: {
        ...fingerprint,
        dataset: datasetDigest(dataset),
        corpus: corpus?.sha256 ?? null,
        pairing: pairing ? pairingDigest(pairing) : null,
      },
      config: {
        args,
        demo,
        dataset: {
          kind: dataset.kind,
          root: dataset.root,
          classes: dataset.classes,
          splits: Object.fromEntries(dataset.splits.map((s) => [s.name, s.labels.length])),
        },
        corpus: corpus
          ? { path: resolve(corpus.path), sha256: corpus.sha256, reports: corpus.reports.length }
          : null,
        models: models?.describe ?? { demo: true },
        environment: { ...environmentInfo(), adapter: adapterInfo() },
      },
      about: {
        dataset: { kind: dataset.kind, root: dataset.root, classes: dataset.classes },
        backbone: backboneLabel,
        text_encoder: textLabel,
        pairing: pairingLabel,
        variants,
        settings,
        synthetic: demo,
      },
      labels: {
        backbone: backboneLabel,
        dataset: demo ? "synthetic world" : dataset.kind,
        title: demo ? "CLIP-IT experiment on the SYNTHETIC demo world" : "CLIP-IT experiment",
        notes: [
          `Dataset ${dataset.kind}:${dataset.root} (${dataset.classes.length} classes; ${counts}); ` +
          `text encoder: ${textLabel}; pairing: ${pairingLabel}.`,
          ...(demo
            ? ["Everything here is synthetic: the numbers say nothing about real pathology."]
            : []),
        ],
      },
    }, {
      signal,
      onRun: (e) => {
        bar = features = null;
        const what = { skip: "finished, skipped", resume: "resuming", start: "", restart: "" };
        say(
          `experiment: [${e.index + 1}/${e.total}] ${e.run.name}` +
            `${what[e.action] ? ` (${what[e.action]})` : ""}`,
        );
      },
      onRunDone: (run, r) => {
        if (r.test) {
          say(
            `experiment: ${run.name}: ${r.steps} steps; test balanced accuracy ` +
              `${(100 * r.test.balanced_accuracy).toFixed(2)}%`,
          );
        }
      },
      stageControl: (run) => ({
        onFeatures: (split, done, total) => {
          if (quiet) return;
          if (!features || features.label !== `features ${split}`) {
            features = new Progress(`features ${split}`, total, "images", quiet);
          }
          features.update(done);
        },
        onProgress: (p) => {
          if (quiet || p.phase !== "train") return;
          bar ??= new Progress(run.name, p.totalSteps, "steps", quiet);
          bar.update(
            p.step,
            `loss ${Number.isFinite(p.loss) ? p.loss.toFixed(4) : "-"}`,
          );
        },
      }),
    });
    console.log(result.markdown.trimEnd());
    console.log(`\nexperiment: wrote ${out}/results.md and ${out}/results.json`);
    return 0;
  } catch (e) {
    if (
      e instanceof TrainingInterrupted || e instanceof ExperimentInterrupted ||
      e instanceof PairingInterrupted
    ) {
      console.error(
        `experiment: ${e.message}; run the same command again to continue (finished runs are ` +
          `kept, the interrupted one resumes)`,
      );
      return 130;
    }
    if (e instanceof ExperimentMismatchError) {
      console.error(`experiment: ${e.message}`);
      return 2;
    }
    if (e instanceof NonFiniteLossError) {
      console.error(`experiment: ${e.message}`);
      return 1;
    }
    throw e;
  } finally {
    ctrlC.release();
  }
}
