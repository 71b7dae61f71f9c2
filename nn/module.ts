/**
 * `Module`: the base class of every layer and model, in the spirit of `torch.nn.Module`.
 *
 * A module owns tensors (parameters, which an optimiser trains, and buffers, which it does not)
 * and child modules. Names are PyTorch-style dotted paths, `blocks.0.attn.in_proj_weight`, so a
 * PyTorch / OpenCLIP state dict loads by name. A module finds its members two ways:
 * - registered: `this.param(name, t)`, `this.buffer(name, t)`, `this.child(name, m)` give a
 *   member an explicit name (useful when the PyTorch name is not a good TypeScript field name);
 * - discovered: any other field holding a Tensor (a parameter), a Module, or an array of Modules
 *   or Tensors (named `field.0`, `field.1`, ...). Fields whose names start with `_` are skipped.
 * A module's own tensors come first, then its children, each in field order (as PyTorch does).
 * A tensor reachable twice (tied weights) is listed once, under its first name.
 */
import { copyInto, writeTensor } from "./ops/inplace.ts";
import { keep, Tensor } from "./tensor.ts";

/** What a state dict entry may be: a GPU tensor, or CPU values with a shape. */
export type StateValue = Tensor | { shape: readonly number[]; data: Float32Array | Int32Array };

/** Options for {@link Module.loadStateDict}. */
export interface LoadOptions {
  /** Require the names to match exactly (default true). Shapes must always match. */
  strict?: boolean;
}

/** What {@link Module.loadStateDict} did not load (only non-empty when `strict` is false). */
export interface LoadResult {
  /** Module tensors that the state dict does not have (they keep their values). */
  missing: string[];
  /** State dict entries the module does not have (ignored). */
  unexpected: string[];
}

type Kind = "param" | "buffer" | "child";
type Member = { name: string; kind: Kind; value: Tensor | Module };

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * Compare the names and shapes a module expects (`want`) with those a source provides (`have`).
 * Throws, naming the first offending tensor, on a shape mismatch (always) or on a missing or
 * unexpected name (when `strict`). `where` prefixes the message (a file path, a function name).
 * Returns the names that are missing and unexpected.
 */
export function checkStateShapes(
  want: Map<string, readonly number[]>,
  have: Map<string, readonly number[]>,
  strict: boolean,
  where: string,
): LoadResult {
  const missing: string[] = [], unexpected: string[] = [];
  for (const [name, shape] of want) {
    const got = have.get(name);
    if (!got) missing.push(name);
    else if (!sameShape(shape, got)) {
      throw new Error(
        `${where}: tensor "${name}" has shape [${got}] in the source but [${shape}] in the module`,
      );
    }
  }
  for (const name of have.keys()) if (!want.has(name)) unexpected.push(name);
  if (strict && missing.length) {
    throw new Error(
      `${where}: tensor "${missing[0]}" [${want.get(missing[0])}] of the module is missing from ` +
        `the source (${missing.length} missing in all)`,
    );
  }
  if (strict && unexpected.length) {
    throw new Error(
      `${where}: tensor "${unexpected[0]}" [${have.get(unexpected[0])}] of the source is not in ` +
        `the module (${unexpected.length} unexpected in all)`,
    );
  }
  return { missing, unexpected };
}

/** The base class of layers and models. Subclasses define their own `forward`. */
export class Module {
  /** True in training mode (dropout active), false after `eval()`. */
  training = true;
  #registered = new Map<string, { kind: Kind; value: Tensor | Module }>();

  /**
   * Register `t` as a trainable parameter called `name` and return it: it gets
   * `requiresGrad = true`, is kept out of any enclosing `tidy()`, and is named for errors.
   */
  protected param(name: string, t: Tensor): Tensor {
    t.requiresGrad = true;
    t.name ||= name;
    this.#registered.set(name, { kind: "param", value: keep(t) });
    return t;
  }

  /** Register `t` as a buffer: saved and loaded with the state dict, never trained. */
  protected buffer(name: string, t: Tensor): Tensor {
    t.requiresGrad = false;
    t.name ||= name;
    this.#registered.set(name, { kind: "buffer", value: keep(t) });
    return t;
  }

  /** Register `m` as a child module called `name` and return it. */
  protected child<M extends Module>(name: string, m: M): M {
    this.#registered.set(name, { kind: "child", value: m });
    return m;
  }

  /** This module's direct members: own tensors first, then children, each in field order. */
  #members(): Member[] {
    const nameOf = new Map<Tensor | Module, Member>();
    for (const [name, { kind, value }] of this.#registered) {
      nameOf.set(value, { name, kind, value });
    }
    const found: Member[] = [];
    const seen = new Set<Tensor | Module>();
    const add = (m: Member) => {
      if (seen.has(m.value)) return;
      seen.add(m.value);
      found.push(nameOf.get(m.value) ?? m);
    };
    const fields = this as unknown as Record<string, unknown>;
    for (const key of Object.keys(this)) {
      if (key.startsWith("_")) continue;
      const v = fields[key];
      if (v instanceof Tensor) add({ name: key, kind: "param", value: v });
      else if (v instanceof Module) add({ name: key, kind: "child", value: v });
      else if (Array.isArray(v)) {
        v.forEach((e, i) => {
          if (e instanceof Tensor) add({ name: `${key}.${i}`, kind: "param", value: e });
          else if (e instanceof Module) add({ name: `${key}.${i}`, kind: "child", value: e });
        });
      }
    }
    // Registered members that no field holds (e.g. kept only in a local variable).
    for (const m of nameOf.values()) add(m);
    return [...found.filter((m) => m.kind !== "child"), ...found.filter((m) => m.kind === "child")];
  }

  #walk(prefix: string, out: Member[], seen: Set<Tensor | Module>): void {
    for (const m of this.#members()) {
      if (seen.has(m.value)) continue;
      seen.add(m.value);
      const name = prefix + m.name;
      out.push({ ...m, name });
      if (m.value instanceof Module) m.value.#walk(name + ".", out, seen);
    }
  }

  #all(prefix: string): Member[] {
    const out: Member[] = [];
    this.#walk(prefix ? prefix + "." : "", out, new Set([this]));
    return out;
  }

  /** Every parameter with its dotted name, e.g. `["blocks.0.attn.in_proj_weight", t]`. */
  namedParameters(prefix = ""): [string, Tensor][] {
    return this.#all(prefix)
      .filter((m) => m.kind === "param")
      .map((m) => [m.name, m.value as Tensor]);
  }

  /** Every parameter (frozen ones included; optimisers skip those without a gradient). */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** The parameters that currently require gradients (what an optimiser should train). */
  trainableParameters(): Tensor[] {
    return this.parameters().filter((t) => t.requiresGrad);
  }

  /** Every buffer with its dotted name. */
  namedBuffers(prefix = ""): [string, Tensor][] {
    return this.#all(prefix)
      .filter((m) => m.kind === "buffer")
      .map((m) => [m.name, m.value as Tensor]);
  }

  /** This module (named `prefix`, "" by default) and every descendant, with dotted names. */
  namedModules(prefix = ""): [string, Module][] {
    const sub = this.#all(prefix)
      .filter((m) => m.kind === "child")
      .map((m): [string, Module] => [m.name, m.value as Module]);
    return [[prefix, this], ...sub];
  }

  /** Total number of parameter elements. */
  numParameters(): number {
    return this.parameters().reduce((s, t) => s + t.size, 0);
  }

  /** Set training mode on this module and every descendant. Returns `this`. */
  train(on = true): this {
    for (const [, m] of this.namedModules()) m.training = on;
    return this;
  }

  /** Evaluation mode (dropout off) on this module and every descendant. Returns `this`. */
  eval(): this {
    return this.train(false);
  }

  /** Stop training every parameter (`requiresGrad = false`). Returns `this`. */
  freeze(): this {
    for (const t of this.parameters()) t.requiresGrad = false;
    return this;
  }

  /** Train every parameter again (`requiresGrad = true`). Returns `this`. */
  unfreeze(): this {
    for (const t of this.parameters()) t.requiresGrad = true;
    return this;
  }

  /**
   * Parameters and buffers by dotted name, in walk order. The values are the module's own
   * tensors (not copies): read them, do not dispose them.
   */
  stateDict(): Map<string, Tensor> {
    return new Map(
      this.#all("")
        .filter((m) => m.kind !== "child")
        .map((m) => [m.name, m.value as Tensor]),
    );
  }

  /**
   * Copy values into this module's tensors, by name. Every name and shape is checked before
   * anything is written: a shape mismatch always throws, naming the tensor and both shapes; with
   * `strict` (the default) a missing or unexpected name throws too. The module keeps its tensor
   * objects (an optimiser holding them stays valid); values are copied on the GPU, or uploaded
   * from CPU arrays.
   */
  loadStateDict(
    state: Map<string, StateValue> | Record<string, StateValue>,
    opts: LoadOptions = {},
  ): LoadResult {
    const src = state instanceof Map ? state : new Map(Object.entries(state));
    const own = this.stateDict();
    const result = checkStateShapes(
      new Map([...own].map(([k, t]) => [k, t.shape])),
      new Map([...src].map(([k, v]) => [k, v.shape])),
      opts.strict ?? true,
      `${this.constructor.name}.loadStateDict`,
    );
    for (const [name, dst] of own) {
      const v = src.get(name);
      if (!v) continue;
      const vType = v instanceof Tensor
        ? v.dtype
        : v.data instanceof Int32Array
        ? "int32"
        : "float32";
      if (vType !== dst.dtype) {
        throw new Error(
          `${this.constructor.name}.loadStateDict: tensor "${name}" is ${vType} in the source ` +
            `but ${dst.dtype} in the module`,
        );
      }
    }
    for (const [name, dst] of own) {
      const v = src.get(name);
      if (!v || dst.size === 0) continue;
      if (v instanceof Tensor) copyInto(dst, v);
      else writeTensor(dst, v.data);
    }
    return result;
  }

  /** Release every parameter and buffer (and their gradients). The module is unusable after. */
  dispose(): void {
    for (const t of this.stateDict().values()) t.dispose();
  }
}
