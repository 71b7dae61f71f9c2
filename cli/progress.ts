/**
 * The command line's progress bar: one line on stderr, redrawn in place on a terminal and printed
 * once per update otherwise (so logs stay readable), with the rate and the time left.
 */

/** A one-line progress bar on stderr for `total` items of `unit`. */
export class Progress {
  #start = performance.now();
  #tty = Deno.stderr.isTerminal();
  #enc = new TextEncoder();

  /** A bar labelled `label`; `quiet` makes every update a no-op. */
  constructor(
    readonly label: string,
    readonly total: number,
    readonly unit: string,
    readonly quiet: boolean,
  ) {}

  /** Seconds since the bar was created. */
  get elapsed(): number {
    return (performance.now() - this.#start) / 1000;
  }

  /** Shows `done` of `total` items, the rate, and the time left (or taken, when done). */
  update(done: number): void {
    if (this.quiet) return;
    const width = 30;
    const filled = this.total ? Math.round((width * done) / this.total) : width;
    const rate = done / Math.max(this.elapsed, 1e-9);
    const eta = rate > 0 ? (this.total - done) / rate : 0;
    const line = `${this.label} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ` +
      `${done}/${this.total}  ${rate.toFixed(2)} ${this.unit}/s  ` +
      `${done < this.total ? `eta ${eta.toFixed(0)}s` : `${this.elapsed.toFixed(1)}s`}`;
    Deno.stderr.writeSync(this.#enc.encode(this.#tty ? `\r${line}\x1b[K` : `${line}\n`));
    if (this.#tty && done === this.total) Deno.stderr.writeSync(this.#enc.encode("\n"));
  }
}
