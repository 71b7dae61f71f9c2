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
 * Layers of the library, lowest first; each imports only from the layers before it
 * (tests/layering_test.ts enforces it):
 * - formats (nn/formats/): file formats on the CPU, importing nothing else of the project:
 *   safetensors, `torch.save` checkpoints (zip + pickle), HDF5, PNG/JPEG/TIFF decoding.
 * - kernels: the WebGPU device, the buffer pool and the WGSL kernels. Only the device, the
 *   adapter information and the runtime counters are exported here.
 * - nn: tensors, autograd, ops (with in-place `copyInto` / `writeTensor`), modules and layers,
 *   LoRA, optimisers, checkpoints, cosine top-k retrieval.
 * - clip: tokenizer, configs, the image and text towers, checkpoint loading, preprocessing,
 *   embedding loops, CLIP-IT's pairing step (pairing files, corpus, caches, top-k reports).
 * - train: datasets and the worker-pool data loader (train/data/, with the demo's synthetic
 *   world), and CLIP-IT: the model and loss, the stage-2, stage-1 and contrastive trainers, the
 *   shared training loop, run folders and checkpoints, inference checkpoints, metrics, reports.
 *
 * Above nn nothing writes WGSL or touches a GPU buffer, and this surface exports no raw WGSL
 * mapping or kernel view. The command line (cli.ts, cli/) is a client of this surface.
 * @module
 */

// ---- formats: file formats (CPU only) ---------------------------------------------------------
export * from "./nn/formats/safetensors.ts";
export {
  type LoadedTensor,
  loadTorchCheckpoint,
  type TorchCheckpointOptions,
  type TorchDtype,
} from "./nn/formats/torch.ts";
export {
  type DecodedImage,
  decodeImage,
  GRAY16_NOTE,
  ImageDecodeError,
  type ImageHeader,
  type ProbedFormat,
  probeImage,
  readImage,
} from "./nn/formats/image.ts";
export {
  checkOutputPath,
  type InputRef,
  type OutputData,
  type OutputOptions,
  writeFileAtomic,
} from "./nn/formats/safe_write.ts";
export { checkInputFile, type InputOptions } from "./nn/formats/input_file.ts";
export {
  decodeTextLines,
  MAX_TEXT_BYTES,
  readTextLines,
  type TextLines,
  type TextOptions,
} from "./nn/formats/text.ts";

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
export type { MatmulKind, MatmulPreference, TileMode, Tuning } from "./kernels/tune.ts";
export type { FlashTile } from "./kernels/attention_tiled.ts";

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
export { cosineTopK, type CosineTopKOptions, type TopK } from "./nn/retrieval.ts";
export {
  applyLora,
  loadLora,
  loadLoraStateDict,
  LoraAdapter,
  loraAdapters,
  type LoraHost,
  type LoraOptions,
  type LoraSite,
  loraStateDict,
  mergeLora,
  saveLora,
} from "./nn/lora.ts";

// ---- clip: tokenizer, towers, checkpoints, preprocessing, embedding loops ----------------------
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
export {
  checkClipConfigFits,
  type ClipMemoryEstimate,
  estimateClipMemory,
  hostMemoryBytes,
  type MemoryLimits,
  type MemoryTerm,
  type Towers,
} from "./clip/config_check.ts";
export { ClipModel, type ClipModelOptions } from "./clip/model.ts";
export {
  PatchEmbedding,
  type TowerOptions,
  Transformer,
  VisionTransformer,
} from "./clip/vision.ts";
export { TextTransformer } from "./clip/text.ts";
export {
  ClipImageBackbone,
  ClipTextEncoder,
  type ImageBackbone,
  type TextEncoder,
  type TextTokenizer,
} from "./clip/backbone.ts";
export { loadClip, type LoadClipOptions, saveClip } from "./clip/load.ts";
export {
  loadTimmConfigFile,
  parseTimmConfig,
  TIMM_ARCHITECTURES,
  type TimmArchitecture,
  type TimmGlobalPool,
  type TimmVitConfig,
} from "./clip/timm_config.ts";
export {
  resolveTimmConfig,
  TIMM_BUILTINS,
  type TimmBuiltin,
  timmBuiltin,
} from "./clip/timm_models.ts";
export {
  LayerScale,
  PatchProjection,
  TimmAttention,
  TimmBlock,
  TimmMlp,
  TimmPatchEmbed,
  TimmVisionTransformer,
  type TimmVitOptions,
} from "./clip/timm_vit.ts";
export {
  loadTimm,
  type LoadTimmOptions,
  loadTimmWeights,
  type TimmLoadReport,
  type TimmPlanOptions,
} from "./clip/timm_load.ts";
export { type GridInterpolation, interpolationMatrix, resampleGrid } from "./clip/interpolate.ts";
export {
  AttentionalPooler,
  type ConchConfig,
  ConchImageBackbone,
  ConchModel,
  ConchText,
  ConchTextEncoder,
  ConchVisual,
  CrossAttention,
} from "./clip/conch.ts";
export {
  CONCH_VIT_B16,
  conchBuiltin,
  type ConchLoadReport,
  loadConch,
  loadConchWeights,
  parseConchConfig,
  resolveConchConfig,
} from "./clip/conch_load.ts";
export { type BpeTemplate, ByteLevelBpeTokenizer, ConchTokenizer } from "./clip/conch_tokenizer.ts";
export {
  centerCrop,
  IMAGENET_MEAN,
  IMAGENET_STD,
  OPENAI_CLIP_MEAN,
  OPENAI_CLIP_STD,
  type PixelBox,
  preprocessImage,
  type PreprocessOptions,
  resizeBicubic,
  resizeBicubicWindow,
  resizeShortSideBicubic,
  resizeShortSideCenterCrop,
  toNormalizedCHW,
} from "./clip/preprocess.ts";
export {
  embedImageBatches,
  type EmbedProgress,
  embedTexts,
  type EmbedTextsOptions,
  type EmbedTokenizer,
  type ImageBatch,
} from "./clip/embed.ts";
export {
  datasetFingerprint,
  formatPairing,
  type Pairing,
  PAIRING_FORMAT,
  type PairingExpectation,
  pairingFileName,
  type PairingHeader,
  type PairingRows,
  randomPairing,
  readPairing,
  round6,
  type ScoreStats,
  scoreStats,
} from "./clip/pairing.ts";
export {
  cachedSha256File,
  type Corpus,
  parseCorpus,
  readCorpus,
  sha256File,
  sha256Hex,
} from "./clip/pairing_corpus.ts";
export {
  canWindow,
  type CorpusEmbeddings,
  embedCorpus,
  type EmbedCorpusOptions,
  normalizeRows,
  tokenWindows,
  type WindowTokenizer,
} from "./clip/pairing_text.ts";
export {
  embedSplitImages,
  type EmbedSplitOptions,
  type ImageRangeSource,
  type PairingSplit,
  type SplitEmbeddings,
} from "./clip/pairing_images.ts";
export {
  type Histogram,
  histogram,
  MAX_K,
  type ReportTopK,
  topKReports,
} from "./clip/pairing_match.ts";
export {
  modelKey,
  type PairingDataset,
  type PairingModel,
  type PairingModelIdentity,
  type PairingProgress,
  type PairingSummary,
  runPairing,
  type RunPairingOptions,
  type SplitSummary,
  type UsedReport,
} from "./clip/pairing_run.ts";

// ---- train: datasets and loaders -------------------------------------------------------------
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
} from "./train/data/datasets.ts";
export {
  type BadImage,
  type Batch,
  type CpuBatch,
  DataLoader,
  type LoaderOptions,
  type OnBadImage,
} from "./train/data/loader.ts";
export type { AugmentOptions } from "./train/data/augment.ts";
export {
  type ListDuplicate,
  listImages,
  type ListImagesOptions,
  type ListProblem,
} from "./train/data/files.ts";
export {
  loaderImageSource,
  type LoaderSourceOptions,
  pairingDataset,
  pairingIds,
  pairingSplit,
} from "./train/data/pairing_source.ts";

// ---- train: CLIP-IT --------------------------------------------------------------------------
export {
  type ClipItLoss,
  clipItLoss,
  ClipItModel,
  type ClipItModelOptions,
  type ClipItOutput,
  distillLoss,
  rowCosine,
  textTargets,
} from "./train/clipit.ts";
export {
  type ClipItResult,
  type ClipItSettings,
  clipItTrainables,
  type ClipItTrainInputs,
  type LoraSettings,
  makeOptimizer,
  makeSchedule,
  type OptimSettings,
  type RunControl,
  trainClipIt,
} from "./train/clipit_train.ts";
export {
  computeFeatures,
  type FeatureOptions,
  type FeatureSplit,
  type HeadInputs,
  type HeadKind,
  type HeadResult,
  makeHead,
  trainHead,
} from "./train/stage1.ts";
export {
  type ContrastiveInputs,
  infoNce,
  sharedReportTargets,
  trainContrastive,
} from "./train/contrastive.ts";
export { pretrainClip, type PretrainOptions, type PretrainPairs } from "./train/pretrain.ts";
export {
  type LoopHooks,
  type LoopOptions,
  type LoopProgress,
  type LoopResult,
  type LoopState,
  NonFiniteLossError,
  type StepOutput,
  TrainingInterrupted,
  trainLoop,
  type ValResult,
} from "./train/loop.ts";
export { loadTrainState, saveTrainState, type TrainStateMeta } from "./train/checkpoint.ts";
export { environmentInfo, type MetricsRecord, RUN_FILES, RunDir } from "./train/run.ts";
export {
  type BackboneSpec,
  backboneSpec,
  buildBackbone,
  type InferenceMeta,
  loadInferenceModel,
  saveInferenceModel,
} from "./train/models.ts";
export {
  type BatchOutput,
  type ImageBatch as PredictBatch,
  labelsOf,
  meanCrossEntropy,
  predictBatches,
  type Predictions,
  reportOf,
  softmaxRows,
} from "./train/evaluate.ts";
export {
  readHead,
  runStage,
  type SplitPairing,
  type Stage,
  type StageInputs,
  type StageResult,
  STAGES,
  tokenizeCorpus,
  writeRunReport,
} from "./train/pipeline.ts";
export {
  type AggregateReport,
  aggregateRuns,
  type AurocResult,
  type ClassAggregate,
  type ClassificationReport,
  classificationReport,
  type ClassMetrics,
  type MeanStd,
} from "./train/metrics.ts";
export {
  type ComparisonRow,
  formatAggregateTable,
  formatComparisonTable,
  formatReportTable,
  type TableOptions,
} from "./train/metrics_table.ts";
export {
  type MetricsRecord as ReportMetricsRecord,
  renderReport,
  type ReportData,
  type ReportSample,
  type RgbImage,
  type TestRecord,
  type TrainRecord,
  type ValRecord,
} from "./train/report.ts";
export {
  World,
  WORLD_SPLITS,
  type WorldManifest,
  type WorldOptions,
  type WorldSample,
  type WorldSplit,
  writeWorld,
  type WriteWorldOptions,
} from "./train/data/world.ts";
export {
  CLASS_SUPPORTS,
  type ClassSupport,
  type Factors,
  WORLD_CLASSES,
} from "./train/data/world_factors.ts";
export { WordTokenizer, type WordTokenizerJson } from "./clip/word_tokenizer.ts";
export {
  DEFAULT_LORA_TARGETS,
  LORA_ROLES,
  type LoraRole,
  loraRole,
  loraTargetFilter,
  parseLoraTargets,
} from "./clip/lora_targets.ts";
