/**
 * The demo world's factors and its class rule (see DESIGN.md section 1, "When can privileged
 * text help?"). A tile is described by four discrete factors: three decide the class
 * (cellularity, nuclear atypia, gland architecture) and one does not (staining intensity, a
 * nuisance that reports still mention, as real reports do). The class is a fixed function of
 * the three class factors on the combinations some class has ({@link classOf}); the other
 * combinations exist in the pretraining images and in the report corpus but in no labelled split.
 *
 * The generator owns its random numbers ({@link WorldRng}) rather than sharing the loader's, so
 * the world's bytes change only when this folder changes.
 */

/** One factor: its name and its levels (internal keys, never report words). */
export interface FactorDef {
  /** Factor name, e.g. "cellularity". */
  readonly name: string;
  /** Level keys, in order; a factor value is an index into this list. */
  readonly levels: readonly string[];
  /** Whether the class depends on it. */
  readonly classFactor: boolean;
  /** What it looks like in the image, for world.json and readers. */
  readonly looks: string;
}

/** The factors, in the order of {@link Factors}. */
export const WORLD_FACTORS: readonly FactorDef[] = [
  {
    name: "cellularity",
    levels: ["sparse", "moderate", "dense"],
    classFactor: true,
    looks:
      "number of nuclei scattered outside the glands (about 5 / 14 / 40 per 32x32 tile of stroma)",
  },
  {
    name: "nuclei",
    levels: ["bland", "atypical"],
    classFactor: true,
    looks: "small round uniform nuclei vs large, darker, irregular nuclei of varying size",
  },
  {
    name: "glands",
    levels: ["round", "irregular", "absent"],
    classFactor: true,
    looks: "round lumens ringed by one even layer of nuclei / distorted lumens with crowded, " +
      "uneven rings / no lumen",
  },
  {
    name: "staining",
    levels: ["pale", "medium", "dark"],
    classFactor: false,
    looks: "overall stain concentration (hue, brightness and contrast vary independently)",
  },
];

/** A tile's factor values, each an index into its factor's levels. */
export interface Factors {
  /** 0 sparse, 1 moderate, 2 dense. */
  cellularity: number;
  /** 0 bland, 1 atypical. */
  nuclei: number;
  /** 0 round, 1 irregular, 2 absent. */
  glands: number;
  /** 0 pale, 1 medium, 2 dark (not a class factor). */
  staining: number;
}

/** Factor names in the order of {@link WORLD_FACTORS}. */
export const FACTOR_NAMES = ["cellularity", "nuclei", "glands", "staining"] as const;
/** A factor name. */
export type FactorName = typeof FACTOR_NAMES[number];

/**
 * The class names. They are tissue-like so a confusion matrix reads naturally, and no report
 * ever contains one of them (tests check), so text can only help through what it describes.
 */
export const WORLD_CLASSES = ["normal", "hyperplastic", "dysplastic", "invasive"] as const;

/** Which factor levels each class allows (a class is the conjunction of its sets). */
export interface ClassSupport {
  /** Allowed cellularity levels. */
  cellularity: readonly number[];
  /** Allowed nuclei levels. */
  nuclei: readonly number[];
  /** Allowed gland levels. */
  glands: readonly number[];
}

/**
 * The class rule, one conjunction per class; the supports are disjoint. Telling normal from
 * hyperplastic needs cellularity (moderate vs dense is the subtle step) or gland shape; normal
 * or hyperplastic from dysplastic needs atypia; dysplastic from invasive needs glands. So every
 * class factor matters and none decides alone.
 */
export const CLASS_SUPPORTS: readonly ClassSupport[] = [
  { cellularity: [0, 1], nuclei: [0], glands: [0] }, // normal
  { cellularity: [2], nuclei: [0], glands: [0, 1] }, // hyperplastic
  { cellularity: [1, 2], nuclei: [1], glands: [0, 1] }, // dysplastic
  { cellularity: [0, 1, 2], nuclei: [1], glands: [2] }, // invasive
];

/** The rule in words, for world.json and the demo's printout. */
export const CLASS_RULE_TEXT = [
  "normal: sparse or moderate cellularity, bland nuclei, round glands",
  "hyperplastic: dense cellularity, bland nuclei, round or irregular glands",
  "dysplastic: moderate or dense cellularity, atypical nuclei, round or irregular glands",
  "invasive: atypical nuclei, no glands (any cellularity)",
  "other combinations (e.g. bland nuclei without glands) belong to no class: they appear only " +
  "in the pretraining images and the report corpus",
];

/** The class of `f` (an index into {@link WORLD_CLASSES}), or -1 when no class has it. */
export function classOf(f: Factors): number {
  for (let c = 0; c < CLASS_SUPPORTS.length; c++) {
    const s = CLASS_SUPPORTS[c];
    if (
      s.cellularity.includes(f.cellularity) && s.nuclei.includes(f.nuclei) &&
      s.glands.includes(f.glands)
    ) {
      return c;
    }
  }
  return -1;
}

/** Every class-factor combination of class `c`, in a fixed order. */
export function classCombos(c: number): Omit<Factors, "staining">[] {
  const s = CLASS_SUPPORTS[c];
  const out: Omit<Factors, "staining">[] = [];
  for (const cellularity of s.cellularity) {
    for (const nuclei of s.nuclei) {
      for (const glands of s.glands) out.push({ cellularity, nuclei, glands });
    }
  }
  return out;
}

/** Factors of a labelled tile of class `c`: a uniform combination of its support, any staining. */
export function drawClassFactors(c: number, rng: WorldRng): Factors {
  const combos = classCombos(c);
  return { ...combos[rng.int(combos.length)], staining: rng.int(3) };
}

/** Factors drawn independently and uniformly (pretraining images, the corpus). */
export function drawAnyFactors(rng: WorldRng): Factors {
  return { cellularity: rng.int(3), nuclei: rng.int(2), glands: rng.int(3), staining: rng.int(3) };
}

/** `f` as level names, e.g. `{cellularity: "dense", ...}` (for files people read). */
export function factorLevels(f: Factors): Record<FactorName, string> {
  const out = {} as Record<FactorName, string>;
  WORLD_FACTORS.forEach((d, i) => (out[FACTOR_NAMES[i]] = d.levels[f[FACTOR_NAMES[i]]]));
  return out;
}

// ---- randomness ------------------------------------------------------------------------------

/** A 32-bit integer hash (lowbias32). */
function hash32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** One 32-bit seed from integers, order-sensitive: every (world seed, stream, index) differs. */
export function worldSeed(...parts: number[]): number {
  let h = 0x2545f491;
  for (const p of parts) h = hash32((h ^ hash32((p | 0) >>> 0)) + 0x9e3779b9);
  return h;
}

/** The world's generator (mulberry32): uniform, integer, normal and choice draws. */
export class WorldRng {
  private state: number;
  /** A generator fixed by a 32-bit seed. */
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Uniform in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  /** Standard normal (Box-Muller, no cached spare so the stream is easy to reason about). */
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }
  /** A uniformly chosen element. */
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  /** The elements in a random order (a new array). */
  shuffle<T>(xs: readonly T[]): T[] {
    const a = xs.slice();
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }
}
