/**
 * The adapter's own fp32 FMA ceiling: a WGSL kernel that does nothing but fused multiply-adds on
 * registers (16 independent vec4 chains per invocation, so neither latency nor memory limits it),
 * timed like every other kernel. `bench:compare` reports each kernel as a fraction of it, which
 * holds on any machine: on llvmpipe the ceiling is what the CPU's vector units give through
 * Mesa's compiler (38-40 GFLOP/s on one 2-core machine, 24.6 on an AMD EPYC), on a GPU it is
 * close to the datasheet's fp32 peak.
 */
import { gpu } from "../kernels/device.ts";
import { type Buf, dispatch, pool, readback, sync } from "../kernels/runtime.ts";
import { Params } from "../kernels/wgsl.ts";

const CHAINS = 16;
const WG = 64;

function code(): string {
  const decl = [...Array(CHAINS).keys()].map((c) =>
    `var a${c} = vec4<f32>(f32(i) * 1e-9 + ${c}.0 * 1e-3);`
  ).join("\n  ");
  const body = [...Array(CHAINS).keys()].map((c) => `a${c} = fma(a${c}, m, s);`).join("\n    ");
  const sum = [...Array(CHAINS).keys()].map((c) => `a${c}`).join(" + ");
  return /* wgsl */ `struct P { iters: u32, m: f32, s: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;
  let m = vec4<f32>(p.m);
  let s = vec4<f32>(p.s);
  ${decl}
  // One short loop per launch: llvmpipe silently ends a loop statement after ~65535 iterations
  // in total per invocation (gallivm's limit, nested loops included), so time many launches.
  for (var t = 0u; t < p.iters; t++) {
    ${body}
    ${body}
  }
  out[i] = ${sum};
}`;
}

/** Record one launch of `workgroups` x 64 invocations, each doing `iters` x 2 x 16 vec4 FMAs. */
function launch(out: Buf, workgroups: number, iters: number): void {
  // m, s keep every chain finite and non-constant (a*0.999 + 1e-3 converges to 1).
  const p = new Params().u32(iters).f32(0.999, 1e-3).build();
  dispatch("fma_ceiling", code(), [out], p, [workgroups, 1, 1]);
}

/** The measured ceiling. */
export interface FmaCeiling {
  /** Best GFLOP/s over the repetitions (2 flops per FMA lane). */
  gflops: number;
  /** Workgroups x invocations used. */
  invocations: number;
}

/**
 * Measure the FMA ceiling: enough workgroups for every core or SM several times over, a launch
 * sized to take >= `minMs` (default 400) ms, best of `reps` (default 3) timed launches.
 */
export async function fmaCeiling(minMs = 400, reps = 3): Promise<FmaCeiling> {
  const g = gpu();
  const workgroups = g.tuning.cpu ? 8 * navigator.hardwareConcurrency : 4096;
  const out = pool.acquire(workgroups * WG * 16);
  const iters = 4096;
  const flopsPer = (launches: number) => 2 * 4 * CHAINS * 2 * iters * workgroups * WG * launches;
  const run = async (launches: number) => {
    const t0 = performance.now();
    for (let i = 0; i < launches; i++) launch(out, workgroups, iters);
    await sync();
    return performance.now() - t0;
  };
  let n = 1;
  await run(n); // compile
  while ((await run(n)) < minMs && n < 4096) n *= 2;
  let best = 0;
  for (let r = 0; r < reps; r++) {
    // One wait per batch (~10 ms in Deno) is in the time, as in bench:compare's timings.
    best = Math.max(best, flopsPer(n) / (await run(n)) / 1e6);
  }
  // The result must be read, or a compiler could drop the work.
  const v = new Float32Array(await readback(out, 16));
  if (!Number.isFinite(v[0])) throw new Error(`fma ceiling kernel produced ${v[0]}`);
  pool.release(out);
  return { gflops: best, invocations: workgroups * WG };
}

if (import.meta.main) {
  const { init } = await import("../kernels/device.ts");
  const g = await init();
  const r = await fmaCeiling();
  console.log(`${g.adapter.description}: FMA ceiling ${r.gflops.toFixed(1)} GFLOP/s`);
}
