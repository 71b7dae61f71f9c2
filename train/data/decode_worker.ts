/**
 * Decoding worker: reads, decodes and preprocesses samples for {@link DecodePool}
 * (pool.ts). Messages in: `init` (the source and pipeline), `task` (a SampleTask),
 * `close`. Messages out: a SampleResult per task (its data buffer transferred, not copied),
 * `fatal` for an unexpected error, `closed` after `close`.
 */
import { type PipelineConfig, runTask, SampleReader, type SampleTask } from "./sample.ts";
import type { SampleSource } from "./datasets.ts";

/** The parts of the worker global scope used here (the project's lib set is the window one). */
interface WorkerScope {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(message: unknown, transfer?: Transferable[]): void;
  close(): void;
}

/** Messages the pool sends. */
export type WorkerRequest =
  | { type: "init"; source: SampleSource; config: PipelineConfig }
  | ({ type: "task" } & SampleTask)
  | { type: "close" };

const scope = globalThis as unknown as WorkerScope;
let reader: SampleReader | null = null;
let config: PipelineConfig | null = null;

scope.onmessage = async (e: MessageEvent) => {
  const m = e.data as WorkerRequest;
  if (m.type === "init") {
    reader?.close();
    reader = new SampleReader(m.source);
    config = m.config;
  } else if (m.type === "task") {
    try {
      if (!reader || !config) throw new Error("decode worker: task before init");
      const res = await runTask(reader, config, m);
      const transfer = res.ok && res.data ? [res.data.buffer as ArrayBuffer] : [];
      scope.postMessage(res, transfer);
    } catch (err) {
      const msg = err instanceof Error ? `${err.message}\n${err.stack ?? ""}` : String(err);
      scope.postMessage({ type: "fatal", id: m.id, message: msg });
    }
  } else if (m.type === "close") {
    reader?.close();
    reader = null;
    scope.postMessage({ type: "closed" });
    scope.close();
  }
};
