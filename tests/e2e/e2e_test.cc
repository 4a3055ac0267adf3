// The web page in a real browser: `sae serve` on a free loopback port and
// tests/e2e/serve_e2e.mjs driving headless Chromium through playwright-core
// (installed by scripts/setup.sh). Screenshots go to build/e2e/.
#include <gtest/gtest.h>

#include "tests/integration/interp_test_util.h"

namespace {

TEST(E2e, ThePageWorksInHeadlessChromium) {
  const std::string src = std::getenv("SAE_SOURCE_DIR") ? std::getenv("SAE_SOURCE_DIR") : ".";
  const std::string model = StoriesDir();
  if (!fs::exists(model + "/stories260K.bin")) GTEST_SKIP() << "stories260K not found at " << model;
  if (!fs::exists("/usr/bin/chromium")) GTEST_SKIP() << "Debian chromium is not installed";
  if (!fs::exists(src + "/tests/e2e/node_modules/playwright-core/package.json"))
    GTEST_SKIP() << "playwright-core is not installed (scripts/setup.sh runs npm install in tests/e2e)";
  if (Sh("node --version").code != 0) GTEST_SKIP() << "node is not installed";
  const fs::path dir = fs::path(::testing::TempDir()) / ("e2e_" + std::to_string(getpid()));
  fs::remove_all(dir);
  WriteTiedSae(dir / "sae", 64, 64, 8, 2);
  auto r = Sh(Bin("sae") + " features build --model " + model + " --sae " + (dir / "sae").string() +
              " --tokens 1500 --context 64 --batch 4 --quiet");
  ASSERT_EQ(r.code, 0) << r.out;
  ServeProcess serve(
      {Bin("sae"), "serve", "--model", model, "--sae", (dir / "sae").string(), "--listen", "127.0.0.1:0"});
  ASSERT_GT(serve.port(), 0) << serve.first_line();
  const std::string shots = std::string(SAE_E2E_OUT);
  r = Sh("node " + src + "/tests/e2e/serve_e2e.mjs http://127.0.0.1:" + std::to_string(serve.port()) + "/ " + shots);
  EXPECT_EQ(r.code, 0) << r.out;
  std::cout << r.out;
  for (const char* p : {"live.png", "features.png", "steering.png", "concepts.png"})
    EXPECT_TRUE(fs::exists(fs::path(shots) / p)) << p;
  fs::remove_all(dir);
}

}  // namespace
