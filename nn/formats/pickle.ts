/**
 * A small pickle virtual machine (protocols 0-5: the binary opcodes plus the simple text ones)
 * that never imports or runs anything. A GLOBAL is resolved against a fixed table: a few Python
 * builtins here (OrderedDict, set, bytes, ...) plus the callables a caller passes (torch.ts adds
 * the tensor rebuilders); anything else fails with an error naming it, or, on request, becomes an
 * inert {@link PyObject} record.
 */

/** A reference to a Python global (module + name), as pushed by GLOBAL / STACK_GLOBAL. */
export class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  /** "module.name". */
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

/** An inert record of an object of an unknown class (only with `allowUnknownGlobals`). */
export class PyObject {
  state: unknown = undefined;
  constructor(readonly cls: PyGlobal, readonly args: unknown[]) {}
}

/**
 * A Python callable the VM may run on REDUCE / NEWOBJ: it gets the argument tuple and a label for
 * error messages, and returns the JavaScript value that stands for the result.
 */
export type PickleCallable = (args: unknown[], where: string) => unknown;

/** Options of `unpickle`. */
export interface UnpickleOptions {
  /** Turns a persistent id (BINPERSID) into a value; without it persistent ids are errors. */
  persistentLoad?: (pid: unknown) => unknown;
  /** Make unknown globals inert `PyObject` records instead of failing. Default false. */
  allowUnknownGlobals?: boolean;
  /** Named in error messages. */
  source?: string;
  /** Callables beside the builtins, by "module.name" (a format's constructors, e.g. torch's). */
  callables?: Readonly<Record<string, PickleCallable>>;
  /** Globals that may appear as plain values (classes and types that are never called). */
  isValueGlobal?: (g: PyGlobal) => boolean;
  /** Objects whose BUILD state (python attributes) is dropped; dicts always are. */
  dropsState?: (obj: unknown) => boolean;
}

/** A sequence argument as an array (list, tuple, set, or a dict's keys); undefined is empty. */
export function asIterable(x: unknown, where: string): unknown[] {
  if (x === undefined) return [];
  if (Array.isArray(x)) return x;
  if (x instanceof Set) return [...x];
  if (x instanceof Map) return [...x.keys()];
  throw new Error(`${where}: expected a sequence`);
}

/**
 * The builtins that may be called (REDUCE / NEWOBJ), by "module.name". With the callables a
 * caller passes, nothing else runs.
 */
const BUILTINS: Record<string, PickleCallable> = {
  "collections.OrderedDict": (args, where) => {
    const m = new Map<unknown, unknown>();
    for (const kv of asIterable(args[0], where)) {
      if (!Array.isArray(kv) || kv.length !== 2) throw new Error(`${where}: bad OrderedDict item`);
      m.set(kv[0], kv[1]);
    }
    return m;
  },
  "_codecs.encode": (args, where) => {
    // Protocol 2 pickles bytes as _codecs.encode(latin1 text, "latin1").
    const [text, enc] = args;
    if (typeof text !== "string" || !["latin1", "latin-1"].includes(String(enc))) {
      throw new Error(`${where}: unsupported _codecs.encode arguments`);
    }
    return Uint8Array.from(text, (c) => c.charCodeAt(0));
  },
  "builtins.set": (args, where) => new Set(asIterable(args[0], where)),
  "builtins.frozenset": (args, where) => new Set(asIterable(args[0], where)),
  "builtins.bytes": (args, where) => {
    // Protocol 2 pickles b"" as bytes(); other bytes arrive through _codecs.encode.
    if (args.length === 0) return new Uint8Array(0);
    const items = asIterable(args[0], where);
    if (!items.every((b) => typeof b === "number" && Number.isInteger(b) && b >= 0 && b < 256)) {
      throw new Error(`${where}: unsupported bytes() argument`);
    }
    return Uint8Array.from(items as number[]);
  },
  "builtins.bytearray": (args) =>
    args[0] instanceof Uint8Array ? args[0].slice() : new Uint8Array(0),
};
for (const n of ["set", "frozenset", "bytes", "bytearray"]) {
  BUILTINS[`__builtin__.${n}`] = BUILTINS[`builtins.${n}`];
}

/**
 * Runs the pickle in `bytes` (protocols 0-5; the binary opcodes plus the simple text ones)
 * and returns the resulting value. Python values map to: None -> null, bool, int -> number
 * (bigint beyond 2^53), float -> number, str -> string, bytes -> Uint8Array, list and tuple
 * -> Array, dict and OrderedDict -> Map, set -> Set; what `options.callables` build (torch.ts:
 * tensors -> TorchTensorRef).
 * Throws naming `options.source` on malformed input, an unknown opcode or an unknown global.
 */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions = {}): unknown {
  const src = options.source ?? "pickle";
  const extra = options.callables ?? {};
  const callable = (qualified: string): PickleCallable | undefined =>
    Object.hasOwn(extra, qualified)
      ? extra[qualified]
      : Object.hasOwn(BUILTINS, qualified)
      ? BUILTINS[qualified]
      : undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  let pos = 0;
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();

  const fail = (msg: string): never => {
    throw new Error(`${src}: ${msg} (pickle offset ${pos})`);
  };
  const need = (n: number) => {
    if (pos + n > bytes.length) fail("truncated pickle");
  };
  const take = (n: number): Uint8Array => {
    need(n);
    const b = bytes.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const u8 = () => (need(1), bytes[pos++]);
  const u16 = () => (need(2), (pos += 2), view.getUint16(pos - 2, true));
  const u32 = () => (need(4), (pos += 4), view.getUint32(pos - 4, true));
  const i32 = () => (need(4), (pos += 4), view.getInt32(pos - 4, true));
  const u64n = () => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail("length too large");
    return Number(v);
  };
  const line = (): string => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) fail("unterminated text line");
    const s = new TextDecoder("latin1").decode(bytes.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const text = (n: number): string => {
    const b = take(n);
    try {
      return utf8.decode(b);
    } catch {
      return fail("invalid UTF-8 string");
    }
  };
  const pop = (): unknown => (stack.length === 0 ? fail("stack underflow") : stack.pop());
  const top =
    (): unknown => (stack.length === 0 ? fail("stack underflow") : stack[stack.length - 1]);
  const popMark = (): unknown[] => {
    if (metastack.length === 0) fail("MARK expected");
    const items = stack;
    stack = metastack.pop()!;
    return items;
  };
  const smallInt = (v: bigint): number | bigint =>
    v >= -BigInt(Number.MAX_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  const longLE = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return smallInt(v);
  };
  const global = (module: string, name: string): PyGlobal => {
    const g = new PyGlobal(module, name);
    const known = callable(g.qualified) || options.isValueGlobal?.(g);
    if (!known && !options.allowUnknownGlobals) {
      fail(`unknown global "${g.qualified}" (refusing to load it; nothing is executed)`);
    }
    return g;
  };
  const call = (fn: unknown, args: unknown, what: string): unknown => {
    if (!(fn instanceof PyGlobal)) return fail(`${what} on a non-class value`);
    if (!Array.isArray(args)) return fail(`${what} arguments are not a tuple`);
    const impl = callable(fn.qualified);
    if (impl) return impl(args, `${src}: ${fn.qualified}`);
    if (options.allowUnknownGlobals) return new PyObject(fn, args);
    return fail(`cannot call "${fn.qualified}"`);
  };
  const setItems = (target: unknown, items: unknown[]) => {
    if (items.length % 2) fail("odd number of items for SETITEMS");
    if (target instanceof Map) {
      for (let i = 0; i < items.length; i += 2) target.set(items[i], items[i + 1]);
    } else if (target instanceof PyObject) {
      // e.g. a dict subclass of unknown type: keep its items as state.
      const m = (target.state instanceof Map ? target.state : new Map()) as Map<unknown, unknown>;
      for (let i = 0; i < items.length; i += 2) m.set(items[i], items[i + 1]);
      target.state = m;
    } else fail("SETITEM on a non-dict");
  };
  const appendItems = (target: unknown, items: unknown[]) => {
    if (Array.isArray(target)) target.push(...items);
    else if (target instanceof Set) { for (const x of items) target.add(x); }
    else fail("APPEND on a non-list");
  };

  for (;;) {
    const at = pos;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail("unsupported pickle protocol");
        break;
      case 0x95: // FRAME (protocol 4): only a length hint
        u64n();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1 || metastack.length) fail("malformed pickle at STOP");
        return stack[0];
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length) stack.pop();
        else popMark();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(longLE(take(u8())));
        break;
      case 0x8b: { // LONG4
        const n = i32();
        if (n < 0) fail("negative LONG4 length");
        stack.push(longLE(take(n)));
        break;
      }
      case 0x49: { // INT (text): "I01\n" / "I00\n" are booleans
        const s = line();
        if (s === "01") stack.push(true);
        else if (s === "00") stack.push(false);
        else if (/^[-+]?\d+$/.test(s)) stack.push(smallInt(BigInt(s)));
        else fail(`bad INT "${s}"`);
        break;
      }
      case 0x4c: { // LONG (text)
        const s = line().replace(/L$/, "");
        if (!/^[-+]?\d+$/.test(s)) fail(`bad LONG "${s}"`);
        stack.push(smallInt(BigInt(s)));
        break;
      }
      case 0x47: // BINFLOAT: big-endian float64
        need(8);
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x46: { // FLOAT (text)
        const v = Number(line());
        if (Number.isNaN(v)) fail("bad FLOAT");
        stack.push(v);
        break;
      }
      case 0x58: // BINUNICODE
        stack.push(text(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(text(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(text(u64n()));
        break;
      case 0x54: // BINSTRING (py2 str): latin1
        stack.push(new TextDecoder("latin1").decode(take(i32())));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(new TextDecoder("latin1").decode(take(u8())));
        break;
      case 0x42: // BINBYTES
        stack.push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
        stack.push(take(u64n()).slice());
        break;
      case 0x96: // BYTEARRAY8
        stack.push(take(u64n()).slice());
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x74: // TUPLE
        {
          const items = popMark();
          stack.push(items);
        }
        break;
      case 0x6c: // LIST
        {
          const items = popMark();
          stack.push(items);
        }
        break;
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        stack.push([pop(), b]);
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        stack.push([pop(), b, c]);
        break;
      }
      case 0x64: { // DICT
        const m = new Map();
        setItems(m, popMark());
        stack.push(m);
        break;
      }
      case 0x91: // FROZENSET
        {
          const items = popMark();
          stack.push(new Set(items));
        }
        break;
      case 0x61: { // APPEND
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x90: { // ADDITEMS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line();
        stack.push(global(module, line()));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") fail("bad STACK_GLOBAL");
        stack.push(global(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        stack.push(call(pop(), args, "REDUCE"));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = pop();
        stack.push(call(pop(), args, "NEWOBJ"));
        break;
      }
      case 0x92: { // NEWOBJ_EX (cls, args, kwargs)
        pop(); // kwargs: no supported class takes any
        const args = pop();
        stack.push(call(pop(), args, "NEWOBJ_EX"));
        break;
      }
      case 0x62: { // BUILD
        const state = pop();
        const obj = top();
        if (obj instanceof PyObject) obj.state = state;
        else if (obj instanceof Map || options.dropsState?.(obj)) {
          // OrderedDict attributes (a state dict's `_metadata`) and, through `dropsState`, a
          // format's attribute state (torch: tensor python attributes) carry no data: drop them.
        } else fail("BUILD on an object that takes no state");
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        if (!options.persistentLoad) fail("persistent id without a persistent loader");
        stack.push(options.persistentLoad!(pid));
        break;
      }
      case 0x50: { // PERSID (text)
        const pid = line();
        if (!options.persistentLoad) fail("persistent id without a persistent loader");
        stack.push(options.persistentLoad!(pid));
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x70: // PUT (text)
        memo.set(Number(line()), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: // LONG_BINGET
      case 0x67: { // GET (text)
        const k = op === 0x68 ? u8() : op === 0x6a ? u32() : Number(line());
        if (!memo.has(k)) fail(`memo key ${k} not found`);
        stack.push(memo.get(k));
        break;
      }
      default:
        pos = at;
        fail(`unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")}`);
    }
  }
}
