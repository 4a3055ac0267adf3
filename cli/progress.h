// Progress of a long command over tokens: a live bar on a TTY (redrawn at
// most 10 times a second: tokens, tokens/s, ETA), plain log lines on stderr
// otherwise (about every 10% or 10 s), numbers formatted as `sae train`
// prints them (core/base/human_format.h). Not thread-safe: one caller.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "core/base/clock.h"
#include "core/base/human_format.h"

namespace sae {

class TokenProgress {
 public:
  TokenProgress(std::string what, bool quiet = false, std::string unit = "tok")
      : what_(std::move(what)),
        unit_(std::move(unit)),
        quiet_(quiet),
        tty_(isatty(STDERR_FILENO) != 0),
        t0_(SteadyNow()) {}
  ~TokenProgress() { Finish(); }
  void Update(int64_t done, int64_t total) {
    if (quiet_ || total <= 0) return;
    const double now = SteadyNow(), secs = now - t0_;
    const double rate = secs > 0 ? done / secs : 0;
    const double frac = std::clamp(static_cast<double>(done) / total, 0.0, 1.0);
    const double eta = rate > 0 ? (total - done) / rate : NAN;
    char stats[200];
    std::snprintf(stats, sizeof(stats), "%s %s/%s %s  %s %s/s  ETA %s", what_.c_str(), HumanCount(done).c_str(),
                  HumanCount(total).c_str(), unit_.c_str(), HumanCount(rate).c_str(), unit_.c_str(),
                  HumanDuration(eta).c_str());
    if (tty_) {
      if (now - last_ < 0.1 && done < total) return;
      last_ = now;
      std::fprintf(stderr, "\r[%s] %3.0f%% %s\x1b[K", ProgressBar(frac, 24).c_str(), 100 * frac, stats);
      std::fflush(stderr);
      drawn_ = true;
    } else if (frac >= next_frac_ || now - last_ >= 10 || done >= total) {
      if (done >= total && logged_done_) return;
      logged_done_ = done >= total;
      last_ = now;
      next_frac_ = std::floor(frac * 10 + 1) / 10;
      std::fprintf(stderr, "%3.0f%% %s\n", 100 * frac, stats);
    }
  }
  void Finish() {
    if (drawn_) std::fprintf(stderr, "\n");
    drawn_ = false;
  }

 private:
  std::string what_, unit_;
  bool quiet_, tty_;
  double t0_, last_ = 0, next_frac_ = 0.1;
  bool drawn_ = false, logged_done_ = false;
};

}  // namespace sae
