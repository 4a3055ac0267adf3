#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/lm/sp_processor.h"
#include "core/lm/tokenizer.h"
#include "gtest/gtest.h"
#include "tests/unit/lm/lm_test_util.h"

namespace sae {
namespace {

using lm_test::StoriesDir;
using lm_test::TempDir;

std::string Tok512() { return StoriesDir() + "/tok512.bin"; }

TEST(Llama2cTokenizer, EncodesLikeLlama2cAndRoundTrips) {
  SAE_REQUIRE_FILE(Tok512());
  auto t = LoadLlama2cTokenizer(Tok512(), 512);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 512);
  // Empty text: just BOS (no dummy prefix).
  EXPECT_EQ((*t)->Encode("", true, false), std::vector<int32_t>({1}));
  for (const std::string text : {"Once upon a time, there was a little girl named Lily.", "He said, \"Wow!\"\nThe end.",
                                 "caf\xC3\xA9 \xE2\x82\xAC 42 \xF0\x9F\x98\x80"}) {
    std::vector<int32_t> ids = (*t)->Encode(text, true, true);
    ASSERT_GE(ids.size(), 3u);
    EXPECT_EQ(ids.front(), 1);
    EXPECT_EQ(ids.back(), 2);
    EXPECT_LT(ids.size(), text.size() + 3);
    EXPECT_EQ((*t)->Decode(ids), text);
  }
  // Merges happen: a common word is fewer tokens than its letters.
  EXPECT_LT((*t)->Encode("Once upon a time", false, false).size(), 8u);
  // Non-ASCII characters missing from the vocabulary fall back to byte tokens 3..258.
  std::vector<int32_t> emoji = (*t)->Encode("\xF0\x9F\x98\x80", false, false);
  ASSERT_EQ(emoji.size(), 5u) << ::testing::PrintToString(emoji);  // dummy space + 4 bytes
  EXPECT_EQ(emoji[1], 0xF0 + 3);
  EXPECT_EQ((*t)->Encode("\xE2\x82\xAC", false, false).size(), 2u);  // in the vocabulary: one piece
  EXPECT_EQ((*t)->DecodePiece(5, 0x41 + 3), "A");
}

TEST(Llama2cTokenizer, VocabularyMismatchNamesTheFile) {
  SAE_REQUIRE_FILE(Tok512());
  auto small = LoadLlama2cTokenizer(Tok512(), 256);
  ASSERT_FALSE(small.ok());
  EXPECT_NE(small.status().message().find(Tok512()), std::string::npos) << small.status();
  EXPECT_NE(small.status().message().find("512"), std::string::npos) << small.status();
  auto via_model = LoadTokenizerFor(StoriesDir() + "/stories260K.bin", 1000);
  ASSERT_FALSE(via_model.ok());
  EXPECT_NE(via_model.status().message().find("tok"), std::string::npos) << via_model.status();
  TempDir tmp;
  const std::string cut = tmp.Sub("tokenizer.bin");
  lm_test::WriteFile(cut, lm_test::ReadFile(Tok512()).substr(0, 3000));
  auto c = LoadLlama2cTokenizer(cut, 512);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(cut), std::string::npos);
}

TEST(SentencePieceTokenizer, TrainedModelRoundTrips) {
  TempDir tmp;
  std::string corpus = StoriesDir() + "/tinystories_sample.txt";
  if (!std::filesystem::exists(corpus)) {  // any text will do
    corpus = tmp.Sub("corpus.txt");
    std::string text;
    for (int i = 0; i < 200; ++i)
      text += "Once upon a time there was a boy named Ben " + std::to_string(i) + ". He liked the park.\n";
    lm_test::WriteFile(corpus, text);
  }
  const std::string prefix = tmp.Sub("sp");
  const std::string err =
      SpTrain("--input=" + corpus + " --model_prefix=" + prefix +
              " --vocab_size=400 --model_type=bpe --byte_fallback=true --character_coverage=1.0 --minloglevel=3");
  if (err.find("not available in sanitizer") != std::string::npos) GTEST_SKIP() << err;  // ASan/TSan builds
  ASSERT_EQ(err, "");
  auto t = LoadTokenizerFor(tmp.path(), 400, prefix + ".model");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 400);
  for (const std::string text : {"Once upon a time there was a boy.", "Wow! \xE2\x82\xAC 42"}) {
    std::vector<int32_t> ids = (*t)->Encode(text, true, false);
    EXPECT_EQ(ids.front(), (*t)->bos_id());
    EXPECT_EQ((*t)->Decode(ids), text);
    std::string pieces;
    for (size_t i = 1; i < ids.size(); ++i) pieces += (*t)->DecodePiece(ids[i - 1], ids[i]);
    EXPECT_EQ(pieces, text);
  }
  lm_test::WriteFile(tmp.Sub("bad.model"), "not a model");
  auto bad = LoadSentencePieceTokenizer(tmp.Sub("bad.model"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("bad.model"), std::string::npos);
}

// A miniature GPT-2 vocabulary: the 256 byte symbols plus a few merges.
void WriteMiniGpt2(const std::string& dir) {
  nlohmann::json enc = nlohmann::json::object();
  // GPT-2's byte → code point map, written out independently of the code.
  std::vector<int> cps;
  for (int b = 0; b < 256; ++b)
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) cps.push_back(b);
  std::vector<int> map(256, -1);
  for (int b : cps) map[b] = b;
  int n = 0;
  for (int b = 0; b < 256; ++b)
    if (map[b] < 0) map[b] = 256 + n++;
  auto utf8 = [](int cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  for (int b = 0; b < 256; ++b) enc[utf8(map[b])] = b;
  const std::string G = utf8(map[' ']);  // "Ġ"
  int id = 256;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {G, "t"}, {"h", "e"}, {G + "t", "he"}, {"i", "n"}, {G, "c"}, {G + "c", "a"}, {G + "ca", "t"}};
  std::string bpe = "#version: 0.2\n";
  for (const auto& [a, b] : merges) {
    enc[a + b] = id++;
    bpe += a + " " + b + "\n";
  }
  enc["<|endoftext|>"] = id++;
  lm_test::WriteFile(dir + "/encoder.json", enc.dump());
  lm_test::WriteFile(dir + "/vocab.bpe", bpe);
}

TEST(Gpt2Tokenizer, MergesByRankAndRoundTrips) {
  TempDir tmp;
  WriteMiniGpt2(tmp.path());
  auto t = LoadTokenizerFor(tmp.path(), 264);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 264);
  EXPECT_EQ((*t)->eos_id(), 263);
  // " the cat": " the" = Ġt + he → id 258; " cat" → 262.
  EXPECT_EQ((*t)->Encode(" the cat", false, false), std::vector<int32_t>({258, 262}));
  EXPECT_EQ((*t)->Encode("the", false, false), std::vector<int32_t>({'t', 257}));
  // Two spaces before a word: the first stands alone, the second joins the word.
  EXPECT_EQ((*t)->Encode("a  the", false, false), std::vector<int32_t>({'a', ' ', 258}));
  for (const std::string text : {"Hello world, it's 2024!\n\n  The cat sat.", "na\xC3\xAFve \xE2\x82\xAC\t\t end "}) {
    std::vector<int32_t> ids = (*t)->Encode(text, false, true);
    EXPECT_EQ(ids.back(), 263);
    EXPECT_EQ((*t)->Decode(ids), text);
  }
  auto mismatch = LoadTokenizerFor(tmp.path(), 100);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.status().message().find("encoder.json"), std::string::npos);
}

std::string Llama2cTokenizerBytes(const std::vector<std::string>& pieces) {
  std::string b;
  auto i32 = [&](int32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); };
  i32(8);
  for (size_t i = 0; i < pieces.size(); ++i) {
    const float score = -static_cast<float>(i);
    b.append(reinterpret_cast<const char*>(&score), 4);
    i32(static_cast<int32_t>(pieces[i].size()));
    b += pieces[i];
  }
  return b;
}

// Found by fuzzing (tests/fuzz/corpus/llama2c_tokenizer/regress-*): the byte
// fallback (byte + 3) produced ids past a vocabulary without byte tokens,
// and the merge loop then read outside the vocabulary.
TEST(Llama2cTokenizer, SmallVocabularyNeverYieldsIdsOutsideIt) {
  TempDir tmp;
  const std::string path = tmp.Sub("tokenizer.bin");
  const std::vector<std::string> pieces = {"<unk>", "<s>", "</s>", " ", "a", "b", "ab", " ab", "<0x41>", "c"};
  lm_test::WriteFile(path, Llama2cTokenizerBytes(pieces));
  auto t = LoadLlama2cTokenizer(path, 10);
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<int32_t> ids = (*t)->Encode("ab abc ba\nA\xC3\xA9 xyz", true, true);
  for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 10) << id;
  EXPECT_EQ(ids[1], 7);                                        // " ab" merged
  EXPECT_NE(std::find(ids.begin(), ids.end(), 0), ids.end());  // unknown bytes are <unk>
  lm_test::WriteFile(path, Llama2cTokenizerBytes({"<unk>", "<s>"}));
  auto two = LoadLlama2cTokenizer(path, 2);
  ASSERT_FALSE(two.ok());
  EXPECT_NE(two.status().message().find("at least 3 tokens"), std::string::npos) << two.status();
}

// Found by fuzzing (tests/fuzz/corpus/gpt2_tokenizer/regress-huge-id): one
// huge id in encoder.json sized the decoder table to gigabytes.
TEST(Gpt2Tokenizer, HugeIdIsAnErrorNamingTheFile) {
  TempDir tmp;
  lm_test::WriteFile(tmp.Sub("encoder.json"), "{\"a\": 0, \"b\": 2000000000}");
  lm_test::WriteFile(tmp.Sub("vocab.bpe"), "a b\n");
  auto t = LoadGpt2Tokenizer(tmp.Sub("encoder.json"), tmp.Sub("vocab.bpe"));
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find(tmp.Sub("encoder.json")), std::string::npos) << t.status();
  EXPECT_NE(t.status().message().find("2000000000"), std::string::npos) << t.status();
}

// Found by fuzzing (tests/fuzz/corpus/gpt2_tokenizer/regress-merge-not-utf8):
// a vocab.bpe line with a byte that is not UTF-8 (0xFF) made the JSON dump
// of the equivalent tokenizer.json throw, an abort in `sae`.
TEST(Gpt2Tokenizer, MergeThatIsNotUtf8IsAnErrorNamingTheLine) {
  TempDir tmp;
  lm_test::WriteFile(tmp.Sub("encoder.json"), "{\"a\": 0, \"b\": 1, \"ab\": 2}");
  lm_test::WriteFile(tmp.Sub("vocab.bpe"), "#version: 0.2\na b\n\xff b\n");
  auto t = LoadGpt2Tokenizer(tmp.Sub("encoder.json"), tmp.Sub("vocab.bpe"));
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find(tmp.Sub("vocab.bpe") + ":3: not UTF-8"), std::string::npos) << t.status();
}

}  // namespace
}  // namespace sae
