/**
 * PyTorch's `F.interpolate` (align_corners=False, output size given) along one axis, as a weight
 * matrix, for resizing position-embedding grids the way timm and CONCH do:
 *
 * - timm's `resample_abs_pos_embed` (dynamic image size, and loading weights trained at another
 *   size) uses **bicubic with antialias**: PyTorch's separable "AA" filter, Keys' cubic with
 *   a = -0.5, stretched by the scale when shrinking, weights normalised per output sample;
 * - CONCH's `resize_pos_embed` uses **bilinear without antialias**;
 * - the other two combinations (bicubic without antialias: a = -0.75 and clamped taps; bilinear
 *   with antialias: a stretched triangle) are here too so every mode torch offers can be checked.
 *
 * The formulas follow ATen's `UpSampleKernel.cpp` (`_compute_indices_min_size_weights_aa` for
 * the AA filters, `area_pixel_compute_source_index` and `get_cubic_upsample_coefficients` for
 * the others), computed in float64. PyTorch computes them in the input's precision, so float32
 * results differ by float32 rounding only (tests/timm_test.ts compares against torch in float64).
 *
 * A 2-D resize of a grid [H, W, C] is `Wh @ grid @ Ww^T` per channel: CPU code uses
 * {@link resampleGrid}; the model applies the same matrices with two differentiable matmuls.
 * CPU only; imports nothing from the GPU side.
 */

/** The interpolation kernels of `F.interpolate` that position embeddings are resized with. */
export type GridInterpolation = "bicubic" | "bilinear";

/** Keys' cubic convolution kernel with parameter `a` (PyTorch: -0.5 with antialias, else -0.75). */
function cubic(x: number, a: number): number {
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

function triangle(x: number): number {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

/**
 * The [outSize, inSize] matrix (row-major, float64) that `F.interpolate(mode, antialias,
 * align_corners=False, size=...)` applies along one axis of length `inSize`. Throws a
 * RangeError unless both sizes are positive integers.
 */
export function interpolationMatrix(
  inSize: number,
  outSize: number,
  mode: GridInterpolation,
  antialias: boolean,
): Float64Array {
  if (!(Number.isInteger(inSize) && inSize > 0 && Number.isInteger(outSize) && outSize > 0)) {
    throw new RangeError(
      `interpolationMatrix: sizes must be positive integers, got ${inSize} -> ${outSize}`,
    );
  }
  const m = new Float64Array(outSize * inSize);
  const scale = inSize / outSize;
  if (antialias) {
    // The AA path: a filter of support (taps / 2) * max(scale, 1) centred on each output pixel's
    // centre in input coordinates, truncated at the borders and renormalised.
    const half = mode === "bicubic" ? 2 : 1;
    const filter = mode === "bicubic" ? (x: number) => cubic(x, -0.5) : triangle;
    const support = scale >= 1 ? half * scale : half;
    const invScale = scale >= 1 ? 1 / scale : 1;
    for (let i = 0; i < outSize; i++) {
      const center = scale * (i + 0.5);
      // C++ casts truncate toward zero; the max / min clamp the window to the input.
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
      let total = 0;
      const w: number[] = [];
      for (let j = xmin; j < xmax; j++) {
        const v = filter((j - center + 0.5) * invScale);
        w.push(v);
        total += v;
      }
      for (let j = xmin; j < xmax; j++) {
        m[i * inSize + j] = total !== 0 ? w[j - xmin] / total : 0;
      }
    }
    return m;
  }
  for (let i = 0; i < outSize; i++) {
    const src = scale * (i + 0.5) - 0.5;
    if (mode === "bilinear") {
      // Negative source positions clamp to 0; the right neighbour clamps to the last pixel.
      const real = Math.max(src, 0);
      const i0 = Math.trunc(real);
      const i1 = i0 < inSize - 1 ? i0 + 1 : i0;
      const l1 = real - i0;
      m[i * inSize + i0] += 1 - l1;
      m[i * inSize + i1] += l1;
    } else {
      // Four taps at floor(src) - 1 .. + 2, indices clamped to the border (replicate padding).
      const x0 = Math.floor(src);
      const t = src - x0;
      const w = [cubic(t + 1, -0.75), cubic(t, -0.75), cubic(1 - t, -0.75), cubic(2 - t, -0.75)];
      for (let k = 0; k < 4; k++) {
        const j = Math.min(Math.max(x0 - 1 + k, 0), inSize - 1);
        m[i * inSize + j] += w[k];
      }
    }
  }
  return m;
}

/**
 * Resize a grid stored [inH, inW, C] row-major (a position embedding without its prefix rows) to
 * [outH, outW, C], as `F.interpolate` on the [1, C, H, W] permutation does. float64 in and out.
 */
export function resampleGrid(
  grid: ArrayLike<number>,
  channels: number,
  inH: number,
  inW: number,
  outH: number,
  outW: number,
  mode: GridInterpolation,
  antialias: boolean,
): Float64Array {
  if (grid.length !== inH * inW * channels) {
    throw new RangeError(
      `resampleGrid: ${grid.length} values are not a [${inH}, ${inW}, ${channels}] grid`,
    );
  }
  const mh = interpolationMatrix(inH, outH, mode, antialias);
  const mw = interpolationMatrix(inW, outW, mode, antialias);
  // Rows first: tmp[o, x, c] = sum_y mh[o, y] grid[y, x, c]; then columns.
  const rowStride = inW * channels;
  const tmp = new Float64Array(outH * rowStride);
  for (let o = 0; o < outH; o++) {
    for (let y = 0; y < inH; y++) {
      const w = mh[o * inH + y];
      if (w === 0) continue;
      for (let k = 0; k < rowStride; k++) tmp[o * rowStride + k] += w * grid[y * rowStride + k];
    }
  }
  const out = new Float64Array(outH * outW * channels);
  for (let o = 0; o < outH; o++) {
    for (let p = 0; p < outW; p++) {
      const dst = (o * outW + p) * channels;
      for (let x = 0; x < inW; x++) {
        const w = mw[p * inW + x];
        if (w === 0) continue;
        const src = o * rowStride + x * channels;
        for (let c = 0; c < channels; c++) out[dst + c] += w * tmp[src + c];
      }
    }
  }
  return out;
}
