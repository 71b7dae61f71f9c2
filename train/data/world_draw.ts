/**
 * Draws one tile of the demo world: a tiny H&E-like RGB image whose class factors (cellularity,
 * nuclear atypia, gland architecture) are visible to a person, under nuisance variation that
 * decides nothing (stain concentration, hue, brightness, contrast, blur, noise, orientation,
 * position, zoom, stroma texture, stray lymphocytes, spindle cells and red blood cells).
 *
 * Colour is made the way a stained slide makes it: each pixel accumulates stain amounts
 * (haematoxylin in nuclei, eosin in stroma and cytoplasm, blood) and light passes through them
 * by Beer-Lambert, `I = I0 * 10^-(sum amount * absorbance)`, with the Ruifrok-Johnston stain
 * vectors jittered per tile. That gives purple nuclei on pink stroma and white lumens without a
 * hand-made palette, and stain variation behaves like the real thing.
 *
 * Every orientation-dependent element (fibres, gland outlines, nuclei) takes its own random
 * angle, so rotations and flips of a tile are as likely as the tile: no separate transform is
 * needed. Geometry is in pixels of a 32-pixel tile times `size / 32`, so larger tiles show the
 * same tissue at a higher resolution. Edges are anti-aliased analytically (coverage from the
 * signed distance), which keeps drawing to well under a millisecond per 32x32 tile.
 */
import type { DecodedImage } from "../../nn/formats/image.ts";
import { type Factors, WorldRng } from "./world_factors.ts";

/** An RGB image, 8 bits per channel, rows top to bottom, pixels interleaved: the decoders' type. */
export type RgbImage = DecodedImage;

/** Absorbance (OD per unit amount) of haematoxylin, eosin and red blood cells, R G B. */
const HEMATOXYLIN = [0.65, 0.704, 0.286];
// Eosin a little bluer than Ruifrok's (0.072, 0.99, 0.105), which renders magenta, not pink.
const EOSIN = [0.09, 0.92, 0.33];
const BLOOD = [0.12, 0.95, 0.8];

/** Scattered nuclei per 32x32 tile of stroma, by cellularity level. */
const CELLULARITY_COUNT = [5, 14, 40];
/** Stain concentration ranges by staining level (pale, medium, dark). */
const STAIN_RANGE = [[0.55, 0.78], [0.82, 1.05], [1.12, 1.45]];

/** The stain amount fields of a tile being drawn. */
interface Canvas {
  size: number;
  /** Pixels per unit of the 32-pixel design grid, times the tile's zoom. */
  unit: number;
  h: Float32Array;
  e: Float32Array;
  blood: Float32Array;
  /** 1 where a gland (lumen or epithelium) is, so scattered nuclei avoid it. */
  gland: Float32Array;
}

/** One nucleus: an ellipse with an optionally wavy outline. */
interface Nucleus {
  x: number;
  y: number;
  /** Mean radius in pixels. */
  r: number;
  /** Ratio of the long to the short axis. */
  elong: number;
  angle: number;
  /** Amplitudes and phases of outline harmonics 2 and 3 (0 for a smooth ellipse). */
  wave2: number;
  wave3: number;
  phase: number;
  /** Haematoxylin amount at full coverage. */
  dark: number;
}

/** Draw a tile of `size` x `size` pixels with factors `f`, all randomness from `rng`. */
export function drawTile(f: Factors, size: number, rng: WorldRng): RgbImage {
  const zoom = rng.uniform(0.9, 1.1);
  const n = size * size;
  const c: Canvas = {
    size,
    unit: (size / 32) * zoom,
    h: new Float32Array(n),
    e: new Float32Array(n),
    blood: new Float32Array(n),
    gland: new Float32Array(n),
  };
  drawStroma(c, rng);
  if (f.glands !== 2) drawGlands(c, f, rng);
  drawScatteredNuclei(c, f, rng);
  drawDistractors(c, rng);
  return develop(c, f, rng);
}

// ---- stroma ----------------------------------------------------------------------------------

/** A smooth random field in [0, 1]: bilinear interpolation of a coarse random grid. */
function valueNoise(size: number, cells: number, rng: WorldRng): Float32Array {
  const g = cells + 1;
  const grid = new Float32Array(g * g);
  for (let i = 0; i < grid.length; i++) grid[i] = rng.next();
  const out = new Float32Array(size * size);
  for (let y = 0; y < size; y++) {
    const gy = ((y + 0.5) / size) * cells;
    const y0 = Math.min(cells - 1, Math.floor(gy)), ty = gy - y0;
    const sy = ty * ty * (3 - 2 * ty);
    for (let x = 0; x < size; x++) {
      const gx = ((x + 0.5) / size) * cells;
      const x0 = Math.min(cells - 1, Math.floor(gx)), tx = gx - x0;
      const sx = tx * tx * (3 - 2 * tx);
      const a = grid[y0 * g + x0], b = grid[y0 * g + x0 + 1];
      const cc = grid[(y0 + 1) * g + x0], d = grid[(y0 + 1) * g + x0 + 1];
      out[y * size + x] = (a + (b - a) * sx) * (1 - sy) + (cc + (d - cc) * sx) * sy;
    }
  }
  return out;
}

/**
 * Pink stroma: wavy collagen fibres along a random direction, bent by a smooth random field so
 * they do not look like a printed pattern, patchy density and pale clefts (tearing, oedema).
 */
function drawStroma(c: Canvas, rng: WorldRng): void {
  const { size, unit } = c;
  const base = rng.uniform(0.2, 0.36);
  const angle = rng.uniform(0, Math.PI);
  const ca = Math.cos(angle), sa = Math.sin(angle);
  const period = rng.uniform(3.5, 6.5) * unit;
  const bend = rng.uniform(0.8, 2.5) * period; // how far the fibres stray from straight lines
  const fibre = rng.uniform(0.1, 0.45); // contrast of the fibres against the ground substance
  const sharp = rng.uniform(1, 2.5); // thin strands with wider gaps as it grows
  const warp = valueNoise(size, rng.int(2) + 2, rng);
  const patches = valueNoise(size, rng.int(3) + 2, rng);
  const clefts = valueNoise(size, rng.int(3) + 3, rng);
  const cleftLevel = rng.chance(0.35) ? rng.uniform(0.05, 0.25) : 0;
  const cleftDepth = rng.uniform(0.5, 0.75); // clefts are paler stroma; only lumens are white
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const i = y * size + x;
      const v = -x * sa + y * ca + bend * warp[i];
      const strand = Math.pow(0.5 + 0.5 * Math.sin((2 * Math.PI * v) / period), sharp);
      const cleft = smoothstep(cleftLevel - 0.06, cleftLevel + 0.06, clefts[i]);
      c.e[i] = base * (0.55 + 0.7 * patches[i]) * (1 - fibre + 2 * fibre * strand) *
        (1 - cleftDepth + cleftDepth * cleft);
      c.h[i] = 0.03 * cleft; // haematoxylin's faint background in the ground substance
    }
  }
}

function smoothstep(a: number, b: number, x: number): number {
  const t = Math.min(1, Math.max(0, (x - a) / (b - a)));
  return t * t * (3 - 2 * t);
}

// ---- glands ----------------------------------------------------------------------------------

/** A gland outline: lumen radius as a function of the angle, plus the epithelium's thickness. */
interface Gland {
  x: number;
  y: number;
  radius: number;
  /** Fourier terms k = 2..5 of the outline: amplitude (relative) and phase. */
  amp: number[];
  phase: number[];
  /** Epithelium thickness in pixels and its relative variation around the gland. */
  wall: number;
  wallVar: number;
  wallPhase: number;
}

function lumenRadius(g: Gland, theta: number): number {
  let r = 1;
  for (let k = 0; k < g.amp.length; k++) r += g.amp[k] * Math.cos((k + 2) * theta + g.phase[k]);
  return g.radius * Math.max(0.35, r);
}

function wallWidth(g: Gland, theta: number): number {
  return g.wall * (1 + g.wallVar * Math.cos(2 * theta + g.wallPhase));
}

/** One or two glands: white lumen, pale pink-purple epithelium, a ring of nuclei. */
function drawGlands(c: Canvas, f: Factors, rng: WorldRng): void {
  const { size, unit } = c;
  const irregular = f.glands === 1;
  const two = rng.chance(0.35);
  const glands: Gland[] = [];
  for (let k = 0; k < (two ? 2 : 1); k++) {
    const radius = (two ? rng.uniform(4, 5.5) : rng.uniform(5.5, 8)) * unit;
    const amp = irregular
      ? [
        rng.uniform(0.18, 0.32),
        rng.uniform(0.12, 0.25),
        rng.uniform(0.05, 0.16),
        rng.uniform(0, 0.1),
      ]
      : [rng.uniform(0, 0.1), rng.uniform(0, 0.03), 0, 0];
    glands.push({
      x: rng.uniform(0.2, 0.8) * size,
      y: rng.uniform(0.2, 0.8) * size,
      radius,
      amp,
      phase: amp.map(() => rng.uniform(0, 2 * Math.PI)),
      wall: rng.uniform(2.2, 2.9) * unit,
      wallVar: irregular ? rng.uniform(0.25, 0.5) : rng.uniform(0, 0.08),
      wallPhase: rng.uniform(0, 2 * Math.PI),
    });
  }
  if (two) separate(glands, size);
  const cytoE = rng.uniform(0.35, 0.55), cytoH = rng.uniform(0.08, 0.16);
  for (const g of glands) {
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const dx = x + 0.5 - g.x, dy = y + 0.5 - g.y;
        const d = Math.hypot(dx, dy);
        const outer0 = g.radius * 1.9 + g.wall * 1.6;
        if (d > outer0) continue;
        const th = Math.atan2(dy, dx);
        const rl = lumenRadius(g, th), rw = rl + wallWidth(g, th);
        const inLumen = clamp01(rl - d + 0.5);
        const inGland = clamp01(rw - d + 0.5);
        if (inGland <= 0) continue;
        const i = y * size + x;
        const epi = inGland - inLumen;
        // Lumen: nearly empty, a trace of pink secretion. Epithelium: cytoplasm.
        c.e[i] = c.e[i] * (1 - inGland) + epi * cytoE + inLumen * 0.03;
        c.h[i] = c.h[i] * (1 - inGland) + epi * cytoH;
        c.gland[i] = Math.max(c.gland[i], inGland);
      }
    }
    glandNuclei(c, g, f, rng);
  }
}

/** Push two gland centres apart so their walls do not merge into one blob. */
function separate(glands: Gland[], size: number): void {
  const [a, b] = glands;
  const need = a.radius + b.radius + a.wall + b.wall + 1;
  let dx = b.x - a.x, dy = b.y - a.y;
  const d = Math.hypot(dx, dy) || 1;
  if (d >= need) return;
  dx /= d;
  dy /= d;
  const push = (need - d) / 2;
  a.x = Math.min(size, Math.max(0, a.x - dx * push));
  a.y = Math.min(size, Math.max(0, a.y - dy * push));
  b.x = Math.min(size, Math.max(0, b.x + dx * push));
  b.y = Math.min(size, Math.max(0, b.y + dy * push));
}

/**
 * The gland's epithelial nuclei. Round glands: one evenly spaced basal layer, nuclei oriented
 * across the wall. Irregular glands: uneven spacing, crowding and stacking (stratification).
 */
function glandNuclei(c: Canvas, g: Gland, f: Factors, rng: WorldRng): void {
  const irregular = f.glands === 1;
  const perimeter = 2 * Math.PI * (g.radius + g.wall * 0.6);
  const spacing = (f.nuclei === 1 ? 3.6 : 2.7) * c.unit;
  const count = Math.max(
    5,
    Math.round((perimeter / spacing) * (irregular ? rng.uniform(1.2, 1.5) : 1)),
  );
  const start = rng.uniform(0, 2 * Math.PI);
  for (let j = 0; j < count; j++) {
    const th = start +
      (2 * Math.PI * (j + (irregular ? rng.uniform(-0.45, 0.45) : rng.uniform(-0.06, 0.06)))) /
        count;
    const rl = lumenRadius(g, th), ww = wallWidth(g, th);
    const depth = irregular ? rng.uniform(0.2, 0.95) : rng.uniform(0.55, 0.72);
    const rr = rl + ww * depth;
    const nuc = makeNucleus(c, f, rng, g.x + rr * Math.cos(th), g.y + rr * Math.sin(th));
    // Epithelial nuclei are long across the wall (pointing at the lumen) when bland.
    nuc.angle = th + rng.normal() * (irregular ? 0.6 : 0.15);
    nuc.elong = Math.max(nuc.elong, f.nuclei === 0 ? 1.35 : 1.15);
    stampNucleus(c, nuc);
  }
}

// ---- nuclei ----------------------------------------------------------------------------------

function clamp01(x: number): number {
  return x < 0 ? 0 : x > 1 ? 1 : x;
}

/** A nucleus at (x, y) whose size, shape and darkness follow the atypia factor. */
function makeNucleus(c: Canvas, f: Factors, rng: WorldRng, x: number, y: number): Nucleus {
  const atypical = f.nuclei === 1;
  const r = atypical
    ? Math.min(2.4, Math.max(1.2, 1.6 * Math.exp(0.2 * rng.normal()))) * c.unit
    : rng.uniform(0.95, 1.2) * c.unit;
  return {
    x,
    y,
    r,
    elong: atypical ? rng.uniform(1, 1.6) : rng.uniform(1, 1.25),
    angle: rng.uniform(0, Math.PI),
    wave2: atypical ? rng.uniform(0, 0.2) : 0,
    wave3: atypical ? rng.uniform(0, 0.18) : 0,
    phase: rng.uniform(0, 2 * Math.PI),
    dark: atypical ? rng.uniform(1.0, 1.3) : rng.uniform(0.8, 1.0),
  };
}

/** Paint a nucleus into the haematoxylin field (max, so overlaps do not turn black). */
function stampNucleus(c: Canvas, nu: Nucleus): void {
  const { size } = c;
  const ext = nu.r * Math.sqrt(nu.elong) * 1.5 + 1;
  const x0 = Math.max(0, Math.floor(nu.x - ext)), x1 = Math.min(size - 1, Math.ceil(nu.x + ext));
  const y0 = Math.max(0, Math.floor(nu.y - ext)), y1 = Math.min(size - 1, Math.ceil(nu.y + ext));
  const ca = Math.cos(nu.angle), sa = Math.sin(nu.angle);
  const a = nu.r * Math.sqrt(nu.elong), b = nu.r / Math.sqrt(nu.elong);
  const wavy = nu.wave2 > 0 || nu.wave3 > 0;
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const dx = x + 0.5 - nu.x, dy = y + 0.5 - nu.y;
      const u = (dx * ca + dy * sa) / a, v = (-dx * sa + dy * ca) / b;
      const q = Math.hypot(u, v); // 1 on the smooth ellipse
      let edge = 1;
      if (wavy) {
        const th = Math.atan2(v, u);
        edge += nu.wave2 * Math.cos(2 * th + nu.phase) + nu.wave3 * Math.cos(3 * th + 2 * nu.phase);
      }
      // Signed distance in pixels, approximated by the short radius.
      const cover = clamp01((edge - q) * b + 0.5);
      if (cover <= 0) continue;
      const i = y * size + x;
      c.h[i] = Math.max(c.h[i], nu.dark * cover);
      c.e[i] *= 1 - 0.6 * cover;
    }
  }
}

/**
 * Nuclei of the stroma, their number set by cellularity (relative to the area outside glands).
 * Half the tiles place them uniformly, half in loose clusters, so the count matters and the
 * arrangement does not.
 */
function drawScatteredNuclei(c: Canvas, f: Factors, rng: WorldRng): void {
  const { size } = c;
  let free = 0;
  for (let i = 0; i < c.gland.length; i++) free += 1 - c.gland[i];
  const zoom2 = (c.unit * 32) / size;
  const want =
    (CELLULARITY_COUNT[f.cellularity] * rng.uniform(0.85, 1.15) * (free / (size * size))) /
    (zoom2 * zoom2);
  const count = Math.round(want);
  const centres: [number, number][] = [];
  if (rng.chance(0.5)) {
    for (let k = rng.int(3) + 2; k > 0; k--) {
      centres.push([rng.uniform(0, size), rng.uniform(0, size)]);
    }
  }
  const spread = rng.uniform(4, 7) * c.unit;
  for (let placed = 0, tries = 0; placed < count && tries < count * 30; tries++) {
    let x: number, y: number;
    if (centres.length && rng.chance(0.7)) {
      const [cx, cy] = rng.pick(centres);
      x = cx + rng.normal() * spread;
      y = cy + rng.normal() * spread;
    } else {
      x = rng.uniform(0, size);
      y = rng.uniform(0, size);
    }
    if (x < 0 || y < 0 || x >= size || y >= size) continue;
    if (c.gland[Math.floor(y) * size + Math.floor(x)] > 0.1) continue;
    stampNucleus(c, makeNucleus(c, f, rng, x, y));
    placed++;
  }
}

/** A random point of the stroma (outside glands; anywhere after 20 misses, e.g. a full tile). */
function stromaPoint(c: Canvas, rng: WorldRng): [number, number] {
  let x = 0, y = 0;
  for (let tries = 0; tries < 20; tries++) {
    x = rng.uniform(0, c.size);
    y = rng.uniform(0, c.size);
    if (c.gland[Math.floor(y) * c.size + Math.floor(x)] < 0.1) break;
  }
  return [x, y];
}

/** Cells every tissue has whatever its class: spindle fibroblasts, lymphocytes, red cells. */
function drawDistractors(c: Canvas, rng: WorldRng): void {
  const { size, unit } = c;
  const area = (size * size) / (32 * 32);
  const plain = { wave2: 0, wave3: 0, phase: 0 };
  for (let k = Math.round(rng.int(4) * area); k > 0; k--) {
    const [x, y] = stromaPoint(c, rng);
    const r = rng.uniform(0.75, 0.95) * unit, elong = rng.uniform(4, 7);
    const angle = rng.uniform(0, Math.PI), dark = rng.uniform(0.7, 0.95);
    stampNucleus(c, { x, y, r, elong, angle, dark, ...plain });
  }
  for (let k = Math.round(rng.int(4) * area); k > 0; k--) {
    const [x, y] = stromaPoint(c, rng);
    const r = rng.uniform(0.7, 0.9) * unit, dark = rng.uniform(1.2, 1.5);
    stampNucleus(c, { x, y, r, elong: 1, angle: 0, dark, ...plain });
  }
  const cells = rng.chance(0.4) ? Math.round((rng.int(5) + 1) * area) : 0;
  for (let k = 0; k < cells; k++) {
    const [x, y] = stromaPoint(c, rng), r = rng.uniform(0.9, 1.2) * unit;
    for (let py = Math.max(0, Math.floor(y - r - 1)); py <= Math.min(size - 1, y + r + 1); py++) {
      for (let px = Math.max(0, Math.floor(x - r - 1)); px <= Math.min(size - 1, x + r + 1); px++) {
        const cover = clamp01(r - Math.hypot(px + 0.5 - x, py + 0.5 - y) + 0.5);
        const i = py * size + px;
        c.blood[i] = Math.max(c.blood[i], 0.9 * cover);
      }
    }
  }
}

// ---- optics and camera -----------------------------------------------------------------------

/** A stain vector with its hue jittered, renormalised to unit length. */
function jitter(v: number[], rng: WorldRng, sd: number): number[] {
  const w = v.map((x) => Math.max(0.01, x + sd * rng.normal()));
  const n = Math.hypot(...w);
  return w.map((x) => x / n);
}

/** Stain amounts -> RGB by Beer-Lambert, then blur, brightness, contrast and sensor noise. */
function develop(c: Canvas, f: Factors, rng: WorldRng): RgbImage {
  const { size } = c;
  const n = size * size;
  const [lo, hi] = STAIN_RANGE[f.staining];
  const conc = rng.uniform(lo, hi);
  const kh = conc * Math.exp(0.12 * rng.normal()), ke = conc * Math.exp(0.12 * rng.normal());
  const hv = jitter(HEMATOXYLIN, rng, 0.07), ev = jitter(EOSIN, rng, 0.07);
  const light = [0, 1, 2].map(() => rng.uniform(232, 255));
  const rgb = new Float32Array(n * 3);
  for (let i = 0; i < n; i++) {
    const h = c.h[i] * kh, e = c.e[i] * ke, b = c.blood[i];
    for (let k = 0; k < 3; k++) {
      rgb[i * 3 + k] = light[k] * Math.pow(10, -(h * hv[k] + e * ev[k] + b * BLOOD[k]));
    }
  }
  const sigma = rng.chance(0.6) ? rng.uniform(0.3, 0.85) * (size / 32) : 0;
  if (sigma > 0) blur(rgb, size, sigma);
  const contrast = rng.uniform(0.8, 1.2), bright = rng.uniform(-16, 16), noise = rng.uniform(1, 7);
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n * 3; i++) {
    const v = (rgb[i] - 200) * contrast + 200 + bright + noise * rng.normal();
    out[i] = v <= 0 ? 0 : v >= 255 ? 255 : Math.round(v);
  }
  return { width: size, height: size, data: out };
}

/** Separable Gaussian blur in place (clamped edges), radius 2 sigma. */
function blur(rgb: Float32Array, size: number, sigma: number): void {
  const rad = Math.max(1, Math.ceil(2 * sigma));
  const wts: number[] = [];
  let sum = 0;
  for (let d = -rad; d <= rad; d++) {
    const w = Math.exp(-(d * d) / (2 * sigma * sigma));
    wts.push(w);
    sum += w;
  }
  for (let d = 0; d < wts.length; d++) wts[d] /= sum;
  const tmp = new Float32Array(rgb.length);
  for (const [dst, src, horizontal] of [[tmp, rgb, true], [rgb, tmp, false]] as const) {
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        for (let k = 0; k < 3; k++) {
          let acc = 0;
          for (let d = -rad; d <= rad; d++) {
            const xx = horizontal ? Math.min(size - 1, Math.max(0, x + d)) : x;
            const yy = horizontal ? y : Math.min(size - 1, Math.max(0, y + d));
            acc += wts[d + rad] * src[(yy * size + xx) * 3 + k];
          }
          dst[(y * size + x) * 3 + k] = acc;
        }
      }
    }
  }
}
