#include "launcher/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace shardtune {

namespace {

// About five round tick values covering [lo, hi].
std::vector<double> Ticks(double lo, double hi) {
  const double raw = (hi - lo) / 5;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (magnitude * m >= raw) {
      step = magnitude * m;
      break;
    }
  }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push_back(t);
  return ticks;
}

// Ticks of a log axis over [log10 lo, log10 hi]: the powers of ten inside, and 2 and 5 times
// them when the range spans under two decades. Returned as log10 values.
std::vector<double> LogTicks(double log_lo, double log_hi) {
  const bool fine = log_hi - log_lo < 2;
  std::vector<double> ticks;
  for (double e = std::floor(log_lo); e <= std::ceil(log_hi); ++e) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (m != 1.0 && !fine) continue;
      const double t = e + std::log10(m);
      if (t >= log_lo - 1e-9 && t <= log_hi + 1e-9) ticks.push_back(t);
    }
  }
  return ticks;
}

std::string Label(double v) {
  std::string s = fmt::format("{:.4g}", v);
  return s == "-0" ? "0" : s;
}

}  // namespace

void WritePlot(const std::filesystem::path& path, const std::string& title, const std::vector<PlotSeries>& series,
               const PlotAxes& axes) {
  constexpr int kWidth = 960, kHeight = 540, kLeft = 90, kRight = 30, kTop = 50, kBottom = 60;
  const Rgb white{255, 255, 255}, ink{40, 40, 40}, grid{225, 225, 225};
  Canvas c(kWidth, kHeight, white);
  // The log axis is laid out in log10(x).
  auto layout_x = [&](double x) { return axes.log_x ? std::log10(x) : x; };
  double x_lo = std::numeric_limits<double>::max(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const PlotSeries& s : series) {
    for (const auto& [x, y] : s.points) {
      x_lo = std::min(x_lo, layout_x(x));
      x_hi = std::max(x_hi, layout_x(x));
      y_lo = std::min(y_lo, y);
      y_hi = std::max(y_hi, y);
    }
  }
  if (!axes.categories.empty()) {
    x_lo = -0.5;
    x_hi = static_cast<double>(axes.categories.size()) - 0.5;
  } else if (x_hi <= x_lo) {
    x_lo -= axes.log_x ? 0.5 : 0.0;
    x_hi = x_lo + 1;
  } else if (axes.log_x) {
    const double pad = (x_hi - x_lo) * 0.03;  // markers at the ends stay inside
    x_lo -= pad;
    x_hi += pad;
  }
  if (y_hi <= y_lo) y_hi = y_lo + 1;
  const double pad = (y_hi - y_lo) * 0.05;
  y_lo -= pad;
  y_hi += pad;
  const int w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  auto px = [&](double lx) { return kLeft + static_cast<int>(std::lround((lx - x_lo) / (x_hi - x_lo) * w)); };
  auto py = [&](double y) { return kTop + h - static_cast<int>(std::lround((y - y_lo) / (y_hi - y_lo) * h)); };
  for (double t : Ticks(y_lo, y_hi)) {
    c.Line(kLeft, py(t), kLeft + w, py(t), grid);
    const std::string label = Label(t);
    c.Text(kLeft - 8 - Canvas::TextWidth(label), py(t) - 7, label, ink);
  }
  auto x_tick = [&](double lx, const std::string& label) {
    c.Line(px(lx), kTop, px(lx), kTop + h, grid);
    c.Text(px(lx) - Canvas::TextWidth(label) / 2, kTop + h + 10, label, ink);
  };
  if (!axes.categories.empty()) {
    for (size_t i = 0; i < axes.categories.size(); ++i) {
      const std::string& name = axes.categories[i];
      x_tick(static_cast<double>(i), name.size() > 16 ? name.substr(0, 15) + "." : name);
    }
  } else if (axes.log_x) {
    for (double t : LogTicks(x_lo, x_hi)) x_tick(t, Label(std::pow(10.0, t)));
  } else {
    for (double t : Ticks(x_lo, x_hi)) {
      if (axes.whole_x && std::fabs(t - std::round(t)) > 1e-9) continue;
      x_tick(t, Label(t));
    }
  }
  c.Line(kLeft, kTop + h, kLeft + w, kTop + h, ink, 2);
  c.Line(kLeft, kTop, kLeft, kTop + h, ink, 2);
  c.Text(kLeft + w / 2 - Canvas::TextWidth(axes.x_label) / 2, kHeight - 26, axes.x_label, ink);
  c.Text(kLeft, 16, title, ink);
  int legend_x = kLeft + w;
  for (auto s = series.rbegin(); s != series.rend(); ++s) {
    legend_x -= Canvas::TextWidth(s->name) + 40;
    if (s->markers) {
      c.FillRect(legend_x + 8, 19, legend_x + 16, 27, s->color);
    } else {
      c.Line(legend_x, 23, legend_x + 24, 23, s->color, 3);
    }
    c.Text(legend_x + 30, 16, s->name, ink);
  }
  for (const PlotSeries& s : series) {
    auto at = [&](size_t i) { return std::pair{px(layout_x(s.points[i].first)), py(s.points[i].second)}; };
    if (!s.markers) {
      for (size_t i = 1; i < s.points.size(); ++i) {
        const auto [x0, y0] = at(i - 1);
        const auto [x1, y1] = at(i);
        c.Line(x0, y0, x1, y1, s.color, 2);
      }
    }
    if (s.markers || s.points.size() == 1) {
      for (size_t i = 0; i < s.points.size(); ++i) {
        const auto [x, y] = at(i);
        c.FillRect(x - 3, y - 3, x + 3, y + 3, s.color);
      }
    }
  }
  WritePng(path, c);
}

}  // namespace shardtune
