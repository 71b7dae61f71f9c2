/**
 * Runs WGSL kernels in headless Chromium's WebGPU (Dawn and Tint over SwiftShader), a second
 * WebGPU implementation next to Deno's wgpu/Naga. SwiftShader offers `subgroups` (size 4), which
 * neither llvmpipe through Deno nor the H200 did, so this is where the subgroup kernels run at all.
 * Test helper; holds no tests.
 *
 * A page gets a list of jobs (WGSL, workgroup grid, buffers as float arrays, which binding to
 * read back); it compiles each kernel, reports compile and validation errors, runs it and
 * prints the output with `console.log`, which Chromium writes to stderr with
 * `--enable-logging=stderr`. Results are lines `RESULT <json>`, the last `RESULT done`.
 */

/** One kernel run in the page. */
export interface PageJob {
  label: string;
  code: string;
  workgroups: [number, number, number];
  /** Bindings in order: binding 0 is the uniform block when `uniform` is given. */
  uniform?: number[];
  buffers: number[][];
  /** Index (into `buffers`) of the output to read back, or -1 to only compile and validate. */
  read: number;
  /** Expected values of that output: the page reports the largest |difference| (NaN: Infinity). */
  ref?: number[];
  /** Device features the kernel needs. */
  features?: string[];
}

/** What the page reported for one job. */
export interface PageResult {
  label: string;
  errors: string[];
  /** Largest |output - ref| (a NaN or missing value counts as Infinity, reported as null). */
  maxErr?: number | null;
  /** Why the job did not run (a feature the adapter lacks). */
  skipped?: string;
}

function page(jobs: PageJob[]): string {
  return `<html><body><script>
const jobs = ${JSON.stringify(jobs)};
(async () => {
  const say = (x) => console.log('RESULT ' + JSON.stringify(x));
  try {
    const a = await navigator.gpu?.requestAdapter();
    if (!a) { say({ skip: 'no WebGPU adapter' }); return; }
    const features = [...new Set(jobs.flatMap((j) => j.features ?? []))].filter((f) => a.features.has(f));
    const l = a.limits;
    const dev = await a.requestDevice({ requiredFeatures: features, requiredLimits: {
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage } });
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const buf = (data, usage) => {
      const b = dev.createBuffer({ size: Math.max(16, Math.ceil(data.byteLength / 16) * 16), usage });
      dev.queue.writeBuffer(b, 0, data);
      return b;
    };
    for (const j of jobs) {
      const missing = (j.features ?? []).filter((f) => !a.features.has(f));
      if (missing.length) { say({ label: j.label, skipped: 'adapter lacks ' + missing.join(', ') }); continue; }
      const errors = [];
      dev.pushErrorScope('validation');
      const mod = dev.createShaderModule({ code: j.code });
      for (const m of (await mod.getCompilationInfo()).messages) {
        if (m.type === 'error') errors.push('line ' + m.lineNum + ': ' + m.message);
      }
      const pipe = dev.createComputePipeline({ layout: 'auto', compute: { module: mod, entryPoint: 'main' } });
      let err = await dev.popErrorScope();
      if (err) errors.push(err.message);
      if (errors.length || j.read < 0) { say({ label: j.label, errors }); continue; }
      dev.pushErrorScope('validation');
      const bufs = j.buffers.map((x) => buf(new Float32Array(x), S));
      const entries = bufs.map((b, i) => ({ binding: i + (j.uniform ? 1 : 0), resource: { buffer: b } }));
      if (j.uniform) {
        const u = buf(new Uint32Array(j.uniform), GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
        entries.unshift({ binding: 0, resource: { buffer: u } });
      }
      const bg = dev.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries });
      const enc = dev.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(pipe);
      pass.setBindGroup(0, bg);
      pass.dispatchWorkgroups(...j.workgroups);
      pass.end();
      const n = j.buffers[j.read].length * 4;
      const st = dev.createBuffer({ size: n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      enc.copyBufferToBuffer(bufs[j.read], 0, st, 0, n);
      dev.queue.submit([enc.finish()]);
      err = await dev.popErrorScope();
      if (err) errors.push(err.message);
      await st.mapAsync(GPUMapMode.READ);
      const out = new Float32Array(st.getMappedRange());
      let maxErr = 0;
      for (let i = 0; i < (j.ref ?? []).length; i++) {
        const d = Math.abs(out[i] - j.ref[i]);
        maxErr = d <= maxErr ? maxErr : (Number.isNaN(d) ? Infinity : d);
      }
      say({ label: j.label, errors, maxErr });
    }
  } catch (e) {
    say({ error: String(e) });
  } finally {
    console.log('RESULT done');
  }
})();
</script></body></html>`;
}

/** Why the jobs could not run (no WebGPU adapter in Chromium), or their results. */
export type PageOutcome = { skip: string } | { results: PageResult[] };

/**
 * Run `jobs` in headless Chromium's WebGPU (SwiftShader). Resolves `{ skip }` when Chromium has no
 * WebGPU adapter (a job whose features the adapter lacks reports `skipped`); throws on a page
 * error or after `timeoutMs`.
 */
export async function runInChromium(
  chromium: string,
  jobs: PageJob[],
  timeoutMs = 90_000,
): Promise<PageOutcome> {
  const dir = await Deno.makeTempDir({ prefix: "webgpu-chromium-" });
  const file = `${dir}/page.html`;
  await Deno.writeTextFile(file, page(jobs));
  const child = new Deno.Command(chromium, {
    args: [
      "--headless=new",
      "--no-sandbox",
      "--enable-unsafe-webgpu",
      "--enable-features=Vulkan",
      "--use-webgpu-adapter=swiftshader",
      "--enable-logging=stderr",
      "--v=0",
      "--no-first-run",
      "--disable-background-networking",
      `--user-data-dir=${dir}/profile`,
      `file://${file}`,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let text = "";
  const lines: string[] = [];
  const done = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      let i;
      while ((i = text.indexOf("\n")) >= 0) {
        const line = text.slice(0, i);
        text = text.slice(i + 1);
        const m = line.match(/RESULT (.*)", source:/);
        if (m) lines.push(m[1]);
        if (m?.[1] === "done") return;
      }
    }
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      done,
      new Promise((_, reject) =>
        timer = setTimeout(
          () =>
            reject(
              new Error(`chromium: no result in ${timeoutMs} ms; so far:\n${lines.join("\n")}`),
            ),
          timeoutMs,
        )
      ),
    ]);
  } finally {
    clearTimeout(timer);
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await child.status;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const parsed = lines.filter((l) => l !== "done").map((l) => JSON.parse(l));
  const skip = parsed.find((p) => p.skip);
  if (skip) return { skip: skip.skip };
  const error = parsed.find((p) => p.error);
  if (error) throw new Error(`chromium page: ${error.error}`);
  return { results: parsed as PageResult[] };
}
