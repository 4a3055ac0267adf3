// `sae features build|show|search`, `sae concepts` and `sae generate --steer`
// run as a user runs them, on stories260K with a small SAE.
#include <gtest/gtest.h>

#include "tests/integration/interp_test_util.h"

namespace {

class InterpCli : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = StoriesDir();
    if (!fs::exists(model_ + "/stories260K.bin")) GTEST_SKIP() << "stories260K not found at " << model_;
    dir_ = fs::path(::testing::TempDir()) / ("interp_cli_" + std::to_string(getpid()) + "_" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    WriteTiedSae(dir_ / "sae", 64, 64, 8, 2);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Build(const std::string& extra) {
    return Bin("sae") + " features build --model " + model_ + " --sae " + (dir_ / "sae").string() +
           " --corpus generate --tokens 2000 --context 64 --batch 4 --quiet " + extra;
  }
  std::string model_;
  fs::path dir_;
};

TEST_F(InterpCli, FeaturesBuildShowSearchAndTwoRanksEqualOne) {
  auto r = Sh(Build("--json"));
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["latents"], 64);
  EXPECT_EQ(j["tokens"], 32 * 63);  // 2000 rounded up to whole windows of 63 rows
  ASSERT_TRUE(fs::exists(dir_ / "sae/features.safetensors"));
  const std::string one = ReadAll(dir_ / "sae/features.safetensors");
  // Two processes: rank 1 writes its partial statistics, rank 0 merges.
  const std::string out2 = (dir_ / "two").string();
  r = Sh(Build("--out " + out2 + " --rank 1 --world-size 2") + " & " +
         Build("--out " + out2 + " --rank 0 --world-size 2") + "; wait");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(ReadAll(out2 + "/features.safetensors"), one) << "two ranks merged must equal one process exactly";
  EXPECT_FALSE(fs::exists(out2 + "/features.rank-1.partial"));
  // show: text and JSON agree.
  r = Sh(Bin("sae") + " features show " + (dir_ / "sae").string() + " 3 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto d = nlohmann::json::parse(r.out);
  EXPECT_EQ(d["latent"], 3);
  int64_t sum = 0;
  for (auto& c : d["hist"]) sum += c.get<int64_t>();
  EXPECT_EQ(sum, d["count"].get<int64_t>());
  ASSERT_FALSE(d["top"].empty());
  EXPECT_EQ(d["logit_top"].size(), 10u);
  r = Sh(Bin("sae") + " features show " + (dir_ / "sae").string() + " 3");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("latent 3"), std::string::npos);
  EXPECT_NE(r.out.find("top contexts"), std::string::npos);
  EXPECT_NE(r.out.find("logit effect"), std::string::npos);
  // search: the centre token of latent 3's top context finds latent 3.
  std::string piece = d["top"][0]["tokens"][d["top"][0]["center"].get<int>()];
  while (!piece.empty() && piece.front() == ' ') piece.erase(0, 1);
  ASSERT_FALSE(piece.empty());
  r = Sh(Bin("sae") + " features search " + (dir_ / "sae").string() + " '" + piece + "' --limit 64 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  bool found = false;
  for (auto& h : nlohmann::json::parse(r.out)) found = found || h["latent"] == 3;
  EXPECT_TRUE(found) << piece << "\n" << r.out;
  // Errors name what is wrong.
  r = Sh(Bin("sae") + " features show " + (dir_ / "sae").string() + " 64");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("latent 64"), std::string::npos) << r.out;
  r = Sh(Bin("sae") + " features show " + dir_.string() + " 0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("features.json"), std::string::npos) << r.out;
}

// Dashboards and steering on Hugging Face architectures other than
// llama2.c's: a Mistral (sliding window) and a Llama 3 (llama3 rope scaling)
// directory made from llama-tiny's weights, through the same commands.
TEST_F(InterpCli, DashboardsAndSteeringOnHuggingFaceArchitectures) {
  const std::string tiny = fs::path(model_).parent_path().string() + "/hf-tiny/llama-tiny";
  if (!fs::exists(tiny + "/model.safetensors")) GTEST_SKIP() << "llama-tiny not found in " << tiny;
  for (const std::string arch : {"mistral", "llama3"}) {
    const fs::path m = dir_ / arch;
    fs::create_directories(m);
    fs::copy_file(tiny + "/model.safetensors", m / "model.safetensors");
    auto cfg = nlohmann::json::parse(ReadAll(tiny + "/config.json"));
    if (arch == "mistral") {
      cfg["model_type"] = "mistral";
      cfg["sliding_window"] = 8;
    } else {
      cfg["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 10000.0},
                                {"factor", 8.0},           {"low_freq_factor", 1.0},
                                {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 16}};
    }
    cfg["bos_token_id"] = 256;
    cfg["eos_token_id"] = 256;
    WriteAll(m / "config.json", cfg.dump());
    WriteAll(m / "tokenizer.json", ByteTokenizerJson());
    const fs::path sae = dir_ / ("sae_" + arch);
    WriteTiedSae(sae, 96, 64, 4, 1);
    auto r = Sh(Bin("sae") + " features build --model " + m.string() + " --sae " + sae.string() +
                " --corpus generate --tokens 600 --context 32 --batch 4 --quiet --json");
    ASSERT_EQ(r.code, 0) << arch << ": " << r.out;
    EXPECT_EQ(nlohmann::json::parse(r.out)["latents"], 96) << arch;
    ASSERT_TRUE(fs::exists(sae / "features.safetensors")) << arch;
    const std::string base = Bin("sae") + " generate --model " + m.string() + " --prompt 'Once upon' --steps 24 -s 3";
    auto text = [](const Result& r) {  // the text, without the tok/s report that may follow it on its line
      return r.out.substr(0, std::min(r.out.find('\n'), r.out.find("achieved tok/s")));
    };
    auto plain = Sh(base + " 2>/dev/null");
    ASSERT_EQ(plain.code, 0) << arch << ": " << plain.out;
    auto zero = Sh(base + " --sae " + sae.string() + " --steer 5:0 2>/dev/null");
    ASSERT_EQ(zero.code, 0) << arch << ": " << zero.out;
    EXPECT_EQ(text(zero), text(plain)) << arch << ": scale 0 must reproduce the unsteered text";
    auto big = Sh(base + " --sae " + sae.string() + " --steer 5:40 2>/dev/null");
    ASSERT_EQ(big.code, 0) << arch << ": " << big.out;
    EXPECT_NE(text(big), text(plain)) << arch;
    auto clamp = Sh(base + " --sae " + sae.string() + " --steer 5:1 --steer-mode clamp 2>/dev/null");
    EXPECT_EQ(clamp.code, 0) << arch << ": " << clamp.out;  // relative clamp: the dashboards exist now
  }
}

TEST_F(InterpCli, GenerateSteersAndComparesWithTheSameSeed) {
  const std::string base = Bin("sae") + " generate --model " + model_ + " -n 48 -s 3 -i 'Once upon a time'";
  auto plain = Sh("{ " + base + " 2>/dev/null; }");
  ASSERT_EQ(plain.code, 0) << plain.out;
  const std::string plain_text = plain.out.substr(0, plain.out.find('\n'));
  // Scale 0: the unsteered text, token for token.
  auto zero = Sh(base + " --sae " + (dir_ / "sae").string() + " --steer 5:0 2>/dev/null");
  ASSERT_EQ(zero.code, 0) << zero.out;
  EXPECT_EQ(zero.out.substr(0, zero.out.find('\n')), plain_text);
  auto big = Sh(base + " --sae " + (dir_ / "sae").string() + " --steer 5:40 --steer-on generated 2>/dev/null");
  ASSERT_EQ(big.code, 0) << big.out;
  EXPECT_NE(big.out.substr(0, big.out.find('\n')), plain_text);
  auto cmp = Sh(base + " --sae " + (dir_ / "sae").string() + " --steer 5:40 --compare --width 30");
  ASSERT_EQ(cmp.code, 0) << cmp.out;
  EXPECT_NE(cmp.out.find("unsteered"), std::string::npos);
  EXPECT_NE(cmp.out.find("steered (add 5:40"), std::string::npos);
  EXPECT_NE(cmp.out.find(" | "), std::string::npos);
  // Relative clamp needs the dashboards and says so; absolute works without.
  auto clamp = Sh(base + " --sae " + (dir_ / "sae").string() + " --steer 5:2 --steer-mode clamp");
  EXPECT_NE(clamp.code, 0);
  EXPECT_NE(clamp.out.find("sae features build"), std::string::npos) << clamp.out;
  clamp = Sh(base + " --sae " + (dir_ / "sae").string() + " --steer 5:0 --steer-mode clamp --steer-units absolute");
  EXPECT_EQ(clamp.code, 0) << clamp.out;
  auto bad = Sh(base + " --sae " + (dir_ / "sae").string() + " --steer 99:1");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("latent 99"), std::string::npos) << bad.out;
}

TEST_F(InterpCli, ConceptsRanksAgainstTheContrastSet) {
  ASSERT_EQ(Sh(Build("")).code, 0);
  WriteAll(dir_ / "texts.txt", "Lily ran to her mom.\nTom saw his mom.\n\nHer mom made a cake.\n");
  WriteAll(dir_ / "contrast.txt", "The sun was warm.\nThe bird sang.\n");
  auto r = Sh(Bin("sae") + " concepts --model " + model_ + " --sae " + (dir_ / "sae").string() + " --texts " +
              (dir_ / "texts.txt").string() + " --contrast " + (dir_ / "contrast.txt").string() + " --top 5 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["texts"].size(), 3u);
  EXPECT_EQ(j["contrast_count"], 2);
  EXPECT_EQ(j["normaliser"], "dashboards");
  ASSERT_FALSE(j["hits"].empty());
  double prev = 2;
  for (auto& h : j["hits"]) {
    EXPECT_NEAR(h["score"].get<double>(), h["f_texts"].get<double>() - h["f_contrast"].get<double>(), 1e-12);
    EXPECT_LE(h["score"].get<double>(), prev);
    prev = h["score"];
    EXPECT_EQ(h["heat"].size(), 3u);
  }
  r = Sh(Bin("sae") + " concepts --model " + model_ + " --sae " + (dir_ / "sae").string() + " --texts " +
         (dir_ / "texts.txt").string() + " --contrast-windows 8");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("sampled by the model"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("score"), std::string::npos);
}

TEST_F(InterpCli, LongCommandsPrintProgressLinesWithoutATty) {
  // popen: stderr is a pipe, not a TTY, so each command logs plain progress lines.
  auto r = Sh(Bin("sae") + " harvest --model " + model_ +
              " --layer 2 --corpus generate --tokens 3000 --context 64 "
              "--batch 4 --out " +
              (dir_ / "acts").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("harvest"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tok/s  ETA"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("100%"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("\r"), std::string::npos) << "no bar redraws off a TTY";
  r = Sh(Build(""));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("features"), std::string::npos);
  EXPECT_EQ(r.out.find("tok/s  ETA"), std::string::npos) << "--quiet prints none";
  r = Sh(Bin("sae") + " features build --model " + model_ + " --sae " + (dir_ / "sae").string() +
         " --tokens 2000 --context 64 --batch 4 --out " + (dir_ / "f2").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("100% features"), std::string::npos) << r.out;
  r = Sh(Bin("sae") + " eval --model " + model_ + " --sae " + (dir_ / "sae").string() +
         " --layer 2 --windows 8 --context 64");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("100% eval"), std::string::npos) << r.out;
}

}  // namespace
