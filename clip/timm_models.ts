/**
 * The CLIP-IT paper's timm image models as built-in configurations, each the `config.json` its
 * hub repository carries (or, for kaiko.ai's torch-hub models, what their `hubconf.py` builds),
 * and {@link resolveTimmConfig}, which turns a name, an architecture or a file into a config.
 *
 * UNI, DINOv2 ViT-L/14 with registers, kaiko.ai's ViT-S/8, S/16, B/8, B/16 and L/14, and timm's
 * ImageNet ViT-B/16; clip/README.md says where each one's weights come from.
 */
import {
  IMAGENET_NORM,
  INCEPTION_NORM,
  loadTimmConfigFile,
  parseTimmConfig,
  TIMM_ARCHITECTURES,
  timmConfigFrom,
  type TimmVitConfig,
} from "./timm_config.ts";

/** A built-in model: its timm config.json contents and where its weights come from. */
export interface TimmBuiltin {
  /** The hub `config.json` equivalent. */
  config: Record<string, unknown>;
  /** Where to get the weights (for messages and the README). */
  weights: string;
}

const IMAGENET = IMAGENET_NORM;
const HALF = INCEPTION_NORM;

function kaiko(architecture: string, file: string): TimmBuiltin {
  // kaiko.ai's hubconf.py: create_model(arch, dynamic_img_size=True, num_classes=0); its README
  // preprocessing: Resize(224) (torchvision: bilinear), CenterCrop(224), mean = std = 0.5.
  return {
    config: {
      architecture,
      model_args: { dynamic_img_size: true, num_classes: 0 },
      pretrained_cfg: {
        input_size: [3, 224, 224],
        interpolation: "bilinear",
        crop_pct: 1.0,
        ...HALF,
        num_classes: 0,
      },
    },
    weights: `github.com/kaiko-ai/towards_large_pathology_fms releases 0.0.1: ${file}`,
  };
}

/**
 * The CLIP-IT paper's image models, as the `config.json` their hub repositories carry (or, for
 * kaiko.ai's torch-hub models, what their `hubconf.py` builds).
 */
export const TIMM_BUILTINS: Readonly<Record<string, TimmBuiltin>> = Object.freeze({
  // MahmoodLab/UNI (gated): the model card builds vit_large_patch16_224 with img_size=224,
  // patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True and normalises with
  // the ImageNet mean/std after Resize(224) (torchvision's default, bilinear).
  "uni": {
    config: {
      architecture: "vit_large_patch16_224",
      model_args: {
        img_size: 224,
        patch_size: 16,
        init_values: 1e-5,
        num_classes: 0,
        dynamic_img_size: true,
      },
      pretrained_cfg: {
        input_size: [3, 224, 224],
        interpolation: "bilinear",
        crop_pct: 1.0,
        ...IMAGENET,
        num_classes: 0,
      },
    },
    weights: "huggingface.co/MahmoodLab/UNI (gated): pytorch_model.bin",
  },
  // timm/vit_large_patch14_reg4_dinov2.lvd142m: 518 px, bicubic, crop_pct 1, ImageNet mean/std.
  "dinov2-vitl14-reg4": {
    config: {
      architecture: "vit_large_patch14_reg4_dinov2",
      num_classes: 0,
      pretrained_cfg: {
        input_size: [3, 518, 518],
        fixed_input_size: true,
        interpolation: "bicubic",
        crop_pct: 1.0,
        ...IMAGENET,
        num_classes: 0,
      },
    },
    weights: "huggingface.co/timm/vit_large_patch14_reg4_dinov2.lvd142m: model.safetensors",
  },
  "kaiko-vits8": kaiko("vit_small_patch8_224", "vits8.pth"),
  "kaiko-vits16": kaiko("vit_small_patch16_224", "vits16.pth"),
  "kaiko-vitb8": kaiko("vit_base_patch8_224", "vitb8.pth"),
  "kaiko-vitb16": kaiko("vit_base_patch16_224", "vitb16.pth"),
  // kaiko.ai's ViT-L/14 is a DINOv2-format checkpoint for vit_large_patch14_reg4_dinov2 at 518.
  "kaiko-vitl14": {
    config: {
      architecture: "vit_large_patch14_reg4_dinov2",
      pretrained_cfg: {
        input_size: [3, 518, 518],
        fixed_input_size: true,
        interpolation: "bilinear",
        crop_pct: 1.0,
        ...HALF,
        num_classes: 0,
      },
    },
    weights: "github.com/kaiko-ai/towards_large_pathology_fms releases 0.0.1: vitl14.pth",
  },
  // timm/vit_base_patch16_224.augreg2_in21k_ft_in1k (timm's default tag for the architecture).
  "vit-b16-imagenet": {
    config: {
      architecture: "vit_base_patch16_224",
      num_classes: 1000,
      pretrained_cfg: {
        input_size: [3, 224, 224],
        fixed_input_size: true,
        interpolation: "bicubic",
        crop_pct: 0.9,
        ...HALF,
        num_classes: 1000,
      },
    },
    weights: "huggingface.co/timm/vit_base_patch16_224.augreg2_in21k_ft_in1k: model.safetensors",
  },
});

/** The config of a built-in model by name; throws listing the names for an unknown one. */
export function timmBuiltin(name: string): TimmVitConfig {
  const b = TIMM_BUILTINS[name];
  if (!b) {
    throw new Error(
      `unknown timm model "${name}" (built-in: ${Object.keys(TIMM_BUILTINS).join(", ")})`,
    );
  }
  return parseTimmConfig(structuredClone(b.config), name);
}

/**
 * A config from a built-in name, a timm architecture name (built as `timm.create_model(name)`
 * does, with its default tag's pretrained config), or a path to a `config.json`.
 */
export async function resolveTimmConfig(spec: string): Promise<TimmVitConfig> {
  if (TIMM_BUILTINS[spec]) return timmBuiltin(spec);
  const arch = TIMM_ARCHITECTURES[spec];
  if (arch) return timmConfigFrom(spec, {}, { ...arch.defaultCfg }, spec);
  return await loadTimmConfigFile(spec);
}
