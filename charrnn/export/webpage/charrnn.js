// charrnn.js: run a charrnn model (exported with `charrnn export --format web`) in the browser.
//
//   import { load } from "./charrnn.js";
//   const model = await load("./model");            // fetches ./model.json and the weights it names
//   const text = await model.generate({ prime: "The ", length: 200, temperature: 0.8, topK: 20, seed: 1 });
//   for await (const chunk of model.stream({ length: 1000 })) output.append(chunk);
//
// Plain JavaScript on typed arrays: no build step, no dependency, nothing fetched but the model's own two files.
// The maths is charrnn's (charrnn/model.py): a lookup for layer 1's input product, then per layer
//   tanh: h = tanh(W_hh h + W_xh x + b)
//   GRU:  r = s(W_ir x + b_ir + W_hr h + b_hr), z = s(W_iz x + b_iz + W_hz h + b_hz),
//         n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h = (1 - z) n + z h          (torch's gate order r, z, n)
//   LSTM: i, f, g, o = s, s, tanh, s of (W_ih x + b_ih + W_hh h + b_hh), c = f c + i g, h = o tanh(c)
// and logits = W_hy h + b_y. Sampling is charrnn's rule: divide by the temperature, keep the top k, keep the
// smallest set of most likely characters whose probability reaches top p, draw by inverse CDF. Temperature 0 is
// greedy (the most likely character each time). A seed makes the draws reproducible (a small PRNG of our own).

const FORMAT = "charrnn-web";
const FORMAT_VERSION = 1;
const CHUNK_CHARS = 64; // the stream hands over its text (and lets the page breathe) at least this often...
const CHUNK_MS = 16; // ...and at least this often, in milliseconds

// ---------------------------------------------------------------------------------------------------------------
// loading

function metaUrl(url) {
  const s = String(url);
  if (s.endsWith(".json")) return s;
  if (s.endsWith("/")) return s + "model.json";
  return s + ".json";
}

/** Load a model: `url` is the model's name without ".json" ("./model"), its JSON file, or its folder ("./"). */
export async function load(url = "./model") {
  const base = globalThis.location ? globalThis.location.href : undefined;
  const jsonUrl = new URL(metaUrl(url), base);
  const meta = await fetchOk(jsonUrl).then((r) => r.json());
  if (meta.format !== FORMAT) throw new Error(`${jsonUrl} is not a charrnn web model (format ${meta.format})`);
  if (meta.format_version > FORMAT_VERSION)
    throw new Error(`${jsonUrl} has format version ${meta.format_version}: this charrnn.js reads ${FORMAT_VERSION}`);
  const weightsUrl = new URL(meta.weights.file, jsonUrl);
  const buffer = await fetchOk(weightsUrl).then((r) => r.arrayBuffer());
  return new Model(meta, buffer);
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`could not load ${url}: HTTP ${response.status}`);
  return response;
}

// ---------------------------------------------------------------------------------------------------------------
// the numbers

/** out[i] = init[i] + sum_j W[i, j] x[j] for a row-major W (rows x cols); init may be out itself. Four rows at a
 * time share each load of x, and every row is walked in memory order. */
function matvec(out, init, W, x, rows, cols) {
  let i = 0;
  for (; i + 3 < rows; i += 4) {
    const r0 = i * cols, r1 = r0 + cols, r2 = r1 + cols, r3 = r2 + cols;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (let j = 0; j < cols; j++) {
      const v = x[j];
      s0 += W[r0 + j] * v;
      s1 += W[r1 + j] * v;
      s2 += W[r2 + j] * v;
      s3 += W[r3 + j] * v;
    }
    out[i] = init[i] + s0;
    out[i + 1] = init[i + 1] + s1;
    out[i + 2] = init[i + 2] + s2;
    out[i + 3] = init[i + 3] + s3;
  }
  for (; i < rows; i++) {
    const r = i * cols;
    let s = 0;
    for (let j = 0; j < cols; j++) s += W[r + j] * x[j];
    out[i] = init[i] + s;
  }
}

function sigmoid(v) {
  return 1 / (1 + Math.exp(-v));
}

/** The input lookup table of layer 1: row c = W_ih one-hot(c) + b = W_ih embed[c] + b (V x G), made once. */
function lookupTable(embed, V, H, W, bias, G) {
  const table = new Float32Array(V * G);
  const row = new Float32Array(G);
  for (let c = 0; c < V; c++) {
    const e = embed.subarray(c * H, (c + 1) * H);
    if (W) matvec(row, bias, W, e, G, H);
    else for (let i = 0; i < G; i++) row[i] = e[i] + bias[i];
    table.set(row, c * G);
  }
  return table;
}

// ---------------------------------------------------------------------------------------------------------------
// seeded random numbers: splitmix32 to spread the seed, sfc32 to draw

function splitmix32(a) {
  return () => {
    a = (a + 0x9e3779b9) | 0;
    let t = a ^ (a >>> 16);
    t = Math.imul(t, 0x21f0aaad);
    t ^= t >>> 15;
    t = Math.imul(t, 0x735a2d97);
    return (t ^ (t >>> 15)) >>> 0;
  };
}

class Random {
  constructor(seed) {
    let lo, hi;
    if (typeof seed === "bigint") {
      lo = Number(BigInt.asUintN(32, seed));
      hi = Number(BigInt.asUintN(32, seed >> 32n));
    } else {
      lo = Number(BigInt.asUintN(32, BigInt(seed)));
      hi = Number(BigInt.asUintN(32, BigInt(seed) >> 32n));
    }
    const m = splitmix32(lo), n = splitmix32(hi ^ 0x5bd1e995);
    this.a = m(); this.b = m(); this.c = n(); this.d = n();
    for (let i = 0; i < 12; i++) this.next();
  }
  next() {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  /** A uniform number in (0, 1], 53 bits. */
  uniform() {
    return ((this.next() >>> 5) * 67108864 + (this.next() >>> 6) + 1) / 9007199254740992;
  }
}

function randomSeed() {
  const words = new Uint32Array(2);
  globalThis.crypto.getRandomValues(words);
  return (words[0] & 0x1fffff) * 4294967296 + words[1]; // a safe integer, so it can be shown and typed back
}

// ---------------------------------------------------------------------------------------------------------------
// yielding to the event loop without setTimeout's 4 ms clamp

const channel = typeof MessageChannel !== "undefined" ? new MessageChannel() : null;
const waiting = [];
if (channel) channel.port1.onmessage = () => waiting.shift()();

function pause() {
  return new Promise((resolve) => {
    if (channel) {
      waiting.push(resolve);
      channel.port2.postMessage(0);
    } else setTimeout(resolve, 0);
  });
}

const now = () => (globalThis.performance ? performance.now() : Date.now());

/** Scratch space for `draw`, made once per generation. */
function scratch(V) {
  return { z: new Float64Array(V), p: new Float64Array(V), order: new Int32Array(V), sorted: new Float64Array(V) };
}

/** The id drawn from logits[0..V) by charrnn's rule (`pick` in charrnn/sample.py) with a uniform u in (0, 1]:
 * divide by the temperature, keep the logits >= the k-th largest, keep the smallest set of most likely
 * characters whose probability reaches topP, and take the first id whose cumulative probability reaches u times
 * the total. Temperature 0 takes the first most likely id. */
function draw(logits, V, o, u, s) {
  if (o.temperature === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  const z = s.z, p = s.p;
  for (let i = 0; i < V; i++) z[i] = logits[i] / o.temperature;
  if (o.topK != null && o.topK < V) {
    const sorted = s.sorted;
    sorted.set(z);
    sorted.sort();
    const kth = sorted[V - o.topK];
    for (let i = 0; i < V; i++) if (z[i] < kth) z[i] = -Infinity;
  }
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (z[i] > max) max = z[i];
  for (let i = 0; i < V; i++) p[i] = Math.exp(z[i] - max);
  if (o.topP != null && o.topP < 1) {
    const order = s.order;
    for (let i = 0; i < V; i++) order[i] = i;
    order.sort((a, b) => p[b] - p[a] || a - b); // most likely first, ties by id (a stable sort)
    let total = 0;
    for (let i = 0; i < V; i++) total += p[i];
    let before = 0; // the probability of the more likely characters
    for (let k = 0; k < V; k++) {
      const i = order[k], q = p[i] / total;
      if (before >= o.topP) p[i] = 0;
      before += q;
    }
  }
  let total = 0;
  for (let i = 0; i < V; i++) total += p[i];
  const target = u * total;
  let cdf = 0, picked = 0;
  for (let i = 0; i < V; i++) {
    cdf += p[i];
    if (cdf < target) picked = i + 1;
  }
  return Math.min(picked, V - 1);
}

/** The id charrnn's sampling rule draws from `logits` (an array of numbers) with the uniform number `u` in (0, 1]
 * and options {temperature, topK, topP}: what `generate` does at each character, for a caller's own loop. */
export function pick(logits, u, { temperature = 1, topK = null, topP = null } = {}) {
  return draw(logits, logits.length, { temperature, topK, topP }, u, scratch(logits.length));
}


// ---------------------------------------------------------------------------------------------------------------
// the model

class Model {
  constructor(meta, buffer) {
    const cfg = meta.config;
    this.meta = meta;
    this.name = meta.name;
    this.cell = cfg.cell;
    this.hiddenSize = cfg.hidden_size;
    this.numLayers = cfg.num_layers;
    this.vocab = meta.vocab.map((p) => String.fromCodePoint(p));
    this.index = new Map(this.vocab.map((c, i) => [c, i]));
    this.parameters = meta.parameters;
    this.bytes = buffer.byteLength;
    this.valLoss = meta.val_loss;
    this.step = meta.step;
    this.corpus = meta.corpus;

    const t = {};
    for (const w of meta.weights.tensors) {
      const size = w.shape.reduce((a, b) => a * b, 1);
      if (size !== w.size || w.offset % 4 || w.offset + 4 * size > buffer.byteLength)
        throw new Error(`the weights file does not match model.json at ${w.name}`);
      t[w.name] = new Float32Array(buffer, w.offset, size);
    }
    const get = (name) => {
      if (!t[name]) throw new Error(`the weights file has no tensor ${name}`);
      return t[name];
    };
    const V = this.vocab.length, H = this.hiddenSize, L = this.numLayers;
    if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) throw new Error("a big-endian machine is not supported");
    this.V = V;
    this.headW = get("head.weight");
    this.headB = get("head.bias");
    const embed = get("embed.weight");
    const gates = { tanh: 1, gru: 3, lstm: 4 }[this.cell];
    if (!gates) throw new Error(`unknown cell ${this.cell}`);
    this.gates = gates;
    const G = gates * H;
    this.layers = [];
    for (let l = 0; l < L; l++) {
      if (this.cell === "tanh") {
        this.layers.push({
          wx: l ? get(`w_xh.${l - 1}`) : null,
          wh: get(`w_hh.${l}`),
          bx: get(`bias.${l}`),
          bh: null,
        });
      } else {
        this.layers.push({
          wx: get(`rnn.weight_ih_l${l}`),
          wh: get(`rnn.weight_hh_l${l}`),
          bx: get(`rnn.bias_ih_l${l}`),
          bh: get(`rnn.bias_hh_l${l}`),
        });
      }
    }
    // layer 1's input product (and its input bias) is a row of this table
    const first = this.layers[0];
    const table = lookupTable(embed, V, H, this.cell === "tanh" ? null : first.wx, first.bx, G);
    this.rows = [];
    for (let c = 0; c < V; c++) this.rows.push(table.subarray(c * G, (c + 1) * G));
    this.start = this.index.has("\n") ? this.index.get("\n") : 0; // charrnn sample's start without a prime
  }

  /** A fresh generation state: the hidden state and every buffer a step writes, allocated once per generation. */
  _session() {
    const H = this.hiddenSize, L = this.numLayers, G = this.gates * H;
    const h = new Float32Array(L * H);
    const c = new Float32Array(this.cell === "lstm" ? L * H : 0);
    const s = {
      h: [], c: [],
      gi: new Float32Array(G), gh: new Float32Array(G),
      logits: new Float32Array(this.V),
      ...scratch(this.V),
    };
    for (let l = 0; l < L; l++) {
      s.h.push(h.subarray(l * H, (l + 1) * H));
      if (c.length) s.c.push(c.subarray(l * H, (l + 1) * H));
    }
    return s;
  }

  /** Feed one character id: update the state and write the next character's logits into s.logits. */
  _step(s, id) {
    const H = this.hiddenSize, L = this.numLayers, G = this.gates * H;
    const cell = this.cell;
    let x = null;
    for (let l = 0; l < L; l++) {
      const layer = this.layers[l], h = s.h[l];
      if (cell === "tanh") {
        const pre = s.gi;
        if (l === 0) matvec(pre, this.rows[id], layer.wh, h, H, H);
        else {
          matvec(pre, layer.bx, layer.wx, x, H, H);
          matvec(pre, pre, layer.wh, h, H, H);
        }
        for (let i = 0; i < H; i++) h[i] = Math.tanh(pre[i]);
      } else {
        const gi = l === 0 ? this.rows[id] : s.gi;
        if (l > 0) matvec(gi, layer.bx, layer.wx, x, G, H);
        const gh = s.gh;
        matvec(gh, layer.bh, layer.wh, h, G, H);
        if (cell === "gru") {
          for (let i = 0; i < H; i++) {
            const r = sigmoid(gi[i] + gh[i]);
            const z = sigmoid(gi[H + i] + gh[H + i]);
            const n = Math.tanh(gi[2 * H + i] + r * gh[2 * H + i]);
            h[i] = (1 - z) * n + z * h[i];
          }
        } else {
          const c = s.c[l];
          for (let i = 0; i < H; i++) {
            const ig = sigmoid(gi[i] + gh[i]);
            const fg = sigmoid(gi[H + i] + gh[H + i]);
            const gg = Math.tanh(gi[2 * H + i] + gh[2 * H + i]);
            const og = sigmoid(gi[3 * H + i] + gh[3 * H + i]);
            c[i] = fg * c[i] + ig * gg;
            h[i] = og * Math.tanh(c[i]);
          }
        }
      }
      x = h;
    }
    matvec(s.logits, this.headB, this.headW, x, this.V, H);
  }

  /** Draw the next id from s.logits by charrnn's rule. */
  _pick(s, o, random) {
    return draw(s.logits, this.V, o, o.temperature === 0 ? 1 : random.uniform(), s);
  }

  /** The options checked and completed; a mistake throws a RangeError (or TypeError) that names the option. */
  options(opts = {}) {
    const o = {
      prime: opts.prime ?? "",
      length: opts.length ?? 500,
      temperature: opts.temperature ?? 1,
      topK: opts.topK ?? null,
      topP: opts.topP ?? null,
      seed: opts.seed ?? null,
    };
    if (typeof o.prime !== "string") throw new TypeError("prime must be a string");
    if (!Number.isInteger(o.length) || o.length < 0) throw new RangeError(`length must be an integer >= 0, not ${o.length}`);
    if (typeof o.temperature !== "number" || !(o.temperature >= 0 && o.temperature <= 10))
      throw new RangeError(`temperature must be between 0 (greedy) and 10, not ${o.temperature}`);
    if (o.topK !== null && (!Number.isInteger(o.topK) || o.topK < 1)) throw new RangeError(`topK must be an integer >= 1, not ${o.topK}`);
    if (o.topP !== null && (typeof o.topP !== "number" || !(o.topP > 0 && o.topP <= 1)))
      throw new RangeError(`topP must be in (0, 1], not ${o.topP}`);
    if (o.seed === null) o.seed = randomSeed();
    else if (!(typeof o.seed === "bigint" || Number.isSafeInteger(o.seed)))
      throw new RangeError(`seed must be an integer of at most 2^53 in size (or a BigInt), not ${o.seed}`);
    const unknown = [...new Set(Array.from(o.prime).filter((c) => !this.index.has(c)))];
    if (unknown.length)
      throw new RangeError(`the prime has characters not in the model's vocabulary: ${unknown.map((c) => JSON.stringify(c)).join(" ")}`);
    return o;
  }

  /** Generate text as an async iterator of chunks (the characters made since the last chunk): the loop hands over
   * text and lets the event loop run at least every 64 characters or 16 ms. `signal` (an AbortSignal) stops it;
   * `onChar(c)` is called for each character. The prime is fed first and is not part of the output. */
  async *stream(opts = {}) {
    const o = this.options(opts);
    const signal = opts.signal, onChar = opts.onChar;
    const random = new Random(o.seed);
    const s = this._session();
    const context = o.prime ? Array.from(o.prime, (c) => this.index.get(c)) : [this.start];
    let last = now();
    for (let k = 0; k < context.length; k++) {
      this._step(s, context[k]);
      if ((k + 1) % CHUNK_CHARS === 0 || now() - last > CHUNK_MS) {
        await pause();
        last = now();
        if (signal && signal.aborted) return;
      }
    }
    let chunk = "", count = 0;
    for (let n = 0; n < o.length; n++) {
      if (signal && signal.aborted) break;
      const id = this._pick(s, o, random);
      const c = this.vocab[id];
      chunk += c;
      count++;
      if (onChar) onChar(c);
      if (n + 1 < o.length) this._step(s, id);
      if (count >= CHUNK_CHARS || now() - last > CHUNK_MS) {
        yield chunk;
        chunk = "";
        count = 0;
        await pause();
        last = now();
      }
    }
    if (chunk) yield chunk;
  }

  /** Generate text: resolves to the generated characters (without the prime). Options as `stream`. */
  async generate(opts = {}) {
    let text = "";
    for await (const chunk of this.stream(opts)) text += chunk;
    return text;
  }
}

export { Model };
