/**
 * Finding image files on disk: the one image lister of the project (datasets and the `embed`
 * command both use it) and the folder helpers the dataset openers share.
 *
 * Listing rules ({@link listImages}):
 * - Entries whose name starts with "." are skipped (hidden files and folders, `.DS_Store`, ...).
 * - Symbolic links are followed, to files and to folders. A dangling link is listed as a file,
 *   so reading it reports the problem instead of the file vanishing. There is no cycle check: a
 *   link to an enclosing folder makes a recursive listing fail with the operating system's
 *   "too many levels of symbolic links" error.
 * - Files with a supported image extension (IMAGE_EXTENSIONS) are listed, and so are files with
 *   the extension of an image format the decoders do not read (.bmp, .webp, .svs, ...): those
 *   then fail (or are skipped) with a clear reason instead of vanishing. Other files are reported
 *   in `ignored`.
 * - Entries are visited in code-point order of their names (independent of locale and file
 *   system), folders depth-first where they sort, so the result is sorted by path component.
 */
import { extname, join } from "node:path";

/** File extensions read as images (lower case, with the dot). */
export const IMAGE_EXTENSIONS = [".png", ".tif", ".tiff", ".jpg", ".jpeg"];

/**
 * Extensions of image formats the decoder does not read: such files are listed as samples so they
 * fail (or are skipped) with a clear reason instead of vanishing.
 */
const UNSUPPORTED_IMAGE_EXTENSIONS = [
  ".bmp",
  ".gif",
  ".webp",
  ".jp2",
  ".j2k",
  ".jfif",
  ".heic",
  ".ppm",
  ".pgm",
  ".svs",
  ".ndpi",
];

/** Whether `path` is a folder (following symlinks); false when it does not exist. */
export async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/** Code-point order, so listings do not depend on the locale or the file system. */
export function byName(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Subfolders of `dir` (following symlinks), hidden ones left out, sorted. */
export async function subdirs(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(".")) continue;
    if (e.isDirectory || (e.isSymlink && await isDir(join(dir, e.name)))) out.push(e.name);
  }
  return out.sort(byName);
}

/** Whether a file name has an image extension (supported or not). */
function looksLikeImage(name: string): boolean {
  const ext = extname(name).toLowerCase();
  return IMAGE_EXTENSIONS.includes(ext) || UNSUPPORTED_IMAGE_EXTENSIONS.includes(ext);
}

/** Options of {@link listImages}. */
export interface ListImagesOptions {
  /** Descend into subfolders (default true). */
  recursive?: boolean;
  /** Receives the paths of the non-hidden files that are not images. */
  ignored?: string[];
}

/**
 * The image files under `dir` (see the module comment for the rules), as paths joined onto
 * `dir`, sorted by path.
 * @throws the file system's error when `dir` (or a subfolder) cannot be read.
 */
export async function listImages(dir: string, opts: ListImagesOptions = {}): Promise<string[]> {
  const recursive = opts.recursive ?? true;
  const out: string[] = [];
  const entries: Deno.DirEntry[] = [];
  for await (const e of Deno.readDir(dir)) entries.push(e);
  entries.sort((a, b) => byName(a.name, b.name));
  for (const e of entries) {
    if (e.name.startsWith(".")) continue;
    const p = join(dir, e.name);
    let file = e.isFile, folder = e.isDirectory;
    if (e.isSymlink) {
      try {
        const st = await Deno.stat(p);
        file = st.isFile;
        folder = st.isDirectory;
      } catch {
        file = true; // a dangling link: keep it so reading it reports the problem
      }
    }
    if (folder) {
      if (recursive) out.push(...await listImages(p, opts));
    } else if (file) {
      if (looksLikeImage(e.name)) out.push(p);
      else opts.ignored?.push(p);
    }
  }
  return out;
}
