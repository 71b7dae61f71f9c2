/**
 * The one seeded random generator of the project (CPU, so results do not depend on the adapter):
 * mulberry32 for uniforms, Box-Muller for normals. Weight initialisation, generated data, dataset
 * splits and augmentation all draw from it. Imports nothing, so decoding workers can use it.
 */

/** A small seeded generator (mulberry32 for uniforms, Box-Muller for normals). */
export class Rng {
  private state: number;
  private spare: number | null = null;
  /** A generator whose whole sequence is fixed by the integer `seed`. */
  constructor(seed = 0) {
    this.state = (seed ^ 0x9e3779b9) >>> 0;
  }
  /**
   * A generator that starts from exactly the 32-bit `state` (no mixing of the seed): for seeds
   * that are already hashes, as train/data/split.ts's `seedOf` gives.
   */
  static fromState(state: number): Rng {
    const rng = new Rng();
    rng.state = state >>> 0;
    return rng;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Standard normal. */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}
