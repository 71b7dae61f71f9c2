/**
 * The engines `bench/compare.ts` measures this engine against, loaded in the same process on the
 * same WebGPU adapter: tfjs-webgpu (@tensorflow/tfjs-backend-webgpu) and onnxruntime-web's WebGPU
 * execution provider. Dev-only: nothing outside bench/ imports this file.
 *
 * Every workload is a {@link Runner}: inputs live on the GPU before timing starts; `run()` queues
 * one execution; `wait()` resolves when the GPU has finished everything queued; `result()` reads
 * the last output back. Loading throws an Error that says why a peer cannot run.
 */
import { FLOAT, INT64, onnxModel } from "./onnx.ts";

/** One timed workload in one engine. */
export interface Runner {
  run(): void | Promise<void>;
  wait(): Promise<void>;
  /** The last run's output (for cosine top-k: the scores, with `indices`). */
  result(): Promise<{ out: Float32Array; indices?: Int32Array }>;
  dispose(): void;
}

/** A peer engine: the workloads compare.ts runs in every engine. */
export interface Peer {
  name: string;
  adapter: string;
  matmul(M: number, N: number, K: number, A: Float32Array, B: Float32Array): Promise<Runner>;
  /** softmax(scale * q k^T) v for q, k, v [B, H, T, D], as matMul - softmax - matMul. */
  attention(
    shape: [number, number, number, number],
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    scale: number,
  ): Promise<Runner>;
  softmax(rows: number, n: number, x: Float32Array): Promise<Runner>;
  /** Normalise rows, score all pairs, top-k per query. */
  cosineTopK(
    N: number,
    M: number,
    d: number,
    Q: Float32Array,
    K: Float32Array,
    k: number,
  ): Promise<Runner>;
}

// ---- tfjs-webgpu ------------------------------------------------------------------------------

/** Load tfjs-core with the WebGPU backend; throws when the backend cannot start. */
export async function loadTfjs(): Promise<Peer> {
  const tf = await import("@tensorflow/tfjs-core");
  await import("@tensorflow/tfjs-backend-webgpu");
  // Small ops with CPU-resident inputs would otherwise run on the CPU.
  tf.env().set("WEBGPU_CPU_FORWARD", false);
  if (!(await tf.setBackend("webgpu"))) throw new Error("tf.setBackend('webgpu') returned false");
  await tf.ready();
  const be = tf.backend() as unknown as { device: GPUDevice };
  const info = (be.device as unknown as { adapterInfo?: GPUAdapterInfo }).adapterInfo;
  type T = InstanceType<typeof tf.Tensor>;
  // Waiting = reading one element of the last output: tfjs submits its batched commands before a
  // read. (Calling its submitQueue() from outside made tfjs-webgpu 4.22 return wrong values, and
  // onSubmittedWorkDone() alone would not wait for commands tfjs has not submitted yet.)
  const runner = (inputs: T[], f: () => T | T[]): Runner => {
    let last: T[] = [];
    return {
      run() {
        last.forEach((t) => t.dispose());
        const r = tf.tidy(f);
        last = Array.isArray(r) ? r : [r];
      },
      async wait() {
        const probe = tf.tidy(() => tf.slice(tf.reshape(last[0], [-1]), 0, 1));
        await probe.data();
        probe.dispose();
      },
      async result() {
        const out = (await last[0].data()) as Float32Array;
        const indices = last[1] ? Int32Array.from(await last[1].data()) : undefined;
        return { out: Float32Array.from(out), indices };
      },
      dispose() {
        [...last, ...inputs].forEach((t) => t.dispose());
      },
    };
  };
  return {
    name: `tfjs-webgpu ${tf.version_core}`,
    adapter: info?.description || info?.vendor || "default adapter (navigator.gpu)",
    matmul(M, N, K, A, B) {
      const a = tf.tensor(A, [M, K]), b = tf.tensor(B, [K, N]);
      return Promise.resolve(runner([a, b], () => tf.matMul(a, b)));
    },
    attention(shape, qd, kd, vd, scale) {
      const [q, k, v] = [qd, kd, vd].map((x) => tf.tensor(x, shape));
      return Promise.resolve(runner(
        [q, k, v],
        () => tf.matMul(tf.softmax(tf.mul(tf.matMul(q, k, false, true), scale)), v),
      ));
    },
    softmax(rows, n, x) {
      const t = tf.tensor(x, [rows, n]);
      return Promise.resolve(runner([t], () => tf.softmax(t)));
    },
    cosineTopK(N, M, d, Q, K, k) {
      const q = tf.tensor(Q, [N, d]), kk = tf.tensor(K, [M, d]);
      const unit = (x: T) => tf.div(x, tf.maximum(tf.norm(x, "euclidean", 1, true), 1e-12));
      return Promise.resolve(runner([q, kk], () => {
        const r = tf.topk(tf.matMul(unit(q), unit(kk), false, true), k, true);
        return [r.values, r.indices];
      }));
    },
  };
}

// ---- onnxruntime-web --------------------------------------------------------------------------

type Ort = typeof import("onnxruntime-web/webgpu");
type OrtTensor = InstanceType<Ort["Tensor"]>;

/**
 * Where ORT's WebAssembly files are: `ORT_WASM_DIR` (a folder holding
 * ort-wasm-simd-threaded.asyncify.{mjs,wasm}, e.g. for a bundled compare.js on a server), else
 * next to the package in node_modules.
 */
function ortWasmDir(): string {
  const dir = Deno.env.get("ORT_WASM_DIR");
  if (dir) return new URL(dir.endsWith("/") ? dir : dir + "/", `file://${Deno.cwd()}/`).href;
  return new URL(".", import.meta.resolve("onnxruntime-web/webgpu")).href;
}

/**
 * Load onnxruntime-web with its WebGPU execution provider. Its WebAssembly files are found next to
 * the module in node_modules; one wasm thread (the work runs on the GPU).
 */
export async function loadOrt(): Promise<Peer> {
  const ort: Ort = await import("onnxruntime-web/webgpu");
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = ortWasmDir();
  ort.env.logLevel = "error";
  let device: GPUDevice | null = null;

  const session = async (model: Uint8Array) => {
    const s = await ort.InferenceSession.create(model, {
      executionProviders: ["webgpu"],
      preferredOutputLocation: "gpu-buffer",
      graphOptimizationLevel: "all",
    });
    device ??= await ort.env.webgpu.device;
    return s;
  };
  // Inputs as GPU buffers of ORT's own device, so a run uploads nothing.
  const gpuTensor = (data: Float32Array, dims: number[]): OrtTensor => {
    const buf = device!.createBuffer({
      size: Math.ceil(data.byteLength / 16) * 16,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    device!.queue.writeBuffer(buf, 0, data);
    return ort.Tensor.fromGpuBuffer(buf, {
      dataType: "float32",
      dims,
      dispose: () => buf.destroy(),
    });
  };
  const runner = async (
    model: Uint8Array,
    feeds: Record<string, [Float32Array, number[]]>,
    outName: string,
    indicesName?: string,
  ): Promise<Runner> => {
    const s = await session(model);
    const inputs: Record<string, OrtTensor> = {};
    for (const [name, [data, dims]] of Object.entries(feeds)) inputs[name] = gpuTensor(data, dims);
    let last: Record<string, OrtTensor> | null = null;
    const drop = () => {
      if (last) { for (const t of Object.values(last)) t.dispose(); }
      last = null;
    };
    return {
      async run() {
        drop();
        last = await s.run(inputs);
      },
      wait: () => device!.queue.onSubmittedWorkDone(),
      async result() {
        const out = Float32Array.from((await last![outName].getData()) as Float32Array);
        let indices: Int32Array | undefined;
        if (indicesName) {
          const raw = (await last![indicesName].getData()) as BigInt64Array;
          indices = Int32Array.from(raw, (x) => Number(x));
        }
        return { out, indices };
      },
      dispose() {
        drop();
        for (const t of Object.values(inputs)) t.dispose();
        void s.release();
      },
    };
  };
  const f32 = (name: string, shape: number[]) => ({ name, shape });

  // Probe once so a missing WebGPU EP fails here, with its message, not inside a workload.
  await session(onnxModel(
    [{ op: "Relu", inputs: ["x"], outputs: ["y"] }],
    [f32("x", [4])],
    [f32("y", [4])],
  ));
  const info = (device as unknown as { adapterInfo?: GPUAdapterInfo } | null)?.adapterInfo;
  return {
    name: `onnxruntime-web ${ort.env.versions.web ?? ""} (WebGPU EP)`.trim(),
    adapter: info?.description || info?.vendor || "default adapter (navigator.gpu)",
    matmul(M, N, K, A, B) {
      const m = onnxModel(
        [{ op: "MatMul", inputs: ["a", "b"], outputs: ["c"] }],
        [f32("a", [M, K]), f32("b", [K, N])],
        [f32("c", [M, N])],
      );
      return runner(m, { a: [A, [M, K]], b: [B, [K, N]] }, "c");
    },
    attention(shape, q, k, v, scale) {
      const m = onnxModel(
        [
          { op: "Transpose", inputs: ["k"], outputs: ["kt"], attrs: { perm: [0, 1, 3, 2] } },
          { op: "MatMul", inputs: ["q", "kt"], outputs: ["s"] },
          { op: "Mul", inputs: ["s", "scale"], outputs: ["ss"] },
          { op: "Softmax", inputs: ["ss"], outputs: ["p"], attrs: { axis: -1 } },
          { op: "MatMul", inputs: ["p", "v"], outputs: ["o"] },
        ],
        [f32("q", shape), f32("k", shape), f32("v", shape)],
        [f32("o", shape)],
        [{ name: "scale", type: FLOAT, shape: [], values: [scale] }],
      );
      return runner(m, { q: [q, shape], k: [k, shape], v: [v, shape] }, "o");
    },
    softmax(rows, n, x) {
      const m = onnxModel(
        [{ op: "Softmax", inputs: ["x"], outputs: ["y"], attrs: { axis: -1 } }],
        [f32("x", [rows, n])],
        [f32("y", [rows, n])],
      );
      return runner(m, { x: [x, [rows, n]] }, "y");
    },
    cosineTopK(N, M, d, Q, K, k) {
      const m = onnxModel(
        [
          { op: "LpNormalization", inputs: ["q"], outputs: ["qn"], attrs: { axis: 1, p: 2 } },
          { op: "LpNormalization", inputs: ["k"], outputs: ["kn"], attrs: { axis: 1, p: 2 } },
          { op: "Transpose", inputs: ["kn"], outputs: ["kt"], attrs: { perm: [1, 0] } },
          { op: "MatMul", inputs: ["qn", "kt"], outputs: ["s"] },
          {
            op: "TopK",
            inputs: ["s", "kk"],
            outputs: ["values", "indices"],
            attrs: { axis: -1, largest: 1, sorted: 1 },
          },
        ],
        [f32("q", [N, d]), f32("k", [M, d])],
        [f32("values", [N, k]), { name: "indices", type: INT64, shape: [N, k] }],
        [{ name: "kk", type: INT64, shape: [1], values: [k] }],
      );
      return runner(m, { q: [Q, [N, d]], k: [K, [M, d]] }, "values", "indices");
    },
  };
}

// ---- jax-js -----------------------------------------------------------------------------------

/**
 * Load jax-js (@jax-js/jax) on its WebGPU device: it generates its own WGSL and fuses
 * elementwise work under `jit`. Every workload is one `jit`-compiled function (its first call,
 * untimed, compiles). jax-js arrays are reference-counted: a call consumes its arguments, so
 * inputs are passed as `x.ref`. jax-js is lazy, so each run calls `blockUntilReady()` on its
 * outputs at once (which submits them) and the wait awaits those, then `onSubmittedWorkDone()` on
 * jax-js's device. Throws when jax-js finds no WebGPU device.
 */
export async function loadJax(): Promise<Peer> {
  const jax = await import("@jax-js/jax");
  const { numpy: np, nn, lax } = jax;
  const devices = await jax.init();
  if (!devices.includes("webgpu")) {
    throw new Error(`jax-js found no WebGPU device (devices: ${devices.join(", ")})`);
  }
  jax.defaultDevice("webgpu");
  const dev = jax.getWebGPUDevice() as unknown as GPUDevice & { adapterInfo?: GPUAdapterInfo };
  type A = InstanceType<typeof jax.Array>;
  const pkg = "@jax-js/jax";
  let version = "0.1.25"; // what deno.json pins; a bundle (bench/gpu_check.sh) cannot resolve it
  try {
    version = /jax-js[+/]jax@([\w.-]+)/.exec(import.meta.resolve("@jax-js/jax"))?.[1] ?? version;
  } catch { /* bundled */ }
  const arr = (x: Float32Array, shape: number[]) =>
    np.array(new Float32Array(x) as Float32Array<ArrayBuffer>).reshape(shape);
  // jax-js is lazy: an output disposed before it is realised is never computed. So every run
  // starts realising its output at once (blockUntilReady submits it, then waits in the
  // background), outputs are kept until the wait, and the wait awaits all of them.
  const runner = (inputs: A[], f: (...xs: A[]) => A | A[]): Runner => {
    const g = jax.jit(f as (...xs: A[]) => A);
    let outs: A[][] = [];
    let ready: Promise<unknown>[] = [];
    const last = () => outs[outs.length - 1];
    const drop = (keep: number) => {
      for (const o of outs.slice(0, outs.length - keep)) o.forEach((t) => t.dispose());
      outs = outs.slice(outs.length - keep);
    };
    return {
      run() {
        const r = g(...inputs.map((x) => x.ref)) as unknown as A | A[];
        const o = Array.isArray(r) ? r : [r];
        outs.push(o);
        ready.push(...o.map((t) => t.ref.blockUntilReady()));
      },
      async wait() {
        await Promise.all(ready);
        ready = [];
        await dev.queue.onSubmittedWorkDone();
        drop(1);
      },
      async result() {
        const out = Float32Array.from(await last()[0].ref.data() as Float32Array);
        const indices = last()[1]
          ? Int32Array.from(await last()[1].ref.data() as ArrayLike<number>)
          : undefined;
        return { out, indices };
      },
      dispose() {
        drop(0);
        inputs.forEach((t) => t.dispose());
      },
    };
  };
  return {
    name: `jax-js ${version} (${pkg}, jit)`,
    adapter: dev.adapterInfo?.description || "jax-js webgpu device",
    matmul(M, N, K, A, B) {
      return Promise.resolve(
        runner([arr(A, [M, K]), arr(B, [K, N])], (a, b) => np.matmul(a, b)),
      );
    },
    attention(shape, qd, kd, vd, scale) {
      const [q, k, v] = [qd, kd, vd].map((x) => arr(x, shape));
      return Promise.resolve(runner([q, k, v], (q, k, v) =>
        np.matmul(
          nn.softmax(np.matmul(q, np.swapaxes(k, -1, -2)).mul(scale), -1),
          v,
        )));
    },
    softmax(rows, n, x) {
      return Promise.resolve(runner([arr(x, [rows, n])], (t) => nn.softmax(t, -1)));
    },
    cosineTopK(N, M, d, Q, K, k) {
      const unit = (x: A) => {
        const norm = np.sqrt(np.sum(x.ref.mul(x.ref), -1, { keepdims: true }));
        return x.div(np.maximum(norm, 1e-12));
      };
      return Promise.resolve(runner([arr(Q, [N, d]), arr(K, [M, d])], (q, kk) => {
        const [values, indices] = lax.topK(np.matmul(unit(q), np.swapaxes(unit(kk), 0, 1)), k);
        return [values, indices];
      }));
    },
  };
}
