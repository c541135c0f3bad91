// The self-contained HTML report of `rankprune report`: one offline HTML file (inline CSS and SVG,
// no scripts, fonts, images or links to anything outside) with one plot per (model, task, metric),
// the method x ratio tables of storage/format.h, the job table and, fed by `rankprune analyze`
// JSON files (docs/analyze.md), a rank diagnostics section. Torch-free, SQL-free.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
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
  // `rankprune analyze --out` JSON documents, one "Rank diagnostics" block each. Validated when
  // rendered: a malformed one throws InputError naming its source and the field.
  std::vector<nlohmann::json> analyses;
  // Optional, parallel to `analyses`: where each came from (the file name), used in error messages
  // and captions. Missing entries read "analysis #i".
  std::vector<std::string> analysis_files;
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

// ---- rank diagnostics (`rankprune analyze` JSON) ----

// One value head of an analysis. Optional fields are absent from the JSON (or null there: the
// analyze command writes non-finite values as null, read back as NaN for series and nullopt here).
struct AnalysisHead {
  std::int64_t head = 0;
  std::optional<std::int64_t> key_head;
  bool has_series = false;          // both "tokens" and "utilisation" present
  std::vector<double> tokens;       // x of the utilisation plot
  std::vector<double> utilisation;  // NaN for null entries
  std::optional<double> stable_rank_final, utilisation_final;
  std::optional<double> gram_entropy_rank, key_gram_entropy_rank, query_gram_entropy_rank;
  std::optional<double> gram_top_half_mass;
};
struct AnalysisLayer {
  std::int64_t layer = 0;
  std::vector<AnalysisHead> heads;
};
// One projection of one layer from the optional "tucker" object (`analyze --tucker`).
struct TuckerRow {
  std::int64_t layer = 0;
  std::string name;                                   // q, k, v, o
  std::vector<std::int64_t> shape;                    // [heads, head_dim, hidden]
  std::array<std::optional<double>, 3> entropy_rank;  // per mode
  std::array<std::optional<double>, 3> sigma1;        // largest singular value per mode
};
struct Analysis {
  std::string source;                 // file name (or "analysis #i")
  std::optional<std::string> model;   // "model"
  std::optional<double> seq_len, every, rank_cap, head_k_dim, head_v_dim, gram_tokens;
  std::optional<std::string> data_sha;
  std::vector<AnalysisLayer> layers;
  std::optional<std::string> tucker_layout;  // "tucker.layout"
  std::vector<TuckerRow> tucker;             // "tucker.layers[].projections[]"
  std::vector<std::string> notes;     // missing fields, shown under the table
};

// Validates and reads one analyze JSON. Required: an object with a "layers" array of objects,
// each with a "heads" array of objects, or (a weights-only `analyze --tucker`) a "tucker" object
// with a "layers" array of {"layer", "projections": [{"name", "shape", "entropy_rank",
// "singular_values"}]}. Everything else may be missing (noted), but a present
// field of the wrong type, a series with non-numeric entries, or "tokens" and "utilisation" of
// different lengths throw InputError("<source>: field '<path>' ...").
Analysis parse_analysis(const nlohmann::json& j, const std::string& source);

// Rank utilisation (y, linear [0, 1]) against tokens (x) for one layer, one line per head.
PlotSvg render_rank_plot(const Analysis& a, const AnalysisLayer& layer);

// Colour (#rrggbb) of the i-th head's line (a 10-colour cycle).
std::string head_color(std::size_t i);

}  // namespace rankprune::storage
