/**
 * Attention kernels for CPU adapters with lanes along rows (tile mode `blocked`, D % 4 == 0): a
 * workgroup is {@link RW_LANES} lanes (one AVX2 vector on llvmpipe), each lane owns a few rows
 * (queries for the forward and dQ, keys for dK/dV) with their vectors in named registers, and the
 * workgroup walks the other side one row (or a block of rows) at a time. Every load of that other
 * side has the same address in all lanes, so llvmpipe emits one scalar load and a broadcast
 * instead of a per-lane gather (its costliest operation); no workgroup memory, no barrier. Fully
 * unrolled over D. Launched by `attention.ts`.
 */
import { FLAT_WG, NEG_BIG_WGSL } from "./wgsl.ts";

/** Lanes of the {@link rowsForwardCode} workgroup: one AVX2 vector on llvmpipe. */
export const RW_LANES = 8;
/**
 * Queries per lane of {@link rowsForwardCode}. Measured on llvmpipe (2 cores) for ViT-B/16,
 * fused / unfused time with keys per block 2: 4 -> 0.92, 6 -> 0.76, 8 -> 0.69; but the fully
 * unrolled kernel grows with it and Mesa's GL compiler needs ~1.2 s, ~1.9 s, ~2.9 s (first call).
 */
export const RW_QPL = 6;
/** Keys per block of {@link rowsForwardCode} (its loop body is unrolled over them). */
export const RW_KB = 2;

const range = (n: number) => [...Array(n).keys()];

/** The uniform block and the vec4 bindings shared by the row kernels. */
function header(d4: number, names: string[], outs: string[]): string {
  let i = 1;
  const b = (n: string, ty: string, w: boolean) =>
    `@group(0) @binding(${i++}) var<storage, ${w ? "read_write" : "read"}> ${n}: array<${ty}>;`;
  const scalars = new Set(["LSE", "DELTA"]);
  return [
    "struct P { bh: u32, tq: u32, tk: u32, d: u32, scale: f32, causal: u32, ntile: u32 }",
    "@group(0) @binding(0) var<uniform> p: P;",
    `const D4 = ${d4}u;`,
    `const NEG = ${NEG_BIG_WGSL};`,
    ...names.map((n) => b(n, scalars.has(n) ? "f32" : "vec4<f32>", false)),
    ...outs.map((n) => b(n, scalars.has(n) ? "f32" : "vec4<f32>", true)),
  ].join("\n");
}

const MAIN = `@compute @workgroup_size(${RW_LANES})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let flat = ${FLAT_WG};
  if (flat >= p.bh * p.ntile) { return; }
  let bh = flat / p.ntile;
  let qb = bh * p.tq;
  let kb = bh * p.tk;`;

const hsum = (v: string) => `(${v}.x + ${v}.y + ${v}.z + ${v}.w)`;

/** Queries per lane of {@link rowsDqCode}: q, dO and dQ of each (3 D-vectors) in registers. */
export const RB_QPL = 4;
/** Keys per lane of {@link rowsDkvCode}: k, v, dK and dV of each (4 D-vectors) in registers. */
export const RB_KPL = 3;

/**
 * dQ with lanes along queries ({@link RB_QPL} per lane): for each key (uniform K and V loads),
 * p = exp(scale q.k - lse), ds = p (dO.v - delta), dq += ds k; dQ = scale dq.
 */
export function rowsDqCode(d4: number): string {
  const W = RW_LANES, R = RB_QPL;
  const pre: string[] = [];
  for (const r of range(R)) {
    pre.push(`let qi${r} = q0 + ${r * W}u + li;`);
    pre.push(`let qr${r} = (qb + min(qi${r}, p.tq - 1u)) * D4;`);
    pre.push(`var lim${r} = p.tk; if (p.causal != 0u) { lim${r} = min(p.tk, qi${r} + 1u); }`);
    pre.push(`let lse${r} = LSE[qb + min(qi${r}, p.tq - 1u)];`);
    pre.push(`let dl${r} = DELTA[qb + min(qi${r}, p.tq - 1u)];`);
    for (const c of range(d4)) {
      pre.push(
        `let q${r}_${c} = Q[qr${r} + ${c}u] * p.scale; let g${r}_${c} = dO[qr${r} + ${c}u]; ` +
          `var dq${r}_${c} = vec4<f32>(0.0);`,
      );
    }
  }
  const body: string[] = [`let kr = (kb + j) * D4;`];
  for (const c of range(d4)) body.push(`let k${c} = K[kr + ${c}u]; let v${c} = V[kr + ${c}u];`);
  for (const r of range(R)) {
    body.push(`var a${r} = vec4<f32>(0.0); var b${r} = vec4<f32>(0.0);`);
    for (const c of range(d4)) {
      body.push(`a${r} = fma(q${r}_${c}, k${c}, a${r}); b${r} = fma(g${r}_${c}, v${c}, b${r});`);
    }
    body.push(`let p${r} = select(0.0, exp(${hsum(`a${r}`)} - lse${r}), j < lim${r});`);
    body.push(`let ds${r} = vec4<f32>(p${r} * (${hsum(`b${r}`)} - dl${r}));`);
    for (const c of range(d4)) body.push(`dq${r}_${c} = fma(ds${r}, k${c}, dq${r}_${c});`);
  }
  const fin: string[] = [];
  for (const r of range(R)) {
    fin.push(`if (qi${r} < p.tq) {`);
    for (const c of range(d4)) fin.push(`  dQ[qr${r} + ${c}u] = dq${r}_${c} * p.scale;`);
    fin.push(`}`);
  }
  return /* wgsl */ `${header(d4, ["Q", "K", "V", "dO", "LSE", "DELTA"], ["dQ"])}
${MAIN}
  let q0 = (flat % p.ntile) * ${W * R}u;
  ${pre.join("\n  ")}
  var kEnd = p.tk;
  if (p.causal != 0u) { kEnd = min(p.tk, q0 + ${W * R}u); }
  for (var j = 0u; j < kEnd; j++) {
    ${body.join("\n    ")}
  }
  ${fin.join("\n  ")}
}`;
}

/**
 * dK and dV with lanes along keys ({@link RB_KPL} per lane): for each query (uniform Q, dO, LSE
 * and DELTA loads), p = exp(scale k.q - lse), ds = p (v.dO - delta), dv += p dO, dk += ds q;
 * dK = scale dk.
 */
export function rowsDkvCode(d4: number): string {
  const W = RW_LANES, R = RB_KPL;
  const pre: string[] = [];
  for (const r of range(R)) {
    pre.push(`let kj${r} = k0 + ${r * W}u + li;`);
    pre.push(`let kr${r} = (kb + min(kj${r}, p.tk - 1u)) * D4;`);
    for (const c of range(d4)) {
      pre.push(
        `let k${r}_${c} = K[kr${r} + ${c}u] * p.scale; let v${r}_${c} = V[kr${r} + ${c}u]; ` +
          `var dk${r}_${c} = vec4<f32>(0.0); var dv${r}_${c} = vec4<f32>(0.0);`,
      );
    }
  }
  const body: string[] = [
    `let qr = (qb + i) * D4;`,
    `let lse = LSE[qb + i];`,
    `let dl = DELTA[qb + i];`,
  ];
  for (const c of range(d4)) body.push(`let q${c} = Q[qr + ${c}u]; let g${c} = dO[qr + ${c}u];`);
  for (const r of range(R)) {
    body.push(`var a${r} = vec4<f32>(0.0); var b${r} = vec4<f32>(0.0);`);
    for (const c of range(d4)) {
      body.push(`a${r} = fma(k${r}_${c}, q${c}, a${r}); b${r} = fma(v${r}_${c}, g${c}, b${r});`);
    }
    body.push(
      `let p${r} = select(0.0, exp(${hsum(`a${r}`)} - lse), p.causal == 0u || i >= kj${r});`,
    );
    body.push(`let ds${r} = vec4<f32>(p${r} * (${hsum(`b${r}`)} - dl));`);
    body.push(`let pv${r} = vec4<f32>(p${r});`);
    for (const c of range(d4)) {
      body.push(
        `dv${r}_${c} = fma(pv${r}, g${c}, dv${r}_${c}); dk${r}_${c} = fma(ds${r}, q${c}, dk${r}_${c});`,
      );
    }
  }
  const fin: string[] = [];
  for (const r of range(R)) {
    fin.push(`if (kj${r} < p.tk) {`);
    for (const c of range(d4)) {
      fin.push(`  dK[kr${r} + ${c}u] = dk${r}_${c} * p.scale; dV[kr${r} + ${c}u] = dv${r}_${c};`);
    }
    fin.push(`}`);
  }
  return /* wgsl */ `${header(d4, ["Q", "K", "V", "dO", "LSE", "DELTA"], ["dK", "dV"])}
${MAIN}
  let k0 = (flat % p.ntile) * ${W * R}u;
  ${pre.join("\n  ")}
  var qStart = 0u;
  if (p.causal != 0u) { qStart = k0; } // earlier queries see none of these keys
  for (var i = qStart; i < p.tq; i++) {
    ${body.join("\n    ")}
  }
  ${fin.join("\n  ")}
}`;
}

/**
 * Forward for CPU adapters (D % 4 == 0) with lanes along queries: each of the {@link RW_LANES}
 * lanes owns {@link RW_QPL} queries (their scaled Q rows, running max, sum and output in
 * registers, spilled to the stack by the compiler), and the workgroup walks the keys in blocks of
 * {@link RW_KB}. Every K and V load has the same address in all lanes, so llvmpipe emits one
 * scalar load and a broadcast instead of a per-lane gather (its costliest operation), and the
 * softmax needs no workgroup memory and no barrier. Fully unrolled over D (named registers).
 */
export function rowsForwardCode(d4: number): string {
  const W = RW_LANES, R = RW_QPL, KB = RW_KB;
  const pre: string[] = [];
  for (const r of range(R)) {
    pre.push(`let qi${r} = q0 + ${r * W}u + li;`);
    pre.push(`let qr${r} = (qb + min(qi${r}, p.tq - 1u)) * D4;`);
    pre.push(`var lim${r} = p.tk; if (p.causal != 0u) { lim${r} = min(p.tk, qi${r} + 1u); }`);
    pre.push(`var m${r} = NEG; var l${r} = 0.0;`);
    for (const c of range(d4)) {
      pre.push(`let q${r}_${c} = Q[qr${r} + ${c}u] * p.scale; var o${r}_${c} = vec4<f32>(0.0);`);
    }
  }
  const blk: string[] = [];
  for (const j of range(KB)) blk.push(`let kr${j} = (kb + min(k0 + ${j}u, p.tk - 1u)) * D4;`);
  // S = Q K^T for the block.
  for (const j of range(KB)) {
    for (const r of range(R)) blk.push(`var a${r}_${j} = vec4<f32>(0.0);`);
    for (const c of range(d4)) {
      blk.push(`{ let k = K[kr${j} + ${c}u];`);
      for (const r of range(R)) blk.push(`  a${r}_${j} = fma(q${r}_${c}, k, a${r}_${j});`);
      blk.push(`}`);
    }
  }
  // Online softmax per row, in registers.
  for (const r of range(R)) {
    for (const j of range(KB)) {
      blk.push(`let v${r}_${j} = k0 + ${j}u < lim${r};`);
      blk.push(
        `let s${r}_${j} = select(NEG, a${r}_${j}.x + a${r}_${j}.y + a${r}_${j}.z + a${r}_${j}.w, v${r}_${j});`,
      );
    }
    blk.push(`let mx${r} = ${range(KB).reduce((e, j) => `max(${e}, s${r}_${j})`, `m${r}`)};`);
    blk.push(`let al${r} = exp(m${r} - mx${r});`);
    for (const j of range(KB)) {
      blk.push(`let p${r}_${j} = select(0.0, exp(s${r}_${j} - mx${r}), v${r}_${j});`);
    }
    blk.push(`l${r} = l${r} * al${r} + ${range(KB).map((j) => `p${r}_${j}`).join(" + ")};`);
    blk.push(`m${r} = mx${r};`);
    for (const c of range(d4)) blk.push(`o${r}_${c} *= al${r};`);
  }
  // O += P V.
  for (const j of range(KB)) {
    for (const c of range(d4)) {
      blk.push(`{ let v = V[kr${j} + ${c}u];`);
      for (const r of range(R)) {
        blk.push(`  o${r}_${c} = fma(vec4<f32>(p${r}_${j}), v, o${r}_${c});`);
      }
      blk.push(`}`);
    }
  }
  const fin: string[] = [];
  for (const r of range(R)) {
    fin.push(`if (qi${r} < p.tq) {`);
    fin.push(`  let inv = 1.0 / l${r};`);
    for (const c of range(d4)) fin.push(`  O[qr${r} + ${c}u] = o${r}_${c} * inv;`);
    fin.push(`  LSE[qb + qi${r}] = m${r} + log(l${r});`);
    fin.push(`}`);
  }
  return /* wgsl */ `${header(d4, ["Q", "K", "V"], ["O", "LSE"])}
const BQ = ${W * R}u;
@compute @workgroup_size(${W})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let flat = ${FLAT_WG};
  if (flat >= p.bh * p.ntile) { return; }
  let bh = flat / p.ntile;
  let q0 = (flat % p.ntile) * BQ;
  let qb = bh * p.tq;
  let kb = bh * p.tk;
  ${pre.join("\n  ")}
  var kEnd = p.tk;
  if (p.causal != 0u) { kEnd = min(p.tk, q0 + BQ); }
  for (var k0 = 0u; k0 < kEnd; k0 += ${KB}u) {
    ${blk.join("\n    ")}
  }
  ${fin.join("\n  ")}
}`;
}
