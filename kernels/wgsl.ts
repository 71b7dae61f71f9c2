/**
 * Small WGSL snippets and a uniform packer shared by the kernels.
 */

/**
 * Flat workgroup index for kernels launched over a {@link grid} (2-D when one dimension is not
 * enough). Needs `@builtin(workgroup_id) wg` and `@builtin(num_workgroups) nwg` in scope.
 */
export const FLAT_WG = "(wg.x + wg.y * nwg.x)";

/**
 * erf for exact GELU. WGSL has no erf: this is Abramowitz & Stegun 7.1.26, a rational
 * approximation with max abs error 1.5e-7 (about fp32 resolution near 1).
 */
export const ERF_WGSL = /* wgsl */ `
fn erf_approx(x: f32) -> f32 {
  let s = sign(x);
  let a = abs(x);
  let t = 1.0 / (1.0 + 0.3275911 * a);
  let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
    + 0.254829592) * t * exp(-a * a);
  return s * y;
}`;

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
