// Failure drills against the built binaries on loopback: workers killed at
// start, mid-step and mid-checkpoint, a worker frozen past its lease, the
// coordinator killed while a job is RESTARTING, a rank of a 3-worker job
// lost, a disk that fills up during a checkpoint, a `sae` command started
// before its coordinator or without one. docs/reliability.md lists what each
// proves.
#include <poll.h>
#include <sys/mount.h>

#include <functional>
#include <random>

#include "tests/integration/service_fixture.h"

namespace {

// Every logged step once and in order, ending at the last step.
void ExpectCleanMetrics(const fs::path& run, int64_t last_step) {
  std::istringstream lines(ReadAll(run / "metrics.jsonl"));
  std::string line;
  int64_t prev = 0, n = 0;
  while (std::getline(lines, line)) {
    const int64_t step = json::parse(line)["step"].get<int64_t>();
    EXPECT_GT(step, prev) << run << " metrics.jsonl line " << n + 1 << ": step " << step << " after " << prev;
    prev = step;
    ++n;
  }
  EXPECT_EQ(prev, last_step) << run;
}

// Drill: a worker frozen (SIGSTOP) past its lease while training, resumed
// (SIGCONT) after the job restarted on another worker. The stale attempt
// must write nothing into the run directory (the attempt fence): the job
// succeeds, metrics.jsonl has each step once and in order, no stray
// .partial is left, and the frozen worker says why it stopped.
TEST_F(Service, FrozenWorkerPastItsLeaseWritesNothingAfterTheRestart) {
  Proc& coord = StartCoordinator({});
  Proc& w1 = StartWorker("w1");
  const int64_t total = 3000000, every = 40000;
  const std::string id = Submit(SynthJob("run", 1, total, every));
  json st = WaitFor(
      id, [&](const json& j) { return Prog(j, "checkpoint_step") > 0; }, 120);
  ASSERT_FALSE(Terminal(st)) << "the job finished before the freeze: make it longer";
  ::kill(w1.pid, SIGSTOP);
  st = WaitFor(
      id, [](const json& j) { return StateIs(j, "RESTARTING") || Terminal(j); }, 60);
  ASSERT_TRUE(StateIs(st, "RESTARTING")) << st.dump();
  StartWorker("w2");
  st = WaitFor(
      id, [](const json& j) { return StateIs(j, "RUNNING") && j.value("attempt", 0) >= 2; }, 60);
  // The old attempt wakes up in the middle of a step while it cannot reach
  // the coordinator (frozen too, for less than a lease): nothing tells it to
  // stop, and it trains on (without the fence, it finishes first and renames
  // the run directory away from under the new attempt).
  ::kill(coord.pid, SIGSTOP);
  ::kill(w1.pid, SIGCONT);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  ::kill(coord.pid, SIGCONT);
  st = WaitFor(id, Terminal, 240);
  ASSERT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
  EXPECT_FALSE(fs::exists(dir_ / "run.partial"));
  EXPECT_TRUE(fs::exists(dir_ / "run" / "summary.json"));
  EXPECT_FALSE(fs::exists(dir_ / "run" / "attempt"));
  ExpectCleanMetrics(dir_ / "run", (total + 255) / 256);
  // The stale attempt found the fence at its first write (a metrics line,
  // or the checkpoint a stop writes) and wrote nothing: without the fence it
  // writes a checkpoint and flips `latest` back to its own, older step.
  const auto deadline = DeadlineIn(20);
  std::string log;
  while (Clock::now() < deadline) {
    log = ReadAll(w1.log);
    if (log.find("stale attempt") != std::string::npos || log.find("checkpoint written") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_NE(log.find("stale attempt 1"), std::string::npos) << log;
  EXPECT_EQ(log.find("checkpoint written"), std::string::npos) << log;
}

// Three kills of the training worker: as the job is placed (before a step),
// at a random moment mid-run, and while a checkpoint is being written (its
// .tmp directory exists). Each time a new worker takes over; the job ends
// SUCCEEDED with the whole run, each step logged once.
TEST_F(Service, WorkersKilledAtStartMidStepAndMidCheckpoint) {
  StartCoordinator({});
  std::deque<Proc*> workers;
  workers.push_back(&StartWorker("w0"));
  const int64_t total = 3000000, every = 20000;
  const std::string id = Submit(SynthJob("run", 1, total, every));
  const fs::path ckpts = dir_ / "run.partial" / "checkpoints";
  std::mt19937 rng(7);
  for (int kill = 0; kill < 3; ++kill) {
    json st = WaitFor(
        id, [](const json& j) { return StateIs(j, "SCHEDULED") || StateIs(j, "RUNNING") || Terminal(j); }, 60);
    ASSERT_FALSE(Terminal(st)) << "finished before kill " << kill << ": make the job longer";
    if (kill == 1) {
      WaitFor(
          id, [](const json& j) { return Prog(j, "tokens") > 0 || Terminal(j); }, 60);
      std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 800));
    } else if (kill == 2) {
      const auto deadline = DeadlineIn(30);
      bool in_checkpoint = false;
      while (!in_checkpoint && Clock::now() < deadline) {
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(ckpts, ec)) in_checkpoint |= e.path().extension() == ".tmp";
        if (!in_checkpoint) std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      std::printf("kill 3 %s a checkpoint was being written\n", in_checkpoint ? "while" : "(timed out waiting) before");
    }
    workers.back()->Kill(SIGKILL);
    st = WaitFor(
        id, [](const json& j) { return StateIs(j, "RESTARTING") || Terminal(j); }, 60);
    ASSERT_TRUE(StateIs(st, "RESTARTING")) << st.dump();
    workers.push_back(&StartWorker("w" + std::to_string(kill + 1)));
  }
  json st = WaitFor(id, Terminal, 300);
  ASSERT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
  EXPECT_EQ(st.value("restarts", 0), 3);
  json summary = json::parse(ReadAll(dir_ / "run" / "summary.json"));
  EXPECT_EQ(summary["tokens"].get<int64_t>(), total);
  ExpectCleanMetrics(dir_ / "run", (total + 255) / 256);
  EXPECT_FALSE(fs::exists(dir_ / "run.partial"));
}

// The coordinator is killed while a job waits to restart: the restarted
// coordinator finds it RESTARTING in its database and places it on the
// next worker, which resumes from the checkpoint.
TEST_F(Service, CoordinatorKilledWhileAJobIsRestarting) {
  Proc* coord = &StartCoordinator({});
  const std::string listen = addr_;
  Proc& w1 = StartWorker("w1");
  const int64_t total = 3000000, every = 20000;
  const std::string id = Submit(SynthJob("run", 1, total, every));
  json st = WaitFor(
      id, [](const json& j) { return Prog(j, "checkpoint_step") > 0 || Terminal(j); }, 120);
  ASSERT_FALSE(Terminal(st));
  w1.Kill(SIGKILL);
  st = WaitFor(
      id, [](const json& j) { return StateIs(j, "RESTARTING") || Terminal(j); }, 60);
  ASSERT_TRUE(StateIs(st, "RESTARTING")) << st.dump();
  // Attempt 2 resumes from the newest checkpoint on disk. The coordinator's
  // checkpoint_tokens can lag it: the worker may die after writing a
  // checkpoint and before its next progress report (CI saw 360192 reported,
  // 380160 on disk). w1 is dead (Kill waits), so `latest` is final.
  const int64_t reported_ck = Num(st["progress"], "checkpoint_tokens");
  const std::string latest = ReadAll(dir_ / "run.partial" / "checkpoints" / "latest");
  ASSERT_EQ(latest.rfind("step-", 0), 0u) << latest;
  const int64_t ck = std::stoll(latest.substr(5)) * 256;  // one rank, batch_tokens 256
  EXPECT_LE(reported_ck, ck);
  EXPECT_GT(reported_ck, 0);
  const int64_t before = Num(st["progress"], "tokens_trained");  // by attempt 1
  coord->Kill(SIGKILL);
  coord = &StartCoordinator({}, listen);
  st = Status(id);
  EXPECT_TRUE(StateIs(st, "RESTARTING")) << st.dump();
  const auto t0 = Clock::now();
  StartWorker("w2");
  st = WaitFor(id, Terminal, 240);
  ASSERT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
  std::printf("finished %.1f s after the new worker started\n",
              std::chrono::duration<double>(Clock::now() - t0).count());
  EXPECT_EQ(st.value("restarts", 0), 1);
  // Attempt 2 trained from the checkpoint to the end, not from the start.
  EXPECT_EQ(Num(st["progress"], "tokens_trained"), before + total - ck) << "ck " << ck << ", before " << before;
  ExpectCleanMetrics(dir_ / "run", (total + 255) / 256);
}

// A 3-worker (gloo) job loses one rank: the others fail their collective
// naming it, the job restarts from its checkpoint on the two survivors and
// a replacement, and ends with the whole run.
TEST_F(Service, AThreeWorkerJobLosesOneRank) {
  StartCoordinator({});
  StartWorker("w1");
  StartWorker("w2");
  Proc& w3 = StartWorker("w3");
  const int64_t total = 3 * 256 * 1500, every = 3 * 256 * 50;
  std::string yaml = SynthJob("run", 3, total, every);
  yaml.replace(yaml.find("batch_tokens: 256"), 17, "batch_tokens: 768");
  const std::string id = Submit(yaml);
  json st = WaitFor(
      id, [](const json& j) { return Prog(j, "checkpoint_step") > 0 || Terminal(j); }, 120);
  ASSERT_FALSE(Terminal(st));
  ASSERT_EQ(st["workers"].size(), 3u);
  w3.Kill(SIGKILL);
  st = WaitFor(
      id, [](const json& j) { return StateIs(j, "RESTARTING") || Terminal(j); }, 60);
  ASSERT_TRUE(StateIs(st, "RESTARTING")) << st.dump();
  StartWorker("w4");
  st = WaitFor(id, Terminal, 300);
  ASSERT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
  json summary = json::parse(ReadAll(dir_ / "run" / "summary.json"));
  EXPECT_EQ(summary["tokens"].get<int64_t>(), total);
  ExpectCleanMetrics(dir_ / "run", total / 768);
}

// A network partition: w1 trains in a network namespace of its own (a veth
// pair to the coordinator), the link is cut mid-job, the job restarts on w2,
// and the link comes back while w1 still runs its old attempt. w1's attempt
// must not corrupt the restarted job: it finds the fence at its next write.
TEST_F(Service, APartitionedWorkerDoesNotCorruptTheRestartedJob) {
  const std::string tag = std::to_string(::getpid() % 100000);
  const std::string ns = "saens" + tag, host_if = "saeh" + tag, ns_if = "saen" + tag;
  const std::string net = "10.231." + std::to_string(::getpid() % 250) + ".";
  auto ip = [](const std::string& args) { return std::system(("ip " + args + " > /dev/null 2>&1").c_str()); };
  struct Cleanup {
    std::function<void()> f;
    ~Cleanup() { f(); }
  } cleanup{[&] {
    ip("link del " + host_if);
    ip("netns del " + ns);
  }};
  if (ip("netns add " + ns) != 0) GTEST_SKIP() << "cannot create a network namespace here (needs root and iproute2)";
  ASSERT_EQ(ip("link add " + host_if + " type veth peer name " + ns_if), 0);
  ASSERT_EQ(ip("link set " + ns_if + " netns " + ns), 0);
  ASSERT_EQ(ip("addr add " + net + "1/24 dev " + host_if), 0);
  ASSERT_EQ(ip("link set " + host_if + " up"), 0);
  ASSERT_EQ(ip("netns exec " + ns + " ip addr add " + net + "2/24 dev " + ns_if), 0);
  ASSERT_EQ(ip("netns exec " + ns + " ip link set " + ns_if + " up"), 0);
  ASSERT_EQ(ip("netns exec " + ns + " ip link set lo up"), 0);

  StartCoordinator({}, "0.0.0.0:0");
  const std::string port = addr_.substr(addr_.rfind(':') + 1);
  addr_ = "127.0.0.1:" + port;  // the client and w2 (this namespace)
  Proc& w1 = Spawn({"/usr/sbin/ip", "netns", "exec", ns, Bin("sae-worker"), "--coordinator", net + "1:" + port,
                    "--worker-id", "w1", "--advertise-host", net + "2"},
                   "worker-w1");
  const int64_t total = 3000000, every = 20000;
  const std::string id = Submit(SynthJob("run", 1, total, every));
  json st = WaitFor(
      id, [](const json& j) { return Prog(j, "checkpoint_step") > 0 || Terminal(j); }, 120);
  ASSERT_FALSE(Terminal(st)) << st.dump();
  ASSERT_EQ(st["workers"][0], "w1");
  ASSERT_EQ(ip("link set " + host_if + " down"), 0);  // the partition
  st = WaitFor(
      id, [](const json& j) { return StateIs(j, "RESTARTING") || Terminal(j); }, 60);
  ASSERT_TRUE(StateIs(st, "RESTARTING")) << st.dump();
  StartWorker("w2");
  WaitFor(
      id, [](const json& j) { return StateIs(j, "RUNNING") && j.value("attempt", 0) >= 2; }, 60);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // both attempts run, cut off from each other
  ASSERT_EQ(ip("link set " + host_if + " up"), 0);       // healed
  st = WaitFor(id, Terminal, 300);
  ASSERT_TRUE(StateIs(st, "SUCCEEDED")) << st.dump();
  ExpectCleanMetrics(dir_ / "run", (total + 255) / 256);
  EXPECT_FALSE(fs::exists(dir_ / "run.partial"));
  json summary = json::parse(ReadAll(dir_ / "run" / "summary.json"));
  EXPECT_EQ(summary["tokens"].get<int64_t>(), total);
  const auto deadline = DeadlineIn(20);
  while (Clock::now() < deadline && ReadAll(w1.log).find("stale attempt 1") == std::string::npos)
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_NE(ReadAll(w1.log).find("stale attempt 1"), std::string::npos) << ReadAll(w1.log);
}

// The disk fills up while a checkpoint is written (a small tmpfs the test
// mounts): the run fails naming the write, `latest` still names a complete
// checkpoint, and the run resumes from it once there is room.
TEST_F(Service, DiskFullDuringACheckpointKeepsThePreviousOne) {
  const fs::path mnt = dir_ / "small";
  fs::create_directories(mnt);
  // One checkpoint of this SAE is 0.8 MB (parameters and Adam moments of
  // 512 x 64): two fit in 2 MiB, a third (written before the oldest is
  // pruned) does not.
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=2m") != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno) << "): needs root";
  struct Unmount {
    fs::path p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{mnt};
  std::string yaml = SynthJob("unused", 1, 256 * 400, 256 * 20);
  yaml = yaml.substr(0, yaml.find("output: ")) + "output: " + (mnt / "run").string() + "\n";
  const fs::path job = dir_ / "job.yaml";
  WriteAll(job, yaml);
  Result r = Sh(Bin("sae") + " train " + job.string() + " --quiet");
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_FALSE(r.signaled);
  EXPECT_NE(r.out.find("No space left on device"), std::string::npos) << r.out;
  const fs::path ckpts = mnt / "run.partial" / "checkpoints";
  std::string latest = ReadAll(ckpts / "latest");
  latest.erase(latest.find_last_not_of("\n") + 1);
  ASSERT_FALSE(latest.empty()) << r.out;
  ASSERT_TRUE(fs::exists(ckpts / latest / "state.safetensors"));
  // Room again: move the run to a larger disk and resume it there.
  fs::copy(mnt / "run.partial", dir_ / "run.partial", fs::copy_options::recursive);
  Result resumed = Sh(Bin("sae") + " train " + job.string() + " --quiet --resume --output " + (dir_ / "run").string());
  ASSERT_EQ(resumed.code, 0) << resumed.out;
  json summary = json::parse(ReadAll(dir_ / "run" / "summary.json"));
  EXPECT_EQ(summary["tokens"].get<int64_t>(), 256 * 400);
}

// A TCP port on 127.0.0.1 nothing listens on (bound, then closed).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return -1;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

// Drill: no coordinator at the address. Each `sae` command that calls it
// fails after its --timeout (it waits for a connection until then, no
// longer) with an error that names the address, never a hang.
TEST_F(Service, AnAbsentCoordinatorIsAnErrorNamingItsAddressAfterTheTimeout) {
  const int port = FreePort();
  ASSERT_GT(port, 0);
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  const fs::path job = dir_ / "job.yaml";
  WriteAll(job, SynthJob("run", 1, 25600, 2560));
  for (const std::string& cmd :
       std::vector<std::string>{"jobs", "status job-1", "cancel job-1", "watch job-1", "submit " + job.string()}) {
    SCOPED_TRACE(cmd);
    const auto t0 = Clock::now();
    Result r = Sh(Bin("sae") + " " + cmd + " --timeout 2 --coordinator " + addr);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("coordinator " + addr + " unreachable: no connection within 2 s"), std::string::npos) << r.out;
    EXPECT_GE(s, 1.9) << "did not wait for its timeout: " << r.out;
    EXPECT_LT(s, 2 + 10.0 * TimeScale()) << r.out;  // the 2 s, plus the process's start and exit
  }
}

// Drill: `sae jobs` started while the coordinator's port accepts and drops
// connections (the TCP handshake of gRPC cut off: "failed to connect ...
// tcp handshaker shutdown", what a `sae submit` right after the coordinator
// came up once got at load 12), then the coordinator comes up on that port.
// The client must retry within its --timeout and succeed, not fail at once.
TEST_F(Service, AClientRetriesAFailedConnectWithinItsTimeout) {
  // Close-on-exec: the client (and the coordinator) must not inherit it.
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  ASSERT_EQ(::listen(lfd, 16), 0);
  const std::string addr = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  const int timeout = 60 * TimeScale();
  Proc& client =
      Spawn({Bin("sae"), "jobs", "--json", "--timeout", std::to_string(timeout), "--coordinator", addr}, "client");
  // Two connections accepted and closed at once: two failed connects. The
  // client must still be waiting after each.
  int st = 0;
  for (int i = 0; i < 2; ++i) {
    const auto until = DeadlineIn(30);
    pollfd p{lfd, POLLIN, 0};
    while (::poll(&p, 1, 100) == 0 && Clock::now() < until)
      ASSERT_EQ(::waitpid(client.pid, &st, WNOHANG), 0) << "the client gave up: " << ReadAll(client.log);
    ASSERT_TRUE(p.revents & POLLIN) << "the client never connected; " << ReadAll(client.log);
    const int c = ::accept(lfd, nullptr, nullptr);
    ASSERT_GE(c, 0);
    ::close(c);
  }
  ::close(lfd);
  StartCoordinator({}, addr);
  ASSERT_EQ(addr_, addr);
  const auto deadline = Clock::now() + std::chrono::seconds(timeout + 10);
  pid_t done = 0;
  while ((done = ::waitpid(client.pid, &st, WNOHANG)) == 0 && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(done, client.pid) << "the client did not finish: " << ReadAll(client.log);
  client.pid = -1;
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << ReadAll(client.log);
  EXPECT_NE(ReadAll(client.log).find('{'), std::string::npos) << ReadAll(client.log);
}

}  // namespace
