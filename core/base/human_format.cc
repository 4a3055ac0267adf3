#include "core/base/human_format.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace sae {

std::string HumanCount(double v) {
  char buf[32];
  if (v >= 1e9)
    std::snprintf(buf, sizeof(buf), "%.2fG", v / 1e9);
  else if (v >= 1e6)
    std::snprintf(buf, sizeof(buf), "%.2fM", v / 1e6);
  else if (v >= 1e3)
    std::snprintf(buf, sizeof(buf), "%.1fk", v / 1e3);
  else
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  return buf;
}

std::string HumanDuration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long t = static_cast<long>(s);
  if (t >= 3600)
    std::snprintf(buf, sizeof(buf), "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof(buf), "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof(buf), "%lds", t);
  return buf;
}

std::string ProgressBar(double frac, int width) {
  const int filled = static_cast<int>(std::clamp(frac, 0.0, 1.0) * width);
  std::string bar(filled, '=');
  if (filled < width) bar += '>' + std::string(width - filled - 1, ' ');
  return bar;
}

std::string ProgressStats(double tokens, double total, double tok_s, double fvu, double dead_ratio, int64_t k) {
  const double eta = tok_s > 0 ? (total - tokens) / tok_s : NAN;
  char stats[256];
  std::snprintf(stats, sizeof(stats), "%s/%s tok  %s tok/s  fvu %.4f  dead %.2f%%  k %ld  ETA %s",
                HumanCount(tokens).c_str(), HumanCount(total).c_str(), HumanCount(tok_s).c_str(), fvu, 100 * dead_ratio,
                static_cast<long>(k), HumanDuration(eta).c_str());
  return stats;
}

}  // namespace sae
