/**
 * The text repair of `ftfy.fix_text` with its default settings (ftfy 6.3), which OpenAI CLIP and
 * OpenCLIP run on every text before the BPE (see clip/tokenizer.ts). Written from ftfy's
 * documentation and source and checked against ftfy itself (tests/fixtures/make_ftfy_fixture.py).
 *
 * `fixText` cuts the text after every "\n" (and every 1,000,000 code points) and repeats these
 * steps on each piece until it stops changing:
 * 1. decode HTML character references that end in ';' (`&amp;`, `&#8217;`, also upper-cased
 *    `&EACUTE;`), unless a '<' was seen in this or an earlier piece (the text is then HTML);
 * 2. fix mojibake (`fix_encoding`): if the badness heuristic finds character sequences typical of
 *    UTF-8 read as a single-byte code page, take the first of ftfy's ten code pages that encodes
 *    the whole piece and whose bytes then decode as UTF-8 (or CESU-8 / Java's C0 80 null), after
 *    putting back NBSP bytes that became spaces (`restore_byte_a0`) and marking bytes lost to
 *    U+FFFD (`replace_lossy_sequences`); failing that, fix each run that looks like UTF-8
 *    mojibake on its own (`decode_inconsistent_utf8`); failing that, read C1 controls as
 *    Windows-1252; repeat until nothing changes;
 * 3. C1 controls -> Windows-1252; Latin ligatures (ﬁ, ĳ, ǆ...) -> letters; full/half-width forms
 *    -> NFKC, U+3000 -> space; curly quotes -> straight; CRLF, CR, U+2028/9, U+0085 -> "\n"; lone
 *    surrogates -> U+FFFD; ANSI terminal escapes removed; control characters removed (C0 but tab,
 *    line feed, form feed and CR; DEL; U+206A..206F; the BOM U+FEFF; U+FFF9..FFFC); NFC.
 *
 * ftfy's quirks are kept, because the goal is CLIP's token ids, not the best repair: the '<' test
 * sticks for later lines; a C0 byte or a CESU-8 pair cut short by the line's final "\n" still
 * decodes (Python's `$` matches before a final newline), eating the "\n".
 *
 * Not reproduced exactly: the Unicode character data (NFC, NFKC, Python's `\w` and `\d` as
 * `[\p{L}\p{N}_]` and `\p{Nd}`) comes from the JS engine, a newer Unicode version than Python
 * 3.11's 14.0, so characters assigned after 14.0 may be classified or normalised differently.
 *
 * Longer than the ~600 lines asked of a file: about 80 lines are ftfy's tables, and the rest is
 * one algorithm that reads best whole.
 */

import { html5Entities, htmlUnescape } from "./html_entities.ts";

/** Python's `str.isspace()` set (also `\s` of its `re` module), as a regex class body. */
export const PY_SPACE = "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f" +
  "\\u205f\\u3000";

// ---------------------------------------------------------------------------------------------
// Tables. Packed as space-separated hex code points, "a-b" for a run of consecutive ones; printed
// by `tests/fixtures/make_ftfy_fixture.py --print-tables`, checked by tests/tokenizer_test.ts.

/**
 * Characters of bytes 0x80..0xFF in the code pages ftfy tries after Latin-1, in its order. The
 * "sloppy" Windows code pages map their unassigned bytes to the Latin-1 character of that byte
 * and byte 0x1A to U+FFFD (a character lost earlier), as ftfy's sloppy codecs do.
 */
const CODEPAGES_PACKED: Readonly<Record<string, string>> = {
  "sloppy-windows-1252":
    "20ac 81 201a 192 201e 2026 2020-2021 2c6 2030 160 2039 152 8d 17d 8f-90 2018-2019 " +
    "201c-201d 2022 2013-2014 2dc 2122 161 203a 153 9d 17e 178 a0-ff",
  "sloppy-windows-1251":
    "402-403 201a 453 201e 2026 2020-2021 20ac 2030 409 2039 40a 40c 40b 40f 452 " +
    "2018-2019 201c-201d 2022 2013-2014 98 2122 459 203a 45a 45c 45b 45f a0 40e 45e 408 " +
    "a4 490 a6-a7 401 a9 404 ab-ae 407 b0-b1 406 456 491 b5-b7 451 2116 454 bb 458 405 " +
    "455 457 410-44f",
  "sloppy-windows-1250":
    "20ac 81 201a 83 201e 2026 2020-2021 88 2030 160 2039 15a 164 17d 179 90 2018-2019 " +
    "201c-201d 2022 2013-2014 98 2122 161 203a 15b 165 17e 17a a0 2c7 2d8 141 a4 104 " +
    "a6-a9 15e ab-ae 17b b0-b1 2db 142 b4-b8 105 15f bb 13d 2dd 13e 17c 154 c1-c2 102 c4 " +
    "139 106 c7 10c c9 118 cb 11a cd-ce 10e 110 143 147 d3-d4 150 d6-d7 158 16e da 170 " +
    "dc-dd 162 df 155 e1-e2 103 e4 13a 107 e7 10d e9 119 eb 11b ed-ee 10f 111 144 148 " +
    "f3-f4 151 f6-f7 159 16f fa 171 fc-fd 163 2d9",
  "sloppy-windows-1253":
    "20ac 81 201a 192 201e 2026 2020-2021 88 2030 8a 2039 8c-90 2018-2019 201c-201d 2022 " +
    "2013-2014 98 2122 9a 203a 9c-a0 385-386 a3-ae 2015 b0-b3 384 b5-b7 388-38a bb 38c bd " +
    "38e-3a1 d2 3a3-3ce ff",
  "sloppy-windows-1254":
    "20ac 81 201a 192 201e 2026 2020-2021 2c6 2030 160 2039 152 8d-90 2018-2019 201c-201d " +
    "2022 2013-2014 2dc 2122 161 203a 153 9d-9e 178 a0-cf 11e d1-dc 130 15e df-ef 11f " +
    "f1-fc 131 15f ff",
  "sloppy-windows-1257":
    "20ac 81 201a 83 201e 2026 2020-2021 88 2030 8a 2039 8c a8 2c7 b8 90 2018-2019 " +
    "201c-201d 2022 2013-2014 98 2122 9a 203a 9c af 2db 9f-a7 d8 a9 156 ab-ae c6 b0-b7 f8 " +
    "b9 157 bb-be e6 104 12e 100 106 c4-c5 118 112 10c c9 179 116 122 136 12a 13b 160 143 " +
    "145 d3 14c d5-d7 172 141 15a 16a dc 17b 17d df 105 12f 101 107 e4-e5 119 113 10d e9 " +
    "17a 117 123 137 12b 13c 161 144 146 f3 14d f5-f7 173 142 15b 16b fc 17c 17e 2d9",
  "iso-8859-2":
    "80-a0 104 2d8 141 a4 13d 15a a7-a8 160 15e 164 179 ad 17d 17b b0 105 2db 142 b4 13e " +
    "15b 2c7 b8 161 15f 165 17a 2dd 17e 17c 154 c1-c2 102 c4 139 106 c7 10c c9 118 cb 11a " +
    "cd-ce 10e 110 143 147 d3-d4 150 d6-d7 158 16e da 170 dc-dd 162 df 155 e1-e2 103 e4 " +
    "13a 107 e7 10d e9 119 eb 11b ed-ee 10f 111 144 148 f3-f4 151 f6-f7 159 16f fa 171 " +
    "fc-fd 163 2d9",
  "macroman":
    "c4-c5 c7 c9 d1 d6 dc e1 e0 e2 e4 e3 e5 e7 e9 e8 ea-eb ed ec ee-ef f1 f3 f2 f4 f6 f5 " +
    "fa f9 fb-fc 2020 b0 a2-a3 a7 2022 b6 df ae a9 2122 b4 a8 2260 c6 d8 221e b1 " +
    "2264-2265 a5 b5 2202 2211 220f 3c0 222b aa ba 3a9 e6 f8 bf a1 ac 221a 192 2248 2206 " +
    "ab bb 2026 a0 c0 c3 d5 152-153 2013-2014 201c-201d 2018-2019 f7 25ca ff 178 2044 " +
    "20ac 2039-203a fb01-fb02 2021 b7 201a 201e 2030 c2 ca c1 cb c8 cd-cf cc d3-d4 f8ff " +
    "d2 da-db d9 131 2c6 2dc af 2d8-2da b8 2dd 2db 2c7",
  "cp437": "c7 fc e9 e2 e4 e0 e5 e7 ea-eb e8 ef ee ec c4-c5 c9 e6 c6 f4 f6 f2 fb f9 ff d6 dc " +
    "a2-a3 a5 20a7 192 e1 ed f3 fa f1 d1 aa ba bf 2310 ac bd bc a1 ab bb 2591-2593 2502 " +
    "2524 2561-2562 2556 2555 2563 2551 2557 255d 255c 255b 2510 2514 2534 252c 251c 2500 " +
    "253c 255e-255f 255a 2554 2569 2566 2560 2550 256c 2567-2568 2564-2565 2559 2558 " +
    "2552-2553 256b 256a 2518 250c 2588 2584 258c 2590 2580 3b1 df 393 3c0 3a3 3c3 b5 3c4 " +
    "3a6 398 3a9 3b4 221e 3c6 3b5 2229 2261 b1 2265 2264 2320-2321 f7 2248 b0 2219 b7 " +
    "221a 207f b2 25a0 a0",
};

/**
 * The character categories of ftfy's badness heuristic: the few hundred characters that UTF-8
 * mojibake is made of, grouped by how they behave (e.g. `bad`: almost only seen in mojibake;
 * `kaomoji`: letters that emoticons use, so they may appear in odd places).
 */
export const CATEGORIES_PACKED = {
  common: "a0 ad b4 b7 2013-2015 2019 2026",
  c1: "80-9f",
  bad: "a4 a6 a8 aa ac af b8 ba 192 2c6-2c7 2d8 2db-2dc 2020-2021 2030 2310 25ca fffd",
  law: "a7 b6",
  currency: "a2-a3 a5 20a7 20ac",
  start_punctuation: "a1 a9 ab bf 384-385 2018 201a 201c 201e 2022 2039 f8ff",
  end_punctuation: "ae bb 2dd 201d 203a 2122",
  numeric: "b1-b3 b5 b9 bc-be d7 f7 2044 2116 2202 2206 220f 2211 221a 221e 2229 222b 2248 " +
    "2260-2261 2264-2265",
  kaomoji: "b0 d2-d6 d9-dc f2-f6 f8-fc 14c 150 16a 172",
  upper_accented:
    "c0-d1 d8 dc-dd 100 102 104 106 10c 10e 110 112 116 118 11a 11e 122 12a 130 136 139 " +
    "13b 13d 141 143 145 147 152 158 15a 15e 160 162 164 16e 170 178-179 17b 17d 490",
  lower_accented:
    "df-f1 fc 101 103 105 107 10d 10f 111 113 117 119 11b 11f 123 12b 12f 137 13a 13c 13e " +
    "142 153 155 15b 15f 161 165 17a 17c 17e 491 fb01-fb02",
  upper_common: "de 386 388-38a 38c 38e-38f 391-3ab 401-42f",
  lower_common: "3ac-3c9 430-45f",
  box: "2502 250c 2510 2518 251c 2524 252c 253c 2550-256c 2580 2584 2588 258c 2590-2593",
} as const;

/** Code points of a packed table, in order ("a-b" expands to a..b). */
export function unpackCodePoints(packed: string): number[] {
  const out: number[] = [];
  for (const tok of packed.split(" ")) {
    if (!tok) continue;
    const [a, b] = tok.split("-").map((h) => parseInt(h, 16));
    for (let cp = a; cp <= (b ?? a); cp++) out.push(cp);
  }
  return out;
}

/** A single-byte code page: its name, the characters of bytes 0x80..0xFF and the reverse map. */
export interface Codepage {
  readonly name: string;
  /** `chars[b - 0x80]` is the code point of byte b. */
  readonly chars: readonly number[];
  /** Code point -> byte for every character the code page can encode outside ASCII. */
  readonly bytes: ReadonlyMap<number, number>;
  /** Sloppy code pages encode U+FFFD as byte 0x1A and so cannot encode a literal U+001A. */
  readonly sloppy: boolean;
}

let codepageList: Codepage[] | null = null;

/** ftfy's code pages in the order it tries them: Latin-1, then the others of the table above. */
export function codepages(): readonly Codepage[] {
  if (codepageList) return codepageList;
  const latin1 = Array.from({ length: 128 }, (_, i) => 0x80 + i);
  const list: [string, number[]][] = [["latin-1", latin1]];
  for (const [name, packed] of Object.entries(CODEPAGES_PACKED)) {
    list.push([name, unpackCodePoints(packed)]);
  }
  const pages = list.map(([name, chars]) => {
    const sloppy = name.startsWith("sloppy-");
    const bytes = new Map(chars.map((cp, i) => [cp, 0x80 + i]));
    if (sloppy) bytes.set(0xfffd, 0x1a);
    return { name, chars, bytes, sloppy };
  });
  codepageList = pages;
  return pages;
}

/** `text` encoded in `page` as a byte string (one char per byte), or null if it cannot be. */
function encodeBytes(text: string, page: Codepage): string | null {
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80 && !(c === 0x1a && page.sloppy)) {
      out.push(c);
      continue;
    }
    const b = page.bytes.get(c); // surrogates and astral characters are in no code page
    if (b === undefined) return null;
    out.push(b);
  }
  let s = "";
  for (let i = 0; i < out.length; i += 8192) {
    s += String.fromCharCode(...out.slice(i, i + 8192));
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// The badness heuristic and the UTF-8 mojibake detector.

type Category = keyof typeof CATEGORIES_PACKED;

/** A regex class body (escaped code points and ranges) for a packed table. */
function classBody(packed: string): string {
  return packed.split(" ").filter((t) => t).map((t) =>
    t.split("-").map((h) => `\\u{${h}}`).join("-")
  ).join("");
}

/** `[...]` of the union of some categories and extra characters (given as class body text). */
function oneOf(cats: Category[], extra = ""): string {
  return `[${cats.map((c) => classBody(CATEGORIES_PACKED[c])).join("")}${extra}]`;
}

let badnessRe: RegExp | null = null;

/**
 * ftfy's badness pattern: each alternative is a character sequence far likelier in mojibake than
 * in intended text (a lower-case accented letter followed by a currency sign, "Ã©", "â€", ...).
 */
function badnessPattern(): RegExp {
  if (badnessRe) return badnessRe;
  const LA = "lower_accented", UA = "upper_accented", LC = "lower_common", UC = "upper_common";
  const SP = "start_punctuation", EP = "end_punctuation", CU = "currency", NU = "numeric";
  const BOX = "box", BAD = "bad", LAW = "law", C1 = "c1";
  const arabic = oneOf(["common", CU, BAD, NU, SP], "\\u0178\\u0160\\u00ae\\u00b0\\u00b5\\u00bb");
  const cyrillic = "[\\u0412\\u0413\\u0420\\u0421]"; // В Г Р С
  const greek = "[\\u0392\\u0393\\u039e\\u039f]"; // Β Γ Ξ Ο
  const alternatives = [
    oneOf([C1]),
    oneOf([BAD, LA, UA, BOX, SP, EP, CU, NU, LAW]) + oneOf([BAD]),
    "[a-zA-Z]" + oneOf([LC, UC]) + oneOf([BAD]),
    oneOf([BAD]) + oneOf([LA, UA, BOX, SP, EP, CU, NU, LAW]),
    oneOf([LA, LC, BOX, EP, CU, NU]) + oneOf([UA]),
    oneOf([BOX, EP, CU, NU]) + oneOf([LA]),
    oneOf([LA, BOX, EP]) + oneOf([CU]),
    `[${PY_SPACE}]` + oneOf([UA]) + oneOf([CU]),
    oneOf([UA, BOX]) + oneOf([NU, LAW]),
    oneOf([LA, UA, BOX, CU, EP]) + oneOf([SP]) + oneOf([NU]),
    oneOf([LA, UA, CU, NU, BOX, LAW]) + oneOf([EP]) + oneOf([SP]),
    oneOf([CU, NU, BOX]) + oneOf([SP]),
    "[a-z]" + oneOf([UA]) + oneOf([SP, CU]),
    oneOf([BOX]) + oneOf(["kaomoji"]),
    oneOf([LA, UA, CU, NU, SP, EP, LAW]) + oneOf([BOX]),
    oneOf([BOX]) + oneOf([EP]),
    oneOf([LA, UA]) + oneOf([SP, EP]) + "[\\p{L}\\p{N}_]", // Python's \w
    "[\\u0152\\u0153][^A-Za-z]", // Œ œ not followed by a Latin letter
    oneOf([UA]) + "\\u00b0", // degree sign after a capital letter
    // Â Ã Î Ð then € œ Š š ¢ £ Ÿ ž NBSP SHY ® © ° · » ... – — ´
    "[\\u00c2\\u00c3\\u00ce\\u00d0]" +
    oneOf(
      [SP, EP],
      "\\u20ac\\u0153\\u0160\\u0161\\u00a2\\u00a3\\u0178\\u017e\\u00a0\\u00ad\\u00ae\\u00a9" +
        "\\u00b0\\u00b7\\u00bb\\u2013\\u2014\\u00b4",
    ),
    "\\u00d7[\\u00b2\\u00b3]", // × ² ³
    `[\\u00d8\\u00d9]${arabic}[\\u00d8\\u00d9]${arabic}`, // Windows-1252 mojibake of Arabic
    "\\u00e0[\\u00b2\\u00b5\\u00b9\\u00bc\\u00bd\\u00be]", // à then ² µ ¹ ¼ ½ ¾
    // MacRoman: √ then ± ∂ † ≠ ® ™ ´ ≤ ≥ ¥ µ ø; ≈ then ° ¢; ‚Ä then ì î ï ò ô ú ù û † ° ¢ π;
    // ‚ then â ó then à ä ° ê
    "\\u221a[\\u00b1\\u2202\\u2020\\u2260\\u00ae\\u2122\\u00b4\\u2264\\u2265\\u00a5\\u00b5" +
    "\\u00f8]",
    "\\u2248[\\u00b0\\u00a2]",
    "\\u201a\\u00c4[\\u00ec\\u00ee\\u00ef\\u00f2\\u00f4\\u00fa\\u00f9\\u00fb\\u2020\\u00b0" +
    "\\u00a2\\u03c0]",
    "\\u201a[\\u00e2\\u00f3][\\u00e0\\u00e4\\u00b0\\u00ea]",
    "\\u0432\\u0402", // вЂ: Windows-1251 mojibake of U+2000..
    cyrillic + oneOf([C1, BAD, SP, EP, CU], "\\u00b0\\u00b5") + cyrillic,
    "\\u0413\\u045e\\u0412\\u0402\\u0412[^\\n][A-Za-z ]", // ГўВЂВ. then a Latin letter or space
    "\\u00c3[\\u00a0\\u00a1]", // Ã NBSP, Ã¡
    `[a-z][${PY_SPACE}]?[\\u00c3\\u00c2] `,
    "^[\\u00c3\\u00c2] ",
    `[a-z.,?!${classBody(CATEGORIES_PACKED[EP])}]\\u00c2` + oneOf([SP, EP], " "),
    "\\u03b2\\u20ac[\\u2122\\u00a0\\u0386\\u00ad\\u00ae\\u00b0]", // β€ then ™ NBSP Ά SHY ® °
    greek + oneOf([C1, BAD, SP, EP, CU], "\\u00b0") + greek,
    "\\u0101\\u20ac", // ā€: Windows-1257 mojibake of U+2000..
  ];
  badnessRe = new RegExp(alternatives.join("|"), "u");
  return badnessRe;
}

/** Whether ftfy's heuristic sees mojibake in `text` (`ftfy.badness.is_bad`). */
export function isBad(text: string): boolean {
  return badnessPattern().test(text);
}

/** How many non-overlapping badness matches `text` has (`ftfy.badness.badness`). */
export function badness(text: string): number {
  const re = new RegExp(badnessPattern().source, "gu");
  let n = 0;
  for (const _ of text.matchAll(re)) n++;
  return n;
}

/** Punctuation and space that may stand next to mojibake for themselves (not "strict" clues). */
const LOOSE_CONTINUATION = new Set(unpackCodePoints("20 2013-2015 2018-201a 201c-201e 2022 2026"));

/**
 * The characters that Latin-1 and the Windows code pages decode UTF-8 lead bytes (first of 2:
 * C2..DF, of 3: E0..EF, of 4: F0 and F3) and continuation bytes (80..BF, plus a space that was a
 * NBSP) to; `continuationStrict` leaves out the space and punctuation that also stand for
 * themselves next to mojibake.
 */
export function utf8Clues(): Record<
  "first2" | "first3" | "first4" | "continuation" | "continuationStrict",
  number[]
> {
  const sets = {
    first2: new Set<number>(),
    first3: new Set<number>(),
    first4: new Set<number>(),
    continuation: new Set<number>([0x20]),
  };
  for (const page of codepages()) {
    if (page.name !== "latin-1" && !page.sloppy) continue; // Latin-1 and Windows-125x
    page.chars.forEach((cp, i) => {
      const b = 0x80 + i;
      if (b <= 0xbf) sets.continuation.add(cp);
      else if (b >= 0xc2 && b <= 0xdf) sets.first2.add(cp);
      else if (b >= 0xe0 && b <= 0xef) sets.first3.add(cp);
      else if (b === 0xf0 || b === 0xf3) sets.first4.add(cp);
    });
  }
  const sorted = (s: Set<number>) => [...s].sort((a, b) => a - b);
  return {
    first2: sorted(sets.first2),
    first3: sorted(sets.first3),
    first4: sorted(sets.first4),
    continuation: sorted(sets.continuation),
    continuationStrict: sorted(sets.continuation).filter((cp) => !LOOSE_CONTINUATION.has(cp)),
  };
}

let utf8DetectorRe: RegExp | null = null;

/**
 * Runs of characters that look like UTF-8 read as a single-byte code page: a lead-byte character
 * followed by the right number of continuation-byte characters, not right after a strict
 * continuation character (so a few characters of a longer garble are not "fixed" alone).
 */
export function utf8DetectorPattern(): RegExp {
  if (utf8DetectorRe) return utf8DetectorRe;
  const c = utf8Clues();
  const cls = (cps: number[]) => `[${cps.map((cp) => `\\u{${cp.toString(16)}}`).join("")}]`;
  const cont = cls(c.continuation);
  utf8DetectorRe = new RegExp(
    `(?<!${cls(c.continuationStrict)})(?:${cls(c.first2)}${cont}|${cls(c.first3)}${cont}{2}|` +
      `${cls(c.first4)}${cont}{3})+`,
    "gu",
  );
  return utf8DetectorRe;
}

// ---------------------------------------------------------------------------------------------
// Byte-level repairs and UTF-8 decoding. Bytes are held as "byte strings" (one char per byte, code
// 0..255) so that regexes can run over them.

/**
 * UTF-8 sequences that would be valid had a 0xA0 byte not been turned into a space: lead bytes
 * whose A0 continuation gives a likely character (NBSP, à, Š, Π, Р, ٠), likely three-byte
 * sequences, and four-byte sequences starting with F0.
 */
const ALTERED_UTF8 = new RegExp(
  "[\\xc2\\xc3\\xc5\\xce\\xd0\\xd9] |[\\xe2\\xe3] [\\x80-\\x84\\x86-\\x9f\\xa1-\\xbf]|" +
    "[\\xe0-\\xe3][\\x80-\\x84\\x86-\\x9f\\xa1-\\xbf] |\\xf0 [\\x80-\\xbf]{2}|" +
    "\\xf0[\\x80-\\xbf] [\\x80-\\xbf]|\\xf0[\\x80-\\xbf]{2} ",
  "g",
);
const HAS_ALTERED_UTF8 = new RegExp(ALTERED_UTF8.source);
/** "Ã " as a word ("à la"), except before the Portuguese "às", "àquele", "àquela", "àquilo". */
const A_GRAVE_WORD = /\xc3 (?! |quele|quela|quilo|s )/g;
/**
 * UTF-8 / CESU-8 sequences with a continuation byte lost to U+FFFD (byte 0x1A in a sloppy code
 * page) or, once per sequence, to '?'; and any other 0x1A.
 */
const LOSSY_UTF8 = new RegExp(
  [
    "[\\xc2-\\xdf]\\x1a",
    "[\\xc2-\\xc3]\\?",
    "\\xed[\\xa0-\\xaf][\\x1a?]\\xed[\\xb0-\\xbf][\\x1a?\\x80-\\xbf]",
    "\\xed[\\xa0-\\xaf][\\x1a?\\x80-\\xbf]\\xed[\\xb0-\\xbf][\\x1a?]",
    "[\\xe0-\\xef][\\x1a?][\\x1a\\x80-\\xbf]",
    "[\\xe0-\\xef][\\x1a\\x80-\\xbf][\\x1a?]",
    "[\\xf0-\\xf4][\\x1a?][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf]",
    "[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a?][\\x1a\\x80-\\xbf]",
    "[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf][\\x1a?]",
    "\\x1a",
  ].join("|"),
  "g",
);

/** `restore_byte_a0`: turn back into 0xA0 the spaces that break an otherwise valid sequence. */
function restoreByteA0(bytes: string): string {
  return bytes.replace(A_GRAVE_WORD, "\xc3\xa0 ").replace(
    ALTERED_UTF8,
    (m) => m.replace(/ /g, "\xa0"),
  );
}

const UTF8_STRICT = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Strict UTF-8 of bytes [start, end), or null when they are not valid UTF-8. */
function decodeStrict(bytes: Uint8Array, start: number, end: number): string | null {
  try {
    return UTF8_STRICT.decode(bytes.subarray(start, end));
  } catch {
    return null;
  }
}

/**
 * ftfy's "utf-8-variants" decoding of a byte string, or null where it raises: strict UTF-8, plus
 * CESU-8 surrogate pairs (ED A0-AF xx ED B0-BF xx) as one character and Java's C0 80 as U+0000.
 * Python's `$` also matches before a final "\n": a C0 or a CESU-8 pair whose last byte is that
 * "\n" still decodes (the "\n" is consumed), as in ftfy.
 */
function decodeUtf8Variants(byteString: string): string | null {
  const n = byteString.length;
  const bytes = new Uint8Array(n);
  let special = false;
  for (let i = 0; i < n; i++) {
    const b = byteString.charCodeAt(i);
    bytes[i] = b;
    if (b === 0xed || b === 0xc0) special = true;
  }
  if (!special) return decodeStrict(bytes, 0, n);
  const cont = (i: number, lo: number, hi: number) => bytes[i] >= lo && bytes[i] <= hi;
  const endAt = (i: number) => i === n || (i === n - 1 && bytes[i] === 0x0a);
  let out = "";
  let start = 0;
  for (let i = 0; i < n; i++) {
    const b = bytes[i];
    const isNull = b === 0xc0 && (cont(i + 1, 0x80, 0x80) || endAt(i + 1));
    const isSurrogate = b === 0xed && (cont(i + 1, 0xa0, 0xbf) || endAt(i + 1));
    if (!isNull && !isSurrogate) continue;
    const plain = decodeStrict(bytes, start, i);
    if (plain === null) return null;
    out += plain;
    if (isNull) {
      if (i + 1 >= n) return null; // a lone C0 at the very end
      out += "\0";
      i += 1;
    } else {
      // A CESU-8 pair (or, at a final "\n", one cut short by it) or an error.
      const cesu = n - i >= 6 && cont(i + 1, 0xa0, 0xaf) && cont(i + 2, 0x80, 0xbf) &&
        bytes[i + 3] === 0xed && cont(i + 4, 0xb0, 0xbf) &&
        (cont(i + 5, 0x80, 0xbf) || i + 5 === n - 1 && bytes[i + 5] === 0x0a);
      if (!cesu) return null;
      out += String.fromCodePoint(
        0x10000 + ((bytes[i + 1] & 0x0f) << 16) + ((bytes[i + 2] & 0x3f) << 10) +
          ((bytes[i + 4] & 0x0f) << 6) + (bytes[i + 5] & 0x3f),
      );
      i += 5;
    }
    start = i + 1;
  }
  const rest = decodeStrict(bytes, start, n);
  return rest === null ? null : out + rest;
}

// ---------------------------------------------------------------------------------------------
// fix_encoding.

const HAS_C1 = /[\x80-\x9f]/;
const C1_ALL = /[\x80-\x9f]/g;

/** Windows-1252 characters of bytes 0x80..0x9F (its five unassigned bytes keep the C1 char). */
function windows1252(): readonly number[] {
  return codepages()[1].chars;
}

/** `fix_c1_controls`: C1 control characters read as Windows-1252, as browsers do. */
function fixC1Controls(text: string): string {
  if (!HAS_C1.test(text)) return text;
  const page = windows1252();
  return text.replace(C1_ALL, (c) => String.fromCharCode(page[c.charCodeAt(0) - 0x80]));
}

function isAscii(text: string): boolean {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) >= 0x80) return false;
  return true;
}

/** One step of `fix_encoding`: the first repair that applies, or `text` unchanged. */
function fixEncodingStep(text: string): string {
  if (isAscii(text) || !isBad(text)) return text;
  for (const page of codepages()) {
    const encoded = encodeBytes(text, page);
    if (encoded === null) continue;
    let bytes = encoded;
    if (page.name !== "macroman" && HAS_ALTERED_UTF8.test(bytes)) {
      bytes = restoreByteA0(bytes);
    }
    if (page.sloppy) bytes = bytes.replace(LOSSY_UTF8, "\xef\xbf\xbd");
    const fixed = decodeUtf8Variants(bytes);
    if (fixed !== null) return fixed;
  }
  const detector = utf8DetectorPattern();
  if (text.search(detector) >= 0) {
    // Fix each run that looks like mojibake on its own (text mixing two encodings). The runs are
    // all found before the callbacks run, so the nested use of the same regex is safe.
    const fixed = text.replace(
      detector,
      (run) => run.length < text.length && isBad(run) ? fixEncoding(run) : run,
    );
    if (fixed !== text) return fixed;
  }
  // ftfy next re-reads text that Latin-1 can encode as strict Windows-1252 when that succeeds;
  // this comes to the same as reading its C1 controls as Windows-1252, which it does otherwise.
  return fixC1Controls(text);
}

/** `ftfy.fix_encoding`: repair mojibake until the text stops changing. */
export function fixEncoding(text: string): string {
  for (;;) {
    const next = fixEncodingStep(text);
    if (next === text) return text;
    text = next;
  }
}

// ---------------------------------------------------------------------------------------------
// The character-level fixes.

const ENTITY_RE = /&#?[0-9A-Za-z]{1,24};/g;
let entityTable: Map<string, string> | null = null;

/**
 * ftfy's entity table: `&name;` for every HTML5 name that ends in ';', plus the upper-cased
 * spelling of the all-lower-case names (`&EACUTE;` -> É) where it means nothing to
 * `html.unescape`.
 */
export function ftfyEntities(): ReadonlyMap<string, string> {
  if (entityTable) return entityTable;
  const table = new Map<string, string>();
  for (const [name, value] of html5Entities()) {
    if (!name.endsWith(";")) continue;
    table.set("&" + name, value);
    if (name === name.toLowerCase()) {
      const upper = "&" + name.toUpperCase();
      if (htmlUnescape(upper) === upper) table.set(upper, value.toUpperCase());
    }
  }
  entityTable = table;
  return table;
}

/** ftfy's `unescape_html`: only references that end in ';'; numeric ones via `html.unescape`. */
export function unescapeHtml(text: string): string {
  if (!text.includes("&")) return text;
  const table = ftfyEntities();
  return text.replace(ENTITY_RE, (ref) => {
    const named = table.get(ref);
    if (named !== undefined) return named;
    if (!ref.startsWith("&#")) return ref;
    const value = htmlUnescape(ref);
    return value.includes(";") ? ref : value; // not fully decoded: keep the reference
  });
}

/**
 * Latin ligatures and digraphs (not æ, œ: those are used on purpose), each as the ligature
 * followed by its letters. ŉ becomes U+02BC + n, which `uncurl` then makes "'n".
 */
const LIGATURES = new Map(
  ("\u0132IJ \u0133ij \u0149\u02bcn \u01f1DZ \u01f2Dz \u01f3dz \u01c4D\u017d \u01c5D\u017e " +
    "\u01c6d\u017e \u01c7LJ \u01c8Lj \u01c9lj \u01caNJ \u01cbNj \u01ccnj \ufb00ff \ufb01fi " +
    "\ufb02fl \ufb03ffi \ufb04ffl \ufb05\u017ft \ufb06st").split(" ").map((
      e,
    ) => [e[0], e.slice(1)]),
);
const LIGATURE_RE = /[\u0132\u0133\u0149\u01c4-\u01cc\u01f1-\u01f3\ufb00-\ufb06]/g;
const WIDTH_RE = /[\u3000\uff01-\uffef]/g;
// These two patterns exist to find control characters. ANSI escapes: ESC [, then digits (of any
// script, as Python's `\d`) and ';', then a letter.
// deno-lint-ignore no-control-regex
const TERMINAL_ESCAPE_RE = /\x1b\[(?:\p{Nd}|;)*[a-zA-Z]/gu;
// deno-lint-ignore no-control-regex
const CONTROL_RE = /[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g;
/** Text that every fix leaves as it is: printable ASCII but '&', tab, line feed, form feed. */
const UNTOUCHED = /^[\t\n\f\x20-\x25\x27-\x7e]*$/;

/** `fix_character_width`: full-width and half-width forms as NFKC has them; U+3000 -> space. */
export function fixCharacterWidth(text: string): string {
  return text.replace(WIDTH_RE, (c) => c === "\u3000" ? " " : c.normalize("NFKC"));
}

/** The fixes after `fix_encoding`, in ftfy's order, then NFC. */
function fixCharacters(text: string): string {
  text = fixC1Controls(text);
  text = text.replace(LIGATURE_RE, (c) => LIGATURES.get(c)!);
  text = fixCharacterWidth(text);
  text = text.replace(/[\u02bc\u2018-\u201b]/g, "'").replace(/[\u201c-\u201f]/g, '"');
  text = text.replaceAll("\r\n", "\n").replace(/[\r\u2028\u2029\x85]/g, "\n");
  text = text.toWellFormed(); // lone surrogates -> U+FFFD (pairs are already characters in JS)
  text = text.replace(TERMINAL_ESCAPE_RE, "");
  text = text.replace(CONTROL_RE, "");
  return text.normalize("NFC");
}

/** One segment, fixed until it stops changing (`ftfy.fix_and_explain` without the explanation). */
function fixSegment(text: string, unescape: boolean): string {
  if (UNTOUCHED.test(text)) return text;
  for (;;) {
    const before = text;
    if (unescape) text = unescapeHtml(text);
    text = fixCharacters(fixEncoding(text));
    if (text === before) return text;
  }
}

/** ftfy fixes at most this many code points at once. */
const MAX_SEGMENT = 1_000_000;

/** Index just past `count` code points from `start` (or the end of `text`). */
function advanceCodePoints(text: string, start: number, count: number): number {
  let i = start;
  for (let k = 0; k < count && i < text.length; k++) {
    const c = text.charCodeAt(i);
    const pair = c >= 0xd800 && c <= 0xdbff && i + 1 < text.length &&
      (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
    i += pair ? 2 : 1;
  }
  return i;
}

/**
 * `ftfy.fix_text(text)` with ftfy's default settings: mojibake, HTML references (unless the text
 * holds a '<'), ligatures, character width, curly quotes, line breaks, surrogates, terminal
 * escapes, control characters and NFC, line by line (see the file header for the details).
 */
export function fixText(text: string): string {
  if (UNTOUCHED.test(text)) return text;
  let unescape = true;
  let out = "";
  let pos = 0;
  while (pos < text.length) {
    let end = text.indexOf("\n", pos) + 1;
    if (end === 0) end = text.length;
    if (end - pos > MAX_SEGMENT) end = Math.min(end, advanceCodePoints(text, pos, MAX_SEGMENT));
    const segment = text.slice(pos, end);
    if (unescape && segment.includes("<")) unescape = false;
    out += fixSegment(segment, unescape);
    pos = end;
  }
  return out;
}
