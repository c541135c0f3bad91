// The self-contained HTML report of `rankprune report`: one offline HTML file (inline CSS and SVG,
// no scripts, fonts, images or links to anything outside) with one plot per (model, task, metric),
// the method x ratio tables of storage/format.h and the job table. Torch-free, SQL-free.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "storage/format.h"
#include "storage/rows.h"

namespace rankprune::storage {

struct ReportInput {
  std::string title;         // e.g. "rankprune sweep: <model path>"
  std::string generated_at;  // ISO time, shown in the header
  std::vector<std::pair<std::string, std::string>> facts;  // key/value lines (db path, models, git sha, runs)
  std::vector<ResultRow> results;
  std::vector<JobRow> jobs;
};

std::string render_report_html(const ReportInput& in);

// ---- building blocks, exposed for tests ----

// & < > " ' as character references: safe in HTML text, attributes and inline SVG.
std::string html_escape(const std::string& s);

// Plot geometry in SVG user units (the viewBox is kPlotWidth x kPlotHeight). The plot area spans
// x in [kPlotLeft, kPlotRight] and y in [kPlotTop, kPlotBottom]; the legend sits right of it.
constexpr double kPlotWidth = 640, kPlotHeight = 380;
constexpr double kPlotLeft = 70, kPlotRight = 480, kPlotTop = 20, kPlotBottom = 330;

// Data ranges of one plot and the pixel box they map onto.
struct PlotFrame {
  double x_lo = 0, x_hi = 1;  // prune ratio range (padded)
  double y_lo = 0, y_hi = 1;  // metric range (padded); both > 0 when log_y
  bool log_y = false;
  double left = kPlotLeft, right = kPlotRight, top = kPlotTop, bottom = kPlotBottom;
};

// Data -> SVG coordinates: x linear from [x_lo, x_hi] to [left, right]; y from [y_lo, y_hi] to
// [bottom, top] (SVG y grows downwards), linear in y or in log10(y) when log_y.
std::pair<double, double> to_svg(const PlotFrame& f, double x, double y);

// Log y axis for perplexity metrics (they explode at high ratios) when every finite value is > 0.
bool use_log_scale(const std::string& metric, const std::vector<double>& values);

// The frame of a pivot's plot. x: [0, max ratio] (or [0, 1] when only ratio 0 exists) padded by 5%
// of the span on each side. y: [min, max] over the finite plotted values (cell means, seed min/max,
// baseline), padded by 8% of the span (of log10 span when log_y) on each side; a zero span is
// padded by 5% of |value| (0.05 decades on a log axis), 1 when the value is 0; [0, 1] if nothing
// is finite.
PlotFrame plot_frame(const Pivot& p);

// Tick positions: "nice" steps (1, 2, 2.5, 5 x 10^k) inside [lo, hi], about `target` of them.
std::vector<double> linear_ticks(double lo, double hi, int target = 5);
// Log axis ticks: decades, else 1-2-5, else 1..9 per decade, else linear ticks.
std::vector<double> log_ticks(double lo, double hi);

// Colour (#rrggbb) of a method in plots; fixed for the known methods.
std::string method_color(const std::string& method);

// One plot: the <svg> element and notes on what was not plotted and why.
struct PlotSvg {
  std::string svg;
  std::vector<std::string> notes;
};
PlotSvg render_plot(const Pivot& p);

}  // namespace rankprune::storage
