/**
 * The files of one dataset, each listed once across all its folders (see {@link FilePool}).
 */
import { type ListDuplicate, listImages, type ListProblem } from "./files.ts";
import { DatasetError } from "./errors.ts";

/**
 * The files of one dataset, listed once each: every listing shares one `seen` map (files.ts), so
 * a file reachable under two names (links between class folders, a link to `..`) counts once,
 * and a file that would land in two splits or carry two labels is refused, since either would
 * leak one image between train and evaluation.
 */
export class FilePool {
  readonly seen = new Map<string, string>();
  readonly problems: ListProblem[] = [];
  readonly duplicates: ListDuplicate[] = [];
  /** The class and the split group of every path listed so far. */
  readonly where = new Map<string, { cls: string; group: string }>();

  /** The images under `folder`, of class `cls`, in split group `group` ("pool" when split later). */
  async list(folder: string, cls: string, group: string, ignored: string[]): Promise<string[]> {
    const duplicates: ListDuplicate[] = [];
    const paths = await listImages(folder, {
      ignored,
      seen: this.seen,
      duplicates,
      problems: this.problems,
    });
    for (const p of paths) this.where.set(p, { cls, group });
    for (const d of duplicates) {
      const first = this.where.get(d.first);
      if (first && first.group !== group) {
        throw new DatasetError(
          `${d.path} and ${d.first} are the same file, in the ${group} and the ${first.group} ` +
            `split: refusing to let one image leak between splits`,
        );
      }
      if (first && first.cls !== cls) {
        throw new DatasetError(
          `${d.path} (class ${cls}) and ${d.first} (class ${first.cls}) are the same file: ` +
            `one image cannot have two labels`,
        );
      }
      this.duplicates.push(d);
    }
    return paths;
  }

  /** Notes for the report: links not followed and files counted once. */
  notes(): string[] {
    const notes: string[] = [];
    if (this.problems.length) {
      notes.push(
        `${this.problems.length} folder link(s) not followed: ` +
          this.problems.slice(0, 3).map((p) => `${p.path} (${p.reason})`).join(", ") +
          (this.problems.length > 3 ? ", ..." : ""),
      );
    }
    if (this.duplicates.length) {
      notes.push(
        `${this.duplicates.length} file(s) reachable under a second name counted once: ` +
          this.duplicates.slice(0, 3).map((d) => `${d.path} = ${d.first}`).join(", ") +
          (this.duplicates.length > 3 ? ", ..." : ""),
      );
    }
    return notes;
  }
}
