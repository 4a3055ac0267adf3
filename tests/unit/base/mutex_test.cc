// sae::Mutex / MutexLock / CondVar (core/base/mutex.h): they exclude and wait
// as absl's do, and in the TSan build (scripts/sanitizers.sh tsan runs
// test_base) TSan sees their locking: every counter and queue here is a
// plain field shared by threads, so a missing or wrong annotation (a lock, an
// unlock or a wait TSan does not see) is reported as a data race and fails
// the test.
#include "core/base/mutex.h"

#include <gtest/gtest.h>

#include <deque>
#include <thread>
#include <vector>

namespace sae {
namespace {

TEST(Mutex, MutexLockExcludesOtherThreads) {
  Mutex mu;
  long counter = 0;  // guarded by mu
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        MutexLock l(&mu);
        ++counter;
      }
    });
  }
  for (auto& t : threads) t.join();
  MutexLock l(&mu);
  EXPECT_EQ(counter, 80000);
}

TEST(Mutex, LockAndUnlockExcludeOtherThreads) {
  Mutex mu;
  long counter = 0;
  std::thread other([&] {
    for (int i = 0; i < 20000; ++i) {
      mu.Lock();
      ++counter;
      mu.Unlock();
    }
  });
  for (int i = 0; i < 20000; ++i) {
    mu.Lock();
    counter += 2;
    mu.Unlock();
  }
  other.join();
  EXPECT_EQ(counter, 60000);
}

struct Queue {
  Mutex mu;
  CondVar cv;
  std::deque<int> items ABSL_GUARDED_BY(mu);
  bool done ABSL_GUARDED_BY(mu) = false;
  bool HasItemOrDone() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done || !items.empty(); }
};

// The consumer reads what the producer wrote under the lock after each kind
// of wait: TSan must see each wait's unlock and re-lock for this to be clean.
TEST(Mutex, AwaitSeesWritesMadeWhileWaiting) {
  Queue q;
  long sum = 0;
  std::thread consumer([&] {
    q.mu.Lock();
    while (true) {
      q.mu.Await(absl::Condition(&q, &Queue::HasItemOrDone));
      while (!q.items.empty()) {
        sum += q.items.front();
        q.items.pop_front();
      }
      if (q.done) break;
    }
    q.mu.Unlock();
  });
  for (int i = 1; i <= 1000; ++i) {
    MutexLock l(&q.mu);
    q.items.push_back(i);
  }
  {
    MutexLock l(&q.mu);
    q.done = true;
  }
  consumer.join();
  EXPECT_EQ(sum, 1000 * 1001 / 2);
}

TEST(Mutex, AwaitWithTimeoutReturnsWhetherTheConditionHolds) {
  Queue q;
  MutexLock l(&q.mu);
  EXPECT_FALSE(q.mu.AwaitWithTimeout(absl::Condition(&q, &Queue::HasItemOrDone), absl::Milliseconds(20)));
  q.items.push_back(1);
  EXPECT_TRUE(q.mu.AwaitWithTimeout(absl::Condition(&q, &Queue::HasItemOrDone), absl::Milliseconds(20)));
}

TEST(Mutex, AwaitWithTimeoutSeesWritesOfAnotherThread) {
  Queue q;
  std::vector<int> seen;  // written by the consumer only, read after join
  std::thread consumer([&] {
    MutexLock l(&q.mu);
    while (true) {
      q.mu.AwaitWithTimeout(absl::Condition(&q, &Queue::HasItemOrDone), absl::Milliseconds(1));
      while (!q.items.empty()) {
        seen.push_back(q.items.front());
        q.items.pop_front();
      }
      if (q.done) break;
    }
  });
  for (int i = 0; i < 500; ++i) {
    MutexLock l(&q.mu);
    q.items.push_back(i);
  }
  {
    MutexLock l(&q.mu);
    q.done = true;
  }
  consumer.join();
  ASSERT_EQ(seen.size(), 500u);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(seen[i], i);
}

TEST(Mutex, MutexLockWithAConditionWaitsForIt) {
  Queue q;
  int got = -1;
  std::thread consumer([&] {
    MutexLock l(&q.mu, absl::Condition(&q, &Queue::HasItemOrDone));
    got = q.items.front();
    q.items.pop_front();
  });
  {
    MutexLock l(&q.mu);
    q.items.push_back(42);
  }
  consumer.join();
  EXPECT_EQ(got, 42);
  MutexLock l(&q.mu);
  EXPECT_TRUE(q.items.empty());
}

TEST(Mutex, CondVarWaitsSeeWritesOfTheSignallingThread) {
  Queue q;
  long sum = 0;
  std::thread consumer([&] {
    MutexLock l(&q.mu);
    int round = 0;
    while (true) {
      // Each kind of wait in turn.
      while (!q.HasItemOrDone()) {
        switch (round++ % 3) {
          case 0: q.cv.Wait(&q.mu); break;
          case 1: q.cv.WaitWithTimeout(&q.mu, absl::Milliseconds(1)); break;
          default: q.cv.WaitWithDeadline(&q.mu, absl::Now() + absl::Milliseconds(1)); break;
        }
      }
      while (!q.items.empty()) {
        sum += q.items.front();
        q.items.pop_front();
      }
      if (q.done) break;
    }
  });
  for (int i = 1; i <= 1000; ++i) {
    MutexLock l(&q.mu);
    q.items.push_back(i);
    if (i % 2) {
      q.cv.Signal();
    } else {
      q.cv.SignalAll();
    }
  }
  {
    MutexLock l(&q.mu);
    q.done = true;
    q.cv.SignalAll();
  }
  consumer.join();
  EXPECT_EQ(sum, 1000 * 1001 / 2);
}

TEST(Mutex, CondVarTimedWaitsReportATimeout) {
  Mutex mu;
  CondVar cv;
  MutexLock l(&mu);
  EXPECT_TRUE(cv.WaitWithTimeout(&mu, absl::Milliseconds(5)));
  EXPECT_TRUE(cv.WaitWithDeadline(&mu, absl::Now() + absl::Milliseconds(5)));
}

}  // namespace
}  // namespace sae
