/**
 * The command line's progress bar: one line on stderr, redrawn in place on a terminal and printed
 * at most every 5 seconds otherwise (so logs stay readable), with the rate and the time left.
 */

/** A one-line progress bar on stderr for `total` items of `unit`. */
export class Progress {
  #start = performance.now();
  #tty = Deno.stderr.isTerminal();
  #enc = new TextEncoder();
  #lastPrint = -Infinity;

  /** A bar labelled `label`; `quiet` makes every update a no-op. */
  constructor(
    readonly label: string,
    /** Items in all (may be set later, when it becomes known). */
    public total: number,
    readonly unit: string,
    readonly quiet: boolean,
  ) {}

  /** Seconds since the bar was created. */
  get elapsed(): number {
    return (performance.now() - this.#start) / 1000;
  }

  /**
   * Shows `done` of `total` items, the rate, the time left (or taken, when done) and an
   * optional `note` (e.g. the current loss).
   */
  update(done: number, note = ""): void {
    if (this.quiet) return;
    // Off a terminal (a log file, CI), one line every 5 s and the last one keep logs readable.
    const now = performance.now();
    if (!this.#tty && done < this.total && now - this.#lastPrint < 5000) return;
    this.#lastPrint = now;
    const width = 30;
    const filled = this.total ? Math.round((width * done) / this.total) : width;
    const rate = done / Math.max(this.elapsed, 1e-9);
    const eta = rate > 0 ? (this.total - done) / rate : 0;
    const line = `${this.label} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ` +
      `${done}/${this.total}  ${rate.toFixed(2)} ${this.unit}/s  ` +
      `${done < this.total ? `eta ${eta.toFixed(0)}s` : `${this.elapsed.toFixed(1)}s`}` +
      (note ? `  ${note}` : "");
    Deno.stderr.writeSync(this.#enc.encode(this.#tty ? `\r${line}\x1b[K` : `${line}\n`));
    if (this.#tty && done === this.total) Deno.stderr.writeSync(this.#enc.encode("\n"));
  }
}
