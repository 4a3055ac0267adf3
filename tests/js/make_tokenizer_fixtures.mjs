// Builds Hugging Face tokenizer.json files from the real vocabularies shipped
// by independent npm tokenizers and records, for a few thousand strings, the
// token ids those tokenizers give (`ref`) and the ids the JS port of Hugging
// Face tokenizers gives on the built tokenizer.json (`hf`). saeforge's
// tokenizer.json reader is compared against both (tests/unit/lm/
// hf_tokenizer_npm_test.cc). Usage: node make_tokenizer_fixtures.mjs OUT_DIR [SAMPLE_TXT]
import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import llama3Tokenizer from 'llama3-tokenizer-js';
import mistralTokenizer from 'mistral-tokenizer-js';
import * as r50k from 'gpt-tokenizer/encoding/r50k_base';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const out = process.argv[2];
const sampleFile = process.argv[3];
if (!out) {
  console.error('usage: node make_tokenizer_fixtures.mjs OUT_DIR [SAMPLE_TXT]');
  process.exit(2);
}
fs.mkdirSync(out, { recursive: true });

// ---------- test strings (deterministic) ----------
let seed = 12345;
const rnd = (n) => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed % n;
};
const pick = (a) => a[rnd(a.length)];
const pools = {
  ascii: 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ',
  digits: '0123456789',
  punct: ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
  space: [' ', ' ', ' ', '  ', '   ', '\t', '\n', '\n\n', '\r\n', '\u00a0', '\u3000', '\u2003', ' \n ', '\v', '\f'],
  unicode: ['é', 'ü', 'ñ', 'ß', 'ø', 'ç', 'naïve', 'café', 'Ελληνικά', 'русский', 'українська', 'العربية', 'עברית',
            'हिन्दी', 'বাংলা', 'தமிழ்', 'ไทย', '東京', '中文字符', '日本語のテキスト', '한국어', 'Tiếng Việt', 'ǅ', 'ﬁ',
            'e\u0301', 'A\u030A', '\u212B', 'Ω', '½', '²', '①', '٣', '५', 'Ⅻ'],
  emoji: ['🙂', '😀', '👍🏽', '👨‍👩‍👧‍👦', '🇯🇵', '🏳️‍🌈', '❤️', '🤖', '🦙', '✨', '🧪', '🐍', '\u{1F9D1}\u200D\u{1F52C}'],
  words: ['the', 'The', 'cat', 'sat', 'on', 'mat', 'Hello', 'world', "it's", "I'M", "they're", "we've", "you'll",
          "she'd", "DON'T", 'quick', 'brown', 'fox', 'jumps', 'over', 'lazy', 'dog', 'tokenizer', 'sparse',
          'autoencoder', 'Llama', 'Mistral', 'Gemma', 'GPT-2', 'once', 'upon', 'a', 'time'],
  code: ['def f(x):\n    return x**2  # square', 'for (int i = 0; i < n; ++i) { sum += a[i]; }',
         'const x = {a: 1, "b": [2, 3]};', '#include <vector>\nint main() { return 0; }',
         'if x == None:\n\tpass', 'SELECT * FROM t WHERE id = 42;', '<div class="x">&nbsp;</div>',
         'x = y ** 2 // 3 % 4', '    indented\n        more\n', 'a_b-c.d/e\\f', '0x1F 0b1010 1e-9 3.14159'],
};
function randomString() {
  const parts = [];
  const n = 1 + rnd(12);
  for (let i = 0; i < n; i++) {
    switch (rnd(8)) {
      case 0: parts.push(pick(pools.words)); break;
      case 1: { let s = ''; const m = 1 + rnd(14); for (let k = 0; k < m; k++) s += pools.digits[rnd(10)]; parts.push(s); break; }
      case 2: parts.push(pick(pools.space)); break;
      case 3: parts.push(pick(pools.unicode)); break;
      case 4: parts.push(pick(pools.emoji)); break;
      case 5: parts.push(pools.punct[rnd(pools.punct.length)].repeat(1 + rnd(3))); break;
      case 6: parts.push(pick(pools.code)); break;
      default: { let s = ''; const m = 1 + rnd(10); for (let k = 0; k < m; k++) s += pools.ascii[rnd(pools.ascii.length)]; parts.push(s); }
    }
    if (rnd(3) === 0) parts.push(' ');
  }
  return parts.join('');
}
const strings = [];
if (sampleFile && fs.existsSync(sampleFile)) {
  const text = fs.readFileSync(sampleFile, 'utf8');
  strings.push(text);
  for (const line of text.split('\n')) if (line.length) strings.push(line);
  for (const para of text.split('\n\n')) if (para.length) strings.push(para);
}
strings.push('Hello, world! 123 4567', '  leading spaces\tand\ttabs\n\nnewlines', "'s 've 're 'll 'S 'VE",
             'a'.repeat(50), ' '.repeat(17), '\n'.repeat(9), '1234567890123456789', 'x' + ' '.repeat(5) + 'y',
             'trailing space ', ' leading', '\t\t', '..., !!! ???', '$100,000.00', 'e-mail: a.b@c.de');
for (const s of [...pools.unicode, ...pools.emoji, ...pools.code]) strings.push(s);
while (strings.length < 3000) strings.push(randomString());

// ---------- tokenizer.json builders ----------
const BYTES_TO_UNICODE = (() => {
  const bs = [];
  for (let b = 0; b < 256; b++)
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) bs.push(b);
  const map = new Array(256);
  for (const b of bs) map[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (map[b] === undefined) map[b] = String.fromCharCode(256 + n++);
  return map;
})();
const byteLevel = (bytes) => Array.from(bytes, (b) => BYTES_TO_UNICODE[b]).join('');

function addedToken(id, content, special = true) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special };
}
function bpeModel(vocab, merges, extra = {}) {
  return { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
           fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges, ...extra };
}
// Merges of a tiktoken-style rank table, as transformers converts them:
// every split of a token into two tokens, ordered by the merged token's rank.
function mergesFromRanks(ranks /* Map<string(byte-level), rank> */) {
  const merges = [];
  for (const [tok, rank] of ranks) {
    const chars = Array.from(tok);
    if (chars.length < 2) continue;
    const local = [];
    for (let i = 1; i < chars.length; i++) {
      const l = chars.slice(0, i).join(''), r = chars.slice(i).join('');
      if (ranks.has(l) && ranks.has(r)) local.push([l, r, rank]);
    }
    local.sort((a, b) => ranks.get(a[0]) - ranks.get(b[0]) || ranks.get(a[1]) - ranks.get(b[1]));
    merges.push(...local);
  }
  merges.sort((a, b) => a[2] - b[2]);
  return merges.map(([l, r]) => [l, r]);
}

const LLAMA3_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

function llama3Json({ qwen = false } = {}) {
  const vocabById = llama3Tokenizer.vocabById;
  const nBase = 128000;
  const vocab = {};
  for (let i = 0; i < nBase; i++) vocab[vocabById[i]] = i;
  const merges = [...llama3Tokenizer.merges.entries()].sort((a, b) => a[1] - b[1]).map(([k]) => {
    const sp = k.indexOf(' ', 1);
    return [k.slice(0, sp), k.slice(sp + 1)];
  });
  const added = [];
  for (let i = nBase; i < vocabById.length; i++) added.push(addedToken(i, vocabById[i]));
  const bot = '<|begin_of_text|>';
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: added,
    normalizer: qwen ? { type: 'NFC' } : null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: qwen ? QWEN2_REGEX : LLAMA3_REGEX }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
    post_processor: qwen ? { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false } : {
      type: 'Sequence', processors: [
        { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
        { type: 'TemplateProcessing', single: [{ SpecialToken: { id: bot, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [{ SpecialToken: { id: bot, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
                 { SpecialToken: { id: bot, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
          special_tokens: { [bot]: { id: bot, ids: [128000], tokens: [bot] } } }] },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: bpeModel(vocab, merges, { ignore_merges: !qwen }),
  };
}

function mistralJson(style) {
  const vocabById = mistralTokenizer.vocabById;
  const vocab = {};
  vocabById.forEach((t, i) => { if (!Object.hasOwn(vocab, t)) vocab[t] = i; });
  const merges = [...mistralTokenizer.merges.entries()].sort((a, b) => a[1] - b[1]).map(([k]) => {
    // "A B" where A and B are vocabulary strings (which never contain ' ').
    const sp = k.indexOf(' ');
    return [k.slice(0, sp), k.slice(sp + 1)];
  });
  const sp = '\u2581';
  const template = { type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
           { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } } };
  const j = {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [addedToken(0, '<unk>'), addedToken(1, '<s>'), addedToken(2, '</s>')],
    normalizer: null, pre_tokenizer: null, post_processor: template,
    decoder: { type: 'Sequence', decoders: [
      { type: 'Replace', pattern: { String: sp }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' },
      { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: bpeModel(vocab, merges, { unk_token: '<unk>', fuse_unk: true, byte_fallback: true }),
  };
  if (style === 'llama2') {  // Llama 2 / Mistral 7B v0.1 tokenizer.json
    j.normalizer = { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: sp },
                                                     { type: 'Replace', pattern: { String: ' ' }, content: sp }] };
  } else if (style === 'metaspace') {  // newer Mistral / Llama files
    j.pre_tokenizer = { type: 'Metaspace', replacement: sp, prepend_scheme: 'first', split: false };
    j.decoder = { type: 'Metaspace', replacement: sp, prepend_scheme: 'first', split: false };
  } else if (style === 'llama2-normalized') {  // Llama 2's own file marks <unk>, <s>, </s> normalized
    j.normalizer = { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: sp },
                                                     { type: 'Replace', pattern: { String: ' ' }, content: sp }] };
    for (const a of j.added_tokens) a.normalized = true;
  } else if (style === 'gemma') {  // Gemma: spaces replaced, no prefix
    j.normalizer = { type: 'Replace', pattern: { String: ' ' }, content: sp };
  }
  return j;
}

function gpt2Json() {
  const ranks = new Map();
  const text = fs.readFileSync(require.resolve('gpt-tokenizer/data/r50k_base.tiktoken'), 'utf8');
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [b64, rank] = line.split(' ');
    ranks.set(byteLevel(Buffer.from(b64, 'base64')), Number(rank));
  }
  const vocab = Object.fromEntries(ranks);
  vocab['<|endoftext|>'] = 50256;
  const eot = addedToken(50256, '<|endoftext|>');
  eot.normalized = true;
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: [eot], normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: bpeModel(vocab, mergesFromRanks(ranks)),
  };
}

// ---------- run ----------
const specialsText = ['<|begin_of_text|>Hello<|eot_id|>', 'a<|start_header_id|>user<|end_header_id|>\n\nHi',
                      'x <|endoftext|> y', '<s> inside </s> text'];
const fixtures = [
  { name: 'llama3', json: () => llama3Json(), ref: (s) => llama3Tokenizer.encode(s, { bos: false, eos: false }),
    refBos: (s) => llama3Tokenizer.encode(s, { bos: true, eos: false }), extra: specialsText.slice(0, 2) },
  { name: 'qwen2-style', json: () => llama3Json({ qwen: true }), ref: null, extra: specialsText.slice(0, 2) },
  // gpt-tokenizer encodes "<|endoftext|>" in text as plain text here: cut it out first.
  { name: 'gpt2', json: gpt2Json,
    ref: (s) => s.split('<|endoftext|>').flatMap((p, i) => [...(i ? [50256] : []), ...(p ? r50k.encode(p) : [])]),
    extra: [specialsText[2]] },
  { name: 'mistral-llama2', json: () => mistralJson('llama2'), ref: null, refBos: (s) => mistralTokenizer.encode(s, true, true),
    extra: [specialsText[3]] },
  // (Metaspace does not prepend ▁ to text that starts with a space, unlike
  // mistral-tokenizer-js: only @huggingface/tokenizers is the reference.)
  { name: 'mistral-metaspace', json: () => mistralJson('metaspace'), ref: null, extra: [] },
  { name: 'mistral-llama2-normalized', json: () => mistralJson('llama2-normalized'), ref: null,
    extra: ['<s>ab', 'a <s>b', 'x</s>', 'hello <s> world', '<s> <s><s>x</s></s>', ' </s>end', '<unk>?<s>',
            'Once upon a time <s>there</s> was'] },
  { name: 'gemma-style', json: () => mistralJson('gemma'), ref: null, extra: [specialsText[3]] },
];
for (const f of fixtures) {
  const t0 = Date.now();
  const j = f.json();
  const file = path.join(out, `${f.name}.tokenizer.json`);
  fs.writeFileSync(file, JSON.stringify(j));
  const hf = new Tokenizer(j, {});
  const cases = [];
  const texts = [...strings, ...f.extra];
  let disagree = 0;
  for (const text of texts) {
    if (!text.length) continue;
    const c = { text, hf: hf.encode(text, { add_special_tokens: false }).ids,
                hf_bos: hf.encode(text, { add_special_tokens: true }).ids };
    if (f.ref && !f.extra.includes(text)) c.ref = f.ref(text);
    if (f.refBos && !f.extra.includes(text)) c.ref_bos = f.refBos(text);
    if (c.ref && JSON.stringify(c.ref) !== JSON.stringify(c.hf)) disagree++;
    if (c.ref_bos && JSON.stringify(c.ref_bos) !== JSON.stringify(c.hf_bos)) disagree++;
    cases.push(c);
  }
  fs.writeFileSync(path.join(out, `${f.name}.cases.json`), JSON.stringify(cases));
  console.log(`${f.name}: ${cases.length} strings, ${disagree} where the npm tokenizer and @huggingface/tokenizers differ ` +
              `(${Date.now() - t0} ms)`);
}
