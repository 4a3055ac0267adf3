// Hugging Face tokenizer.json: against independent npm tokenizers (fixtures
// made by tests/js/make_tokenizer_fixtures.mjs, run by the ctest
// lm_tokenizer_json_npm), and small hand-made files for the rules and the
// errors.
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/lm/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/testing/byte_level.h"
#include "tests/unit/lm/lm_test_util.h"

namespace sae {
namespace {

using json = nlohmann::json;
using lm_test::ReadFile;
using lm_test::TempDir;
using lm_test::WriteFile;

std::string Ids(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) absl::StrAppend(&s, i ? "," : "", v[i]);
  return s + "]";
}

// Every case: ours == @huggingface/tokenizers (without and with special
// tokens) and == the vocabulary's own npm tokenizer where it has one.
void CompareWithNpm(const std::string& name, bool bytes_round_trip) {
  const char* dir = std::getenv("SAE_TOKENIZER_FIXTURES");
  if (dir == nullptr) GTEST_SKIP() << "SAE_TOKENIZER_FIXTURES not set (ctest lm_tokenizer_json_npm sets it)";
  const std::string base = std::string(dir) + "/" + name;
  ASSERT_TRUE(std::filesystem::exists(base + ".tokenizer.json")) << base;
  auto tok = LoadHfTokenizer(base + ".tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  json cases = json::parse(ReadFile(base + ".cases.json"));
  ASSERT_GE(cases.size(), 3000u);
  int64_t compared = 0, bad = 0, with_ref = 0;
  auto check = [&](const std::string& what, const std::string& text, const std::vector<int32_t>& got,
                   const json& want) {
    ++compared;
    const std::vector<int32_t> w = want.get<std::vector<int32_t>>();
    if (got == w) return;
    if (++bad <= 5)
      ADD_FAILURE() << name << " " << what << " differs for " << json(text).dump() << "\n  saeforge " << Ids(got)
                    << "\n  expected " << Ids(w);
  };
  for (const json& c : cases) {
    const std::string text = c["text"].get<std::string>();
    const std::vector<int32_t> plain = (*tok)->Encode(text, false, false);
    check("hf", text, plain, c["hf"]);
    const bool templated = c["hf_bos"].size() > c["hf"].size();
    if (templated) check("hf_bos", text, (*tok)->Encode(text, true, false), c["hf_bos"]);
    if (c.contains("ref")) {
      check("ref", text, plain, c["ref"]);
      ++with_ref;
    }
    if (c.contains("ref_bos")) {
      check("ref_bos", text, (*tok)->Encode(text, true, false), c["ref_bos"]);
      ++with_ref;
    }
    if (bytes_round_trip && text.find("<|") == std::string::npos && text.find("<s>") == std::string::npos)
      EXPECT_EQ((*tok)->Decode((*tok)->Encode(text, true, false)), text) << name << " decode";
  }
  EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << compared << " encodings differ";
  std::printf("%s: %ld encodings compared (%ld against the vocabulary's own npm tokenizer), %ld differ\n", name.c_str(),
              compared, with_ref, bad);
}

TEST(TokenizerJsonNpm, Llama3MatchesLlama3TokenizerJs) { CompareWithNpm("llama3", true); }
TEST(TokenizerJsonNpm, Gpt2MatchesGptTokenizer) { CompareWithNpm("gpt2", true); }

// The same vocabulary as GPT-2's original encoder.json + vocab.bpe files.
TEST(TokenizerJsonNpm, Gpt2EncoderJsonAndVocabBpeMatchGptTokenizer) {
  const char* dir = std::getenv("SAE_TOKENIZER_FIXTURES");
  if (dir == nullptr) GTEST_SKIP() << "SAE_TOKENIZER_FIXTURES not set (ctest lm_tokenizer_json_npm sets it)";
  const json tj = json::parse(ReadFile(std::string(dir) + "/gpt2.tokenizer.json"));
  TempDir tmp;
  WriteFile(tmp.Sub("encoder.json"), tj["model"]["vocab"].dump());
  std::string bpe = "#version: 0.2\n";
  for (const json& m : tj["model"]["merges"]) bpe += m[0].get<std::string>() + " " + m[1].get<std::string>() + "\n";
  WriteFile(tmp.Sub("vocab.bpe"), bpe);
  auto tok = LoadTokenizerFor(tmp.path(), 50257);
  ASSERT_TRUE(tok.ok()) << tok.status();
  int64_t bad = 0, n = 0;
  for (const json& c : json::parse(ReadFile(std::string(dir) + "/gpt2.cases.json"))) {
    if (!c.contains("ref")) continue;
    ++n;
    const std::string text = c["text"].get<std::string>();
    if ((*tok)->Encode(text, false, false) != c["ref"].get<std::vector<int32_t>>() && ++bad <= 5)
      ADD_FAILURE() << "differs for " << json(text).dump();
  }
  EXPECT_GE(n, 3000);
  EXPECT_EQ(bad, 0);
}
TEST(TokenizerJsonNpm, MistralLlama2StyleMatchesMistralTokenizerJs) { CompareWithNpm("mistral-llama2", true); }
TEST(TokenizerJsonNpm, MistralNormalizedSpecialTokensMatchHfJs) { CompareWithNpm("mistral-llama2-normalized", false); }
TEST(TokenizerJsonNpm, MistralMetaspaceMatchesHfJs) { CompareWithNpm("mistral-metaspace", false); }
TEST(TokenizerJsonNpm, Qwen2StyleNfcMatchesHfJs) { CompareWithNpm("qwen2-style", false); }
TEST(TokenizerJsonNpm, GemmaStyleMatchesHfJs) { CompareWithNpm("gemma-style", false); }

// tokenizer.json files trained by the Python `tokenizers` library with its
// reference encodings (../shared/tools/make_hf_fixtures.py, where a machine
// has it; kept under tests/data/hf-tiny/tokenizers/). Skips until they exist.
TEST(TokenizerJsonPython, MatchesTheTokenizersLibrary) {
  const char* src = std::getenv("SAE_SOURCE_DIR");
#ifdef SAE_TEST_SOURCE_DIR
  if (src == nullptr) src = SAE_TEST_SOURCE_DIR;
#endif
  std::string dir = std::string(src ? src : ".") + "/tests/data/hf-tiny/tokenizers";
  if (!std::filesystem::exists(dir)) dir = lm_test::DataDir() + "/hf-tiny/tokenizers";
  SAE_REQUIRE_FILE(dir + "/reference.json");
  json refs = json::parse(ReadFile(dir + "/reference.json"));
  for (auto& [name, cases] : refs.items()) {
    auto tok = LoadHfTokenizer(dir + "/" + name + ".tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    for (const json& c : cases)
      EXPECT_EQ(Ids((*tok)->Encode(c["text"].get<std::string>(), false, false)),
                Ids(c["ids"].get<std::vector<int32_t>>()))
          << name << " " << c["text"].dump();
  }
}

// --- small hand-made files ---

// SentencePiece-style: ▁ pieces, byte fallback, Llama 2's normalizer and template.
json SpJson() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char n[8];
    std::snprintf(n, sizeof(n), "<0x%02X>", b);
    vocab[n] = 3 + b;
  }
  const std::string sp = "\xE2\x96\x81";
  int id = 259;
  for (const std::string& p : {sp, std::string("a"), std::string("b"), sp + "a", std::string("ab"), sp + "ab"})
    vocab[p] = id++;
  json j = {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens", json::array({{{"id", 1},
                                           {"content", "<s>"},
                                           {"single_word", false},
                                           {"lstrip", false},
                                           {"rstrip", false},
                                           {"normalized", false},
                                           {"special", true}}})},
            {"normalizer",
             {{"type", "Sequence"},
              {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", sp}},
                                           {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", sp}}})}}},
            {"pre_tokenizer", nullptr},
            {"post_processor",
             {{"type", "TemplateProcessing"},
              {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                      {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
              {"pair", json::array()},
              {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
            {"decoder",
             {{"type", "Sequence"},
              {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", sp}}}, {"content", " "}},
                                        {{"type", "ByteFallback"}},
                                        {{"type", "Fuse"}},
                                        {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
            {"model",
             {{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", "<unk>"},
              {"continuing_subword_prefix", nullptr},
              {"end_of_word_suffix", nullptr},
              {"fuse_unk", true},
              {"byte_fallback", true},
              {"ignore_merges", false},
              {"vocab", vocab},
              {"merges", json::array({sp + " a", "a b", sp + "a b"})}}}};
  return j;
}

TEST(TokenizerJson, SentencePieceStyleMergesByteFallbackAndBos) {
  TempDir tmp;
  WriteFile(tmp.Sub("tokenizer.json"), SpJson().dump());
  auto t = LoadHfTokenizer(tmp.Sub("tokenizer.json"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 265);
  EXPECT_EQ((*t)->bos_id(), 1);
  // "ab é": ▁ab (rank 0 ▁a, then ▁a+b), ▁, é as bytes C3 A9.
  const std::vector<int32_t> want = {1, 264, 259, 3 + 0xC3, 3 + 0xA9};
  EXPECT_EQ((*t)->Encode("ab \xC3\xA9", true, false), want);
  EXPECT_EQ((*t)->Decode(want), "ab \xC3\xA9");
  // The added token is cut out of the raw text; each side is normalized alone.
  const std::vector<int32_t> split = {262, 1, 264};  // ▁a, <s>, ▁ab
  EXPECT_EQ((*t)->Encode("a<s>ab", false, false), split);
}

// Llama 2's file marks <s> normalized: `tokenizers` then matches it in the
// normalized text as its normalized form ("▁<s>" after Prepend).
TEST(TokenizerJson, NormalizedAddedTokensMatchTheirNormalizedForm) {
  json j = SpJson();
  j["added_tokens"][0]["normalized"] = true;
  TempDir tmp;
  WriteFile(tmp.Sub("t.json"), j.dump());
  auto t = LoadHfTokenizer(tmp.Sub("t.json"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Encode("<s>ab", false, false), (std::vector<int32_t>{1, 263}));  // "▁<s>" | "ab"
  // Not normalized: cut from the raw text, and "ab" is normalized alone to "▁ab".
  j["added_tokens"][0]["normalized"] = false;
  WriteFile(tmp.Sub("u.json"), j.dump());
  auto u = LoadHfTokenizer(tmp.Sub("u.json"));
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ((*u)->Encode("<s>ab", false, false), (std::vector<int32_t>{1, 264}));
}

TEST(TokenizerJson, BpeModelWithoutTypeAsEarlyFilesHaveIt) {
  json j = SpJson();
  j["model"].erase("type");
  TempDir tmp;
  WriteFile(tmp.Sub("t.json"), j.dump());
  auto t = LoadHfTokenizer(tmp.Sub("t.json"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Encode("ab", false, false), (std::vector<int32_t>{264}));
}

TEST(TokenizerJson, FoundInModelDirectory) {
  TempDir tmp;
  WriteFile(tmp.Sub("tokenizer.json"), SpJson().dump());
  WriteFile(tmp.Sub("config.json"), "{}");
  auto t = LoadTokenizerFor(tmp.path(), 300);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 265);
  auto small = LoadTokenizerFor(tmp.path(), 100);
  ASSERT_FALSE(small.ok());
  EXPECT_NE(std::string(small.status().message()).find("tokenizer.json"), std::string::npos) << small.status();
}

void ExpectRefused(json j, const std::string& needle) {
  TempDir tmp;
  WriteFile(tmp.Sub("tokenizer.json"), j.dump());
  auto t = LoadHfTokenizer(tmp.Sub("tokenizer.json"));
  ASSERT_FALSE(t.ok()) << "accepted a file with " << needle;
  const std::string msg(t.status().message());
  EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
}

TEST(TokenizerJson, RefusesWhatItDoesNotImplementByName) {
  json j = SpJson();
  j["normalizer"] = {{"type", "BertNormalizer"}};
  ExpectRefused(j, "BertNormalizer");
  j = SpJson();
  j["model"]["type"] = "WordPiece";
  ExpectRefused(j, "WordPiece");
  j = SpJson();
  j["model"]["continuing_subword_prefix"] = "##";
  ExpectRefused(j, "continuing_subword_prefix");
  j = SpJson();
  j["model"]["new_field"] = 1;
  ExpectRefused(j, "new_field");
  j = SpJson();
  j["truncation"] = {{"max_length", 8}};
  ExpectRefused(j, "truncation");
  j = SpJson();
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  ExpectRefused(j, "BertPreTokenizer");
  j = SpJson();
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}, {"invert", false}};
  ExpectRefused(j, "(unclosed");
  j = SpJson();
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  ExpectRefused(j, "RobertaProcessing");
  j = SpJson();
  j["decoder"] = {{"type", "WordPiece"}};
  ExpectRefused(j, "WordPiece");
  j = SpJson();
  j["model"]["merges"].push_back("zz q");
  ExpectRefused(j, "merges[3]");
  j = SpJson();
  j["added_tokens"][0]["single_word"] = true;
  ExpectRefused(j, "single_word");
}

// Malformed fields the fuzzer (fuzz_hf_tokenizer) or a reading of the loader
// found: each was a hang, an uncaught exception, an out-of-memory or ids
// outside the vocabulary; each is now an error naming the field.
TEST(TokenizerJson, MalformedFieldsAreErrorsNamingThem) {
  json j = SpJson();  // an empty replacement: Encode looped forever
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", ""}, {"prepend_scheme", "always"}, {"split", true}};
  ExpectRefused(j, "replacement");
  j = SpJson();  // an empty Strip content: decoding looped 2^40 times
  j["decoder"]["decoders"][3] = {{"type", "Strip"}, {"content", ""}, {"start", int64_t{1} << 40}, {"stop", 0}};
  ExpectRefused(j, "content");
  j = SpJson();
  j["decoder"]["decoders"][3]["start"] = -1;
  ExpectRefused(j, "start");
  j = SpJson();  // a string where a boolean belongs: nlohmann's type_error escaped
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Isolated"}, {"invert", "yes"}};
  ExpectRefused(j, "invert");
  j = SpJson();
  j["model"]["byte_fallback"] = 1;
  ExpectRefused(j, "byte_fallback");
  j = SpJson();
  j["added_tokens"][0]["special"] = "true";
  ExpectRefused(j, "special");
  j = SpJson();  // an id past int32 was truncated; 2^31 - 1 sized a 64 GB table
  j["added_tokens"][0]["id"] = int64_t{1} << 40;
  ExpectRefused(j, "added_tokens[0]: field \"id\"");
  j = SpJson();
  j["added_tokens"][0]["id"] = 2147483647;
  ExpectRefused(j, "added_tokens[0]: field \"id\"");
  j = SpJson();  // the template's BOS id outside the vocabulary went into every Encode
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {100000};
  ExpectRefused(j, "special token id 100000");
  j = SpJson();
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {-1};
  ExpectRefused(j, "ids of \"<s>\"");
  j = SpJson();  // a template item whose id is not a string threw
  j["post_processor"]["single"][0]["SpecialToken"]["id"] = 5;
  ExpectRefused(j, "single[0]");
  j = SpJson();
  j["decoder"]["decoders"][0]["pattern"]["String"] = 7;
  ExpectRefused(j, "pattern");
  j = SpJson();  // nesting is bounded: Sequences are parsed by recursion
  json deep = {{"type", "Lowercase"}};
  for (int i = 0; i < 100; ++i) deep = {{"type", "Sequence"}, {"normalizers", json::array({deep})}};
  j["normalizer"] = deep;
  ExpectRefused(j, "nested deeper than 64");
}

// A vocabulary piece that looks like a byte token but is not hex decodes as
// text (std::stoi threw std::invalid_argument).
TEST(TokenizerJson, NonHexBytePiecesDecodeAsText) {
  json j = SpJson();
  j["model"]["vocab"]["<0xZZ>"] = 265;
  TempDir tmp;
  WriteFile(tmp.Sub("tokenizer.json"), j.dump());
  auto t = LoadHfTokenizer(tmp.Sub("tokenizer.json"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->DecodePiece(259, 265), "<0xZZ>");
  EXPECT_EQ((*t)->DecodePiece(259, 3 + 0x41), "A");
}

TEST(TokenizerJson, SplitBehaviorsAndByteLevel) {
  // Byte-level vocabulary of single bytes only: ids show where words were cut.
  json vocab = json::object();
  const std::vector<std::string> sym = sae::testing::ByteLevelSymbols();
  for (int b = 0; b < 256; ++b) vocab[sym[b]] = b;
  vocab[sym['a'] + sym['b']] = 256;  // "ab"
  vocab[sym[' '] + sym['a']] = 257;  // "Ġa"
  vocab["b-"] = 258;
  json j = {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens", json::array()},
            {"normalizer", nullptr},
            {"pre_tokenizer",
             {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
            {"post_processor", nullptr},
            {"decoder", {{"type", "ByteLevel"}}},
            {"model",
             {{"type", "BPE"},
              {"vocab", vocab},
              {"merges", json::array({"b -", sym['a'] + " " + sym['b'], sym[' '] + " " + sym['a']})}}}};
  TempDir tmp;
  WriteFile(tmp.Sub("t.json"), j.dump());
  auto t = LoadHfTokenizer(tmp.Sub("t.json"));
  ASSERT_TRUE(t.ok()) << t.status();
  // GPT-2's regex cuts "ab", " ab"; " ab" → [Ġ, a, b]: "a b" (rank 1) beats "Ġ a" (rank 2) → Ġ, ab.
  EXPECT_EQ((*t)->Encode("ab ab", false, false), (std::vector<int32_t>{256, ' ', 256}));
  EXPECT_EQ((*t)->Decode((*t)->Encode("x  \n\ty\xC3\xA9", false, false)), "x  \n\ty\xC3\xA9");
  // Split with each behavior on "-": a-b--c
  auto with = [&](const std::string& behavior, bool invert) {
    json k = j;
    k["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}},
                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
    WriteFile(tmp.Sub("k.json"), k.dump());
    auto tk = LoadHfTokenizer(tmp.Sub("k.json"));
    EXPECT_TRUE(tk.ok()) << tk.status();
    return tk.ok() ? (*tk)->Encode("ab-ab--ab", false, false) : std::vector<int32_t>{};
  };
  // Where words are cut shows in the merges: "b-" (rank 0) forms only inside a word "ab-".
  EXPECT_EQ(with("Removed", false), (std::vector<int32_t>{256, 256, 256}));
  EXPECT_EQ(with("Isolated", false), (std::vector<int32_t>{256, '-', 256, '-', '-', 256}));
  EXPECT_EQ(with("MergedWithPrevious", false), (std::vector<int32_t>{'a', 258, 'a', 258, '-', 256}));
  EXPECT_EQ(with("Removed", true), (std::vector<int32_t>{'-', '-', '-'}));
}

}  // namespace
}  // namespace sae
