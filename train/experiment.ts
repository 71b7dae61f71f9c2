/**
 * The paper's experiment for one dataset and one backbone: the unimodal baseline and CLIP-IT
 * over several seeds, and the ablations (no LoRA, random pairing, lambda = 0; optionally the
 * text branch off and contrastive fine-tuning), each a normal run folder
 * `<out>/<variant>-s<seed>` (train/pipeline.ts `runStage`), CLIP-IT's `fc` (and the ablations')
 * started from the same seed's baseline head. After every run `results.json` and `results.md`
 * (train/experiment_results.ts) are rewritten, so the table is always current.
 *
 * Resuming: a run with `eval.json` is finished and skipped; a run with a checkpoint
 * (`last.ckpt.safetensors`) and no `eval.json` was interrupted and is resumed; a run folder
 * with only a `config.json` (stopped before its first checkpoint) starts again. Each run's
 * `config.json` records the experiment's fingerprint (stage, settings, and what the caller says
 * the inputs are: dataset, corpus, models, pairing); a rerun whose fingerprint differs from a
 * stored run's is refused ({@link ExperimentMismatchError}) instead of mixing two experiments in
 * one table.
 */
import { join } from "node:path";
import { writeFileAtomic } from "../nn/formats/safe_write.ts";
import type { ClipItSettings, RunControl } from "./clipit_train.ts";
import type { SplitName } from "./data/datasets.ts";
import {
  type ExperimentSummary,
  formatExperimentMarkdown,
  type RunOutcome,
  summarizeExperiment,
  type VariantInfo,
} from "./experiment_results.ts";
import type { ClassificationReport } from "./metrics.ts";
import {
  randomSplitPairing,
  runStage,
  type SplitPairing,
  type Stage,
  type StageInputs,
  type StageResult,
} from "./pipeline.ts";
import { RUN_FILES, RunDir } from "./run.ts";

/** The variants an experiment can run. */
export const VARIANTS = [
  "baseline",
  "clipit",
  "no-lora",
  "random-pairing",
  "lambda0",
  "no-text-branch",
  "contrastive",
] as const;
/** One of {@link VARIANTS}. */
export type Variant = typeof VARIANTS[number];

/** What `cli.ts experiment` runs by default: the baseline, CLIP-IT and the paper's ablations. */
export const DEFAULT_VARIANTS: readonly Variant[] = [
  "baseline",
  "clipit",
  "no-lora",
  "random-pairing",
  "lambda0",
];

/** How a variant differs from CLIP-IT. */
interface VariantDef extends VariantInfo {
  /** Which reports the images are paired with: the pairing's top-1, random ones, or none. */
  pairing: "top1" | "random" | "none";
  /** `fc` starts from the same seed's baseline head. */
  initHead: boolean;
  /** The variant's settings from CLIP-IT's. */
  settings(s: ClipItSettings): ClipItSettings;
}

/** The variants (the paper's ablations are CLIP-IT with one thing changed). */
export const VARIANT_DEFS: Readonly<Record<Variant, VariantDef>> = Object.freeze({
  baseline: {
    title: "unimodal (frozen backbone + linear head)",
    stage: "baseline",
    pairing: "none",
    initHead: false,
    settings: (s) => s,
  },
  clipit: {
    title: "CLIP-IT",
    stage: "clipit",
    pairing: "top1",
    initHead: true,
    settings: (s) => s,
  },
  "no-lora": {
    title: "CLIP-IT without LoRA (heads only)",
    stage: "clipit",
    pairing: "top1",
    initHead: true,
    settings: (s) => ({ ...s, lora: { ...s.lora, enabled: false } }),
  },
  "random-pairing": {
    title: "CLIP-IT with random pairing",
    stage: "clipit",
    pairing: "random",
    initHead: true,
    settings: (s) => s,
  },
  lambda0: {
    title: "CLIP-IT with lambda = 0 (no distillation)",
    stage: "clipit",
    pairing: "top1",
    initHead: true,
    settings: (s) => ({ ...s, lambda: 0 }),
  },
  "no-text-branch": {
    title: "CLIP-IT without the text branch (no h_t, no fusion)",
    stage: "clipit",
    pairing: "top1",
    initHead: true,
    settings: (s) => ({ ...s, textBranch: false }),
  },
  contrastive: {
    title: "contrastive fine-tuning + linear probe",
    stage: "contrastive",
    pairing: "top1",
    initHead: false,
    settings: (s) => s,
  },
});

/** One run of the plan. */
export interface PlannedRun {
  /** `<variant>-s<seed>`: its folder's name. */
  name: string;
  /** The variant. */
  variant: Variant;
  /** The seed (settings.seed). */
  seed: number;
  /** Its run folder. */
  dir: string;
  /** The stage it trains. */
  stage: Stage;
  /** Its settings (seed included). */
  settings: ClipItSettings;
  /** The baseline run's `model.safetensors` to start `fc` from, or null. */
  initHead: string | null;
  /** Which pairing it uses. */
  pairing: VariantDef["pairing"];
}

/** Settings of an experiment: CLIP-IT's (the ablations derive from them) and the baseline's. */
export interface ExperimentSettings {
  /** CLIP-IT's settings (also the contrastive variant's). */
  clipit: ClipItSettings;
  /** The baseline's (a linear head on cached features: other epochs and batch size fit it). */
  baseline: ClipItSettings;
}

/**
 * The runs of an experiment in order: per seed, the baseline first (the others start from its
 * head), then the other variants in {@link VARIANTS} order. The baseline is always included.
 * @throws RangeError for no seeds, a repeated seed or an unknown variant.
 */
export function planExperiment(
  out: string,
  variants: readonly string[],
  seeds: readonly number[],
  settings: ExperimentSettings,
): PlannedRun[] {
  if (seeds.length === 0) throw new RangeError("an experiment needs at least one seed");
  if (new Set(seeds).size !== seeds.length) throw new RangeError(`repeated seed in ${seeds}`);
  for (const v of variants) {
    if (!(VARIANTS as readonly string[]).includes(v)) {
      throw new RangeError(`unknown variant "${v}" (use ${VARIANTS.join(", ")})`);
    }
  }
  const chosen = VARIANTS.filter((v) => v === "baseline" || variants.includes(v));
  const plan: PlannedRun[] = [];
  for (const seed of seeds) {
    for (const variant of chosen) {
      const def = VARIANT_DEFS[variant];
      const base = def.stage === "baseline" ? settings.baseline : settings.clipit;
      plan.push({
        name: `${variant}-s${seed}`,
        variant,
        seed,
        dir: join(out, `${variant}-s${seed}`),
        stage: def.stage,
        settings: { ...def.settings(base), seed },
        initHead: def.initHead ? join(out, `baseline-s${seed}`, RUN_FILES.model) : null,
        pairing: def.pairing,
      });
    }
  }
  return plan;
}

/** What the runs of an experiment train on. */
export interface ExperimentInputs extends Omit<StageInputs, "initHead" | "pairing"> {
  /** The pairing (its top-1) per split; needed unless only the baseline runs. */
  pairing?: Partial<Record<SplitName, SplitPairing>>;
  /**
   * What the runs are computed from besides their settings (dataset, corpus, models, pairing:
   * contents, not paths): stored in each run's config.json and compared on a rerun.
   */
  fingerprint: Record<string, unknown>;
  /** More to record in each run's config.json (command, arguments, environment). */
  config?: Record<string, unknown>;
  /** What results.json / results.md say about the experiment. */
  about?: Record<string, unknown>;
  /** Labels of the markdown's paper-style row. */
  labels?: { backbone?: string; dataset?: string; title?: string; notes?: string[] };
}

/** What happens to a planned run. */
export type RunAction = "skip" | "resume" | "start" | "restart";

/** Progress of an experiment, one event per run. */
export interface ExperimentEvent {
  /** The run. */
  run: PlannedRun;
  /** Its position in the plan (0-based) and the plan's length. */
  index: number;
  /** Runs in the plan. */
  total: number;
  /** What is done with it. */
  action: RunAction;
}

/** Options of {@link runExperiment}. */
export interface ExperimentControl {
  /** Stop (Ctrl-C): the run in progress writes a resumable checkpoint; no further run starts. */
  signal?: AbortSignal;
  /** Before each run. */
  onRun?: (e: ExperimentEvent) => void;
  /** After each run that trained (not a skipped one). */
  onRunDone?: (run: PlannedRun, result: StageResult) => void;
  /** Progress hooks for the run about to start (training, features, test). */
  stageControl?: (
    run: PlannedRun,
  ) => Omit<RunControl, "resume" | "signal"> & {
    onFeatures?: (split: string, done: number, total: number) => void;
  };
}

/** A rerun whose options or inputs differ from a stored run of the same experiment folder. */
export class ExperimentMismatchError extends Error {
  /** Builds the error for the run folder `dir` and the fields that differ. */
  constructor(readonly dir: string, readonly fields: string[]) {
    super(
      `${dir} was run with other options or inputs (${fields.slice(0, 6).join(", ")}${
        fields.length > 6 ? `, ... ${fields.length - 6} more` : ""
      } differ); choose a new --out for a new experiment, or remove that run folder to redo it`,
    );
    this.name = "ExperimentMismatchError";
  }
}

/** The stopped experiment: the signal fired between runs (no run was in progress). */
export class ExperimentInterrupted extends Error {
  /** Builds the error naming the next run that did not start. */
  constructor(readonly next: string) {
    super(`interrupted before ${next}`);
    this.name = "ExperimentInterrupted";
  }
}

/** A JSON value with object keys sorted (a canonical form to compare). */
function canonical(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === "object") {
    return Object.fromEntries(
      Object.keys(v).sort().filter((k) => (v as Record<string, unknown>)[k] !== undefined)
        .map((k) => [k, canonical((v as Record<string, unknown>)[k])]),
    );
  }
  return v;
}

/** Dotted paths where two JSON values differ. */
function differences(a: unknown, b: unknown, path = ""): string[] {
  if (JSON.stringify(a) === JSON.stringify(b)) return [];
  const isObj = (x: unknown) => x !== null && typeof x === "object" && !Array.isArray(x);
  if (isObj(a) && isObj(b)) {
    const keys = [...new Set([...Object.keys(a as object), ...Object.keys(b as object)])].sort();
    return keys.flatMap((k) =>
      differences(
        (a as Record<string, unknown>)[k],
        (b as Record<string, unknown>)[k],
        path ? `${path}.${k}` : k,
      )
    );
  }
  return [path || "(all)"];
}

/** The fingerprint of a planned run: what must be equal for a stored run to count. */
function runFingerprint(run: PlannedRun, inputs: ExperimentInputs): unknown {
  // Decoding workers change nothing that is computed.
  const { workers: _workers, ...settings } = run.settings;
  return canonical({
    variant: run.variant,
    stage: run.stage,
    settings,
    init_head: run.initHead !== null,
    pairing: run.pairing,
    inputs: inputs.fingerprint,
  });
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

async function isEmptyDir(dir: string): Promise<boolean> {
  for await (const _ of Deno.readDir(dir)) return false;
  return true;
}

/**
 * What to do with a planned run, from its folder: skip (finished), resume (checkpoint), restart
 * (our config.json only) or start (no folder, or an empty one). Refuses a folder that is not
 * this experiment's run.
 */
async function runState(
  run: PlannedRun,
  fingerprint: unknown,
): Promise<{ action: RunAction; dir?: RunDir }> {
  if (!(await exists(run.dir)) || await isEmptyDir(run.dir)) return { action: "start" };
  if (!(await exists(join(run.dir, RUN_FILES.config)))) {
    throw new Error(
      `${run.dir}: exists but is not a run folder (no ${RUN_FILES.config}); move it away`,
    );
  }
  const dir = await RunDir.open(run.dir, "experiment");
  const stored = (dir.config.experiment as { fingerprint?: unknown } | undefined)?.fingerprint;
  if (stored === undefined) {
    throw new Error(`${run.dir}: a run folder of something else than an experiment; move it away`);
  }
  const diff = differences(canonical(stored), fingerprint);
  if (diff.length) throw new ExperimentMismatchError(run.dir, diff);
  if (await dir.has(RUN_FILES.eval)) return { action: "skip", dir };
  if (await dir.has(RUN_FILES.last)) return { action: "resume", dir };
  return { action: "restart", dir };
}

/** The test reports of the plan's runs that finished (eval.json), null for the others. */
export async function readOutcomes(plan: readonly PlannedRun[]): Promise<RunOutcome[]> {
  const out: RunOutcome[] = [];
  for (const run of plan) {
    let report: ClassificationReport | null = null;
    try {
      report = JSON.parse(await Deno.readTextFile(join(run.dir, RUN_FILES.eval)));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new Error(`${join(run.dir, RUN_FILES.eval)}: ${(e as Error).message}`);
      }
    }
    out.push({ name: run.name, variant: run.variant, seed: run.seed, report });
  }
  return out;
}

/** The results of the plan as they stand: summary, markdown, and both written into `out`. */
export async function writeExperimentResults(
  out: string,
  plan: readonly PlannedRun[],
  about: Record<string, unknown> = {},
  labels: ExperimentInputs["labels"] = {},
): Promise<{ summary: ExperimentSummary; markdown: string }> {
  const summary = summarizeExperiment(await readOutcomes(plan), VARIANT_DEFS, about);
  const markdown = formatExperimentMarkdown(summary, labels);
  await writeFileAtomic(join(out, "results.json"), JSON.stringify(summary, null, 2) + "\n");
  await writeFileAtomic(join(out, "results.md"), markdown);
  return { summary, markdown };
}

/**
 * Run (or continue) the experiment `plan` in `out` (see the module comment) and return its
 * results. Throws {@link ExperimentMismatchError} before any training when a stored run differs,
 * train/loop.ts's `TrainingInterrupted` when the signal stopped a run (its checkpoint is
 * written), {@link ExperimentInterrupted} when it fired between runs, and whatever a run throws.
 */
export async function runExperiment(
  out: string,
  plan: readonly PlannedRun[],
  inputs: ExperimentInputs,
  control: ExperimentControl = {},
): Promise<{ summary: ExperimentSummary; markdown: string }> {
  const needsTest = inputs.dataset.splits.some((s) => s.name === "test");
  if (!needsTest) {
    throw new Error(
      `${inputs.dataset.kind}:${inputs.dataset.root} has no test split: an experiment reports ` +
        `test metrics (set a test fraction)`,
    );
  }
  if (plan.some((r) => r.pairing === "top1") && !inputs.pairing) {
    throw new Error("the experiment's CLIP-IT runs need a pairing");
  }
  if (plan.some((r) => r.pairing !== "none") && !inputs.corpus) {
    throw new Error("the experiment's CLIP-IT runs need a corpus");
  }
  await Deno.mkdir(out, { recursive: true });
  // Every stored run is checked before anything trains.
  const states = [];
  for (const run of plan) states.push(await runState(run, runFingerprint(run, inputs)));
  const write = () => writeExperimentResults(out, plan, inputs.about, inputs.labels);
  await write();
  for (let i = 0; i < plan.length; i++) {
    const run = plan[i];
    let state = states[i];
    if (state.action !== "skip" && control.signal?.aborted) {
      throw new ExperimentInterrupted(run.name);
    }
    // A run folder may have changed state since the check (an earlier run of this loop cannot
    // touch it, but read it again: cheap, and exact).
    state = await runState(run, runFingerprint(run, inputs));
    control.onRun?.({ run, index: i, total: plan.length, action: state.action });
    if (state.action === "skip") continue;
    if (run.initHead && !(await exists(run.initHead))) {
      throw new Error(`${run.name}: the baseline head ${run.initHead} is missing`);
    }
    let dir: RunDir;
    if (state.action === "resume") dir = state.dir!;
    else {
      if (state.action === "restart") await Deno.remove(run.dir, { recursive: true });
      dir = await RunDir.create(run.dir, {
        command: "experiment",
        experiment: {
          name: run.name,
          variant: run.variant,
          seed: run.seed,
          fingerprint: runFingerprint(run, inputs),
        },
        stage: run.stage,
        settings: run.settings,
        init_head: run.initHead,
        pairing: run.pairing,
        ...inputs.config,
        created: new Date().toISOString(),
      }, "experiment");
    }
    const pairing = run.pairing === "none"
      ? undefined
      : run.pairing === "random"
      ? randomSplitPairing(inputs.dataset, inputs.corpus!.reports.length, run.seed)
      : inputs.pairing;
    const result = await runStage(
      dir,
      run.stage,
      { ...inputs, pairing, initHead: run.initHead ?? undefined },
      run.settings,
      {
        ...control.stageControl?.(run),
        resume: state.action === "resume",
        signal: control.signal,
      },
    );
    control.onRunDone?.(run, result);
    await write();
  }
  return await write();
}
