// sae::Mutex, sae::MutexLock and sae::CondVar: absl::Mutex and its scoped
// lock and condition variable, with the same lock annotations (clang's
// -Wthread-safety checks ABSL_GUARDED_BY against them, scripts/thread_safety.sh),
// that ThreadSanitizer can see. Use them instead of absl's in project code.
//
// Why: Debian's libabsl is not built with TSan, so absl::Mutex::Lock and
// Unlock are invisible to it, and in a TSan build every field an absl::Mutex
// guards is reported as a race. In TSan builds (-fsanitize=thread) each
// operation here tells TSan what it does with the __tsan_mutex_* annotations
// of <sanitizer/tsan_interface.h>; in every other build they are inline
// forwards to absl and cost nothing.
//
// A wait (Await, AwaitWithTimeout, CondVar::Wait*) is an unlock and a lock
// to TSan. absl evaluates an absl::Condition with the lock held, either on
// the waiting thread or on the thread that unlocks; both happen inside an
// annotated lock or unlock, where TSan ignores memory accesses, so a
// condition's reads are not checked (its writes must not exist: a condition
// is a pure function of guarded state).
//
// Defining SAE_NO_TSAN_MUTEX_ANNOTATIONS leaves the annotations out (to see
// the reports they prevent; docs/reliability.md, "TSan and absl::Mutex").
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#if defined(__SANITIZE_THREAD__)
#define SAE_TSAN_MUTEX_ANNOTATIONS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SAE_TSAN_MUTEX_ANNOTATIONS 1
#endif
#endif
#if defined(SAE_NO_TSAN_MUTEX_ANNOTATIONS)
#undef SAE_TSAN_MUTEX_ANNOTATIONS
#endif

#ifdef SAE_TSAN_MUTEX_ANNOTATIONS
#include <sanitizer/tsan_interface.h>
#endif

namespace sae {

namespace mutex_internal {
#ifdef SAE_TSAN_MUTEX_ANNOTATIONS
inline void Create(void* m) { __tsan_mutex_create(m, 0); }
inline void Destroy(void* m) { __tsan_mutex_destroy(m, 0); }
inline void PreLock(void* m) { __tsan_mutex_pre_lock(m, 0); }
inline void PostLock(void* m) { __tsan_mutex_post_lock(m, 0, 0); }
inline void PreUnlock(void* m) { __tsan_mutex_pre_unlock(m, 0); }
inline void PostUnlock(void* m) { __tsan_mutex_post_unlock(m, 0); }
inline void PreSignal(void* m) { __tsan_mutex_pre_signal(m, 0); }
inline void PostSignal(void* m) { __tsan_mutex_post_signal(m, 0); }
#else
inline void Create(void*) {}
inline void Destroy(void*) {}
inline void PreLock(void*) {}
inline void PostLock(void*) {}
inline void PreUnlock(void*) {}
inline void PostUnlock(void*) {}
inline void PreSignal(void*) {}
inline void PostSignal(void*) {}
#endif
}  // namespace mutex_internal

class CondVar;

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() { mutex_internal::Create(this); }
  ~Mutex() { mutex_internal::Destroy(this); }
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    mutex_internal::PreLock(this);
    mu_.Lock();
    mutex_internal::PostLock(this);
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    mutex_internal::PreUnlock(this);
    mu_.Unlock();
    mutex_internal::PostUnlock(this);
  }
  // Locks once `cond` holds.
  void LockWhen(const absl::Condition& cond) ABSL_EXCLUSIVE_LOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    mutex_internal::PreLock(this);
    mu_.LockWhen(cond);
    mutex_internal::PostLock(this);
  }
  // With the lock held: releases it until `cond` holds, then holds it again.
  void Await(const absl::Condition& cond) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    BeginWait();
    mu_.Await(cond);
    EndWait();
  }
  // As Await, for at most `timeout`; returns whether `cond` holds.
  bool AwaitWithTimeout(const absl::Condition& cond, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    BeginWait();
    const bool held = mu_.AwaitWithTimeout(cond, timeout);
    EndWait();
    return held;
  }
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() { mu_.AssertHeld(); }

 private:
  friend class CondVar;
  // A wait releases the lock (TSan: an unlock, its release) and takes it
  // again (a lock, whose acquire is at EndWait, after absl holds it).
  void BeginWait() {
    mutex_internal::PreUnlock(this);
    mutex_internal::PostUnlock(this);
    mutex_internal::PreLock(this);
  }
  void EndWait() { mutex_internal::PostLock(this); }

  absl::Mutex mu_;
};

// Holds `mu` for its scope (and, with a condition, locks once it holds).
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  MutexLock(Mutex* mu, const absl::Condition& cond) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->LockWhen(cond); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// absl::CondVar for sae::Mutex. The Wait* functions return as absl's do
// (WaitWithTimeout / WaitWithDeadline: true if the wait timed out).
class CondVar {
 public:
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    mu->BeginWait();
    cv_.Wait(&mu->mu_);
    mu->EndWait();
  }
  bool WaitWithTimeout(Mutex* mu, absl::Duration timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    mu->BeginWait();
    const bool timed_out = cv_.WaitWithTimeout(&mu->mu_, timeout);
    mu->EndWait();
    return timed_out;
  }
  bool WaitWithDeadline(Mutex* mu, absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    mu->BeginWait();
    const bool timed_out = cv_.WaitWithDeadline(&mu->mu_, deadline);
    mu->EndWait();
    return timed_out;
  }
  void Signal() {
    mutex_internal::PreSignal(this);
    cv_.Signal();
    mutex_internal::PostSignal(this);
  }
  void SignalAll() {
    mutex_internal::PreSignal(this);
    cv_.SignalAll();
    mutex_internal::PostSignal(this);
  }

 private:
  absl::CondVar cv_;
};

}  // namespace sae
