/** The error of dataset opening, shared by datasets.ts and file_pool.ts. */

/** Thrown when a dataset cannot be opened: missing folders or files, unknown labels, ... */
export class DatasetError extends Error {
  /** Builds the error. */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DatasetError";
  }
}
