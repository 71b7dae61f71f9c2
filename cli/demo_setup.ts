/**
 * The synthetic world and the tiny CLIP that `cli.ts demo` and `cli.ts experiment --demo` share:
 * the world written as files (PNG tiles, a CSV manifest, a text corpus, the word tokenizer) and
 * opened as `cli.ts` opens real data, the tiny CLIP pretrained contrastively on the world's
 * paired split (shipped as cli/demo_clip.safetensors, made by `cli.ts demo --pretrain`; pretrained
 * anew when the world or the pretraining differ), and the model loaders the pipeline and the
 * pairing step need.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { adapterInfo } from "../kernels/device.ts";
import { writeFileAtomic } from "../nn/formats/safe_write.ts";
import { builtinConfig } from "../clip/config.ts";
import { ClipImageBackbone, ClipTextEncoder } from "../clip/backbone.ts";
import { loadClip, saveClip } from "../clip/load.ts";
import { ClipModel } from "../clip/model.ts";
import { type Corpus, readCorpus, sha256Hex } from "../clip/pairing_corpus.ts";
import type { PairingModel } from "../clip/pairing_run.ts";
import { preprocessImage } from "../clip/preprocess.ts";
import { WordTokenizer } from "../clip/word_tokenizer.ts";
import { type Dataset, openDataset } from "../train/data/datasets.ts";
import {
  World,
  WORLD_VERSION,
  type WorldManifest,
  type WorldOptions,
  writeWorld,
} from "../train/data/world.ts";
import { WORLD_CLASSES } from "../train/data/world_factors.ts";
import { pretrainClip } from "../train/pretrain.ts";
import { Progress } from "./progress.ts";

/** How the tiny CLIP is pretrained. */
export interface DemoPretrain {
  /** Optimisation steps. */
  steps: number;
  /** Pairs per batch. */
  batchSize: number;
  /** Learning rate. */
  lr: number;
  /** Seed of the initialisation and the batches. */
  seed: number;
}

/** Options of {@link prepareDemoWorld}. */
export interface DemoWorldOptions {
  /** The world. */
  world: WorldOptions;
  /** The tiny CLIP's pretraining. */
  pretrain: DemoPretrain;
  /** Write the world again even when an earlier run left the same one. */
  fresh: boolean;
  /** Pretrain the tiny CLIP now instead of using the shipped (or an earlier) one. */
  pretrainNow?: boolean;
  /** No progress bars or messages. */
  quiet: boolean;
  /** The prefix of the messages (the command's name). */
  label: string;
}

/** The tiny CLIP, loaded fresh, as the pipeline and the pairing step use it. */
export interface TinyClip {
  /** The whole model (dispose it when done: the towers share its weights). */
  clip: ClipModel;
  /** Its image tower. */
  backbone: ClipImageBackbone;
  /** Its text tower. */
  textEncoder: ClipTextEncoder;
  /** Its learned log temperature. */
  logitScale: number;
}

/** What {@link prepareDemoWorld} prepared. */
export interface DemoWorld {
  /** The world (it knows every sample's factors: the pipeline never asks). */
  world: World;
  /** The world's files. */
  manifest: WorldManifest;
  /** The labelled dataset (train / val / test), read from the CSV manifest. */
  dataset: Dataset;
  /** The world's word tokenizer. */
  tokenizer: WordTokenizer;
  /** The unpaired report corpus. */
  corpus: Corpus;
  /** The tiny CLIP's weights file. */
  clipPath: string;
  /** Seconds spent pretraining it (0 when reused). */
  pretrainSeconds: number;
  /** Where the tiny CLIP came from, in words. */
  clipOrigin: string;
  /** A fresh copy of the tiny CLIP. */
  loadTiny(): Promise<TinyClip>;
  /** The tiny CLIP as the pairing model, and what releases it. */
  pairingModel(): Promise<{ model: PairingModel; dispose: () => void }>;
}

function say(quiet: boolean, line: string): void {
  if (!quiet) console.error(line);
}

/** The tiny CLIP that ships with the demo, and what it was made from (its sidecar JSON). */
const SHIPPED_CLIP = fileURLToPath(new URL("./demo_clip.safetensors", import.meta.url));
const SHIPPED_CLIP_INFO = SHIPPED_CLIP.replace(/\.safetensors$/, ".json");

/** What a pretrained tiny CLIP depends on: the world, the pretraining and the architecture. */
function clipKey(world: World, pretrain: DemoPretrain): string {
  return sha256Hex(
    JSON.stringify({
      world: world.options,
      version: WORLD_VERSION,
      PRETRAIN: pretrain,
      config: "demo-tiny",
    }),
  );
}

/**
 * Pretrain the tiny CLIP on the world's paired split (in memory: no files needed) and save it,
 * with a sidecar JSON saying what it was made from, to `path`. Returns the seconds it took.
 */
async function pretrainTinyClip(
  path: string,
  world: World,
  tok: WordTokenizer,
  pretrain: DemoPretrain,
  quiet: boolean,
): Promise<number> {
  const t0 = performance.now();
  const config = { ...builtinConfig("demo-tiny") };
  config.text = { ...config.text, vocabSize: tok.vocabSize };
  const S = config.vision.imageSize, ctx = config.text.contextLength;
  const n = world.size("pretrain");
  const images = new Float32Array(n * 3 * S * S);
  const reports: string[] = [];
  for (let i = 0; i < n; i++) {
    const s = world.sample("pretrain", i);
    images.set(
      preprocessImage(s.image, { size: S, mean: config.mean, std: config.std }),
      i * 3 * S * S,
    );
    reports.push(s.report);
  }
  const clip = new ClipModel(config, { seed: pretrain.seed });
  const bar = new Progress("pretrain CLIP", pretrain.steps, "steps", quiet);
  const loss = await pretrainClip(clip, { images, ids: tok.tokenize(reports, ctx), count: n }, {
    ...pretrain,
    onProgress: (step, l) => bar.update(step, `InfoNCE ${l.toFixed(3)}`),
  });
  await saveClip(clip, path);
  clip.dispose();
  const seconds = (performance.now() - t0) / 1000;
  await writeFileAtomic(
    path.replace(/\.safetensors$/, ".json"),
    JSON.stringify(
      {
        key: clipKey(world, pretrain),
        note: "The demo's tiny CLIP, pretrained contrastively on the synthetic world's paired " +
          "split by `deno run -A cli.ts demo --pretrain`",
        world: world.options,
        world_version: WORLD_VERSION,
        pretrain,
        final_infonce: loss,
        seconds,
        adapter: adapterInfo().description,
      },
      null,
      2,
    ) + "\n",
  );
  return seconds;
}

/**
 * The tiny CLIP: the one shipped beside this file when it was made from this world and this
 * pretraining (the usual case), else one pretrained earlier into `dir` with the same key, else
 * pretrained now into `dir`. `pretrain` forces the last.
 */
async function tinyClip(
  dir: string,
  world: World,
  tok: WordTokenizer,
  pretrain: DemoPretrain,
  force: boolean,
  quiet: boolean,
): Promise<{ path: string; seconds: number; why: string }> {
  const key = clipKey(world, pretrain);
  const path = join(dir, "model.safetensors");
  if (!force) {
    for (
      const [file, info, shipped] of [
        [SHIPPED_CLIP, SHIPPED_CLIP_INFO, true],
        [path, path.replace(/\.safetensors$/, ".json"), false],
      ] as const
    ) {
      try {
        const meta = JSON.parse(await Deno.readTextFile(info));
        if (meta.key !== key) continue;
        await Deno.stat(file);
        const made = `pretrained by \`cli.ts demo --pretrain\` in ` +
          `${Number(meta.seconds).toFixed(0)} s on ${meta.adapter}; final InfoNCE ` +
          `${Number(meta.final_infonce).toFixed(3)}`;
        return {
          path: file,
          seconds: 0,
          why: shipped ? `shipped with the demo (${made})` : `reused from ${file} (${made})`,
        };
      } catch {
        // not there (or unreadable): the next candidate
      }
    }
  }
  await Deno.mkdir(dir, { recursive: true });
  const seconds = await pretrainTinyClip(path, world, tok, pretrain, quiet);
  return {
    path,
    seconds,
    why: force
      ? `pretrained now (--pretrain) in ${seconds.toFixed(1)} s`
      : `pretrained now in ${seconds.toFixed(1)} s (the shipped one was made from another world)`,
  };
}

/**
 * Write the world into `out/world` and get the tiny CLIP into `out/clip` (both reused from an
 * earlier run unless `fresh`); needs the GPU initialised. Prints what it did unless `quiet`.
 */
export async function prepareDemoWorld(out: string, opts: DemoWorldOptions): Promise<DemoWorld> {
  const { quiet, label } = opts;
  // 1. The world, written as files.
  const world = new World(opts.world);
  const worldDir = join(out, "world");
  const wbar = new Progress("world", 1, "images", quiet);
  const manifest = await writeWorld(worldDir, opts.world, {
    force: opts.fresh,
    // The tiny CLIP pretrains from the World in memory: its paired tiles need no files.
    pretrainImages: false,
    onProgress: (done, total) => {
      wbar.total = total;
      wbar.update(done);
    },
  });
  const ds = await openDataset("csv", join(worldDir, manifest.files.labels), {
    classes: [...WORLD_CLASSES],
  });
  const tok = WordTokenizer.fromJSON(
    JSON.parse(await Deno.readTextFile(join(worldDir, manifest.files.tokenizer))),
  );
  const corpus = await readCorpus(join(worldDir, manifest.files.corpus));
  say(
    quiet,
    `${label}: world of ${ds.classes.length} classes (${ds.classes.join(", ")}): ` +
      ds.splits.map((s) => `${s.name} ${s.labels.length}`).join(", ") +
      `; ${manifest.counts.pretrain.total} paired tiles for pretraining; corpus of ` +
      `${corpus.reports.length} unpaired reports`,
  );

  // 2. The tiny CLIP.
  const clipDir = join(out, "clip");
  const pre = await tinyClip(clipDir, world, tok, opts.pretrain, opts.pretrainNow ?? false, quiet);
  say(quiet, `${label}: the tiny CLIP is ${pre.why}`);
  const loadTiny = async (): Promise<TinyClip> => {
    const clip = await loadClip(pre.path);
    return {
      clip,
      backbone: ClipImageBackbone.fromClip(clip),
      textEncoder: new ClipTextEncoder(clip),
      logitScale: await clip.logit_scale.item(),
    };
  };
  const pairingModel = async () => {
    const { clip, backbone, textEncoder } = await loadTiny();
    const model: PairingModel = {
      image: backbone,
      text: textEncoder,
      tokenizer: tok,
      identity: {
        name: "demo-tiny",
        weights: pre.path,
        weightsSha256: null,
        config: JSON.stringify(clip.config),
        tokenizer: join(worldDir, manifest.files.tokenizer),
        tokenizerSha256: sha256Hex(JSON.stringify(tok.toJSON())),
      },
    };
    return { model, dispose: () => clip.dispose() };
  };
  return {
    world,
    manifest,
    dataset: ds,
    tokenizer: tok,
    corpus,
    clipPath: pre.path,
    pretrainSeconds: pre.seconds,
    clipOrigin: pre.why,
    loadTiny,
    pairingModel,
  };
}
