/**
 * A pool of decoding workers for one sample source: tasks go to the least busy worker, results
 * come back as promises (pixel buffers transferred, not copied). With zero workers the same
 * code runs in this thread, which is simpler to debug and fine for tests.
 */
import type { SampleSource } from "./datasets.ts";
import {
  type PipelineConfig,
  runTask,
  SampleReader,
  type SampleResult,
  type TaskMode,
} from "./sample.ts";
import type { WorkerRequest } from "./decode_worker.ts";

/** A sensible default worker count: the cores minus one for the main thread, 1 to 8. */
export function defaultWorkers(): number {
  const n = typeof navigator !== "undefined" ? navigator.hardwareConcurrency ?? 2 : 2;
  return Math.max(1, Math.min(8, n - 1));
}

interface Pending {
  resolve: (r: SampleResult) => void;
  reject: (e: Error) => void;
  worker: number;
}

/** Decoding workers (or the current thread) serving tasks on one source. */
export class DecodePool {
  private workers: Worker[] = [];
  private busy: number[] = [];
  private pending = new Map<number, Pending>();
  private nextId = 1;
  private inline: SampleReader | null = null;
  private failure: Error | null = null;
  private closed = false;

  /**
   * Starts `workers` decoding workers (0: decode in this thread) for `source` with pipeline
   * `config`.
   */
  constructor(readonly source: SampleSource, readonly config: PipelineConfig, workers: number) {
    if (!Number.isInteger(workers) || workers < 0) {
      throw new RangeError(`workers must be a non-negative integer, got ${workers}`);
    }
    if (workers === 0) {
      this.inline = new SampleReader(source);
      return;
    }
    const url = new URL("./decode_worker.ts", import.meta.url).href;
    for (let w = 0; w < workers; w++) {
      const worker = new Worker(url, { type: "module" });
      worker.onmessage = (e: MessageEvent) => this.onMessage(w, e.data);
      worker.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.fail(new Error(`decode worker ${w} crashed: ${e.message}`));
      };
      const init: WorkerRequest = { type: "init", source, config };
      worker.postMessage(init);
      this.workers.push(worker);
      this.busy.push(0);
    }
  }

  /** Number of worker threads (0 when decoding in this thread). */
  get size(): number {
    return this.workers.length;
  }

  /** Tasks submitted and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  /**
   * Runs `mode` on sample `index` (augmentation seeded by `epoch`). Resolves with the result,
   * also for unreadable images (`ok: false`); rejects only if a worker fails unexpectedly or the
   * pool is closed.
   */
  run(index: number, epoch: number, mode: TaskMode): Promise<SampleResult> {
    if (this.closed) return Promise.reject(new Error("the decode pool is closed"));
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    if (this.inline) return runTask(this.inline, this.config, { id, index, epoch, mode });
    let w = 0;
    for (let i = 1; i < this.busy.length; i++) if (this.busy[i] < this.busy[w]) w = i;
    this.busy[w]++;
    return new Promise<SampleResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, worker: w });
      const msg: WorkerRequest = { type: "task", id, index, epoch, mode };
      this.workers[w].postMessage(msg);
    });
  }

  private onMessage(
    w: number,
    msg: SampleResult | { type: "fatal"; id: number; message: string } | { type: "closed" },
  ): void {
    if ("type" in msg) {
      if (msg.type === "fatal") {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        this.busy[w]--;
        p?.reject(new Error(`decode worker ${w}: ${msg.message}`));
      }
      return;
    }
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    this.busy[w]--;
    p.resolve(msg);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(err);
    }
  }

  /** Stops the workers (after they close their files) and fails any unanswered task. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.inline?.close();
    const done = this.workers.map((worker) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 2000); // a worker stuck in a long decode is terminated
        worker.onmessage = (e: MessageEvent) => {
          if (e.data?.type === "closed") {
            clearTimeout(timer);
            resolve();
          }
        };
        worker.postMessage({ type: "close" } satisfies WorkerRequest);
      })
    );
    await Promise.all(done);
    for (const worker of this.workers) worker.terminate();
    this.workers = [];
    this.fail(new Error("the decode pool was closed"));
  }
}
