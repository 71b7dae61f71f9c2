/**
 * Printing the WGSL of a launch (`deno task wgsl ...`, bench/wgsl.ts): `captureDispatches` lists
 * exactly the kernels a call records, with their sources, and dispatches nothing; the sources it
 * reports are the ones a real launch compiles; the script prints them for a given shape.
 */
import assert from "node:assert/strict";
import { gpu } from "../kernels/device.ts";
import { defaultTile, matmulKernel } from "../kernels/matmul.ts";
import { denseDims } from "../kernels/matmul_ref.ts";
import { captureDispatches, counters, pool, readback, upload } from "../kernels/runtime.ts";
import { softmaxBackward, softmaxForward } from "../kernels/softmax.ts";
import { gpuTest, randArray } from "./util.ts";

gpuTest("captureDispatches: lists a call's kernels with their WGSL and runs nothing", async () => {
  const x = pool.acquire(5 * 33 * 4), y = pool.acquire(5 * 33 * 4), dx = pool.acquire(5 * 33 * 4);
  upload(x, randArray(5 * 33, 1));
  const d0 = counters.dispatches;
  const got = captureDispatches(() => {
    softmaxForward(x, y, 5, 33, false);
    softmaxBackward(y, x, dx, 5, 33, false);
  });
  assert.equal(counters.dispatches, d0, "nothing dispatched while capturing");
  assert.deepEqual(got.map((c) => c.buffers), [2, 3]);
  assert.match(got[0].name, /^softmax_/);
  assert.match(got[1].name, /^softmax_grad_/);
  assert.match(got[0].code, /fn main/);
  // The captured source is the one a real launch compiles: it runs and gives softmax rows.
  softmaxForward(x, y, 5, 33, false);
  const rows = new Float32Array(await readback(y, 5 * 33 * 4));
  const sum = rows.slice(0, 33).reduce((a, b) => a + b, 0);
  assert.ok(Math.abs(sum - 1) < 1e-5, `row sums to ${sum}`);
  // A matmul's variant follows the adapter's tile choice.
  const d = denseDims(1, 64, 48, 32);
  const [mm] = captureDispatches(() => matmulKernel(x, x, y, d));
  const t = defaultTile(d, gpu());
  assert.ok(mm.name.startsWith(`matmul_${t.kind ?? "register"}_`), mm.name);
  assert.ok(mm.name.includes(`${t.TM}x${t.TN}_${t.WX}x${t.WY}`), mm.name);
  [x, y, dx].forEach((b) => pool.release(b));
});

Deno.test({
  name: "deno task wgsl: prints the kernels of a shape (bench/wgsl.ts)",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const script = new URL("../bench/wgsl.ts", import.meta.url).pathname;
    const run = async (...args: string[]) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script, ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: out.code, text: new TextDecoder().decode(out.stdout) };
    };
    const mm = await run("matmul", "100", "60", "20", "--bias", "--act", "gelu");
    assert.equal(mm.code, 0);
    assert.match(mm.text, /^\/\/ matmul 100 60 20 on .*: 1 dispatch$/m);
    assert.match(
      mm.text,
      /^\/\/ ---- matmul_\w+_bias_gelu: workgroups \[\d+,\d+,1\], 4 storage buffers$/m,
    );
    assert.match(mm.text, /fn gelu\(x: f32\) -> f32/);
    const att = await run("attention", "2", "3", "17", "16", "--causal", "--gpu", "--list");
    assert.equal(att.code, 0);
    assert.match(att.text, /GPU choices\): 4 dispatches/);
    assert.match(att.text, /attention_fwd_tiled_d16_\w+: workgroups/);
    assert.doesNotMatch(att.text, /fn main/, "--list prints no code");
    assert.equal((await run("bogus")).code, 1);
  },
});
