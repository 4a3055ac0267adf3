// The fixture of the service tests (service_test.cc, drills_test.cc): a
// real sae-coordinator, real sae-worker processes and the `sae` client on
// loopback, ephemeral ports, a temporary directory per test; every wait is
// bounded and every process is killed at the end.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <sstream>

#include <poll.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <set>
#include <thread>
#include <vector>

#include "client/client.h"
#include "sae/v1/job.grpc.pb.h"
#include "sae/v1/worker.grpc.pb.h"
#include "tests/integration/test_util.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// SAE_TEST_TIME_SCALE (3 in sanitized builds, 1 otherwise): every deadline
// of these tests is multiplied by it, since a sanitized process runs 2-15x
// slower. Deadlines only: no test sleeps longer for it.
int TimeScale() {
  const char* s = std::getenv("SAE_TEST_TIME_SCALE");
  return s != nullptr && std::atoi(s) > 1 ? std::atoi(s) : 1;
}

// `seconds` (times TimeScale) from now.
Clock::time_point DeadlineIn(int seconds) { return Clock::now() + std::chrono::seconds(seconds * TimeScale()); }

int64_t Num(const json& j, const char* key) {
  if (!j.contains(key)) return 0;
  const json& v = j[key];
  if (v.is_string()) return std::stoll(v.get<std::string>());
  if (v.is_number()) return v.get<int64_t>();
  return 0;
}

// Num of j["progress"][key], for a const j that may lack "progress" (const
// operator[] on a missing key is undefined behaviour; TSan saw it as a
// use-after-free when a job's status came back empty).
int64_t Prog(const json& j, const char* key) {
  auto it = j.find("progress");
  return it == j.end() ? 0 : Num(*it, key);
}

// A child process whose output goes to a log file; killed at destruction.
struct Proc {
  pid_t pid = -1;
  std::string log;
  void Kill(int sig) {
    if (pid > 0) {
      ::kill(pid, sig);
      int st;
      ::waitpid(pid, &st, 0);
      pid = -1;
    }
  }
};

// A TCP relay on 127.0.0.1 to `upstream` (HOST:PORT) that holds each new
// connection for `delay` before it connects it through; then bytes flow
// unchanged both ways. To a client this is a coordinator on a loaded
// machine, whose HTTP/2 handshake (the SETTINGS frame) comes seconds late.
class SlowProxy {
 public:
  SlowProxy(const std::string& upstream, std::chrono::milliseconds delay) : delay_(delay) {
    const size_t colon = upstream.rfind(':');
    up_.sin_family = AF_INET;
    up_.sin_port = htons(static_cast<uint16_t>(std::stoi(upstream.substr(colon + 1))));
    ::inet_pton(AF_INET, upstream.substr(0, colon).c_str(), &up_.sin_addr);
    lfd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
        ::getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len) != 0 || ::listen(lfd_, 64) != 0)
      ADD_FAILURE() << "proxy: cannot listen";
    address_ = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
    acceptor_ = std::thread([this] { Accept(); });
  }
  ~SlowProxy() {
    stop_ = true;
    acceptor_.join();  // the only thread that adds relays
    for (auto& t : relays_) t.join();
    ::close(lfd_);
  }
  const std::string& address() const { return address_; }
  int connections() const { return connections_.load(); }

 private:
  void Accept() {
    while (!stop_) {
      pollfd p{lfd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int c = ::accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      ++connections_;
      relays_.emplace_back([this, c] { Relay(c); });
    }
  }
  void Relay(int c) {
    const auto until = Clock::now() + delay_;
    while (!stop_ && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const int u = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (!stop_ && ::connect(u, reinterpret_cast<const sockaddr*>(&up_), sizeof(up_)) == 0) {
      char buf[16384];
      while (!stop_) {
        pollfd p[2] = {{c, POLLIN, 0}, {u, POLLIN, 0}};
        if (::poll(p, 2, 50) <= 0) continue;
        bool closed = false;
        for (int i = 0; i < 2 && !closed; ++i) {
          if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          const ssize_t n = ::recv(p[i].fd, buf, sizeof(buf), 0);
          closed = n <= 0;
          for (ssize_t off = 0; !closed && off < n;) {
            const ssize_t w = ::send(p[1 - i].fd, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
            closed = w <= 0;
            off += w;
          }
        }
        if (closed) break;
      }
    }
    ::close(u);
    ::close(c);
  }

  std::chrono::milliseconds delay_;
  sockaddr_in up_{};
  int lfd_ = -1;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::thread acceptor_;
  std::vector<std::thread> relays_;
};

class Service : public ::testing::Test {
 protected:
  void TearDown() override {
    for (auto& p : procs_) p.Kill(SIGKILL);
    if (HasFailure()) {
      for (auto& p : procs_) std::cerr << "---- " << p.log << "\n" << ReadAll(p.log).substr(0, 20000) << "\n";
    }
  }

  Proc& Spawn(const std::vector<std::string>& args, const std::string& name) {
    Proc p;
    p.log = (dir_ / (name + ".log")).string();
    const pid_t pid = ::fork();
    if (pid == 0) {
      const int fd = ::open(p.log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    p.pid = pid;
    procs_.push_back(p);
    return procs_.back();
  }

  // Starts sae-coordinator with `extra` flags; waits for its ready file.
  Proc& StartCoordinator(const std::vector<std::string>& extra, const std::string& listen = "127.0.0.1:0") {
    const fs::path ready = dir_ / "ready.json";
    fs::remove(ready);
    std::vector<std::string> args = {Bin("sae-coordinator"),
                                     "--listen",
                                     listen,
                                     "--metrics-listen",
                                     "127.0.0.1:0",
                                     "--db",
                                     (dir_ / "coord.db").string(),
                                     "--ready-file",
                                     ready.string(),
                                     "--lease-seconds",
                                     "3",
                                     "--heartbeat-seconds",
                                     "0.5"};
    args.insert(args.end(), extra.begin(), extra.end());
    Proc& p = Spawn(args, "coordinator" + std::to_string(procs_.size()));
    const auto deadline = DeadlineIn(20);
    while (!fs::exists(ready) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(fs::exists(ready)) << ReadAll(p.log);
    if (fs::exists(ready)) {
      json j = json::parse(ReadAll(ready));
      addr_ = j["listen"];
      metrics_ = j["metrics"];
    }
    return p;
  }

  Proc& StartWorker(const std::string& id, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {Bin("sae-worker"),  "--coordinator", addr_, "--worker-id", id,
                                     "--metrics-listen", "127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Spawn(args, "worker-" + id);
  }

  Result Sae(const std::string& args) { return Sh(Bin("sae") + " " + args + " --coordinator " + addr_); }

  json Status(const std::string& id) {
    Result r = Sae("status " + id + " --json");
    if (r.code != 0) return json::object();
    auto j = json::parse(r.out, nullptr, false);
    return j.is_discarded() ? json::object() : j;
  }

  // Polls until pred(status) holds; returns the last status. The deadline
  // is `seconds` times SAE_TEST_TIME_SCALE (3 in sanitized builds: a job
  // trains 5-15x slower there).
  json WaitFor(const std::string& id, const std::function<bool(const json&)>& pred, int seconds) {
    seconds *= TimeScale();
    const auto deadline = Clock::now() + std::chrono::seconds(seconds);
    json j;
    while (Clock::now() < deadline) {
      j = Status(id);
      if (pred(j)) return j;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ADD_FAILURE() << "timed out after " << seconds << " s waiting on " << id << "; last: " << j.dump();
    return j;
  }
  static bool StateIs(const json& j, const std::string& s) { return j.value("state", "") == s; }
  static bool Terminal(const json& j) {
    const std::string s = j.value("state", "");
    return s == "SUCCEEDED" || s == "FAILED" || s == "CANCELLED";
  }

  std::string Submit(const std::string& yaml, const std::string& extra = "") {
    const fs::path f = dir_ / ("job" + std::to_string(++jobs_) + ".yaml");
    WriteAll(f, yaml);
    Result r = Sae("submit " + f.string() + " " + extra);
    EXPECT_EQ(r.code, 0) << r.out;
    const std::string id = r.out.substr(0, r.out.find('\n'));
    EXPECT_EQ(id.rfind("job-", 0), 0u) << r.out;
    return id;
  }

  // A synthetic job; `tokens` and `every` scale its length.
  std::string SynthJob(const std::string& out, int workers, int64_t tokens, int64_t every, const std::string& k = "8") {
    return "name: svc\ndata: {kind: synthetic, d_in: 64, latents: 256, k: 4, seed: 3}\n"
           "sae: {latents: 512, k: " +
           k +
           "}\n"
           "train: {tokens: " +
           std::to_string(tokens) + ", batch_tokens: 256, checkpoint_every_tokens: " + std::to_string(every) +
           ", log_every_steps: 5, threads: 1, lr: 0.002}\n"
           "world: {workers: " +
           std::to_string(workers) +
           ", timeout_seconds: 20}\n"
           "output: " +
           (dir_ / out).string() + "\n";
  }

  // GET http://<metrics>/path; the body ("" on any error). No curl needed.
  std::string HttpGet(const std::string& path) {
    const size_t colon = metrics_.rfind(':');
    if (colon == std::string::npos) return "";
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(std::stoi(metrics_.substr(colon + 1))));
    ::inet_pton(AF_INET, metrics_.substr(0, colon).c_str(), &a.sin_addr);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string resp;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
      const std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
      ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
      char buf[4096];
      ssize_t n;
      while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) resp.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    last_http_ok_ = resp.rfind("HTTP/1.1 200", 0) == 0;
    const size_t body = resp.find("\r\n\r\n");
    return body == std::string::npos ? "" : resp.substr(body + 4);
  }

  // A fresh directory per test (tests/testing), removed after a passing test.
  sae::testing::ScratchDir scratch_{"sae_svc"};
  fs::path dir_ = scratch_.fs_path();
  std::string addr_, metrics_;
  bool last_http_ok_ = false;
  std::deque<Proc> procs_;
  int jobs_ = 0;
};

}  // namespace
