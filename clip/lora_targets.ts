/**
 * Which LoRA sites of a backbone or text encoder get an adapter, by role: `attn` (the attention
 * in- and out-projections: OpenCLIP's packed `attn.in_proj` + `attn.out_proj`, timm's
 * `attn.qkv` + `attn.proj`), `mlp` (`mlp.c_fc`/`c_proj`, timm's `mlp.fc1`/`fc2`), `embedding`
 * (the token embedding), `patch` (the patch-embedding convolution) and `proj` (the final
 * projection matrices, `visual.proj` / `text_projection`).
 *
 * The default is DESIGN.md's "every Linear (attention in/out included), Embedding and the
 * patch-embed Conv2d": `attn,mlp,embedding,patch`. The final projections of CLIP are plain
 * parameters, not modules, so PEFT cannot adapt them; they are left out by default so that a run
 * here and a PEFT run adapt the same weights, and `proj` adds them.
 */
import type { LoraSite } from "../nn/lora.ts";

/** The kinds of weights a LoRA adapter can go on. */
export const LORA_ROLES = ["attn", "mlp", "embedding", "patch", "proj"] as const;
/** One of {@link LORA_ROLES}. */
export type LoraRole = typeof LORA_ROLES[number];
/** The default targets: every Linear, the token Embedding and the patch embedding. */
export const DEFAULT_LORA_TARGETS: readonly LoraRole[] = ["attn", "mlp", "embedding", "patch"];

const RULES: [RegExp, LoraRole][] = [
  [/\.attn\.(in_proj|out_proj|qkv|proj)$/, "attn"],
  [/\.mlp\.(c_fc|c_proj|fc1|fc2)$/, "mlp"],
  [/(^|\.)token_embedding$/, "embedding"],
  [/(^|\.)(conv1|patch_embed\.proj)$/, "patch"],
  [/(^|\.)(proj|text_projection)$/, "proj"],
];

/** The role of a site, from its name; throws for a site no rule knows (a new model's naming). */
export function loraRole(site: Pick<LoraSite, "name">): LoraRole {
  for (const [re, role] of RULES) if (re.test(site.name)) return role;
  throw new Error(`LoRA site "${site.name}" has no known role (${LORA_ROLES.join(", ")})`);
}

/** Parse `attn,mlp,...` (or `all`); throws naming an unknown role. */
export function parseLoraTargets(spec: string): LoraRole[] {
  if (spec.trim() === "all") return [...LORA_ROLES];
  const roles = spec.split(",").map((s) => s.trim()).filter(Boolean);
  if (roles.length === 0) throw new Error(`--lora-targets: empty list`);
  for (const r of roles) {
    if (!(LORA_ROLES as readonly string[]).includes(r)) {
      throw new Error(
        `--lora-targets: unknown target "${r}" (use ${LORA_ROLES.join(", ")} or all)`,
      );
    }
  }
  return roles as LoraRole[];
}

/** A site filter for `applyLora` that keeps the sites whose role is in `targets`. */
export function loraTargetFilter(targets: readonly LoraRole[]): (site: LoraSite) => boolean {
  const set = new Set(targets);
  return (site) => set.has(loraRole(site));
}
