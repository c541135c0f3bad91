#include "storage/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
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
  std::string s;
  s += cat("<svg class=\"plot\" viewBox=\"0 0 ", kPlotWidth, " ", kPlotHeight, "\" role=\"img\" aria-label=\"",
           html_escape(p.task + " " + p.metric + " vs prune ratio"), "\">");
  s += "<rect x=\"" + num(f.left) + "\" y=\"" + num(f.top) + "\" width=\"" + num(f.right - f.left) +
       "\" height=\"" + num(f.bottom - f.top) + "\" fill=\"#fff\" stroke=\"#9aa1ad\"/>";

  // y axis: grid lines, ticks, labels
  std::vector<double> yt = f.log_y ? log_ticks(f.y_lo, f.y_hi) : linear_ticks(f.y_lo, f.y_hi, 5);
  s += "<g class=\"tick\">";
  for (double v : yt) {
    double py = to_svg(f, f.x_lo, v).second;
    s += "<line x1=\"" + num(f.left) + "\" y1=\"" + num(py) + "\" x2=\"" + num(f.right) + "\" y2=\"" + num(py) +
         "\" stroke=\"#eceef2\"/>";
    s += "<line x1=\"" + num(f.left - 5) + "\" y1=\"" + num(py) + "\" x2=\"" + num(f.left) + "\" y2=\"" +
         num(py) + "\" stroke=\"#6b7280\"/>";
    s += "<text x=\"" + num(f.left - 8) + "\" y=\"" + num(py + 4) + "\" text-anchor=\"end\">" +
         html_escape(tick_label(v)) + "</text>";
  }
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
  for (double v : xt) {
    double px = to_svg(f, v, f.log_y ? f.y_lo : f.y_lo).first;
    s += "<line x1=\"" + num(px) + "\" y1=\"" + num(f.bottom) + "\" x2=\"" + num(px) + "\" y2=\"" +
         num(f.bottom + 5) + "\" stroke=\"#6b7280\"/>";
    s += "<text x=\"" + num(px) + "\" y=\"" + num(f.bottom + 18) + "\" text-anchor=\"middle\">" +
         html_escape(format_ratio(v)) + "</text>";
  }
  s += "</g>";
  // axis labels
  s += "<text x=\"" + num((f.left + f.right) / 2) + "\" y=\"" + num(f.bottom + 40) +
       "\" text-anchor=\"middle\">prune ratio</text>";
  double ymid = (f.top + f.bottom) / 2;
  s += "<text x=\"16\" y=\"" + num(ymid) + "\" text-anchor=\"middle\" transform=\"rotate(-90 16 " + num(ymid) +
       ")\">" + html_escape(p.metric) + (f.log_y ? " (log scale)" : "") + "</text>";

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
    } else {
      std::string color = method_color(m);
      s += "<line x1=\"" + num(lx) + "\" y1=\"" + num(ly) + "\" x2=\"" + num(lx + 22) + "\" y2=\"" + num(ly) +
           "\" stroke=\"" + color + "\" stroke-width=\"2\"/>";
      s += marker(method_shape(m), lx + 11, ly, color, m);
    }
    s += "<text x=\"" + num(lx + 28) + "\" y=\"" + num(ly + 4) + "\">" + html_escape(shorten(label, 20)) + "</text>";
    ly += 20;
  }
  if (any_bars)
    s += "<text class=\"tick\" x=\"" + num(lx) + "\" y=\"" + num(ly + 4) +
         "\" font-size=\"11\" fill=\"#5b6475\">bars: min-max over seeds</text>";
  s += "</g></svg>";
  out.svg = std::move(s);
  return out;
}

std::string render_report_html(const ReportInput& in) {
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
  h += cat("<p class=\"summary\">", in.results.size(), " results; ", models.size(), " model(s), ", tasks.size(),
           " task(s), ", methods.size(), " method(s), ", ratio_keys.size(), " ratio(s)");
  if (!in.jobs.empty()) h += "; " + html_escape(job_summary(in.jobs));
  h += "</p>\n</header>\n";

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

  h += "<section>\n<h2>Jobs</h2>\n" + jobs_html(in.jobs) + "</section>\n";
  h += "<footer>rankprune report &middot; generated " + html_escape(in.generated_at) + "</footer>\n";
  h += "</body>\n</html>\n";
  return h;
}

}  // namespace rankprune::storage
