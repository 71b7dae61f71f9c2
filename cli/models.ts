/**
 * Loading the models a command names: the tokenizer beside the weights (or given), a CLIP
 * (OpenCLIP / Hugging Face checkpoint, or random weights), CONCH, a timm backbone, and what a
 * pairing file or a run's config records about them.
 */
import { fileURLToPath } from "node:url";
import { Rng } from "../nn/rng.ts";
import { ClipImageBackbone, ClipTextEncoder } from "../clip/backbone.ts";
import { configToJson, resolveArch } from "../clip/config.ts";
import { ConchImageBackbone, ConchModel, ConchTextEncoder } from "../clip/conch.ts";
import { loadConchWeights, resolveConchConfig } from "../clip/conch_load.ts";
import { ConchTokenizer } from "../clip/conch_tokenizer.ts";
import { checkpointConfig, loadClipCheckpoint, openTensorSource } from "../clip/load.ts";
import { ClipModel } from "../clip/model.ts";
import { cachedSha256File, sha256File, sha256Hex } from "../clip/pairing_corpus.ts";
import type { PairingModel } from "../clip/pairing_run.ts";
import { ClipTokenizer } from "../clip/tokenizer.ts";
import { WordTokenizer } from "../clip/word_tokenizer.ts";
import type { ImageBackbone, TextEncoder, TextTokenizer } from "../clip/backbone.ts";
import type { TimmVitConfig } from "../clip/timm_config.ts";
import { resolveTimmConfig } from "../clip/timm_models.ts";
import { loadTimm } from "../clip/timm_load.ts";
import { TimmVisionTransformer } from "../clip/timm_vit.ts";

/** Where the tokenizer is: the flag, beside the weights, or the shared CLIP merges file. */
export async function findTokenizer(
  flag: string | undefined,
  weights: string | null,
): Promise<string> {
  if (flag) return flag;
  const candidates: string[] = [];
  if (weights) {
    let dir = weights;
    try {
      if (!(await Deno.stat(weights)).isDirectory) {
        dir = weights.includes("/") ? weights.slice(0, weights.lastIndexOf("/")) : ".";
      }
    } catch {
      dir = ".";
    }
    candidates.push(`${dir}/vocab.json`, `${dir}/bpe_simple_vocab_16e6.txt.gz`);
  }
  candidates.push(
    fileURLToPath(
      new URL("../../shared/data/clip-bpe/bpe_simple_vocab_16e6.txt.gz", import.meta.url),
    ),
  );
  for (const c of candidates) {
    try {
      await Deno.stat(c);
      return c.endsWith("/vocab.json") ? c.slice(0, -"/vocab.json".length) : c;
    } catch {
      // next candidate
    }
  }
  throw new Error(
    `no tokenizer found (tried ${candidates.join(", ")}); pass --tokenizer PATH to CLIP's ` +
      `bpe_simple_vocab_16e6.txt.gz or a folder with vocab.json + merges.txt`,
  );
}

/** A digest of the tokenizer's files (a folder: vocab.json + merges.txt). */
export async function tokenizerDigest(path: string): Promise<string> {
  if ((await Deno.stat(path)).isDirectory) {
    const parts = await Promise.all(
      ["vocab.json", "merges.txt"].map((f) => sha256File(`${path}/${f}`)),
    );
    return sha256Hex(parts.join(","));
  }
  return await sha256File(path);
}

/** CONCH's tokenizer file: the flag, or a known name beside the weights. */
export async function findConchTokenizer(flag: string | undefined, weights: string | null) {
  if (flag) return flag;
  const tried: string[] = [];
  if (weights) {
    let dir = weights;
    if (!(await Deno.stat(weights)).isDirectory) {
      dir = weights.includes("/") ? weights.slice(0, weights.lastIndexOf("/")) : ".";
    }
    for (const name of ["conch_byte_level_bpe_uncased.json", "tokenizer.json"]) {
      tried.push(`${dir}/${name}`);
      try {
        if ((await Deno.stat(`${dir}/${name}`)).isFile) return `${dir}/${name}`;
      } catch {
        // next
      }
    }
  }
  throw new Error(
    `no CONCH tokenizer found${tried.length ? ` (tried ${tried.join(", ")})` : ""}: pass ` +
      `--tokenizer PATH to CONCH's tokenizer.json`,
  );
}

/** Build the pairing model (weights loaded) and what the files record about it. */
export async function loadPairingModel(
  family: "clip" | "conch",
  arch: string | undefined,
  weights: string | null,
  tokenizerFlag: string | undefined,
  initSeed: number,
  cacheDir: string,
): Promise<{ model: PairingModel; dispose: () => void }> {
  const memo = `${cacheDir}/sha256.json`;
  let weightsFile: string | null = null;
  if (weights) {
    const src = await openTensorSource(weights);
    weightsFile = src.path;
    src.close();
  }
  const weightsLabel = weights ?? `random (seed ${initSeed})`;
  if (family === "clip") {
    const config = weights ? await checkpointConfig(weights, arch) : await resolveArch(arch!);
    const tokPath = await findTokenizer(tokenizerFlag, weights);
    const tokenizer = await loadClipFamilyTokenizer(tokPath);
    if (tokenizer.vocabSize > config.text.vocabSize) {
      throw new Error(
        `the tokenizer ${tokPath} has ${tokenizer.vocabSize} tokens but the ${config.name} model ` +
          `only ${config.text.vocabSize}: wrong --tokenizer for this model`,
      );
    }
    const weightsSha256 = weightsFile ? await cachedSha256File(weightsFile, memo) : null;
    const tokenizerSha256 = await tokenizerDigest(tokPath);
    const clip = new ClipModel(config, { seed: initSeed });
    try {
      if (weights) await loadClipCheckpoint(clip, weights);
    } catch (e) {
      clip.dispose();
      throw e;
    }
    return {
      model: {
        image: ClipImageBackbone.fromClip(clip),
        text: new ClipTextEncoder(clip),
        tokenizer,
        identity: {
          name: config.name,
          weights: weightsLabel,
          weightsSha256,
          config: configToJson(config),
          tokenizer: tokPath,
          tokenizerSha256,
        },
      },
      dispose: () => clip.dispose(),
    };
  }
  const config = await resolveConchConfig(arch ?? "conch_ViT-B-16");
  const tokPath = await findConchTokenizer(tokenizerFlag, weights);
  const tokenizer = await ConchTokenizer.fromFile(tokPath);
  if (tokenizer.vocabSize > config.text.vocabSize) {
    throw new Error(
      `the tokenizer ${tokPath} has ${tokenizer.vocabSize} tokens but the ${config.name} model ` +
        `only ${config.text.vocabSize}: wrong --tokenizer for this model`,
    );
  }
  const weightsSha256 = weightsFile ? await cachedSha256File(weightsFile, memo) : null;
  const tokenizerSha256 = await sha256File(tokPath);
  const conch = new ConchModel(config, { rng: new Rng(initSeed) });
  try {
    if (weights) await loadConchWeights(conch, weights);
  } catch (e) {
    conch.dispose();
    throw e;
  }
  return {
    model: {
      image: new ConchImageBackbone(conch),
      text: new ConchTextEncoder(conch),
      tokenizer,
      identity: {
        name: config.name,
        weights: weightsLabel,
        weightsSha256,
        config: JSON.stringify(config),
        tokenizer: tokPath,
        tokenizerSha256,
      },
    },
    dispose: () => conch.dispose(),
  };
}

/**
 * The tokenizer of a CLIP-family model at `path`: CLIP's BPE (merges `.txt.gz`, or a folder with
 * `vocab.json` + `merges.txt`), or a word tokenizer's JSON (`{"type": "word", ...}`, what the
 * demo world writes as `tokenizer.json`).
 */
export async function loadClipFamilyTokenizer(
  path: string,
): Promise<ClipTokenizer | WordTokenizer> {
  if (path.endsWith(".json")) {
    let json: unknown;
    try {
      json = JSON.parse(await Deno.readTextFile(path));
    } catch (e) {
      throw new Error(`--tokenizer ${path}: ${(e as Error).message}`);
    }
    try {
      return WordTokenizer.fromJSON(json);
    } catch (e) {
      throw new Error(`--tokenizer ${path}: ${(e as Error).message}`);
    }
  }
  return await ClipTokenizer.load(path);
}

/**
 * This user's cache folder for the project (`$XDG_CACHE_HOME/clip-it-webgpu`, else
 * `~/.cache/clip-it-webgpu`, else a folder in the system's temporary directory), created when
 * missing. It holds small, rebuildable things: the weights' SHA-256 memo.
 */
export async function userCacheDir(): Promise<string> {
  const env = (k: string) => {
    try {
      return Deno.env.get(k) || undefined;
    } catch {
      return undefined;
    }
  };
  const base = env("XDG_CACHE_HOME") ?? (env("HOME") ? `${env("HOME")}/.cache` : undefined);
  const dir = base ? `${base}/clip-it-webgpu` : `${Deno.makeTempDirSync()}/clip-it-webgpu`;
  await Deno.mkdir(dir, { recursive: true });
  return dir;
}

/** What `cli.ts train` is told about its models. */
export interface TrainModelSpec {
  /** The CLIP-like model whose text tower is distilled from (and whose image tower is the
   * default backbone): "clip" (OpenCLIP / Hugging Face) or "conch". */
  family: "clip" | "conch";
  /** Its architecture (a built-in name or a config file); default: beside the weights. */
  arch?: string;
  /** Its weights, or null for random weights (seeded by `initSeed`). */
  weights: string | null;
  /** Its tokenizer (default: found beside the weights). */
  tokenizer?: string;
  /** Seed of random weights. */
  initSeed: number;
  /** The image backbone: the CLIP's own image tower, or a timm ViT. */
  backbone: "clip" | "timm";
  /** timm: a built-in name (uni, dinov2-vitl14-reg4, kaiko-vits16, ...) or a config.json. */
  backboneArch?: string;
  /** timm: the backbone's weights (.safetensors, .bin, .pth); null = random. */
  backboneWeights?: string | null;
}

/** Models for training runs, checked once and built fresh for every run. */
export interface TrainModels {
  /** The text encoder's tokenizer (absent when the stage reads no text). */
  tokenizer?: TextTokenizer;
  /** A fresh backbone, text encoder and the CLIP's log temperature, weights loaded. */
  load(): Promise<{ backbone: ImageBackbone; textEncoder: TextEncoder; logitScale: number }>;
  /** Identifies the backbone's weights (for feature caches). */
  backboneKey: string;
  /** What config.json records about the models. */
  describe: Record<string, unknown>;
  /** Things the user should know about these models (printed by the command). */
  notes: string[];
}

/**
 * Resolve every model file of `spec` (configs, the tokenizer when `needsText`, checkpoints'
 * headers and hashes) so a typo fails before any work, and return a loader that builds fresh
 * models for each run.
 */
export async function prepareTrainModels(
  spec: TrainModelSpec,
  needsText = true,
): Promise<TrainModels> {
  // Not in the run folder: it must be created empty, after every check has passed.
  const memo = `${await userCacheDir()}/sha256.json`;
  const hashOf = async (path: string | null | undefined) => {
    if (!path) return null;
    const src = await openTensorSource(path);
    const file = src.path;
    src.close();
    return await cachedSha256File(file, memo);
  };
  const weightsSha = await hashOf(spec.weights);
  let tokenizer: TextTokenizer | undefined, tokPath: string | null = null;
  let build: () => Promise<{ image: ImageBackbone; text: TextEncoder; logitScale: number }>;
  let describe: Record<string, unknown>;
  if (spec.family === "clip") {
    const config = spec.weights
      ? await checkpointConfig(spec.weights, spec.arch)
      : await resolveArch(spec.arch!);
    if (needsText) {
      const path = tokPath = await findTokenizer(spec.tokenizer, spec.weights);
      const clipTok = await loadClipFamilyTokenizer(path);
      if (clipTok.vocabSize > config.text.vocabSize) {
        throw new Error(
          `the tokenizer ${path} has ${clipTok.vocabSize} tokens but the ${config.name} model ` +
            `only ${config.text.vocabSize}: wrong --tokenizer for this model`,
        );
      }
      tokenizer = clipTok;
    }
    build = async () => {
      const clip = new ClipModel(config, { seed: spec.initSeed });
      try {
        if (spec.weights) await loadClipCheckpoint(clip, spec.weights);
      } catch (e) {
        clip.dispose();
        throw e;
      }
      const logitScale = await clip.logit_scale.item();
      return {
        image: ClipImageBackbone.fromClip(clip),
        text: new ClipTextEncoder(clip),
        logitScale,
      };
    };
    describe = { family: "clip", config };
  } else {
    const config = await resolveConchConfig(spec.arch ?? "conch_ViT-B-16");
    if (needsText) {
      tokPath = await findConchTokenizer(spec.tokenizer, spec.weights);
      tokenizer = await ConchTokenizer.fromFile(tokPath);
    }
    build = async () => {
      const conch = new ConchModel(config, { rng: new Rng(spec.initSeed) });
      try {
        if (spec.weights) await loadConchWeights(conch, spec.weights);
      } catch (e) {
        conch.dispose();
        throw e;
      }
      return {
        image: new ConchImageBackbone(conch),
        text: new ConchTextEncoder(conch),
        logitScale: await conch.logit_scale.item(),
      };
    };
    describe = { family: "conch", config };
  }
  if (spec.family === "conch" && spec.backbone === "clip") {
    throw new Error(
      "--model conch: CONCH's image tower (an attentional pooler over a timm trunk) is not a " +
        "CLIP-IT backbone here; train a timm backbone with --backbone timm --backbone-arch ...",
    );
  }
  let timmConfig: TimmVitConfig | null = null;
  if (spec.backbone === "timm") {
    if (!spec.backboneArch) {
      throw new Error("--backbone timm needs --backbone-arch NAME|config.json");
    }
    timmConfig = await resolveTimmConfig(spec.backboneArch);
  }
  const backboneSha = spec.backbone === "timm" ? await hashOf(spec.backboneWeights) : weightsSha;
  const backboneKey = `${spec.backbone}:${
    spec.backbone === "timm" ? spec.backboneArch : spec.arch ?? ""
  }:${backboneSha ?? `random-${spec.initSeed}`}`;
  const notes: string[] = [];
  if (timmConfig && timmConfig.interpolation !== "bicubic") {
    notes.push(
      `${spec.backboneArch}'s config resizes with ${timmConfig.interpolation} interpolation; the ` +
        "data loader resizes bicubic (PIL's), so its inputs differ slightly from timm's transform",
    );
  }
  return {
    tokenizer,
    notes,
    backboneKey,
    describe: {
      ...describe,
      weights: spec.weights ?? `random (seed ${spec.initSeed})`,
      weights_sha256: weightsSha,
      tokenizer: tokPath,
      backbone: spec.backbone,
      backbone_arch: spec.backboneArch ?? null,
      backbone_weights: spec.backboneWeights ?? null,
      backbone_weights_sha256: spec.backbone === "timm" ? backboneSha : null,
    },
    async load() {
      const m = await build();
      if (!timmConfig) return { backbone: m.image, textEncoder: m.text, logitScale: m.logitScale };
      const backbone = spec.backboneWeights
        ? await loadTimm(spec.backboneWeights, { arch: timmConfig })
        : new TimmVisionTransformer(timmConfig, { rng: new Rng(spec.initSeed) });
      return { backbone, textEncoder: m.text, logitScale: m.logitScale };
    },
  };
}
