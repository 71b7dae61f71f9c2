/**
 * A minimal ONNX model writer for the benchmark peers: just enough protobuf (varints and
 * length-delimited fields) to encode a graph of standard operators with float32 inputs, outputs
 * and small initializers. Field numbers follow onnx/onnx.proto (IR version 8).
 */

/** Protobuf writer. */
class Pb {
  private bytes: number[] = [];

  varint(value: number | bigint): this {
    let x = BigInt(value);
    if (x < 0n) x += 1n << 64n; // negative int64 as two's complement
    while (x >= 0x80n) {
      this.bytes.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.bytes.push(Number(x));
    return this;
  }

  int(field: number, value: number): this {
    return this.varint(field * 8).varint(value);
  }

  raw(field: number, data: Uint8Array): this {
    this.varint(field * 8 + 2).varint(data.length);
    for (const b of data) this.bytes.push(b);
    return this;
  }

  /** A float field (wire type 5: four little-endian bytes). */
  float(field: number, f: number): this {
    this.varint(field * 8 + 5);
    for (const b of new Uint8Array(new Float32Array([f]).buffer)) this.bytes.push(b);
    return this;
  }

  str(field: number, s: string): this {
    return this.raw(field, new TextEncoder().encode(s));
  }

  msg(field: number, m: Pb): this {
    return this.raw(field, m.done());
  }

  done(): Uint8Array {
    return new Uint8Array(this.bytes);
  }
}

/** ONNX TensorProto.DataType values used here. */
export const FLOAT = 1, INT64 = 7;

/** One graph node: an operator with named inputs/outputs and int / ints / float attributes. */
export interface OnnxNode {
  op: string;
  inputs: string[];
  outputs: string[];
  attrs?: Record<string, number | number[] | { f: number }>;
}

/** A named tensor value: element type and shape. */
export interface OnnxValue {
  name: string;
  type?: number;
  shape: number[];
}

/** A constant: name, element type, shape and values. */
export interface OnnxInitializer {
  name: string;
  type: number;
  shape: number[];
  values: number[];
}

function valueInfo(v: OnnxValue): Pb {
  const shape = new Pb();
  for (const d of v.shape) shape.msg(1, new Pb().int(1, d));
  const tensorType = new Pb().int(1, v.type ?? FLOAT).msg(2, shape);
  return new Pb().str(1, v.name).msg(2, new Pb().msg(1, tensorType));
}

function initializer(t: OnnxInitializer): Pb {
  const p = new Pb();
  for (const d of t.shape) p.int(1, d);
  p.int(2, t.type);
  p.str(8, t.name);
  let raw: Uint8Array;
  if (t.type === FLOAT) raw = new Uint8Array(Float32Array.from(t.values).buffer);
  else if (t.type === INT64) raw = new Uint8Array(BigInt64Array.from(t.values.map(BigInt)).buffer);
  else throw new RangeError(`onnx initializer ${t.name}: unsupported type ${t.type}`);
  return p.raw(9, raw);
}

function attribute(name: string, v: number | number[] | { f: number }): Pb {
  const a = new Pb().str(1, name);
  if (Array.isArray(v)) {
    for (const x of v) a.int(8, x);
    return a.int(20, 7); // INTS
  }
  if (typeof v === "object") return a.float(2, v.f).int(20, 1); // FLOAT
  return a.int(3, v).int(20, 2); // INT
}

/**
 * Serialise a single-graph ONNX model (default opset 17) that ONNX Runtime can load from bytes.
 */
export function onnxModel(
  nodes: OnnxNode[],
  inputs: OnnxValue[],
  outputs: OnnxValue[],
  initializers: OnnxInitializer[] = [],
  opset = 17,
): Uint8Array {
  const g = new Pb();
  nodes.forEach((n, i) => {
    const p = new Pb();
    for (const s of n.inputs) p.str(1, s);
    for (const s of n.outputs) p.str(2, s);
    p.str(3, `node${i}_${n.op}`).str(4, n.op);
    for (const [k, v] of Object.entries(n.attrs ?? {})) p.msg(5, attribute(k, v));
    g.msg(1, p);
  });
  g.str(2, "bench");
  for (const t of initializers) g.msg(5, initializer(t));
  for (const v of inputs) g.msg(11, valueInfo(v));
  for (const v of outputs) g.msg(12, valueInfo(v));
  return new Pb()
    .int(1, 8) // ir_version
    .str(2, "clipit-bench")
    .msg(7, g)
    .msg(8, new Pb().str(1, "").int(2, opset))
    .done();
}
