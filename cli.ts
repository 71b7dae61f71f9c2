/**
 * The command line: `deno run -A cli.ts <command> [options]`.
 *
 *   demo    train a one-block transformer on generated data (loss falls, accuracy rises)
 *   info    the WebGPU adapter: description, backend, features, limits
 *   data    inspect a dataset folder: counts per split and class, image sizes, unreadable files
 *   embed   CLIP image/text embeddings of a folder of images and a file of texts
 *   pair    CLIP-IT pairing: each image's top-k reports of a corpus, per split
 *   train   one training run: baseline, text-baseline, clipit or contrastive, into a run folder
 *   eval    metrics of run folders (mean +/- std across several)
 *   predict class probabilities of images from a run's model.safetensors (CSV)
 *   experiment  baseline, CLIP-IT and the ablations over seeds: the paper's table (resumable)
 *
 * Each command takes `--help`. Every command lives in its own file of cli/ (cli/progress.ts is
 * the progress bar they share); argument parsing, usage text and printing happen only here and
 * there, the library (mod.ts) takes typed options and returns values.
 */
import { dataCommand } from "./cli/data.ts";
import { demoCommand } from "./cli/demo.ts";
import { embedCommand } from "./cli/embed.ts";
import { infoCommand } from "./cli/info.ts";
import { pairCommand } from "./cli/pair.ts";
import { trainCommand } from "./cli/train.ts";
import { evalCommand } from "./cli/eval.ts";
import { predictCommand } from "./cli/predict.ts";
import { experimentCommand } from "./cli/experiment.ts";

const USAGE = `usage: deno run -A cli.ts <command> [options]

commands:
  demo    train a one-block transformer on generated data (loss falls, accuracy rises)
  info    the WebGPU adapter: description, backend, features, limits
  data    inspect a dataset: deno run -A cli.ts data --dataset crc|bach|pcam|folder|flat|csv --root DIR
  embed   CLIP embeddings: deno run -A cli.ts embed --arch ViT-B-16 --weights FILE|random
            [--images DIR] [--texts FILE] --out OUT.safetensors
  pair    CLIP-IT pairing: deno run -A cli.ts pair --dataset KIND --root DIR --corpus FILE
            --weights FILE|random [--arch NAME] --out DIR [--k 5] [--chunk]
  train   one run of a stage into a run folder: deno run -A cli.ts train --stage
            baseline|text-baseline|clipit|contrastive --dataset KIND --root DIR
            --weights FILE|random [--corpus FILE --pairing DIR] --out RUN (or --resume RUN)
  eval    metrics of run folders: deno run -A cli.ts eval RUN [RUN ...] [--out FILE]
  predict class probabilities: deno run -A cli.ts predict --model RUN/model.safetensors
            --images DIR --out OUT.csv
  experiment  the paper's table for a dataset and a backbone: baseline and CLIP-IT over seeds
            and the ablations, resumable: deno run -A cli.ts experiment --dataset KIND
            --root DIR --corpus FILE --weights FILE|random [--backbone timm ...] --out DIR
            (or --demo --out DIR: the synthetic world)

Benchmarks: deno task bench (kernels), deno task bench:compare (against tfjs-webgpu and
onnxruntime-web on the same adapter).`;

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  demo: demoCommand,
  info: infoCommand,
  data: dataCommand,
  embed: embedCommand,
  pair: pairCommand,
  train: trainCommand,
  eval: evalCommand,
  predict: predictCommand,
  experiment: experimentCommand,
};

if (import.meta.main) {
  const [cmd, ...rest] = Deno.args;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(USAGE);
    Deno.exit(cmd ? 0 : 2);
  }
  const run = COMMANDS[cmd];
  if (!run) {
    console.error(`unknown command "${cmd}"\n\n${USAGE}`);
    Deno.exit(2);
  }
  try {
    Deno.exit(await run(rest));
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    if (Deno.env.get("CLIPIT_DEBUG")) console.error(e);
    Deno.exit(1);
  }
}
