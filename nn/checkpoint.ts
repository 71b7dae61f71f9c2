/**
 * Saving and loading a module's state dict as a safetensors file (the format PyTorch and Hugging
 * Face use), by PyTorch-style dotted names. float32 tensors are stored as F32, int32 as I32.
 */
import { writeTensor } from "./ops/inplace.ts";
import { checkStateShapes, type LoadResult, type Module } from "./module.ts";
import {
  assertFinite,
  SafetensorsFile,
  type SafetensorsTensor,
  writeSafetensors,
} from "./formats/safetensors.ts";

/**
 * Write every parameter and buffer of `module` to `path` (atomically: a crash leaves any old file
 * intact), with optional string `metadata` in the header. Reads the tensors back from the GPU
 * (all at once, one wait).
 */
export async function saveModule(
  module: Module,
  path: string,
  metadata?: Record<string, string>,
): Promise<void> {
  const state = [...module.stateDict()];
  const values = await Promise.all(state.map(([, t]) => t.toArray()));
  const tensors: Record<string, SafetensorsTensor> = {};
  state.forEach(([name, t], i) => {
    const data = values[i];
    tensors[name] = data instanceof Int32Array
      ? { dtype: "I32", shape: [...t.shape], data }
      : { dtype: "F32", shape: [...t.shape], data };
  });
  await writeSafetensors(path, tensors, metadata);
}

/** Options for {@link loadModule}. */
export interface LoadModuleOptions {
  /** Require the file's tensor names to match the module's exactly (default true). */
  strict?: boolean;
}

/** What {@link loadModule} found besides the tensors it loaded. */
export interface LoadModuleResult extends LoadResult {
  /** The file's `__metadata__` strings. */
  metadata: Record<string, string>;
}

/**
 * Load `path` (safetensors) into `module`'s parameters and buffers, by name. Every name and shape
 * is checked against the file's header before any data is read: a shape mismatch throws naming
 * the file, the tensor and both shapes; with `strict` (default) so does a missing or unexpected
 * name. F16, BF16 and F64 are converted to float32 (a NaN or infinite value throws, naming the
 * tensor); I32 and I64 load into int32 buffers. With
 * `strict: false` the result lists what was missing and unexpected.
 */
export async function loadModule(
  module: Module,
  path: string,
  opts: LoadModuleOptions = {},
): Promise<LoadModuleResult> {
  const file = await SafetensorsFile.open(path);
  try {
    const own = module.stateDict();
    const entries = file.entries();
    const result = checkStateShapes(
      new Map([...own].map(([k, t]) => [k, t.shape])),
      new Map([...entries].map(([k, e]) => [k, e.shape])),
      opts.strict ?? true,
      path,
    );
    // One tensor at a time: a large checkpoint never sits whole in CPU memory.
    for (const [name, t] of own) {
      const e = entries.get(name);
      if (!e) continue;
      let data: Float32Array | Int32Array;
      if (t.dtype === "float32") data = assertFinite(path, name, await file.readFloat32(name));
      else if (e.dtype === "I32") data = new Int32Array((await file.read(name)).buffer);
      else if (e.dtype === "I64") {
        const wide = new BigInt64Array((await file.read(name)).buffer);
        data = Int32Array.from(wide, (v) => Number(v));
      } else {
        throw new Error(`${path}: tensor "${name}" is ${e.dtype}; the module wants int32`);
      }
      writeTensor(t, data);
    }
    return { ...result, metadata: { ...file.metadata } };
  } finally {
    file.close();
  }
}
