/**
 * clip-it-webgpu: a WebGPU deep-learning engine with hand-written WGSL kernels and a minimal
 * autograd, and on it the CLIP-IT method for histology image classification.
 *
 * ```ts
 * import { backward, init, matmul, sum, tanh, tensor } from "./mod.ts";
 * await init();
 * const w = tensor([0.5, -1, 2, 0.25], [2, 2], { requiresGrad: true });
 * const loss = sum(tanh(matmul(tensor([1, 2, 3, 4], [2, 2]), w)));
 * backward(loss);
 * console.log(await loss.toArray(), await w.grad!.toArray());
 * ```
 *
 * Layers of the library, lowest first: kernels (device, buffer pool, WGSL) <- nn (tensors,
 * autograd, ops, modules, optimisers, safetensors) <- clip (tokenizer, towers, checkpoints,
 * preprocessing, LoRA) <- train (decoding, datasets, loaders).
 * @module
 */

// ---- kernels: the device and the runtime ----------------------------------------------------
export {
  type AdapterDescription,
  adapterInfo,
  type Gpu,
  GpuError,
  init,
  type InitOptions,
  NoAdapterError,
} from "./kernels/device.ts";
export { counters, flush, type PoolStats, poolStats, sync } from "./kernels/runtime.ts";
export type { MatmulKind, TileMode, Tuning } from "./kernels/tune.ts";

// ---- nn: tensors, autograd, ops, modules, optimisers ------------------------------------------
export * from "./nn/tensor.ts";
export {
  backward,
  type BackwardOptions,
  detach,
  isGradEnabled,
  needsGrad,
  type Node,
  noGrad,
  record,
} from "./nn/autograd.ts";
export * from "./nn/ops/index.ts";
export * from "./nn/module.ts";
export * from "./nn/layers.ts";
export * from "./nn/optim.ts";
export * from "./nn/checkpoint.ts";
export * from "./nn/safetensors.ts";
export { cosineTopK, type CosineTopKOptions, type TopK } from "./nn/retrieval.ts";

// ---- clip: tokenizer, towers, checkpoints, preprocessing, LoRA --------------------------------
export { ClipTokenizer, eotPositions } from "./clip/tokenizer.ts";
export {
  BUILTIN_CONFIGS,
  builtinConfig,
  type ClipActivation,
  type ClipConfig,
  resolveArch,
  type TextConfig,
  type VisionConfig,
} from "./clip/config.ts";
export { ClipModel, type ClipModelOptions } from "./clip/model.ts";
export {
  PatchEmbedding,
  type TowerOptions,
  Transformer,
  VisionTransformer,
} from "./clip/vision.ts";
export { TextTransformer } from "./clip/text.ts";
export { loadClip, type LoadClipOptions, saveClip } from "./clip/load.ts";
export {
  type LoadedTensor,
  loadTorchCheckpoint,
  type TorchCheckpointOptions,
  type TorchDtype,
} from "./clip/torch_pickle.ts";
export {
  applyLora,
  loadLora,
  LoraAdapter,
  loraAdapters,
  type LoraHost,
  type LoraOptions,
  type LoraSite,
  mergeLora,
  saveLora,
} from "./clip/lora.ts";
export type { DecodedImage } from "./clip/image.ts";
export {
  centerCrop,
  IMAGENET_MEAN,
  IMAGENET_STD,
  OPENAI_CLIP_MEAN,
  OPENAI_CLIP_STD,
  preprocessImage,
  type PreprocessOptions,
  resizeShortSideBicubic,
  toNormalizedCHW,
} from "./clip/preprocess.ts";

// ---- train: decoding, datasets, loaders --------------------------------------------------------
export { decodeImage, ImageDecodeError, readImage } from "./train/decode.ts";
export {
  type Dataset,
  DATASET_KINDS,
  DatasetError,
  type DatasetKind,
  type DatasetOptions,
  openDataset,
  type SampleSource,
  type Split,
  SPLIT_NAMES,
  type SplitName,
} from "./train/datasets.ts";
export {
  type BadImage,
  type Batch,
  type CpuBatch,
  DataLoader,
  type LoaderOptions,
  type OnBadImage,
} from "./train/loader.ts";
export type { AugmentOptions } from "./train/augment.ts";
