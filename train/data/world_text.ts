/**
 * Reports of the demo world: short pathology-style texts that describe a tile's factors in
 * varied words. Each factor level has several synonymous phrases, each phrase goes into one of
 * several sentence frames, sentences are shuffled among irrelevant boilerplate (specimen
 * handling, logistics), and a factor is sometimes left out. No report contains a class name:
 * text can help a classifier only through what it describes, as in CLIP-IT's setting.
 *
 * Reports are lower-case ASCII words; sentences end with ". ". The word tokenizer
 * (clip/word_tokenizer.ts) splits on anything that is not a letter or digit, so the full stops
 * carry no token.
 */
import { splitWords } from "../../clip/word_tokenizer.ts";
import { FACTOR_NAMES, type Factors, WORLD_CLASSES, type WorldRng } from "./world_factors.ts";

/**
 * Phrases per factor level, indexed [factor][level]. Rules the tests enforce: no phrase of one
 * level contains a phrase of another level of the same factor (so a report can be read back),
 * and no word is a class name.
 */
export const FACTOR_PHRASES: readonly (readonly (readonly string[])[])[] = [
  [ // cellularity
    [
      "sparse cellularity",
      "low cellularity",
      "few scattered nuclei",
      "hypocellular stroma",
      "paucicellular tissue",
      "widely spaced cells",
      "low nuclear density",
    ],
    [
      "moderate cellularity",
      "intermediate cellularity",
      "moderately cellular tissue",
      "moderate nuclear density",
      "average cell density",
    ],
    [
      "high cellularity",
      "dense cellularity",
      "crowded nuclei",
      "hypercellular tissue",
      "densely packed cells",
      "high nuclear density",
      "sheets of closely packed cells",
    ],
  ],
  [ // nuclei
    [
      "small uniform nuclei",
      "bland nuclei",
      "small round nuclei",
      "monotonous small nuclei",
      "regular nuclear contours",
      "minimal nuclear atypia",
      "uniform bland nuclei",
    ],
    [
      "enlarged pleomorphic nuclei",
      "marked nuclear atypia",
      "large hyperchromatic nuclei",
      "nuclear pleomorphism",
      "irregular nuclear contours",
      "large atypical nuclei",
      "enlarged dark nuclei of varying size",
    ],
  ],
  [ // glands
    [
      "round regular glands",
      "well formed glands",
      "evenly spaced round glands",
      "orderly glandular architecture",
      "regular tubular glands",
      "intact round crypts",
    ],
    [
      "irregular glands",
      "distorted angulated glands",
      "complex glandular architecture",
      "misshapen branching glands",
      "irregular angulated crypts",
      "budding irregular glands",
    ],
    [
      "no gland formation",
      "absent glands",
      "solid growth without glands",
      "loss of glandular architecture",
      "no crypts",
    ],
  ],
  [ // staining (not a class factor)
    ["pale staining", "faint staining", "weak eosin staining", "light stain"],
    ["adequate staining", "good stain quality", "even staining", "satisfactory staining"],
    ["dark staining", "intense staining", "heavy stain", "strong eosin staining"],
  ],
];

/** Frames that turn one phrase into a sentence (`_` marks the phrase). */
const ONE = [
  "sections show _",
  "there is _",
  "_ noted",
  "_ present",
  "the tissue shows _",
  "microscopy reveals _",
  "_ identified",
  "findings include _",
  "examination shows _",
  "_ throughout",
];

/** Frames that join two phrases (`_` then `~`). */
const TWO = [
  "_ with ~",
  "sections show _ and ~",
  "there is _ with ~",
  "_ and ~ noted",
  "the biopsy shows _ and ~",
];

/** Sentences that describe nothing about the tissue. */
export const BOILERPLATE: readonly string[] = [
  "specimen received in formalin",
  "the specimen is labelled with the patient name",
  "sections were examined at several levels",
  "tissue submitted entirely in one cassette",
  "fixation is adequate",
  "slides were reviewed by two observers",
  "clinical history not provided",
  "margins cannot be assessed on this sample",
  "see comment",
  "immunostains are not required",
  "the core measures three millimetres",
  "gross description on file",
  "block one contains two fragments",
  "no further tissue available",
  "correlation with clinical findings is advised",
  "received fresh and fixed overnight",
  "orientation of the fragment is uncertain",
  "frozen section was not performed",
];

/** How often a class factor is left out of a report, and how often staining is mentioned. */
const OMIT_CLASS_FACTOR = 0.1;
const MENTION_STAINING = 0.4;
/** Reports shorter than this get more boilerplate (real reports are rarely one line). */
const MIN_WORDS = 15;

/** A report and which phrase it used for each factor it mentions (for tests and readers). */
export interface Report {
  /** The text: lower-case words, sentences ending in ". ". */
  text: string;
  /** The level each mentioned factor was described at (absent = not mentioned). */
  mentioned: Partial<Factors>;
}

/** Write a report describing `f` with randomness from `rng`. */
export function writeReport(f: Factors, rng: WorldRng): Report {
  const mentioned: Partial<Factors> = {};
  const phrases: string[] = [];
  FACTOR_NAMES.forEach((name, k) => {
    const keep = k === 3 ? rng.chance(MENTION_STAINING) : !rng.chance(OMIT_CLASS_FACTOR);
    if (!keep) return;
    mentioned[name] = f[name];
    phrases.push(rng.pick(FACTOR_PHRASES[k][f[name]]));
  });
  const order = rng.shuffle(phrases);
  const sentences: string[] = [];
  while (order.length) {
    if (order.length >= 2 && rng.chance(0.35)) {
      const frame = rng.pick(TWO);
      sentences.push(frame.replace("_", order.shift()!).replace("~", order.shift()!));
    } else {
      sentences.push(rng.pick(ONE).replace("_", order.shift()!));
    }
  }
  // Boilerplate: up to two sentences, sometimes four, and at least MIN_WORDS words in all.
  // Kept short so most reports fit the demo's 32-token context (longer ones are truncated).
  const filler = rng.shuffle(BOILERPLATE);
  let extra = rng.int(3) + (rng.chance(0.15) ? 2 : 0);
  const count = () => sentences.reduce((n, s) => n + reportWords(s).length, 0);
  for (let k = 0; k < filler.length && (extra > 0 || count() < MIN_WORDS); k++, extra--) {
    sentences.push(filler[k]);
  }
  return { text: rng.shuffle(sentences).join(". ") + ".", mentioned };
}

/** The words of a text as the word tokenizer sees them. */
export function reportWords(text: string): string[] {
  return splitWords(text);
}

/**
 * Every word a report can contain, sorted and unique: the vocabulary of the demo's word
 * tokenizer. Built from the phrase tables, so it changes only when they do.
 */
export function worldVocabulary(): string[] {
  const all = [
    ...FACTOR_PHRASES.flat(2),
    ...ONE,
    ...TWO,
    ...BOILERPLATE,
  ].flatMap(reportWords);
  return [...new Set(all)].sort();
}

/**
 * Read a report back: the factor levels its phrases name (whole-word phrase matches). A factor
 * whose phrases of two levels both appear is reported as -1. Used to check that reports say what
 * they mean; a matching model has to learn this from pairs instead.
 */
export function readReport(text: string): Partial<Record<keyof Factors, number>> {
  const padded = ` ${reportWords(text).join(" ")} `;
  const out: Partial<Record<keyof Factors, number>> = {};
  FACTOR_NAMES.forEach((name, k) => {
    FACTOR_PHRASES[k].forEach((levelPhrases, level) => {
      if (!levelPhrases.some((p) => padded.includes(` ${p} `))) return;
      out[name] = out[name] === undefined || out[name] === level ? level : -1;
    });
  });
  return out;
}

/** Class names as words (for the tests' leak check). */
export function classWords(): string[] {
  return WORLD_CLASSES.flatMap((c) => reportWords(c));
}
