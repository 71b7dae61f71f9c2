/**
 * A run folder, as PyTorch Lightning and open_clip keep them: one folder per training run with
 *
 * - `config.json`: every option of the run, the versions (Deno, V8, TypeScript, this project's
 *   git commit when known) and the adapter, written once at the start (atomically);
 * - `metrics.jsonl`: one JSON object per line, appended as the run goes (`type` "train" per
 *   logged step, "val" per validation, "test" at the end; see train/report.ts for the shapes);
 * - `last.ckpt.safetensors`: the training checkpoint to resume from (train/checkpoint.ts);
 * - `best.ckpt.safetensors`: the checkpoint of the best validation so far;
 * - `model.safetensors`: the inference checkpoint (LoRA merged), `report.html`, `eval.json`.
 *
 * A resumed run keeps its folder: metrics logged after the checkpoint it resumes from are cut,
 * so the log reads as one uninterrupted run.
 */
import { join } from "node:path";
import { checkOutputPath, writeFileAtomic } from "../nn/formats/safe_write.ts";

/** The files of a run folder, by role. */
export const RUN_FILES = {
  config: "config.json",
  metrics: "metrics.jsonl",
  last: "last.ckpt.safetensors",
  best: "best.ckpt.safetensors",
  model: "model.safetensors",
  report: "report.html",
  eval: "eval.json",
} as const;

/** One line of `metrics.jsonl`. */
export type MetricsRecord = { type: string; step?: number } & Record<string, unknown>;

/** An open run folder. */
export class RunDir {
  /** The folder. */
  readonly dir: string;
  /** The run's configuration (what `config.json` holds). */
  readonly config: Record<string, unknown>;
  #encoder = new TextEncoder();

  private constructor(dir: string, config: Record<string, unknown>) {
    this.dir = dir;
    this.config = config;
  }

  /** The path of a file of the run folder. */
  path(name: string): string {
    return join(this.dir, name);
  }

  /**
   * Create a new run folder `dir` (it must not exist, or be empty) and write `config.json`.
   * Throws naming `label` (the option that named the folder) when it cannot.
   */
  static async create(
    dir: string,
    config: Record<string, unknown>,
    label = "--out",
  ): Promise<RunDir> {
    try {
      const st = await Deno.lstat(dir);
      if (!st.isDirectory) throw new Error(`${label} ${dir}: exists and is not a folder`);
      for await (const _ of Deno.readDir(dir)) {
        throw new Error(
          `${label} ${dir}: the folder is not empty; choose a new run folder, or continue that ` +
            `run with --resume ${dir}`,
        );
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      await Deno.mkdir(dir, { recursive: true });
    }
    const run = new RunDir(dir, config);
    await checkOutputPath(run.path(RUN_FILES.config), { label });
    await writeFileAtomic(run.path(RUN_FILES.config), JSON.stringify(config, null, 2) + "\n", {
      label,
    });
    return run;
  }

  /** Open an existing run folder (to resume or evaluate it); reads its `config.json`. */
  static async open(dir: string, label = "--resume"): Promise<RunDir> {
    let text: string;
    try {
      text = await Deno.readTextFile(join(dir, RUN_FILES.config));
    } catch (e) {
      throw new Error(`${label} ${dir}: not a run folder (${(e as Error).message})`);
    }
    let config: Record<string, unknown>;
    try {
      config = JSON.parse(text);
    } catch (e) {
      throw new Error(`${label} ${join(dir, RUN_FILES.config)}: ${(e as Error).message}`);
    }
    return new RunDir(dir, config);
  }

  /** Whether the run folder has a file. */
  async has(name: string): Promise<boolean> {
    try {
      return (await Deno.stat(this.path(name))).isFile;
    } catch {
      return false;
    }
  }

  /** Append records to `metrics.jsonl` (one line each). */
  async log(...records: MetricsRecord[]): Promise<void> {
    if (records.length === 0) return;
    const text = records.map((r) => JSON.stringify(r, finite)).join("\n") + "\n";
    await Deno.writeFile(this.path(RUN_FILES.metrics), this.#encoder.encode(text), {
      append: true,
      create: true,
    });
  }

  /** The records of `metrics.jsonl` (a torn last line, from a crash, is left out). */
  async metrics(): Promise<MetricsRecord[]> {
    let text = "";
    try {
      text = await Deno.readTextFile(this.path(RUN_FILES.metrics));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
    const out: MetricsRecord[] = [];
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      try {
        out.push(JSON.parse(line));
      } catch {
        // a line cut by a crash
      }
    }
    return out;
  }

  /**
   * Keep only the records a resumed run has not redone: training and validation records up to
   * `step` (inclusive); later ones (and any "test" record) are dropped, atomically.
   */
  async truncateMetrics(step: number): Promise<void> {
    const kept = (await this.metrics()).filter((r) =>
      r.type !== "test" && (typeof r.step !== "number" || r.step <= step)
    );
    await writeFileAtomic(
      this.path(RUN_FILES.metrics),
      kept.map((r) => JSON.stringify(r, finite) + "\n").join(""),
    );
  }
}

/** JSON.stringify replacer: NaN and Infinity become strings instead of a silent `null`. */
function finite(_key: string, value: unknown): unknown {
  return typeof value === "number" && !Number.isFinite(value) ? String(value) : value;
}

/** Versions and environment recorded in every `config.json`. */
export function environmentInfo(): Record<string, unknown> {
  return {
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
    os: Deno.build.os,
    arch: Deno.build.arch,
  };
}
