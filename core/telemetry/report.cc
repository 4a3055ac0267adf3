#include "core/telemetry/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/base/file_util.h"

namespace sae {
namespace {

using json = nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Series {
  const char* field;  // metrics.jsonl key
  const char* id;     // svg id: plot-<id>
  const char* title;
  double ReportPoint::*member;
  bool log_ok;  // plotted on a log axis when positive and spanning > 2 decades
};

const Series kSeries[] = {
    {"fvu", "fvu", "Fraction of variance unexplained (FVU)", &ReportPoint::fvu, true},
    {"mse", "mse", "Reconstruction MSE", &ReportPoint::mse, true},
    {"dead_ratio", "dead_ratio", "Dead-latent ratio", &ReportPoint::dead_ratio, false},
    {"k", "k", "Current k (k schedule)", &ReportPoint::k, false},
    {"l0", "l0", "L0 (active latents per token)", &ReportPoint::l0, false},
    {"aux_loss", "aux_loss", "Auxiliary loss (dead-latent remedy)", &ReportPoint::aux_loss, true},
    {"tokens_per_second", "tokens_per_second", "Tokens per second", &ReportPoint::tokens_per_second, false},
};

std::string Num(double v) {
  char buf[64];
  const double a = std::fabs(v);
  if (a >= 1e9)
    std::snprintf(buf, sizeof(buf), "%.3gG", v / 1e9);
  else if (a >= 1e6)
    std::snprintf(buf, sizeof(buf), "%.3gM", v / 1e6);
  else if (a >= 1e4)
    std::snprintf(buf, sizeof(buf), "%.3gk", v / 1e3);
  else
    std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// Round tick positions covering [lo, hi] (about `n` of them).
std::vector<double> LinearTicks(double lo, double hi, int n) {
  const double raw = (hi - lo) / n;
  const double mag = std::pow(10, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) t.push_back(v);
  return t;
}

// One plot as inline SVG: y over tokens, x from the first to the last record.
std::string Plot(const Series& s, const std::vector<ReportPoint>& pts) {
  std::vector<std::pair<double, double>> xy;
  for (const ReportPoint& p : pts) {
    const double y = p.*s.member;
    if (std::isfinite(y)) xy.emplace_back(p.tokens, y);
  }
  std::ostringstream o;
  o << "<section class=\"plot\"><h2>" << s.title << "</h2>\n";
  if (xy.empty()) {
    o << "<p class=\"empty\">no " << s.field << " values in metrics.jsonl</p></section>\n";
    return o.str();
  }
  // Thousands of records are more than 640 pixels can show: keep every n-th.
  if (xy.size() > 2000) {
    const size_t every = (xy.size() + 1999) / 2000;
    std::vector<std::pair<double, double>> kept;
    for (size_t i = 0; i < xy.size(); i += every) kept.push_back(xy[i]);
    if (kept.back() != xy.back()) kept.push_back(xy.back());
    xy.swap(kept);
  }
  double x0 = xy.front().first, x1 = xy.front().first, y0 = xy.front().second, y1 = y0;
  for (const auto& [x, y] : xy) {
    x0 = std::min(x0, x);
    x1 = std::max(x1, x);
    y0 = std::min(y0, y);
    y1 = std::max(y1, y);
  }
  const bool log = s.log_ok && y0 > 0 && y1 / y0 > 100;
  auto ty = [&](double y) { return log ? std::log10(y) : y; };
  double a = ty(y0), b = ty(y1);
  if (b - a < 1e-12 * std::max(1.0, std::fabs(a))) {  // constant: centre it (0 sits on the bottom of 0..1)
    const double c = a;
    a = c == 0 ? 0 : c - 0.5 * std::fabs(c);
    b = c == 0 ? 1 : c + 0.5 * std::fabs(c);
  }
  if (!log && a > 0 && a < 0.25 * b) a = 0;  // start near-zero axes at zero
  if (x1 <= x0) x1 = x0 + 1;
  const double W = 640, H = 260, L = 70, R = 16, T = 10, B = 40;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double v) { return T + (b - v) / (b - a) * (H - T - B); };
  char buf[96];
  o << "<svg class=\"plot\" id=\"plot-" << s.id << "\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W
    << "\" height=\"" << H << "\" viewBox=\"0 0 " << W << " " << H << "\" role=\"img\" aria-label=\"" << s.title
    << " over tokens\">\n";
  o << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B
    << "\" class=\"frame\"/>\n";
  std::vector<double> yt;
  if (log) {
    for (double e = std::ceil(a); e <= std::floor(b); e += 1) yt.push_back(e);
  } else {
    yt = LinearTicks(a, b, 4);
  }
  for (double v : yt) {
    std::snprintf(buf, sizeof(buf), "%.1f", py(v));
    o << "<line class=\"grid\" x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << buf << "\" y2=\"" << buf
      << "\"/><text class=\"tick\" x=\"" << L - 6 << "\" y=\"" << buf << "\" text-anchor=\"end\" dy=\"0.35em\">"
      << (log ? Num(std::pow(10, v)) : Num(v)) << "</text>\n";
  }
  for (double v : LinearTicks(x0, x1, 5)) {
    std::snprintf(buf, sizeof(buf), "%.1f", px(v));
    o << "<line class=\"grid\" y1=\"" << T << "\" y2=\"" << H - B << "\" x1=\"" << buf << "\" x2=\"" << buf
      << "\"/><text class=\"tick\" y=\"" << H - B + 16 << "\" x=\"" << buf << "\" text-anchor=\"middle\">" << Num(v)
      << "</text>\n";
  }
  o << "<text class=\"axis\" x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 4
    << "\" text-anchor=\"middle\">tokens</text>\n";
  if (log) o << "<text class=\"axis\" x=\"" << L + 4 << "\" y=\"" << T + 12 << "\">log scale</text>\n";
  o << "<polyline class=\"series\" data-points=\"" << xy.size() << "\" points=\"";
  for (size_t i = 0; i < xy.size(); ++i) {
    std::snprintf(buf, sizeof(buf), "%s%.1f,%.1f", i ? " " : "", px(xy[i].first), py(ty(xy[i].second)));
    o << buf;
  }
  o << "\"/>\n";
  o << "<title>" << s.title << ": last " << Num(xy.back().second) << " at " << Num(xy.back().first)
    << " tokens</title>\n</svg>\n<p class=\"last\">last: " << Num(xy.back().second) << " at " << Num(xy.back().first)
    << " tokens (" << xy.size() << " records plotted)</p></section>\n";
  return o.str();
}

// The run's files: RUN_DIR itself, or RUN_DIR.partial while it trains.
std::string ResolveRunDir(const std::string& run_dir) {
  std::string d = run_dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  if (!PathExists(d + "/metrics.jsonl") && PathExists(d + ".partial/metrics.jsonl")) return d + ".partial";
  return d;
}

}  // namespace

absl::StatusOr<std::vector<ReportPoint>> ParseMetricsJsonl(const std::string& text, const std::string& path) {
  std::vector<ReportPoint> out;
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = absl::StrCat(path, ":", n);
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded())
      return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON: ", line.substr(0, 80)));
    if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not a JSON object"));
    auto it = j.find("tokens");
    if (it == j.end() || !it->is_number())
      return absl::InvalidArgumentError(absl::StrCat(where, ": field 'tokens' is missing or not a number"));
    ReportPoint p;
    p.tokens = it->get<double>();
    if (!out.empty() && p.tokens < out.back().tokens)
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tokens ", p.tokens, " is less than the line before (", out.back().tokens, ")"));
    for (const Series& s : kSeries) {
      auto f = j.find(s.field);
      if (f == j.end() || f->is_null()) {
        p.*s.member = kNaN;
      } else if (!f->is_number()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": field '", s.field, "' is not a number"));
      } else {
        p.*s.member = f->get<double>();
      }
    }
    out.push_back(p);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no records"));
  return out;
}

absl::StatusOr<std::string> RenderRunReport(const std::string& run_dir) {
  const std::string dir = ResolveRunDir(run_dir);
  const std::string metrics_path = dir + "/metrics.jsonl";
  if (!PathExists(metrics_path))
    return absl::NotFoundError(
        absl::StrCat(metrics_path, ": not found (is ", run_dir, " a training output directory?)"));
  SAE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(metrics_path));
  SAE_ASSIGN_OR_RETURN(std::vector<ReportPoint> pts, ParseMetricsJsonl(text, metrics_path));

  json summary;
  const std::string summary_path = dir + "/summary.json";
  if (PathExists(summary_path)) {
    SAE_ASSIGN_OR_RETURN(std::string s, ReadFileToString(summary_path));
    summary = json::parse(s, nullptr, false);
    if (summary.is_discarded() || !summary.is_object())
      return absl::InvalidArgumentError(absl::StrCat(summary_path, ": not a JSON object"));
  }
  std::string name = summary.is_object() && summary.contains("name") && summary["name"].is_string()
                         ? summary["name"].get<std::string>()
                         : run_dir;

  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>saeforge report: " << Escape(name)
    << "</title>\n<style>\n"
       "body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}\n"
       "h1{font-size:20px;margin:0 0 4px}h2{font-size:14px;margin:0 0 4px}\n"
       ".plots{display:flex;flex-wrap:wrap;gap:16px}.plot{flex:0 0 auto}\n"
       "svg .frame{fill:#fafafa;stroke:#bbb}svg .grid{stroke:#e4e4e4}svg .tick{font-size:11px;fill:#555}\n"
       "svg .axis{font-size:12px;fill:#333}svg .series{fill:none;stroke:#1f6fb2;stroke-width:1.6}\n"
       "table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:3px 8px;"
       "text-align:left;font-size:13px}.last,.empty,.note{font-size:12px;color:#555;margin:2px 0 0}\n"
       "</style></head>\n<body>\n<h1>saeforge training report: "
    << Escape(name) << "</h1>\n<p class=\"note\">" << Escape(dir) << ": " << pts.size() << " records of metrics.jsonl, "
    << Num(pts.front().tokens) << " to " << Num(pts.back().tokens) << " tokens";
  if (!summary.is_object()) o << "; no summary.json yet (the run has not finished)";
  o << "</p>\n";
  if (summary.is_object()) {
    o << "<table id=\"summary\"><tr><th>summary.json</th><th>value</th></tr>\n";
    for (const auto& [k, v] : summary.items())
      o << "<tr><td>" << Escape(k) << "</td><td>"
        << Escape(v.is_number_float() ? Num(v.get<double>())
                  : v.is_string()     ? v.get<std::string>()
                                      : v.dump())
        << "</td></tr>\n";
    o << "</table>\n";
  }
  o << "<div class=\"plots\">\n";
  for (const Series& s : kSeries) o << Plot(s, pts);
  o << "</div>\n"
       // Marks the page once the browser has laid the plots out (a check for
       // headless rendering, and a hint in the page's title bar).
       "<script>\nwindow.addEventListener('load', function () {\n"
       "  var n = 0;\n"
       "  document.querySelectorAll('svg.plot polyline.series').forEach(function (p) {\n"
       "    var b = p.getBBox();\n"
       "    if (b.width > 0 && p.getTotalLength() > 0) n++;\n"
       "  });\n"
       "  document.body.setAttribute('data-plots-rendered', String(n));\n"
       "});\n</script>\n</body></html>\n";
  return o.str();
}

absl::StatusOr<std::string> WriteRunReport(const std::string& run_dir, const std::string& out) {
  SAE_ASSIGN_OR_RETURN(std::string html, RenderRunReport(run_dir));
  const std::string path = out.empty() ? ResolveRunDir(run_dir) + "/report.html" : out;
  SAE_RETURN_IF_ERROR(AtomicWriteFile(path, html));
  return path;
}

}  // namespace sae
