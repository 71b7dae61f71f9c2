/**
 * Float64 reference of the map kernel (`elementwise.ts`) for two inputs: a binary function
 * broadcast over row-major arrays with NumPy's rules. CPU only, for tests and benchmarks.
 */

/** f(a, b) broadcast over shapes `as` and `bs`; returns the values and the broadcast shape. */
export function broadcastRef(
  a: ArrayLike<number>,
  as: readonly number[],
  b: ArrayLike<number>,
  bs: readonly number[],
  f: (x: number, y: number) => number,
): { out: Float64Array; shape: number[] } {
  const r = Math.max(as.length, bs.length);
  const pa = [...Array(r - as.length).fill(1), ...as],
    pb = [...Array(r - bs.length).fill(1), ...bs];
  const shape = pa.map((d, i) => Math.max(d, pb[i]));
  const n = shape.reduce((x, y) => x * y, 1);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let rem = i, ia = 0, ib = 0, sa = 1, sb = 1;
    for (let d = r - 1; d >= 0; d--) {
      const c = rem % shape[d];
      rem = Math.floor(rem / shape[d]);
      if (pa[d] !== 1) ia += c * sa;
      if (pb[d] !== 1) ib += c * sb;
      sa *= pa[d];
      sb *= pb[d];
    }
    out[i] = f(a[ia], b[ib]);
  }
  return { out, shape };
}
