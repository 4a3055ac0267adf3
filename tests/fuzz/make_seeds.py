#!/usr/bin/env python3
"""Writes the seed corpus of the libFuzzer targets into tests/fuzz/corpus/.

Small valid (and a few nearly valid) inputs per target, made here from the
formats' definitions; the llama2.c tokenizer seed is the first tokens of
../shared/data/stories260K/tok512.bin (MIT) when that file is there. The
coordinator's seeds come from its fuzzer: SAE_FUZZ_WRITE_SEEDS=DIR
build-fuzz/fuzz/fuzz_coordinator (scripts/fuzz.sh --seeds runs both).
Usage: tests/fuzz/make_seeds.py [CORPUS_DIR]
"""
import json
import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
SPLIT = b"\n#SPLIT#\n"
rng = random.Random(0)


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def floats(n, scale=0.1):
    return struct.pack("<%df" % n, *[rng.uniform(-scale, scale) for _ in range(n)])


DT = {"F32": ("f", 4), "F16": ("e", 2), "F64": ("d", 8), "I32": ("i", 4), "I64": ("q", 8), "U8": ("B", 1)}


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, values or raw bytes)."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, vals in tensors:
        if isinstance(vals, bytes):
            raw = vals
        elif dtype == "BF16":
            raw = b"".join(struct.pack("<f", v)[2:] for v in vals)
        else:
            code, _ = DT[dtype]
            raw = struct.pack("<%d%s" % (len(vals), code), *vals)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def vals(n, scale=1.0):
    return [round(rng.uniform(-scale, scale), 3) for _ in range(n)]


# --- safetensors -------------------------------------------------------------
put("safetensors", "f32_and_meta", safetensors(
    [("a", "F32", [2, 3], vals(6)), ("b", "I32", [4], [1, 2, 3, 4])], {"format": "pt"}))
put("safetensors", "half_types", safetensors(
    [("h", "F16", [3, 2], vals(6)), ("bf", "BF16", [2, 2], vals(4)), ("d", "F64", [2], vals(2))]))
put("safetensors", "scalar_and_empty", safetensors(
    [("s", "F32", [], vals(1)), ("e", "F32", [0, 4], []), ("u", "U8", [3], [1, 2, 3]), ("q", "I64", [1], [7])]))
put("safetensors", "overlap", b"".join([struct.pack("<Q", 80), json.dumps(
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode().ljust(80), b"\0" * 12]))

# --- shards (activations [rows, d_in] + tokens) ------------------------------
def shard(rows, d, dtype="F32", bad=None):
    v = vals(rows * d)
    if bad is not None:
        v[bad] = float("nan")
    return safetensors([("activations", dtype, [rows, d], v), ("tokens", "I32", [rows], list(range(rows)))])

put("shard", "f32_4x8", shard(4, 8))
put("shard", "bf16_3x4", shard(3, 4, "BF16"))
put("shard", "f16_5x2", shard(5, 2, "F16"))
put("shard", "nan_row", shard(3, 4, bad=5))

# --- manifest.json (the fuzzer's directory has shard-00000 (4x8) and shard-00001 (3x8)) ---
def sha(data):
    import hashlib
    return hashlib.sha256(data).hexdigest()

def manifest(shards, d_in=8, dtype="float32", source=True):
    m = {"format": "saeforge.activations.v1", "d_in": d_in, "dtype": dtype,
         "rows": sum(r for _, r, _ in shards),
         "shards": [{"file": f, "rows": r, "sha256": s} for f, r, s in shards]}
    if source:
        m["source"] = {"model": "stories260K", "layer": 2, "hook": "resid_post", "corpus": "c.txt", "tokens": 7}
    return json.dumps(m, indent=2)

zero = "0" * 64
put("manifest", "two_shards", manifest([("shard-00000.safetensors", 4, zero), ("shard-00001.safetensors", 3, zero)]))
put("manifest", "one_shard_no_source", manifest([("shard-00000.safetensors", 4, "A" * 64)], source=False))
put("manifest", "wrong_rows", manifest([("shard-00001.safetensors", 4, zero)]))
put("manifest", "escape", manifest([("../shard-00000.safetensors", 4, zero)]))
put("manifest", "empty", manifest([], d_in=3, dtype="bfloat16"))

# --- job YAML ---------------------------------------------------------------
with open(os.path.join(ROOT, "examples", "demo.yaml")) as f:
    put("job_yaml", "demo", f.read())
put("job_yaml", "shards", """name: acts
data: {kind: shards, path: data/acts, shuffle_buffer_rows: 4096}
sae: {expansion_factor: 8, k: 16, dead_remedy: auxk, aux_coefficient: 0.03125, normalize: unit_mean_norm, init_b_dec: geometric_median}
train: {tokens: 10_000_000, batch_tokens: 4096, lr_decay: cosine, decay_start_fraction: 0.5, precision: bf16, device: auto, threads: 2}
world: {workers: 2, backend: gloo, timeout_seconds: 60}
output: runs/acts
""")
put("job_yaml", "lm", """name: lm
data:
  kind: lm
  model: models/stories260K.bin
  layer: 2
  corpus: corpus.txt
  context: 64
sae:
  latents: 512
  k: [8, 16, 32]
  k_schedule: {enabled: true, start: 64, end: 8, fraction: 0.5, shape: cosine}
train: {tokens: 1.5M, batch_tokens: 512, seed: 7, checkpoint_every_tokens: 0, log_every_steps: 1}
output: runs/lm
""")
put("job_yaml", "sweep", """name: sweep
data: {kind: synthetic, d_in: 32, latents: 64, k: 3, noise: 0, frequency_decay: 1.5}
sae: {latents: [64, 128], k: [4, 8], dead_remedy: [none, ghost_grads]}
train: {tokens: 100k, batch_tokens: 256, lr: 1e-3, warmup_fraction: 0.05, grad_clip: 0}
output: runs/sweep
""")
put("job_yaml", "errors", """name: bad
data: {kind: synthetic, d_in: 1e9}
sae: {latents: 3e9, k: 5000, unknown_key: 1}
train: {tokens: -1, threads: 1000000}
output: /
""")

# --- llama2.c checkpoints -----------------------------------------------------
def llama2c(dim=8, hidden=16, layers=2, heads=2, kv=1, vocab=16, seq=8, version=0, shared=True):
    hd = dim // heads
    kvd = kv * hd
    if version == 0:
        out = struct.pack("<7i", dim, hidden, layers, heads, kv, vocab if shared else -vocab, seq)
        out += floats(vocab * dim)                  # token embedding
        out += floats(layers * dim)                 # rms_att
        out += floats(layers * dim * dim)           # wq
        out += floats(layers * kvd * dim) * 2       # wk, wv
        out += floats(layers * dim * dim)           # wo
        out += floats(layers * dim)                 # rms_ffn
        out += floats(layers * hidden * dim) * 3    # w1, w2, w3
        out += floats(dim)                          # rms_final
        out += floats(seq * hd // 2) * 2            # freq_cis real/imag
    else:
        out = struct.pack("<Ii7i", 0x616b3432, 1, dim, hidden, layers, heads, kv, vocab, seq)
        out += bytes([1 if shared else 0])
        out = out.ljust(256, b"\0")
        out += floats(layers * dim) * 2 + floats(dim) + floats(vocab * dim)
        out += floats(layers * dim * dim) + floats(layers * kvd * dim) * 2 + floats(layers * dim * dim)
        out += floats(layers * hidden * dim) * 3
    if not shared:
        out += floats(vocab * dim)
    return out

put("llama2c", "legacy_shared", llama2c())
put("llama2c", "legacy_unshared", llama2c(layers=1, shared=False))
put("llama2c", "v1_shared", llama2c(version=1))
put("llama2c", "v1_unshared_mha", llama2c(dim=4, hidden=8, layers=1, heads=1, kv=1, vocab=6, version=1, shared=False))
put("llama2c", "truncated", llama2c()[:200])

# --- llama2.c tokenizer: u16 vocab, tokenizer.bin, SPLIT, text ----------------
def tok_bin(pieces, max_len=None):
    max_len = max_len or max(len(p) for p in pieces)
    out = struct.pack("<i", max_len)
    for i, p in enumerate(pieces):
        out += struct.pack("<fi", -float(i), len(p)) + p
    return out

def tok_seed(pieces, text):
    return struct.pack("<H", len(pieces)) + tok_bin(pieces) + SPLIT + text.encode()

tiny = [b"<unk>", b"<s>", b"</s>", b" ", b"a", b"b", b"ab", b" ab", b"<0x41>", b"c"]
put("llama2c_tokenizer", "tiny", tok_seed(tiny, "ab abc ba\nA\xc3\xa9"))
put("llama2c_tokenizer", "bytes_only", tok_seed([b"<unk>", b"<s>", b"</s>"] + [b"<0x%02X>" % i for i in range(256)],
                                                  "hello \xe2\x82\xac"))
tok512 = os.path.join(ROOT, "..", "shared", "data", "stories260K", "tok512.bin")
if not os.path.exists(tok512):
    tok512 = "/work/shared/data/stories260K/tok512.bin"
if os.path.exists(tok512):
    with open(tok512, "rb") as f:
        b = f.read()
    off, pieces = 4, []
    while off < len(b) and len(pieces) < 300:  # ids 0..299: specials, bytes, first merges
        score, n = struct.unpack_from("<fi", b, off)
        pieces.append(b[off + 8: off + 8 + n])
        off += 8 + n
    put("llama2c_tokenizer", "tok512_head", struct.pack("<H", len(pieces)) + b[:off] + SPLIT +
        b"Once upon a time, there was a little girl named Lily.")

# --- GPT-2 BPE: encoder.json SPLIT vocab.bpe SPLIT text -----------------------
enc = {"a": 0, "b": 1, "c": 2, "\u0120": 3, "ab": 4, "\u0120ab": 5, "<|endoftext|>": 6, "'s": 7, "1": 8, "!": 9}
bpe = "#version: 0.2\na b\n\u0120 ab\n"
put("gpt2_tokenizer", "tiny", json.dumps(enc).encode() + SPLIT + bpe.encode() + SPLIT + b"ab ab's c1! \xc3\xa9  x")
put("gpt2_tokenizer", "crlf_sparse_ids", json.dumps({"a": 0, "b": 40, "ab": 7}).encode() + SPLIT +
    b"a b\r\n\r\n" + SPLIT + b"abab  ba")

# --- HF config.json [SPLIT model.safetensors.index.json] ---------------------
# The fuzzer's directory holds a tiny Llama (hidden 8, 2 heads, 1 kv head,
# intermediate 16, 2 layers, vocab 16, untied head) and GPT-2 (n_embd 8,
# 2 heads, 1 layer, vocab 16, 16 positions) in one model.safetensors, and the
# same tensors alternating over model-00001/00002-of-00002.safetensors.
llama_cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
             "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 4, "vocab_size": 16, "max_position_embeddings": 16,
             "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
             "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}
gpt2_cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1,
            "n_positions": 16, "n_inner": None, "vocab_size": 16, "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "bos_token_id": 15, "eos_token_id": 15, "tie_word_embeddings": True}
put("hf_model", "llama", json.dumps(llama_cfg, indent=2))
old = dict(llama_cfg, rope_theta=500000.0, tie_word_embeddings=True)
del old["rope_parameters"]
put("hf_model", "llama_old_rope_tied", json.dumps(old))
put("hf_model", "gpt2", json.dumps(gpt2_cfg, indent=2))
names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
for l in range(2):
    p = "model.layers.%d." % l
    names += [p + n for n in ["input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                              "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                              "mlp.gate_proj.weight", "mlp.down_proj.weight", "mlp.up_proj.weight"]]
gnames = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"] + ["h.0." + n for n in [
    "ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
    "mlp.c_proj.bias"]]
# The fuzzer writes tensors in sorted order, alternating shards 1, 2, 1, ...
order = sorted(names + gnames)
where = {n: "model-0000%d-of-00002.safetensors" % (i % 2 + 1) for i, n in enumerate(order)}
idx = lambda ns: json.dumps({"metadata": {"total_size": 0}, "weight_map": {n: where[n] for n in ns}}, indent=1)
put("hf_model", "llama_sharded", json.dumps(llama_cfg).encode() + SPLIT + idx(names).encode())
put("hf_model", "gpt2_sharded", json.dumps(gpt2_cfg).encode() + SPLIT + idx(gnames).encode())
put("hf_model", "unsupported", json.dumps(dict(llama_cfg, rope_scaling={"type": "linear", "factor": 2.0})))
# --- Hugging Face tokenizer.json: tokenizer.json SPLIT text -------------------
# Small files with the structure of real ones (GPT-2, Llama 3, Qwen2, Llama 2 /
# Mistral, Mistral with Metaspace, Gemma: normalizers, pre-tokenizers,
# templates, decoders and added tokens as those files have them) and a
# vocabulary learned here by a few BPE merges over a sample text.
SAMPLE = "Once upon a time, there was a little girl named Lily. She liked 123 apples!\n  The end's near"
TEXTS = [SAMPLE, "Hello  world\n\n<s> x</s> 2024 caf\u00e9 \u2581tab\tend", "\u65e5\u672c\u8a9e \U0001F600 ok"]


def byte_chars():
    bs = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    m, n = {}, 0
    for b in range(256):
        if b in bs:
            m[b] = chr(b)
        else:
            m[b] = chr(256 + n)
            n += 1
    return m


def learn_bpe(words, vocab, n_merges):
    """words: lists of symbols; adds merged symbols to vocab, returns merges."""
    merges = []
    for _ in range(n_merges):
        counts = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        (a, b), c = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        if c < 2:
            break
        merges.append([a, b])
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
        nw = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            nw.append(out)
        words = nw
    return merges


def added(i, content, special=True, normalized=False):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": normalized, "special": special}


def template(name, tid):
    return {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": name, "type_id": 0}},
                                                     {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": name, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {name: {"id": name, "ids": [tid], "tokens": [name]}}}


def tokjson(model, normalizer=None, pre=None, post=None, decoder=None, added_tokens=()):
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": list(added_tokens),
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": post, "decoder": decoder,
            "model": dict({"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                           "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                           "ignore_merges": False}, **model)}


def byte_level_model(merge_pairs=True, n=40):
    bc = byte_chars()
    vocab = {bc[b]: i for i, b in enumerate(range(256))}
    words = [[bc[b] for b in w.encode()] for w in (" " + SAMPLE).replace(" ", "\n ").split("\n") if w]
    merges = learn_bpe(words, vocab, n)
    return vocab, (merges if merge_pairs else [a + " " + b for a, b in merges])


def sp_model(n=40, byte_tokens=True):
    sp = "\u2581"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    if byte_tokens:
        for b in range(256):
            vocab["<0x%02X>" % b] = len(vocab)
    for ch in sorted(set(SAMPLE.replace(" ", sp))) + [sp]:
        vocab.setdefault(ch, len(vocab))
    words = [list(sp + w) for w in SAMPLE.split(" ")]
    merges = learn_bpe(words, vocab, n)
    return vocab, merges


def put_tok(name, j, text=SAMPLE):
    put("hf_tokenizer", name, json.dumps(j, indent=1, ensure_ascii=False).encode() + SPLIT + text.encode())


LLAMA3_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
v, m = byte_level_model(merge_pairs=False)
v["<|endoftext|>"] = len(v)
put_tok("gpt2", tokjson({"vocab": v, "merges": m}, pre=BL, post=dict(BL, add_prefix_space=True, trim_offsets=False),
                        decoder=BL, added_tokens=[added(v["<|endoftext|>"], "<|endoftext|>", normalized=True)]),
        TEXTS[1] + "<|endoftext|>")
v, m = byte_level_model()
n = len(v)
split = {"type": "Split", "pattern": {"Regex": LLAMA3_RE}, "behavior": "Isolated", "invert": False}
seq = {"type": "Sequence", "pretokenizers": [split, dict(BL, use_regex=False)]}
put_tok("llama3", tokjson({"vocab": v, "merges": m, "ignore_merges": True}, pre=seq,
                          post={"type": "Sequence", "processors": [dict(BL, add_prefix_space=True, trim_offsets=False),
                                                                   template("<|begin_of_text|>", n)]},
                          decoder=BL, added_tokens=[added(n, "<|begin_of_text|>"), added(n + 1, "<|end_of_text|>")]),
        TEXTS[2] + "<|end_of_text|>")
split_q = dict(split, pattern={"Regex": LLAMA3_RE.replace("\\p{N}{1,3}", "\\p{N}")})
put_tok("qwen2", tokjson({"vocab": v, "merges": m}, normalizer={"type": "NFC"},
                         pre={"type": "Sequence", "pretokenizers": [split_q, dict(BL, use_regex=False)]},
                         post=dict(BL, use_regex=False), decoder=BL,
                         added_tokens=[added(n, "<|endoftext|>"), added(n + 1, "<|im_start|>")]),
        "cafe\u0301 " + TEXTS[1])
v, m = sp_model()
sp = "\u2581"
sp_added = [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")]
sp_decoder = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": sp}, "content": " "},
                                               {"type": "ByteFallback"}, {"type": "Fuse"},
                                               {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
sp_model_fields = {"vocab": v, "merges": m, "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True}
put_tok("llama2", tokjson(sp_model_fields, normalizer={"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": sp}, {"type": "Replace", "pattern": {"String": " "}, "content": sp}]},
    post=template("<s>", 1), decoder=sp_decoder, added_tokens=sp_added), TEXTS[1])
put_tok("mistral_metaspace", tokjson(sp_model_fields,
                                     pre={"type": "Metaspace", "replacement": sp, "prepend_scheme": "first", "split": False},
                                     post=template("<s>", 1), added_tokens=sp_added,
                                     decoder={"type": "Metaspace", "replacement": sp, "prepend_scheme": "first",
                                              "split": False}), TEXTS[2])
put_tok("gemma", tokjson(sp_model_fields, normalizer={"type": "Replace", "pattern": {"String": " "}, "content": sp},
                         post=template("<s>", 1), decoder=sp_decoder, added_tokens=sp_added + [
                             added(len(v), "<start_of_turn>", normalized=True)]), "<start_of_turn>" + SAMPLE)
v, m = sp_model(byte_tokens=False)
put_tok("metaspace_split_digits", tokjson(dict(sp_model_fields, vocab=v, merges=m, byte_fallback=False, fuse_unk=False),
                                          normalizer={"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
                                          pre={"type": "Sequence", "pretokenizers": [
                                              {"type": "Digits", "individual_digits": True},
                                              {"type": "Metaspace", "replacement": sp, "prepend_scheme": "always",
                                               "split": True}]},
                                          decoder={"type": "Metaspace", "replacement": sp, "add_prefix_space": True},
                                          added_tokens=sp_added), TEXTS[0] + " 2024")
print("seeds written under", OUT)
