#include "storage/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include "common/error.h"

namespace rankprune::storage {

namespace {

std::string num(double v) {  // SVG coordinate
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

std::string tick_label(double v) {
  if (v == 0.0 || std::fabs(v) < 1e-12) return "0";
  double a = std::fabs(v);
  char buf[48];
  if (a >= 1e5 || a < 1e-3) {
    int e = static_cast<int>(std::floor(std::log10(a)));
    double m = v / std::pow(10.0, e);
    if (std::fabs(m - std::round(m)) < 1e-6) std::snprintf(buf, sizeof buf, "%.0fe%d", std::round(m), e);
    else std::snprintf(buf, sizeof buf, "%.4ge%d", m, e);  // 4 digits: narrow log ranges stay distinct
    return buf;
  }
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// Marker shapes, cycled per method; drawn centred on (x, y).
std::string marker(int shape, double x, double y, const std::string& color, const std::string& tip) {
  const double r = 4.2;
  std::string body;
  std::string style = " fill=\"" + color + "\" stroke=\"#fff\" stroke-width=\"1\"";
  switch (shape % 5) {
    case 0:
      body = "<circle cx=\"" + num(x) + "\" cy=\"" + num(y) + "\" r=\"" + num(r) + "\"" + style + ">";
      return body + "<title>" + html_escape(tip) + "</title></circle>";
    case 1:
      body = "<rect x=\"" + num(x - r) + "\" y=\"" + num(y - r) + "\" width=\"" + num(2 * r) +
             "\" height=\"" + num(2 * r) + "\"" + style + ">";
      return body + "<title>" + html_escape(tip) + "</title></rect>";
    case 2:
      body = "<polygon points=\"" + num(x) + "," + num(y - 1.25 * r) + " " + num(x + 1.15 * r) + "," +
             num(y + 0.9 * r) + " " + num(x - 1.15 * r) + "," + num(y + 0.9 * r) + "\"" + style + ">";
      return body + "<title>" + html_escape(tip) + "</title></polygon>";
    case 3:
      body = "<polygon points=\"" + num(x) + "," + num(y - 1.3 * r) + " " + num(x + 1.3 * r) + "," + num(y) +
             " " + num(x) + "," + num(y + 1.3 * r) + " " + num(x - 1.3 * r) + "," + num(y) + "\"" + style + ">";
      return body + "<title>" + html_escape(tip) + "</title></polygon>";
    default:
      body = "<polygon points=\"" + num(x) + "," + num(y + 1.25 * r) + " " + num(x + 1.15 * r) + "," +
             num(y - 0.9 * r) + " " + num(x - 1.15 * r) + "," + num(y - 0.9 * r) + "\"" + style + ">";
      return body + "<title>" + html_escape(tip) + "</title></polygon>";
  }
}

int method_shape(const std::string& method) {
  int r = method_rank(method);
  if (r < 100) return r == 0 ? 0 : r - 1;
  unsigned h = 2166136261u;
  for (unsigned char c : method) h = (h ^ c) * 16777619u;
  return static_cast<int>(h % 5);
}

std::string shorten(const std::string& s, std::size_t n) {
  if (s.size() <= n) return s;
  return s.substr(0, n - 1) + "…";
}

std::string seeds_tip(const Cell& c, const std::string& metric) {
  std::string out;
  for (const ResultRow* r : c.rows) {
    if (!out.empty()) out += ", ";
    out += cat("seed ", r->seed, ": ", format_value(r->value, metric));
  }
  return out;
}

void collect_y(const Pivot& p, std::vector<double>& ys) {
  for (const auto& [key, cell] : p.cells) {
    if (!std::isfinite(cell.mean)) continue;  // not plotted, so not part of the range
    ys.push_back(cell.mean);
    if (cell.rows.size() > 1) {
      ys.push_back(cell.min);
      ys.push_back(cell.max);
    }
  }
}

// The <svg> element's opening, the white plot area and its border.
std::string plot_open(const PlotFrame& f, const std::string& aria) {
  return cat("<svg class=\"plot\" viewBox=\"0 0 ", kPlotWidth, " ", kPlotHeight, "\" role=\"img\" aria-label=\"",
             html_escape(aria), "\">") +
         "<rect x=\"" + num(f.left) + "\" y=\"" + num(f.top) + "\" width=\"" + num(f.right - f.left) +
         "\" height=\"" + num(f.bottom - f.top) + "\" fill=\"#fff\" stroke=\"#9aa1ad\"/>";
}

// Grid lines, ticks and tick labels of both axes: y at `yt`, x at `xt` (value, label).
std::string axes_svg(const PlotFrame& f, const std::vector<double>& yt,
                     const std::vector<std::pair<double, std::string>>& xt) {
  std::string s = "<g class=\"tick\">";
  for (double v : yt) {
    double py = to_svg(f, f.x_lo, v).second;
    s += "<line x1=\"" + num(f.left) + "\" y1=\"" + num(py) + "\" x2=\"" + num(f.right) + "\" y2=\"" + num(py) +
         "\" stroke=\"#eceef2\"/>";
    s += "<line x1=\"" + num(f.left - 5) + "\" y1=\"" + num(py) + "\" x2=\"" + num(f.left) + "\" y2=\"" +
         num(py) + "\" stroke=\"#6b7280\"/>";
    s += "<text x=\"" + num(f.left - 8) + "\" y=\"" + num(py + 4) + "\" text-anchor=\"end\">" +
         html_escape(tick_label(v)) + "</text>";
  }
  for (const auto& [v, label] : xt) {
    double px = to_svg(f, v, f.y_lo).first;
    s += "<line x1=\"" + num(px) + "\" y1=\"" + num(f.bottom) + "\" x2=\"" + num(px) + "\" y2=\"" +
         num(f.bottom + 5) + "\" stroke=\"#6b7280\"/>";
    s += "<text x=\"" + num(px) + "\" y=\"" + num(f.bottom + 18) + "\" text-anchor=\"middle\">" +
         html_escape(label) + "</text>";
  }
  return s + "</g>";
}

// Axis titles; both are escaped here.
std::string axis_titles(const PlotFrame& f, const std::string& x_title, const std::string& y_title) {
  double ymid = (f.top + f.bottom) / 2;
  return "<text x=\"" + num((f.left + f.right) / 2) + "\" y=\"" + num(f.bottom + 40) +
         "\" text-anchor=\"middle\">" + html_escape(x_title) + "</text>" + "<text x=\"16\" y=\"" + num(ymid) +
         "\" text-anchor=\"middle\" transform=\"rotate(-90 16 " + num(ymid) + ")\">" + html_escape(y_title) +
         "</text>";
}

// One legend line: a coloured line with a marker and the (shortened, escaped) label.
std::string legend_entry(double lx, double ly, const std::string& color, int shape, const std::string& label,
                         const std::string& tip, double font_size = 0) {
  std::string s = "<line x1=\"" + num(lx) + "\" y1=\"" + num(ly) + "\" x2=\"" + num(lx + 22) + "\" y2=\"" +
                  num(ly) + "\" stroke=\"" + color + "\" stroke-width=\"2\"/>";
  s += marker(shape, lx + 11, ly, color, tip);
  s += "<text x=\"" + num(lx + 28) + "\" y=\"" + num(ly + 4) + "\"" +
       (font_size > 0 ? " font-size=\"" + num(font_size) + "\"" : std::string()) + ">" +
       html_escape(shorten(label, 20)) + "</text>";
  return s;
}

const char* kCss = R"CSS(
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --bg:#ffffff; --accent:#1f77b4; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: var(--fg); background: var(--bg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { border-bottom: 2px solid var(--fg); padding-bottom: 12px; margin-bottom: 20px; }
h1 { font-size: 22px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 18px; margin: 28px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: var(--muted); margin: 0 0 10px; }
table { border-collapse: collapse; margin: 4px 0 10px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f8; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.facts th { background: none; border: none; padding: 1px 16px 1px 0; color: var(--muted); font-weight: 500; }
table.facts td { border: none; padding: 1px 0; word-break: break-all; }
.summary { margin: 6px 0 0; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 10px 10px 6px; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-weight: 600; margin: 0 0 4px; }
figcaption .dir { color: var(--muted); font-weight: 400; }
svg.plot { width: 100%; height: auto; display: block; font-size: 12px; }
svg.plot text { fill: var(--fg); }
svg.plot .tick text { fill: var(--muted); font-size: 11px; }
svg.plot .halo { paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
.note { color: #8a4b00; font-size: 12px; margin: 4px 0 0; }
td.best { font-weight: 700; }
tr.baseline td { background: #fafafa; }
.footnote { color: var(--muted); font-size: 12px; }
.state { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; }
.state-done { background: #e3f4e6; color: #1d6b2c; }
.state-failed { background: #fde4e1; color: #a11d0d; }
.state-running { background: #e1eefb; color: #17508a; }
.state-pending, .state-other { background: #eeeff2; color: #4b5262; }
table.jobs { font-size: 13px; }
table.jobs td { white-space: nowrap; }
table.jobs td.err { color: #a11d0d; white-space: normal; min-width: 200px; max-width: 420px; word-break: break-word; }
.tablewrap { overflow-x: auto; }
table.analysis { margin-top: 14px; }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; }
@media print {
  body { padding: 0; font-size: 11px; }
  .plots { grid-template-columns: 1fr 1fr; gap: 10px; }
  figure, table { break-inside: avoid; page-break-inside: avoid; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
)CSS";

std::string state_class(const std::string& s) {
  if (s == "done" || s == "failed" || s == "running" || s == "pending") return "state-" + s;
  return "state-other";
}

std::string pivot_caption(const Pivot& p, bool with_model) {
  std::string s = html_escape(p.task) + " / " + html_escape(p.metric) + " <span class=\"dir\">(" +
                  (lower_is_better(p.metric) ? "lower" : "higher") + " is better";
  if (with_model) s += "; " + html_escape(p.model);
  return s + ")</span>";
}

std::string pivot_table_html(const Pivot& p) {
  // Best method per ratio (ratio > 0) in bold.
  std::map<long long, const Cell*> best;
  for (const auto& b : best_per_ratio(p))
    if (b.cell && ratio_key(b.ratio) != 0) best[ratio_key(b.ratio)] = b.cell;
  std::string h = "<div class=\"tablewrap\"><table class=\"pivot\"><thead><tr><th>method \\ ratio</th>";
  for (double r : p.ratios) {
    // head_k_dim under the ratio when all cells of the column agree
    std::set<int> dims;
    for (const auto& m : p.methods)
      if (const Cell* c = p.find(m, r))
        for (const ResultRow* row : c->rows) dims.insert(row->head_k_dim);
    h += "<th class=\"num\">" + html_escape(format_ratio(r));
    if (dims.size() == 1 && *dims.begin() > 0)
      h += cat("<br><span class=\"footnote\">d<sub>k</sub> = ", *dims.begin(), "</span>");
    h += "</th>";
  }
  h += "</tr></thead><tbody>";
  for (const auto& m : p.methods) {
    h += m == "none" ? "<tr class=\"baseline\">" : "<tr>";
    h += "<td>" + html_escape(m == "none" ? "none (unpruned)" : m) + "</td>";
    for (double r : p.ratios) {
      const Cell* c = p.find(m, r);
      if (!c) {
        h += "<td class=\"num\">-</td>";
        continue;
      }
      auto it = best.find(ratio_key(r));
      bool is_best = it != best.end() && it->second == c;
      h += std::string("<td class=\"num") + (is_best ? " best" : "") + "\"";
      if (c->rows.size() > 1) h += " title=\"" + html_escape(seeds_tip(*c, p.metric)) + "\"";
      h += ">" + html_escape(format_cell(c, p.metric)) + "</td>";
    }
    h += "</tr>";
  }
  return h + "</tbody></table></div>\n";
}

std::string jobs_html(const std::vector<JobRow>& jobs) {
  if (jobs.empty()) return "<p class=\"meta\">No jobs recorded.</p>\n";
  std::set<std::string> models;
  for (const auto& j : jobs) models.insert(j.model);
  const bool model_col = models.size() > 1;  // one model: named in the summary instead
  std::string h = "<p class=\"summary\">" + html_escape(job_summary(jobs));
  if (!model_col) h += " (model " + html_escape(*models.begin()) + ")";
  h += "</p>\n<div class=\"tablewrap\"><table class=\"jobs\"><thead><tr>";
  for (const char* c : {"id", "model", "method", "ratio", "seed", "task", "state", "attempts", "host", "rank",
                        "started", "finished", "seconds", "error"}) {
    std::string col = c;
    if (col == "model" && !model_col) continue;
    bool n = col == "id" || col == "ratio" || col == "seed" || col == "attempts" || col == "rank" ||
             col == "seconds";
    h += std::string("<th") + (n ? " class=\"num\"" : "") + ">" + col + "</th>";
  }
  h += "</tr></thead><tbody>";
  for (const auto& j : jobs) {
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.1f", j.seconds);
    h += cat("<tr><td class=\"num\">", j.id, "</td>", model_col ? "<td>" + html_escape(j.model) + "</td>" : "",
             "<td>", html_escape(j.method), "</td><td class=\"num\">", html_escape(format_ratio(j.ratio)),
             "</td><td class=\"num\">", j.seed, "</td><td>", html_escape(j.task), "</td><td><span class=\"state ",
             state_class(j.state), "\">", html_escape(j.state), "</span></td><td class=\"num\">", j.attempts,
             "</td><td>", html_escape(j.host), "</td><td class=\"num\">", j.rank, "</td><td>",
             html_escape(j.started), "</td><td>", html_escape(j.finished), "</td><td class=\"num\">",
             j.started.empty() ? "" : secs, "</td><td class=\"err\">", html_escape(j.error), "</td></tr>");
  }
  return h + "</tbody></table></div>\n";
}

}  // namespace

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::pair<double, double> to_svg(const PlotFrame& f, double x, double y) {
  double px = f.left + (x - f.x_lo) / (f.x_hi - f.x_lo) * (f.right - f.left);
  double t = f.log_y ? (std::log10(y) - std::log10(f.y_lo)) / (std::log10(f.y_hi) - std::log10(f.y_lo))
                     : (y - f.y_lo) / (f.y_hi - f.y_lo);
  return {px, f.bottom - t * (f.bottom - f.top)};
}

bool use_log_scale(const std::string& metric, const std::vector<double>& values) {
  if (metric.find("perplexity") == std::string::npos) return false;
  bool any = false;
  for (double v : values) {
    if (!std::isfinite(v)) continue;
    if (v <= 0) return false;
    any = true;
  }
  return any;
}

PlotFrame plot_frame(const Pivot& p) {
  PlotFrame f;
  double xmax = 0;
  for (double r : p.ratios)
    if (std::isfinite(r)) xmax = std::max(xmax, r);
  if (xmax <= 0) xmax = 1;
  double xpad = 0.05 * xmax;
  f.x_lo = -xpad;
  f.x_hi = xmax + xpad;

  std::vector<double> ys;
  collect_y(p, ys);
  f.log_y = use_log_scale(p.metric, ys);
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : ys)
    if (std::isfinite(v)) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  if (!(lo <= hi)) {
    f.y_lo = 0;
    f.y_hi = 1;
    f.log_y = false;
    return f;
  }
  if (f.log_y) {
    double L = std::log10(lo), H = std::log10(hi);
    double pad = H - L > 0 ? 0.08 * (H - L) : 0.05;
    f.y_lo = std::pow(10.0, L - pad);
    f.y_hi = std::pow(10.0, H + pad);
  } else {
    double pad = hi - lo > 0 ? 0.08 * (hi - lo) : (lo != 0 ? 0.05 * std::fabs(lo) : 1.0);
    f.y_lo = lo - pad;
    f.y_hi = hi + pad;
  }
  return f;
}

std::vector<double> linear_ticks(double lo, double hi, int target) {
  std::vector<double> out;
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi)) return out;
  double raw = (hi - lo) / std::max(1, target);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  double start = std::ceil(lo / step - 1e-9) * step;
  for (double t = start; t <= hi + step * 1e-9; t += step) {
    double v = std::fabs(t) < step * 1e-9 ? 0.0 : t;
    out.push_back(v);
    if (out.size() > 100) break;
  }
  return out;
}

std::vector<double> log_ticks(double lo, double hi) {
  std::vector<double> out;
  if (!(lo > 0) || !(hi > lo) || !std::isfinite(hi)) return out;
  int e0 = static_cast<int>(std::floor(std::log10(lo))), e1 = static_cast<int>(std::ceil(std::log10(hi)));
  const std::vector<std::vector<double>> sets = {{1}, {1, 2, 5}, {1, 2, 3, 4, 5, 6, 7, 8, 9}};
  for (const auto& mults : sets) {
    out.clear();
    for (int e = e0; e <= e1; ++e)
      for (double m : mults) {
        double v = m * std::pow(10.0, e);
        if (v >= lo * (1 - 1e-12) && v <= hi * (1 + 1e-12)) out.push_back(v);
      }
    if (out.size() >= 3) {
      if (mults.size() == 1 && out.size() > 8) {  // thin decades
        std::size_t k = (out.size() + 7) / 8;
        std::vector<double> thin;
        for (std::size_t i = 0; i < out.size(); i += k) thin.push_back(out[i]);
        return thin;
      }
      if (out.size() <= 12) return out;
    }
  }
  out = linear_ticks(lo, hi, 5);
  out.erase(std::remove_if(out.begin(), out.end(), [](double v) { return v <= 0; }), out.end());
  return out;
}

std::string method_color(const std::string& method) {
  static const std::map<std::string, std::string> fixed = {
      {"none", "#222222"},  {"drrqr", "#1f77b4"}, {"qrcp", "#17becf"}, {"pca", "#2ca02c"},
      {"wanda", "#9467bd"}, {"l1", "#ff7f0e"},    {"taylor", "#8c564b"}, {"random", "#d62728"}};
  auto it = fixed.find(method);
  if (it != fixed.end()) return it->second;
  static const char* const others[] = {"#e377c2", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31"};
  unsigned h = 2166136261u;
  for (unsigned char c : method) h = (h ^ c) * 16777619u;
  return others[h % 6];
}

PlotSvg render_plot(const Pivot& p) {
  PlotSvg out;
  PlotFrame f = plot_frame(p);
  const Cell* base = baseline_cell(p);
  std::string s = plot_open(f, p.task + " " + p.metric + " vs prune ratio");

  // y axis: grid lines, ticks, labels
  std::vector<double> yt = f.log_y ? log_ticks(f.y_lo, f.y_hi) : linear_ticks(f.y_lo, f.y_hi, 5);
  // x axis: the evaluated ratios when few, else nice ticks
  std::vector<double> xt;
  {
    std::set<long long> keys;
    std::vector<double> rs = {0.0};
    keys.insert(0);
    for (double r : p.ratios)
      if (std::isfinite(r) && keys.insert(ratio_key(r)).second) rs.push_back(r);
    std::sort(rs.begin(), rs.end());
    bool spaced = rs.size() <= 11;
    for (std::size_t i = 1; spaced && i < rs.size(); ++i)
      spaced = to_svg(f, rs[i], 1).first - to_svg(f, rs[i - 1], 1).first >= 30;
    xt = spaced && rs.size() >= 2 ? rs : linear_ticks(std::max(0.0, f.x_lo), f.x_hi, 6);
  }
  std::vector<std::pair<double, std::string>> xlabels;
  for (double v : xt) xlabels.push_back({v, format_ratio(v)});
  s += axes_svg(f, yt, xlabels);
  s += axis_titles(f, "prune ratio", p.metric + (f.log_y ? " (log scale)" : ""));

  // baseline
  std::vector<std::pair<std::string, std::string>> legend;  // label, method ("" = baseline)
  if (base) {
    if (std::isfinite(base->mean) && (!f.log_y || base->mean > 0)) {
      double py = to_svg(f, 0, base->mean).second;
      s += "<line x1=\"" + num(f.left) + "\" y1=\"" + num(py) + "\" x2=\"" + num(f.right) + "\" y2=\"" + num(py) +
           "\" stroke=\"#222\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>";
      s += "<text class=\"halo\" x=\"" + num(f.right - 6) + "\" y=\"" + num(py - 6) +
           "\" text-anchor=\"end\" font-size=\"11\">unpruned " + html_escape(format_value(base->mean, p.metric)) +
           "</text>";
      auto [bx, by] = to_svg(f, 0, base->mean);
      s += marker(0, bx, by, "#222222", "unpruned: " + format_cell(base, p.metric));
    } else {
      out.notes.push_back("unpruned baseline not plotted: value is " + format_value(base->mean, p.metric));
    }
    legend.push_back({"unpruned", ""});
  }

  // methods
  bool any_bars = false;
  for (const auto& m : p.methods) {
    if (m == "none") continue;
    std::string color = method_color(m);
    int shape = method_shape(m);
    std::vector<std::vector<std::pair<double, double>>> segments(1);
    std::string marks, bars;
    std::size_t seeds = 1;
    for (double r : p.ratios) {
      const Cell* c = p.find(m, r);
      if (!c) continue;
      seeds = std::max(seeds, c->rows.size());
      if (!std::isfinite(c->mean) || (f.log_y && c->mean <= 0)) {
        std::string why = c->rows.size() > 1
                              ? cat("mean is ", format_value(c->mean, p.metric), "; ", c->rows.size() - c->n_finite,
                                    " of ", c->rows.size(), " seeds non-finite")
                              : cat("value is ", format_value(c->mean, p.metric));
        out.notes.push_back(cat(m, " at ratio ", format_ratio(r), " not plotted (", why, ")"));
        if (!segments.back().empty()) segments.emplace_back();
        continue;
      }
      auto pt = to_svg(f, r, c->mean);
      segments.back().push_back(pt);
      if (c->rows.size() > 1 && c->n_finite > 0) {
        double y1 = to_svg(f, r, c->min).second, y2 = to_svg(f, r, c->max).second;
        bars += "<line x1=\"" + num(pt.first) + "\" y1=\"" + num(y1) + "\" x2=\"" + num(pt.first) + "\" y2=\"" +
                num(y2) + "\"/>";
        bars += "<line x1=\"" + num(pt.first - 4) + "\" y1=\"" + num(y1) + "\" x2=\"" + num(pt.first + 4) +
                "\" y2=\"" + num(y1) + "\"/>";
        bars += "<line x1=\"" + num(pt.first - 4) + "\" y1=\"" + num(y2) + "\" x2=\"" + num(pt.first + 4) +
                "\" y2=\"" + num(y2) + "\"/>";
      }
      std::string tip = cat(m, ", ratio ", format_ratio(r), ": ", format_cell(c, p.metric));
      if (c->rows.size() > 1) tip += " [" + seeds_tip(*c, p.metric) + "]";
      marks += marker(shape, pt.first, pt.second, color, tip);
    }
    s += "<g class=\"series\" data-method=\"" + html_escape(m) + "\">";
    if (!bars.empty())
      s += "<g stroke=\"" + color + "\" stroke-width=\"1.3\" opacity=\"0.85\">" + bars + "</g>";
    for (const auto& seg : segments) {
      if (seg.size() < 2) continue;
      s += "<polyline fill=\"none\" stroke=\"" + color + "\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"";
      for (std::size_t i = 0; i < seg.size(); ++i) s += (i ? " " : "") + num(seg[i].first) + "," + num(seg[i].second);
      s += "\"/>";
    }
    s += marks + "</g>";
    legend.push_back({seeds > 1 ? cat(shorten(m, 10), " (", seeds, " seeds)") : m, m});
    any_bars = any_bars || !bars.empty();
  }
  if (p.methods.size() == 1 && base) out.notes.push_back("only the unpruned baseline was evaluated");

  // legend, right of the plot area
  double lx = f.right + 14, ly = f.top + 10;
  s += "<g class=\"legend\">";
  for (const auto& [label, m] : legend) {
    if (m.empty()) {
      s += "<line x1=\"" + num(lx) + "\" y1=\"" + num(ly) + "\" x2=\"" + num(lx + 22) + "\" y2=\"" + num(ly) +
           "\" stroke=\"#222\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>";
      s += "<text x=\"" + num(lx + 28) + "\" y=\"" + num(ly + 4) + "\">" + html_escape(shorten(label, 20)) +
           "</text>";
    } else {
      s += legend_entry(lx, ly, method_color(m), method_shape(m), label, m);
    }
    ly += 20;
  }
  if (any_bars)
    s += "<text class=\"tick\" x=\"" + num(lx) + "\" y=\"" + num(ly + 4) +
         "\" font-size=\"11\" fill=\"#5b6475\">bars: min-max over seeds</text>";
  s += "</g></svg>";
  out.svg = std::move(s);
  return out;
}

// ------------------------------------------------------------------ rank diagnostics (analyze JSON)

namespace {

[[noreturn]] void bad_field(const std::string& source, const std::string& path, const std::string& what) {
  throw InputError(cat(source, ": field '", path, "' ", what));
}

std::string type_name(const nlohmann::json& v) { return v.type_name(); }

// A present field must be a number (or null: a non-finite value as written by nlohmann).
std::optional<double> opt_number(const nlohmann::json& obj, const char* key, const std::string& source,
                                 const std::string& path, std::map<std::string, int>* missing) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (missing) ++(*missing)[key];
    return std::nullopt;
  }
  if (!it->is_number()) bad_field(source, path + key, "must be a number, got " + type_name(*it));
  double v = it->get<double>();
  if (!std::isfinite(v)) {
    if (missing) ++(*missing)[key];
    return std::nullopt;
  }
  return v;
}

std::optional<std::int64_t> opt_integer(const nlohmann::json& obj, const char* key, const std::string& source,
                                        const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) bad_field(source, path + key, "must be an integer, got " + type_name(*it));
  return it->get<std::int64_t>();
}

std::optional<std::string> opt_string(const nlohmann::json& obj, const char* key, const std::string& source) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) bad_field(source, key, "must be a string, got " + type_name(*it));
  return it->get<std::string>();
}

// A number array; null entries read as NaN when allow_null.
std::optional<std::vector<double>> opt_series(const nlohmann::json& obj, const char* key, const std::string& source,
                                              const std::string& path, bool allow_null) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_array()) bad_field(source, path + key, "must be an array of numbers, got " + type_name(*it));
  std::vector<double> out;
  out.reserve(it->size());
  for (std::size_t i = 0; i < it->size(); ++i) {
    const auto& e = (*it)[i];
    if (e.is_null() && allow_null) out.push_back(std::numeric_limits<double>::quiet_NaN());
    else if (e.is_number()) out.push_back(e.get<double>());
    else bad_field(source, cat(path, key, "[", i, "]"), "must be a number, got " + type_name(e));
  }
  return out;
}

std::string fixed3(const std::optional<double>& v) {
  if (!v) return "-";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.3f", *v);
  return buf;
}

std::string head_label(const AnalysisHead& h) {
  if (h.key_head && *h.key_head != h.head) return cat("head ", h.head, " (key head ", *h.key_head, ")");
  return cat("head ", h.head);
}

std::string analysis_meta(const Analysis& a) {
  std::vector<std::string> parts;
  auto n = [](double v) { return tick_label(v); };
  if (a.seq_len) parts.push_back("state tracked over one " + n(*a.seq_len) + "-token sequence");
  if (a.every) parts.push_back("sampled every " + n(*a.every) + " tokens");
  if (a.head_k_dim && a.head_v_dim) parts.push_back("d_k = " + n(*a.head_k_dim) + ", d_v = " + n(*a.head_v_dim));
  if (a.rank_cap) parts.push_back("rank cap min(d_k, d_v) = " + n(*a.rank_cap));
  if (a.gram_tokens) parts.push_back("Gram spectra over " + n(*a.gram_tokens) + " tokens");
  if (a.data_sha) parts.push_back("data " + shorten(*a.data_sha, 13));
  std::string s;
  for (const auto& p : parts) s += (s.empty() ? "" : "; ") + p;
  return s;
}

std::string analysis_table_html(const Analysis& a) {
  bool key_col = false;
  for (const auto& l : a.layers)
    for (const auto& h : l.heads) key_col = key_col || (h.key_head && *h.key_head != h.head);
  std::string h = "<div class=\"tablewrap\"><table class=\"analysis\"><thead><tr>"
                  "<th class=\"num\">layer</th><th class=\"num\">head</th>";
  if (key_col) h += "<th class=\"num\">key head</th>";
  h += "<th class=\"num\">final stable rank</th><th class=\"num\">final utilisation</th>"
       "<th class=\"num\">entropy rank G</th><th class=\"num\">entropy rank K</th>"
       "<th class=\"num\">entropy rank Q</th><th class=\"num\">top-half mass G</th></tr></thead><tbody>";
  for (const auto& l : a.layers)
    for (const auto& hd : l.heads) {
      h += cat("<tr><td class=\"num\">", l.layer, "</td><td class=\"num\">", hd.head, "</td>");
      if (key_col) h += "<td class=\"num\">" + (hd.key_head ? cat(*hd.key_head) : std::string("-")) + "</td>";
      for (const auto* v : {&hd.stable_rank_final, &hd.utilisation_final, &hd.gram_entropy_rank,
                            &hd.key_gram_entropy_rank, &hd.query_gram_entropy_rank, &hd.gram_top_half_mass})
        h += "<td class=\"num\">" + fixed3(*v) + "</td>";
      h += "</tr>";
    }
  return h + "</tbody></table></div>\n";
}

void parse_tucker(const nlohmann::json& t, const std::string& source, Analysis* a) {
  if (!t.is_object()) bad_field(source, "tucker", "must be an object, got " + type_name(t));
  a->tucker_layout = opt_string(t, "layout", source);
  auto lit = t.find("layers");
  if (lit == t.end()) bad_field(source, "tucker.layers", "is missing");
  if (!lit->is_array()) bad_field(source, "tucker.layers", "must be an array, got " + type_name(*lit));
  for (std::size_t li = 0; li < lit->size(); ++li) {
    const auto& lj = (*lit)[li];
    const std::string lpath = cat("tucker.layers[", li, "]");
    if (!lj.is_object()) bad_field(source, lpath, "must be an object, got " + type_name(lj));
    const auto layer = opt_integer(lj, "layer", source, lpath + ".").value_or(static_cast<std::int64_t>(li));
    auto pit = lj.find("projections");
    if (pit == lj.end()) bad_field(source, lpath + ".projections", "is missing");
    if (!pit->is_array()) bad_field(source, lpath + ".projections", "must be an array, got " + type_name(*pit));
    for (std::size_t pi = 0; pi < pit->size(); ++pi) {
      const auto& pj = (*pit)[pi];
      const std::string ppath = cat(lpath, ".projections[", pi, "]");
      if (!pj.is_object()) bad_field(source, ppath, "must be an object, got " + type_name(pj));
      TuckerRow r;
      r.layer = layer;
      auto nit = pj.find("name");
      if (nit == pj.end() || !nit->is_string()) bad_field(source, ppath + ".name", "must be a string");
      r.name = nit->get<std::string>();
      if (auto shape = opt_series(pj, "shape", source, ppath + ".", false))
        for (double d : *shape) r.shape.push_back(static_cast<std::int64_t>(d));
      if (auto er = opt_series(pj, "entropy_rank", source, ppath + ".", true)) {
        if (er->size() != 3) bad_field(source, ppath + ".entropy_rank", cat("must have 3 entries, got ", er->size()));
        for (int n = 0; n < 3; ++n)
          if (std::isfinite((*er)[static_cast<std::size_t>(n)])) r.entropy_rank[static_cast<std::size_t>(n)] = (*er)[static_cast<std::size_t>(n)];
      }
      if (auto sit = pj.find("singular_values"); sit != pj.end() && !sit->is_null()) {
        if (!sit->is_array() || sit->size() != 3)
          bad_field(source, ppath + ".singular_values", "must be an array of 3 arrays (one per mode)");
        for (std::size_t n = 0; n < 3; ++n) {
          const auto& m = (*sit)[n];
          if (!m.is_array()) bad_field(source, cat(ppath, ".singular_values[", n, "]"), "must be an array of numbers");
          for (std::size_t i = 0; i < m.size(); ++i)
            if (!m[i].is_number()) bad_field(source, cat(ppath, ".singular_values[", n, "][", i, "]"), "must be a number");
          if (!m.empty()) r.sigma1[n] = m[0].get<double>();
        }
      }
      a->tucker.push_back(std::move(r));
    }
  }
}

std::string tucker_table_html(const Analysis& a) {
  std::string h = "<p class=\"meta\">Multilinear spectra of the attention weights, each projection as a tensor " +
                  html_escape(a.tucker_layout.value_or("[heads, head_dim, hidden]")) +
                  ": entropy effective rank of each unfolding's squared singular values, and its largest "
                  "singular value.</p>\n<div class=\"tablewrap\"><table class=\"analysis\"><thead><tr>"
                  "<th class=\"num\">layer</th><th>proj</th><th>shape</th><th class=\"num\">entropy rank heads</th>"
                  "<th class=\"num\">entropy rank head_dim</th><th class=\"num\">entropy rank hidden</th>"
                  "<th class=\"num\">&sigma;<sub>1</sub> heads</th><th class=\"num\">&sigma;<sub>1</sub> head_dim</th>"
                  "<th class=\"num\">&sigma;<sub>1</sub> hidden</th></tr></thead><tbody>";
  for (const auto& r : a.tucker) {
    std::string shape;
    for (std::size_t i = 0; i < r.shape.size(); ++i) shape += cat(i ? "&times;" : "", r.shape[i]);
    h += cat("<tr><td class=\"num\">", r.layer, "</td><td>", html_escape(r.name), "</td><td>", shape, "</td>");
    for (const auto& v : r.entropy_rank) h += "<td class=\"num\">" + fixed3(v) + "</td>";
    for (const auto& v : r.sigma1) h += "<td class=\"num\">" + fixed3(v) + "</td>";
    h += "</tr>";
  }
  return h + "</tbody></table></div>\n";
}

}  // namespace

std::string head_color(std::size_t i) {
  static const char* const palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                        "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return palette[i % 10];
}

Analysis parse_analysis(const nlohmann::json& j, const std::string& source) {
  Analysis a;
  a.source = source;
  if (!j.is_object()) throw InputError(cat(source, ": an analyze JSON must be an object, got ", j.type_name()));
  a.model = opt_string(j, "model", source);
  if (!a.model) a.notes.push_back("field 'model' missing: the model path is not known");
  a.seq_len = opt_number(j, "seq_len", source, "", nullptr);
  a.every = opt_number(j, "every", source, "", nullptr);
  a.head_k_dim = opt_number(j, "head_k_dim", source, "", nullptr);
  a.head_v_dim = opt_number(j, "head_v_dim", source, "", nullptr);
  a.rank_cap = opt_number(j, "rank_cap", source, "", nullptr);
  a.gram_tokens = opt_number(j, "gram_tokens", source, "", nullptr);
  a.data_sha = opt_string(j, "data_sha", source);

  if (auto tit = j.find("tucker"); tit != j.end() && !tit->is_null()) parse_tucker(*tit, source, &a);
  auto lit = j.find("layers");
  if (lit == j.end() && !a.tucker.empty()) return a;  // weights-only `analyze --tucker`
  if (lit == j.end()) bad_field(source, "layers", "is missing (not a `rankprune analyze` JSON?)");
  if (!lit->is_array()) bad_field(source, "layers", "must be an array, got " + type_name(*lit));
  std::map<std::string, int> missing;  // field -> heads without it
  std::size_t n_heads = 0;
  for (std::size_t li = 0; li < lit->size(); ++li) {
    const auto& lj = (*lit)[li];
    const std::string lpath = cat("layers[", li, "]");
    if (!lj.is_object()) bad_field(source, lpath, "must be an object, got " + type_name(lj));
    AnalysisLayer layer;
    auto lnum = opt_integer(lj, "layer", source, lpath + ".");
    if (!lnum) a.notes.push_back(cat("field '", lpath, ".layer' missing: numbered ", li, " by position"));
    layer.layer = lnum.value_or(static_cast<std::int64_t>(li));
    auto hit = lj.find("heads");
    if (hit == lj.end()) bad_field(source, lpath + ".heads", "is missing");
    if (!hit->is_array()) bad_field(source, lpath + ".heads", "must be an array, got " + type_name(*hit));
    if (hit->empty()) a.notes.push_back(cat("layer ", layer.layer, " has no heads"));
    for (std::size_t hi = 0; hi < hit->size(); ++hi) {
      const auto& hj = (*hit)[hi];
      const std::string hpath = cat(lpath, ".heads[", hi, "]");
      if (!hj.is_object()) bad_field(source, hpath, "must be an object, got " + type_name(hj));
      const std::string p = hpath + ".";
      AnalysisHead h;
      auto hnum = opt_integer(hj, "head", source, p);
      if (!hnum) a.notes.push_back(cat("field '", hpath, ".head' missing: numbered ", hi, " by position"));
      h.head = hnum.value_or(static_cast<std::int64_t>(hi));
      h.key_head = opt_integer(hj, "key_head", source, p);
      auto tokens = opt_series(hj, "tokens", source, p, false);
      auto util = opt_series(hj, "utilisation", source, p, true);
      if (tokens && util) {
        if (tokens->size() != util->size())
          bad_field(source, p + "utilisation",
                    cat("has ", util->size(), " entries but '", p, "tokens' has ", tokens->size()));
        h.has_series = true;
        h.tokens = std::move(*tokens);
        h.utilisation = std::move(*util);
      } else {
        if (!tokens) ++missing["tokens"];
        if (!util) ++missing["utilisation"];
      }
      h.stable_rank_final = opt_number(hj, "stable_rank_final", source, p, &missing);
      h.utilisation_final = opt_number(hj, "utilisation_final", source, p, &missing);
      h.gram_entropy_rank = opt_number(hj, "gram_entropy_rank", source, p, &missing);
      h.key_gram_entropy_rank = opt_number(hj, "key_gram_entropy_rank", source, p, &missing);
      h.query_gram_entropy_rank = opt_number(hj, "query_gram_entropy_rank", source, p, &missing);
      h.gram_top_half_mass = opt_number(hj, "gram_top_half_mass", source, p, &missing);
      layer.heads.push_back(std::move(h));
      ++n_heads;
    }
    a.layers.push_back(std::move(layer));
  }
  if (a.layers.empty()) a.notes.push_back("field 'layers' is empty: nothing to show");
  for (const auto& [field, n] : missing)
    a.notes.push_back(cat("field '", field, "' missing or null in ", n, " of ", n_heads, " head(s)",
                          field == "tokens" || field == "utilisation" ? ": no utilisation line for them"
                                                                      : ": shown as -"));
  return a;
}

PlotSvg render_rank_plot(const Analysis& a, const AnalysisLayer& layer) {
  PlotSvg out;
  PlotFrame f;
  double tmax = 0, umax = 1;
  for (const auto& h : layer.heads)
    for (std::size_t i = 0; i < h.tokens.size(); ++i)
      if (std::isfinite(h.tokens[i]) && std::isfinite(h.utilisation[i])) {
        tmax = std::max(tmax, h.tokens[i]);
        umax = std::max(umax, h.utilisation[i]);
      }
  if (tmax <= 0) tmax = 1;
  f.x_lo = -0.05 * tmax;  // as the ratio axis: 5% of the span each side
  f.x_hi = 1.05 * tmax;
  f.y_lo = -0.05 * umax;  // utilisation lies in [0, 1]
  f.y_hi = 1.05 * umax;
  std::string s = plot_open(f, cat("layer ", layer.layer, " rank utilisation vs tokens") +
                                  (a.model ? " (" + *a.model + ")" : std::string()));
  std::vector<std::pair<double, std::string>> xt;
  for (double v : linear_ticks(0, tmax, 6)) xt.push_back({v, tick_label(v)});
  s += axes_svg(f, linear_ticks(0, umax, 5), xt);
  s += axis_titles(f, "tokens read", "rank utilisation (stable rank / rank cap)");

  std::string legend;
  const std::size_t n = layer.heads.size();
  const double step = n > 0 ? std::min(20.0, (f.bottom - f.top - 10) / static_cast<double>(n)) : 20.0;
  const double font = step < 14 ? std::max(7.0, step - 1) : 0;
  double lx = f.right + 14, ly = f.top + 10;
  for (std::size_t k = 0; k < n; ++k) {
    const AnalysisHead& h = layer.heads[k];
    const std::string color = head_color(k), label = head_label(h);
    const int shape = static_cast<int>(k % 5);
    if (!h.has_series) {
      out.notes.push_back(label + ": no utilisation series");
    } else {
      std::vector<std::vector<std::pair<double, double>>> segs(1);
      std::string marks;
      std::size_t skipped = 0;
      const bool with_marks = h.tokens.size() <= 40;
      for (std::size_t i = 0; i < h.tokens.size(); ++i) {
        double t = h.tokens[i], u = h.utilisation[i];
        if (!std::isfinite(t) || !std::isfinite(u)) {
          ++skipped;
          if (!segs.back().empty()) segs.emplace_back();
          continue;
        }
        auto pt = to_svg(f, t, u);
        segs.back().push_back(pt);
        char tip[160];
        std::snprintf(tip, sizeof tip, ", %s tokens: utilisation %.3f", tick_label(t).c_str(), u);
        if (with_marks) marks += marker(shape, pt.first, pt.second, color, label + tip);
      }
      if (skipped) out.notes.push_back(cat(label, ": ", skipped, " of ", h.tokens.size(), " samples not plotted (null or non-finite)"));
      if (h.tokens.empty()) out.notes.push_back(label + ": empty utilisation series");
      s += "<g class=\"series\" data-head=\"" + cat(h.head) + "\">";
      for (const auto& seg : segs) {
        if (seg.size() < 2) continue;
        s += "<polyline fill=\"none\" stroke=\"" + color +
             "\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"";
        for (std::size_t i = 0; i < seg.size(); ++i)
          s += (i ? " " : "") + num(seg[i].first) + "," + num(seg[i].second);
        s += "\"/>";
      }
      s += marks + "</g>";
    }
    legend += legend_entry(lx, ly, color, shape, label, label, font);
    ly += step;
  }
  if (n == 0) out.notes.push_back(cat("layer ", layer.layer, " has no heads"));
  s += "<g class=\"legend\">" + legend + "</g></svg>";
  out.svg = std::move(s);
  return out;
}

namespace {

std::string analyses_html(const std::vector<Analysis>& as) {
  std::string h = "<section>\n<h2>Rank diagnostics</h2>\n";
  h += "<p class=\"footnote\">From <code>rankprune analyze</code> (docs/analyze.md). Plots: rank utilisation "
       "(stable rank of the delta-rule state over min(d<sub>k</sub>, d<sub>v</sub>)) as one sequence is read, one "
       "line per value head. Table: the final state's stable rank and utilisation; the entropy effective rank of "
       "the pruning Gram G (q and k before the L2 norm), the normalised-key Gram K and the normalised-query Gram "
       "Q; the share of G's spectrum held by its top half of eigenvalues. Low utilisation, low entropy rank and "
       "top-half mass near 1 mark heads that pruning should hurt little.</p>\n";
  for (const auto& a : as) {
    h += "<h3>" + (a.model ? html_escape(*a.model) : std::string("(model not recorded)")) +
         " <span class=\"footnote\">" + html_escape(a.source) + "</span></h3>\n";
    std::string meta = analysis_meta(a);
    if (!meta.empty()) h += "<p class=\"meta\">" + html_escape(meta) + "</p>\n";
    if (!a.layers.empty()) h += "<div class=\"plots\">\n";
    for (const auto& l : a.layers) {
      PlotSvg plot = render_rank_plot(a, l);
      h += cat("<figure>\n<figcaption>layer ", l.layer,
               " <span class=\"dir\">(rank utilisation vs tokens)</span></figcaption>\n") +
           plot.svg + "\n";
      for (const auto& n : plot.notes) h += "<p class=\"note\">" + html_escape(n) + "</p>\n";
      h += "</figure>\n";
    }
    if (!a.layers.empty()) {
      h += "</div>\n";
      h += analysis_table_html(a);
    }
    if (!a.tucker.empty()) h += tucker_table_html(a);
    for (const auto& n : a.notes) h += "<p class=\"note\">" + html_escape(n) + "</p>\n";
  }
  return h + "</section>\n";
}

}  // namespace

std::string render_report_html(const ReportInput& in) {
  std::vector<Analysis> analyses;  // validated first: a malformed file fails before anything is built
  for (std::size_t i = 0; i < in.analyses.size(); ++i)
    analyses.push_back(parse_analysis(in.analyses[i], i < in.analysis_files.size() && !in.analysis_files[i].empty()
                                                          ? in.analysis_files[i]
                                                          : cat("analysis #", i + 1)));
  // A report of analyses alone (no database) leaves out the empty sweep sections.
  const bool sweep = !(in.results.empty() && in.jobs.empty() && !analyses.empty());
  std::vector<Pivot> pivots = build_pivots(in.results);
  std::set<std::string> models, tasks, methods;
  std::set<long long> ratio_keys;
  for (const auto& r : in.results) {
    models.insert(r.model);
    tasks.insert(r.task);
    methods.insert(r.method);
    ratio_keys.insert(ratio_key(r.ratio));
  }
  bool many_models = models.size() > 1;

  std::string h;
  h += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  h += "<title>" + html_escape(in.title) + "</title>\n<style>" + kCss + "</style>\n</head>\n<body>\n";
  h += "<header>\n<h1>" + html_escape(in.title) + "</h1>\n";
  h += "<p class=\"meta\">generated " + html_escape(in.generated_at) + "</p>\n";
  if (!in.facts.empty()) {
    h += "<table class=\"facts\">";
    for (const auto& [k, v] : in.facts) h += "<tr><th>" + html_escape(k) + "</th><td>" + html_escape(v) + "</td></tr>";
    h += "</table>\n";
  }
  h += "<p class=\"summary\">";
  if (sweep) {
    h += cat(in.results.size(), " results; ", models.size(), " model(s), ", tasks.size(), " task(s), ",
             methods.size(), " method(s), ", ratio_keys.size(), " ratio(s)");
    if (!in.jobs.empty()) h += "; " + html_escape(job_summary(in.jobs));
    if (!analyses.empty()) h += "; ";
  }
  if (!analyses.empty()) h += cat(analyses.size(), " rank analys", analyses.size() == 1 ? "is" : "es");
  h += "</p>\n</header>\n";
  if (!sweep) {
    h += analyses_html(analyses);
    h += "<footer>rankprune report &middot; generated " + html_escape(in.generated_at) + "</footer>\n";
    return h + "</body>\n</html>\n";
  }

  h += "<section>\n<h2>Plots</h2>\n";
  if (pivots.empty()) h += "<p class=\"meta\">No results recorded yet.</p>\n";
  else
    h += "<p class=\"footnote\">One plot per task and metric: prune ratio against the metric, one line per method; "
         "methods with several seeds show the mean with min-max bars; the dashed line is the unpruned model. "
         "Perplexities use a log scale. Hover a marker for its value.</p>\n";
  h += "<div class=\"plots\">\n";
  for (const auto& p : pivots) {
    PlotSvg plot = render_plot(p);
    h += "<figure>\n<figcaption>" + pivot_caption(p, many_models) + "</figcaption>\n" + plot.svg + "\n";
    for (const auto& n : plot.notes) h += "<p class=\"note\">" + html_escape(n) + "</p>\n";
    h += "</figure>\n";
  }
  h += "</div>\n</section>\n";

  h += "<section>\n<h2>Tables</h2>\n";
  bool seeds = false;
  for (const auto& p : pivots) {
    for (const auto& kv : p.cells) seeds = seeds || kv.second.rows.size() > 1;
    h += "<h3>" + pivot_caption(p, many_models) + "</h3>\n" + pivot_table_html(p);
  }
  if (!pivots.empty()) {
    h += "<p class=\"footnote\">Bold: best method at that ratio. Cells: value ± lm-eval stderr where defined.";
    if (seeds) h += " " + html_escape(kSeedsFootnote) + " Hover a cell for the per-seed values.";
    h += "</p>\n";
  }
  h += "</section>\n";

  if (!analyses.empty()) h += analyses_html(analyses);
  h += "<section>\n<h2>Jobs</h2>\n" + jobs_html(in.jobs) + "</section>\n";
  h += "<footer>rankprune report &middot; generated " + html_escape(in.generated_at) + "</footer>\n";
  h += "</body>\n</html>\n";
  return h;
}

}  // namespace rankprune::storage
