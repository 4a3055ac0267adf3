// `sae serve` over real HTTP on a free loopback port: every API endpoint,
// 4xx JSON errors naming the field, size limits, path traversal, escaping,
// concurrent clients and the token rule off loopback.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <thread>

#include "tests/integration/interp_test_util.h"

namespace {

using json = nlohmann::json;

std::string UrlEncode(const std::string& s) {
  std::string out;
  char buf[4];
  for (unsigned char c : s) {
    if (std::isalnum(c)) {
      out += static_cast<char>(c);
    } else {
      std::snprintf(buf, sizeof(buf), "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = StoriesDir();
    if (!fs::exists(model_ + "/stories260K.bin")) return;
    dir_ = fs::path(::testing::TempDir()) / ("serve_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    WriteTiedSae(dir_ / "sae", 64, 64, 8, 2);
    auto r = Sh(Bin("sae") + " features build --model " + model_ + " --sae " + (dir_ / "sae").string() +
                " --tokens 1500 --context 64 --batch 4 --quiet");
    ASSERT_EQ(r.code, 0) << r.out;
    server_ = new ServeProcess({Bin("sae"), "serve", "--model", model_, "--sae", (dir_ / "sae").string(), "--listen",
                                "127.0.0.1:0", "--max-body", "65536"});
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    fs::remove_all(dir_);
  }
  void SetUp() override {
    if (server_ == nullptr) GTEST_SKIP() << "stories260K not found";
    ASSERT_GT(server_->port(), 0) << "serve printed: " << server_->first_line();
  }
  static httplib::Client Client() {
    httplib::Client c("127.0.0.1", server_->port());
    c.set_read_timeout(60, 0);
    return c;
  }
  static json Post(const std::string& path, const json& body, int want = 200) {
    auto res = Client().Post(path.c_str(), body.dump(), "application/json");
    EXPECT_TRUE(res) << path;
    if (!res) return json();
    EXPECT_EQ(res->status, want) << path << " " << res->body;
    EXPECT_NE(res->get_header_value("Content-Type").find("application/json"), std::string::npos);
    return json::parse(res->body, nullptr, false);
  }
  static json Get(const std::string& path, int want = 200) {
    auto res = Client().Get(path.c_str());
    EXPECT_TRUE(res) << path;
    if (!res) return json();
    EXPECT_EQ(res->status, want) << path << " " << res->body;
    return json::parse(res->body, nullptr, false);
  }
  static std::string model_;
  static fs::path dir_;
  static ServeProcess* server_;
};
std::string Serve::model_;
fs::path Serve::dir_;
ServeProcess* Serve::server_ = nullptr;

TEST_F(Serve, ServesThePageAndItsAssetsFromTheBinary) {
  auto c = Client();
  auto page = c.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("<script src=\"/app.js\">"), std::string::npos);
  EXPECT_EQ(page->body.find("http://"), std::string::npos) << "no CDN";
  EXPECT_EQ(page->body.find("https://"), std::string::npos) << "no CDN";
  for (const char* p : {"/app.js", "/style.css", "/index.html"}) {
    auto r = c.Get(p);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << p;
    EXPECT_GT(r->body.size(), 500u) << p;
  }
  EXPECT_EQ(c.Get("/app.js")->get_header_value("Content-Type").rfind("text/javascript", 0), 0u);
}

TEST_F(Serve, NoPathOutsideWebIsServed) {
  auto c = Client();
  for (const char* p : {"/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc%2fpasswd", "/etc/passwd",
                        "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "//etc/passwd", "/web/../../etc/passwd",
                        "/app.js/../../cfg.json", "/cfg.json", "/sae.safetensors"}) {
    auto r = c.Get(p);
    ASSERT_TRUE(r) << p;
    EXPECT_EQ(r->status, 404) << p;
    EXPECT_EQ(r->body.find("root:"), std::string::npos) << p;
  }
}

TEST_F(Serve, InfoFeatureAndSearch) {
  json info = Get("/api/info");
  EXPECT_EQ(info["latents"], 64);
  EXPECT_EQ(info["layer"], 2);
  EXPECT_EQ(info["features"], true);
  json d = Get("/api/feature?latent=7");
  EXPECT_EQ(d["latent"], 7);
  int64_t sum = 0;
  for (auto& c : d["hist"]) sum += c.get<int64_t>();
  EXPECT_EQ(sum, d["count"].get<int64_t>());
  EXPECT_EQ(d["hist_edges"].size(), d["hist"].size() + 1);
  ASSERT_FALSE(d["top"].empty());
  json e = Get("/api/feature?latent=64", 404);
  EXPECT_EQ(e["field"], "latent");
  e = Get("/api/feature?latent=abc", 400);
  EXPECT_EQ(e["field"], "latent");
  std::string piece = d["top"][0]["tokens"][d["top"][0]["center"].get<int>()];
  json s = Get("/api/search?q=" + UrlEncode(piece) + "&limit=64");
  bool found = false;
  for (auto& h : s["results"]) found = found || h["latent"] == 7;
  EXPECT_TRUE(found) << piece;
  EXPECT_EQ(Get("/api/search?q=", 400)["field"], "q");
}

TEST_F(Serve, ActivationsEscapeMarkupAndMatchTheModel) {
  json r = Post("/api/activations", {{"text", "Tom said <script>alert(1)</script> & left"}, {"latent", 3}});
  ASSERT_TRUE(r.contains("tokens"));
  std::string joined;
  for (auto& t : r["tokens"]) joined += t["piece"].get<std::string>();
  EXPECT_NE(joined.find("<script>"), std::string::npos) << joined;  // the text comes back as it was
  EXPECT_EQ(r["acts"].size(), r["tokens"].size());
  EXPECT_EQ(r["latent"], 3);
  // ... but the raw body never holds markup characters.
  auto raw = Client().Post("/api/activations", json{{"text", "<script>x</script>"}}.dump(), "application/json");
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->body.find('<'), std::string::npos) << raw->body;
  EXPECT_EQ(raw->body.find('>'), std::string::npos);
  EXPECT_NE(raw->body.find("\\u003c"), std::string::npos);
  // Each token's top latents are sorted and at most k.
  for (auto& t : r["tokens"]) {
    EXPECT_LE(t["top"].size(), 8u);
    for (size_t i = 1; i < t["top"].size(); ++i)
      EXPECT_GE(t["top"][i - 1][1].get<double>(), t["top"][i][1].get<double>());
  }
}

TEST_F(Serve, GenerateGivesBothColumnsWithTheSameSeed) {
  json body = {{"prompt", "Once upon a time"}, {"steps", 40}, {"seed", 9}, {"steer", {{{"latent", 5}, {"scale", 0}}}}};
  json r = Post("/api/generate", body);
  EXPECT_EQ(r["steered"]["tokens"], r["unsteered"]["tokens"]) << "scale 0 is the unsteered text";
  EXPECT_EQ(r["seed"], 9);
  body["steer"] = {{{"latent", 5}, {"scale", 40}}};
  r = Post("/api/generate", body);
  EXPECT_NE(r["steered"]["tokens"], r["unsteered"]["tokens"]);
  // The unsteered column is the same whatever the steering: same seed.
  json again = Post("/api/generate", {{"prompt", "Once upon a time"}, {"steps", 40}, {"seed", 9}});
  EXPECT_EQ(again["unsteered"]["tokens"], r["unsteered"]["tokens"]);
  body["mode"] = "clamp";
  body["steer"] = {{{"latent", 5}, {"scale", 2}}};
  r = Post("/api/generate", body);
  EXPECT_EQ(r["mode"], "clamp");
  EXPECT_EQ(Post("/api/generate", {{"steps", 100000}}, 400)["field"], "steps");
  EXPECT_EQ(Post("/api/generate", {{"steer", {{{"latent", 999}, {"scale", 1}}}}}, 404)["field"], "steer");
  EXPECT_EQ(Post("/api/generate", {{"steer", "5:1"}}, 400)["field"], "steer");
  EXPECT_EQ(Post("/api/generate", {{"mode", "multiply"}}, 400)["field"], "mode");
  EXPECT_EQ(Post("/api/generate", {{"seed", "x"}}, 400)["field"], "seed");
}

TEST_F(Serve, ConceptsRankWithTheContrastSet) {
  json r = Post("/api/concepts", {{"texts", {"Lily ran to her mom.", "Tom saw his mom."}},
                                  {"contrast", {"The sun was warm.", "The bird sang."}},
                                  {"top", 5}});
  ASSERT_TRUE(r.contains("hits"));
  EXPECT_LE(r["hits"].size(), 5u);
  EXPECT_EQ(r["contrast_count"], 2);
  for (auto& h : r["hits"]) EXPECT_EQ(h["heat"].size(), 2u);
  r = Post("/api/concepts", {{"texts", {"Lily ran to her mom."}}});
  EXPECT_GT(r["contrast_count"].get<int64_t>(), 0) << "default contrast: the model's own samples";
  EXPECT_EQ(Post("/api/concepts", {{"texts", json::array()}}, 400)["field"], "texts");
  EXPECT_EQ(Post("/api/concepts", {{"texts", {1, 2}}}, 400)["field"], "texts");
  EXPECT_EQ(Post("/api/concepts", {{"texts", {"a"}}, {"threshold", 5}}, 400)["field"], "threshold");
  std::vector<std::string> many(65, "the mom");
  EXPECT_EQ(Post("/api/concepts", {{"texts", many}}, 413)["field"], "texts");
}

TEST_F(Serve, MalformedAndOversizedRequestsGetJson4xx) {
  auto c = Client();
  auto r = c.Post("/api/activations", "{not json", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  json j = json::parse(r->body);
  EXPECT_EQ(j["field"], "body");
  EXPECT_FALSE(j["error"].get<std::string>().empty());
  r = c.Post("/api/activations", "[1,2]", "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(Post("/api/activations", {{"text", 5}}, 400)["field"], "text");
  EXPECT_EQ(Post("/api/activations", {{"text", "hi"}, {"latent", 64}}, 404)["field"], "latent");
  std::string huge = json{{"text", std::string(70000, 'a')}}.dump();
  r = c.Post("/api/activations", huge, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_TRUE(json::parse(r->body, nullptr, false).contains("error")) << r->body;
  // Text longer than the model's context (but under the body limit).
  std::string longtext;
  for (int i = 0; i < 600; ++i) longtext += " mom";
  EXPECT_EQ(Post("/api/activations", {{"text", longtext}}, 400)["field"], "text");
  r = c.Get("/api/nothing");
  EXPECT_EQ(r->status, 404);
  EXPECT_TRUE(json::parse(r->body, nullptr, false).contains("error"));
}

TEST_F(Serve, ConcurrentClientsGetTheSameAnswersAsOne) {
  const json body = {{"text", "Once upon a time there was a little girl named Lily."}, {"latent", 2}};
  const json want = Post("/api/activations", body);
  const json gen_body = {{"prompt", "Lily"}, {"steps", 30}, {"seed", 4}, {"steer", {{{"latent", 1}, {"scale", 8}}}}};
  const json gen_want = Post("/api/generate", gen_body);
  std::atomic<int> same{0}, total{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t)
    ts.emplace_back([&, t] {
      auto c = Client();
      for (int i = 0; i < 6; ++i) {
        const bool gen = (t + i) % 3 == 0;
        auto r = gen ? c.Post("/api/generate", gen_body.dump(), "application/json")
                     : c.Post("/api/activations", body.dump(), "application/json");
        ++total;
        if (r && r->status == 200 && json::parse(r->body) == (gen ? gen_want : want)) ++same;
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(same.load(), total.load());
}

TEST_F(Serve, OffLoopbackNeedsATokenAndTheApiChecksIt) {
  ServeProcess open(
      {Bin("sae"), "serve", "--model", model_, "--sae", (dir_ / "sae").string(), "--listen", "0.0.0.0:0"});
  EXPECT_NE(open.Wait(), 0);
  // A port in use is an error, not a second listener on it.
  ServeProcess twice({Bin("sae"), "serve", "--model", model_, "--sae", (dir_ / "sae").string(), "--listen",
                      "127.0.0.1:" + std::to_string(server_->port())});
  EXPECT_NE(twice.Wait(), 0);
  const std::string tf = (dir_ / "token").string();
  WriteAll(tf, "s3cret-token-0123456789\n");
  ServeProcess auth({Bin("sae"), "serve", "--model", model_, "--sae", (dir_ / "sae").string(), "--listen",
                     "127.0.0.1:0", "--token-file", tf});
  ASSERT_GT(auth.port(), 0) << auth.first_line();
  httplib::Client c("127.0.0.1", auth.port());
  auto r = c.Get("/api/info");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(json::parse(r->body)["field"], "Authorization");
  r = c.Get("/api/info", {{"Authorization", "Bearer wrong-token-0123456789"}});
  EXPECT_EQ(r->status, 401);
  r = c.Get("/api/info", {{"Authorization", "Bearer s3cret-token-0123456789"}});
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(c.Get("/")->status, 200) << "the page itself holds no data";
}

}  // namespace
