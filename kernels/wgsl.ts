/**
 * Small WGSL snippets and a uniform packer shared by the kernels.
 */

/**
 * Flat workgroup index for kernels launched over a {@link grid} (2-D when one dimension is not
 * enough). Needs `@builtin(workgroup_id) wg` and `@builtin(num_workgroups) nwg` in scope.
 */
export const FLAT_WG = "(wg.x + wg.y * nwg.x)";

/**
 * The most negative finite f32, -3.4028234663852886e38: the engine's one "very negative" value,
 * for initial maxima and masks. exp(NEG_BIG - NEG_BIG) = 1 and exp(NEG_BIG - x) = 0 for any
 * ordinary x, so a masked or empty lane never produces NaN the way -Infinity would.
 */
export const NEG_BIG = -3.4028234663852886e38;

/** {@link NEG_BIG} as a WGSL f32 literal (exact: it is an f32 value). */
export const NEG_BIG_WGSL = "-3.4028234663852886e38";

/**
 * `is_nan(x)` and `max_nan(a, b)`: WGSL's `max` may drop a NaN operand (the spec leaves it to the
 * implementation), so reductions that must propagate NaN use `max_nan`, which tests the bits
 * (a comparison such as `x != x` may be folded away by a compiler that assumes no NaN).
 */
export const NAN_WGSL = /* wgsl */ `
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn max_nan(a: f32, b: f32) -> f32 { return select(select(max(a, b), b, is_nan(b)), a, is_nan(a)); }`;

/**
 * The check binding of a kernel that validates an input on the GPU (see `checkSlot` in
 * `runtime.ts`): `checks` at `binding`, and `report_bad(slot, value)`, which counts `value` as bad
 * in `slot` and keeps the largest and smallest such value. Atomics only run for bad values.
 */
export function checkWgsl(binding: number): string {
  return /* wgsl */ `
@group(0) @binding(${binding}) var<storage, read_write> checks: array<atomic<u32>>;
fn report_bad(slot: u32, value: i32) {
  let key = bitcast<u32>(value) ^ 0x80000000u; // order-preserving i32 -> u32
  atomicAdd(&checks[slot * 4u], 1u);
  atomicMax(&checks[slot * 4u + 1u], key);
  atomicMax(&checks[slot * 4u + 2u], ~key); // the minimum, with a zero-initialised word
}`;
}

/**
 * Packs a kernel's uniform struct. Fields are 4-byte scalars written in declaration order;
 * `vec4Array` writes `array<vec4<u32>, n>` (16-byte aligned) padded with `fill`.
 */
export class Params {
  private words: number[] = [];
  private kinds: ("u" | "i" | "f")[] = [];

  /** Append a u32 field. */
  u32(...v: number[]): this {
    for (const x of v) {
      this.words.push(x >>> 0);
      this.kinds.push("u");
    }
    return this;
  }

  /** Append an i32 field. */
  i32(...v: number[]): this {
    for (const x of v) {
      this.words.push(x | 0);
      this.kinds.push("i");
    }
    return this;
  }

  /** Append an f32 field. */
  f32(...v: number[]): this {
    for (const x of v) {
      this.words.push(x);
      this.kinds.push("f");
    }
    return this;
  }

  /** Pad to a 16-byte boundary, then write `values` as `array<vec4<u32>, n/4>`. */
  vec4Array(values: readonly number[], n: number, fill = 0): this {
    while (this.words.length % 4) this.u32(0);
    for (let i = 0; i < n; i++) this.u32(i < values.length ? values[i] : fill);
    return this;
  }

  /** The packed bytes (padded to 16). */
  build(): ArrayBuffer {
    while (this.words.length % 4) this.u32(0);
    const buf = new ArrayBuffer(this.words.length * 4);
    const dv = new DataView(buf);
    this.words.forEach((w, i) => {
      const k = this.kinds[i];
      if (k === "f") dv.setFloat32(i * 4, w, true);
      else if (k === "i") dv.setInt32(i * 4, w, true);
      else dv.setUint32(i * 4, w, true);
    });
    return buf;
  }
}

/** Maximum tensor rank the broadcasting kernels index (shapes are padded to it). */
export const MAX_RANK = 8;

/**
 * A memo for generated WGSL: `cached(key, make)` builds each kernel variant's source once, so
 * the pipeline cache (keyed by source) is hit without regenerating the string on every launch.
 */
export function codeCache(): (key: string, make: () => string) => string {
  const codes = new Map<string, string>();
  return (key, make) => {
    let c = codes.get(key);
    if (c === undefined) codes.set(key, c = make());
    return c;
  };
}
