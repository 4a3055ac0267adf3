// TrainingMetrics served over HTTP: the contract names with their labels,
// values as recorded, text that promtool accepts.
#include "core/telemetry/metrics.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace sae {
namespace {

// GET http://address/path; returns the whole response ("" on failure).
std::string HttpGet(const std::string& address, const std::string& path) {
  const size_t colon = address.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &a.sin_addr);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
  send(fd, req.data(), req.size(), 0);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

TEST(TrainingMetrics, ServesContractNamesAndRecordedValues) {
  MetricLabels l;
  l.job = "j1";
  l.sae = "s1";
  l.rank = "3";
  l.remedy = "ghost_grads";
  auto m = TrainingMetrics::Start("127.0.0.1:0", l);
  ASSERT_TRUE(m.ok()) << m.status();
  StepSample s;
  s.tokens = 4096;
  s.k = 64;
  s.fvu = 0.25;
  s.mse = 0.125;
  s.l0 = 63.5;
  s.dead_ratio = 0.0625;
  s.aux_loss = 0.5;
  s.step_seconds = 0.3;
  s.allreduce_seconds = 0.01;
  s.data_wait_seconds = 0.002;
  s.screen_fallback_rows = 3;
  s.screen_candidates = 135;
  (*m)->Record(s);
  (*m)->Record(s);
  const std::string resp = HttpGet((*m)->address(), "/metrics");
  ASSERT_NE(resp.find("200 OK"), std::string::npos) << resp;
  const std::string lab = "job=\"j1\",rank=\"3\",role=\"worker\",sae=\"s1\"";
  for (const std::string& want : std::vector<std::string>{
           "sae_tokens_total{" + lab + "} 8192", "sae_train_steps_total{" + lab + "} 2", "sae_k{" + lab + "} 64",
           "sae_fraction_variance_unexplained{" + lab + "} 0.25", "sae_reconstruction_mse{" + lab + "} 0.125",
           "sae_l0{" + lab + "} 63.5", "sae_dead_latents_ratio{" + lab + "} 0.0625",
           std::string(
               "sae_auxiliary_loss{job=\"j1\",rank=\"3\",remedy=\"ghost_grads\",role=\"worker\",sae=\"s1\"} 0.5"),
           "sae_data_wait_seconds_total{" + lab + "} 0.004", "sae_step_duration_seconds_count{" + lab + "} 2",
           "sae_allreduce_duration_seconds_count{" + lab + "} 2", "sae_screen_fallback_rows_total{" + lab + "} 6",
           "sae_screen_candidates{" + lab + "} 135", "sae_build_info{blas=\"", "blas_core_source=\""})
    EXPECT_NE(resp.find(want), std::string::npos) << want << "\n" << resp;
  EXPECT_NE(HttpGet((*m)->address(), "/other").find("404"), std::string::npos);

  // promtool (Debian's prometheus package) accepts the exposition.
  const std::string body = resp.substr(resp.find("\r\n\r\n") + 4);
  const std::string path = ::testing::TempDir() + "/metrics.txt";
  std::ofstream(path) << body;
  const int rc = std::system(("promtool check metrics < " + path).c_str());
  EXPECT_EQ(rc, 0);
}

TEST(TrainingMetrics, BadListenAddressesAreErrors) {
  EXPECT_FALSE(TrainingMetrics::Start("nonsense", {}).ok());
  EXPECT_FALSE(TrainingMetrics::Start("127.0.0.1:99999", {}).ok());
  EXPECT_FALSE(TrainingMetrics::Start("not-an-ip:9000", {}).ok());
  auto first = TrainingMetrics::Start("127.0.0.1:0", {});
  ASSERT_TRUE(first.ok());
  auto taken = TrainingMetrics::Start((*first)->address(), {});  // port in use
  ASSERT_FALSE(taken.ok());
  EXPECT_NE(std::string(taken.status().message()).find("cannot listen"), std::string::npos);
}

}  // namespace
}  // namespace sae
