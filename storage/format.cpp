#include "storage/format.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "common/error.h"

namespace rankprune::storage {

namespace {

std::vector<BestEntry> best_among(const Pivot& p, const std::vector<std::string>& methods);

bool is_perplexity(const std::string& metric) { return metric.find("perplexity") != std::string::npos; }

// Decimals for a fixed-point rendering of v, or -1 for scientific notation.
int decimals_for(double v, const std::string& metric) {
  double a = std::fabs(v);
  if (a >= 1e7) return -1;
  if (is_perplexity(metric)) return 2;
  if (a == 0.0) return 0;
  if (a < 1e-4) return -1;
  int e = static_cast<int>(std::floor(std::log10(a)));
  return std::max(0, 3 - e);
}

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  std::string s = buf;
  if (s == "-0" || (s.size() > 2 && s.rfind("-0.", 0) == 0 &&
                    s.find_first_not_of("0.", 1) == std::string::npos))
    s.erase(0, 1);  // no "-0.00"
  return s;
}

std::string scientific(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3e", v);
  return buf;
}

std::string nonfinite(double v) {
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

// Shortest round-trip representation, for machine-readable output.
std::string exact(double v) {
  if (!std::isfinite(v)) return nonfinite(v);
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

// Display width of UTF-8 text: code points (the tables only use ASCII and "±").
std::size_t width(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

std::string pad(const std::string& s, std::size_t w, bool right) {
  std::size_t n = width(s);
  if (n >= w) return s;
  std::string fill(w - n, ' ');
  return right ? fill + s : s + fill;
}

// A plain-text table: header, a rule, rows. Columns flagged in `right` are right-aligned.
std::string text_table(const std::vector<std::string>& header,
                       const std::vector<std::vector<std::string>>& rows,
                       const std::vector<bool>& right) {
  std::vector<std::size_t> w(header.size(), 0);
  for (std::size_t i = 0; i < header.size(); ++i) w[i] = width(header[i]);
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], width(r[i]));
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (std::size_t i = 0; i < w.size(); ++i) {
      if (i) out += " | ";
      std::string c = i < cells.size() ? cells[i] : "";
      bool r = i < right.size() && right[i];
      out += (i + 1 == w.size() && !r) ? c : pad(c, w[i], r);
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out = line(header);
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (i) out += "-+-";
    out += std::string(w[i], '-');
  }
  out += "\n";
  for (const auto& r : rows) out += line(r);
  return out;
}

std::string md_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += "\\|";
    else if (c == '\n' || c == '\r') out += ' ';
    else out += c;
  }
  return out;
}

std::string md_table(const std::vector<std::string>& header,
                     const std::vector<std::vector<std::string>>& rows,
                     const std::vector<bool>& right) {
  std::string out = "|";
  for (const auto& h : header) out += " " + md_escape(h) + " |";
  out += "\n|";
  for (std::size_t i = 0; i < header.size(); ++i)
    out += (i < right.size() && right[i]) ? " ---: |" : " --- |";
  out += "\n";
  for (const auto& r : rows) {
    out += "|";
    for (std::size_t i = 0; i < header.size(); ++i)
      out += " " + md_escape(i < r.size() ? r[i] : "") + " |";
    out += "\n";
  }
  return out;
}

std::string csv_field(const std::string& s) {
  bool quote = s.find_first_of(",\"\r\n") != std::string::npos ||
               (!s.empty() && (s.front() == ' ' || s.back() == ' '));
  if (!quote) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += "\"\"";
    else out += c;
  }
  return out + "\"";
}

std::string csv_line(const std::vector<std::string>& fields) {
  std::string out;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i) out += ',';
    out += csv_field(fields[i]);
  }
  return out + "\n";
}

std::string one_line(const std::string& s, std::size_t max_chars) {
  std::string out;
  for (char c : s) out += (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
  if (max_chars && width(out) > max_chars) {
    // cut on a code point boundary
    std::size_t n = 0, i = 0;
    for (; i < out.size(); ++i) {
      if ((static_cast<unsigned char>(out[i]) & 0xC0) != 0x80) {
        if (n == max_chars - 1) break;
        ++n;
      }
    }
    out = out.substr(0, i) + "…";
  }
  return out;
}

const std::vector<std::string> kResultFields = {"model", "method", "ratio", "seed", "head_k_dim",
                                                "task",  "metric", "value", "stderr"};

std::string results_csv(const std::vector<ResultRow>& rows) {
  std::string out = csv_line(kResultFields);
  for (const auto& r : rows)
    out += csv_line({r.model, r.method, exact(r.ratio), std::to_string(r.seed),
                     std::to_string(r.head_k_dim), r.task, r.metric, exact(r.value),
                     r.stderr_value ? exact(*r.stderr_value) : std::string()});
  return out;
}

std::string results_json(const std::vector<ResultRow>& rows) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json o;
    o["model"] = r.model;
    o["method"] = r.method;
    o["ratio"] = r.ratio;
    o["seed"] = r.seed;
    o["head_k_dim"] = r.head_k_dim;
    o["task"] = r.task;
    o["metric"] = r.metric;
    o["value"] = r.value;  // non-finite values are written as null
    if (r.stderr_value) o["stderr"] = *r.stderr_value;
    else o["stderr"] = nullptr;
    arr.push_back(std::move(o));
  }
  return arr.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string pivot_title(const Pivot& p) {
  return cat(p.task, " / ", p.metric, " (", lower_is_better(p.metric) ? "lower" : "higher",
             " is better) - model ", p.model);
}

bool pivot_has_seeds(const Pivot& p) {
  for (const auto& kv : p.cells)
    if (kv.second.rows.size() > 1) return true;
  return false;
}

// Header + rows of the default method x ratio view.
void pivot_rows(const Pivot& p, std::vector<std::string>& header,
                std::vector<std::vector<std::string>>& rows, std::vector<bool>& right) {
  header = {"method \\ ratio"};
  right = {false};
  for (double r : p.ratios) {
    header.push_back(format_ratio(r));
    right.push_back(true);
  }
  rows.clear();
  for (const auto& m : p.methods) {
    std::vector<std::string> row = {m};
    for (double r : p.ratios) {
      const Cell* c = p.find(m, r);
      row.push_back(c ? format_cell(c, p.metric) : "-");
    }
    rows.push_back(std::move(row));
  }
}

std::string percent_change(double v, double base) {
  if (!std::isfinite(v) || !std::isfinite(base) || base == 0.0) return "";
  double pct = (v - base) / std::fabs(base) * 100.0;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%+.1f%%", pct);
  std::string s = buf;
  if (s == "-0.0%") s = "+0.0%";
  return s;
}

void best_rows(const Pivot& p, const Cell* base, const std::string& only_method,
               std::vector<std::string>& header, std::vector<std::vector<std::string>>& rows,
               std::vector<bool>& right, std::vector<const Cell*>* winners) {
  header = {"ratio", "best method", "value", "unpruned", "vs unpruned"};
  right = {true, false, true, true, true};
  rows.clear();
  std::vector<std::string> methods;
  for (const auto& m : p.methods)
    if (only_method.empty() || m == only_method) methods.push_back(m);
  for (const auto& b : best_among(p, methods)) {
    bool any = false;
    for (const auto& m : methods) any = any || p.find(m, b.ratio) != nullptr;
    if (!any) continue;  // the filtered method was not evaluated at this ratio
    std::vector<std::string> row = {format_ratio(b.ratio)};
    if (b.cell) {
      row.push_back(b.method);
      row.push_back(format_cell(b.cell, p.metric));
      if (winners) winners->push_back(b.cell);
    } else {
      row.push_back("(no finite value)");
      row.push_back("");
    }
    row.push_back(base ? format_cell(base, p.metric) : "-");
    row.push_back(b.cell && base ? percent_change(b.cell->mean, base->mean) : "");
    rows.push_back(std::move(row));
  }
}

}  // namespace

const char* const kSeedsFootnote =
    "(n seeds): mean over n seeds; ± is the mean of their stderrs; a non-finite seed makes the "
    "mean non-finite.";

Format parse_format(const std::string& s) {
  if (s == "table") return Format::Table;
  if (s == "csv") return Format::Csv;
  if (s == "json") return Format::Json;
  if (s == "markdown") return Format::Markdown;
  throw UsageError(cat("--format: unknown value '", s, "'; expected one of table, csv, json, markdown"));
}

std::vector<ResultRow> filter_results(const std::vector<ResultRow>& rows, const QueryOptions& opt) {
  std::vector<ResultRow> out;
  for (const auto& r : rows) {
    if (!opt.task.empty() && r.task != opt.task) continue;
    if (!opt.metric.empty() && r.metric != opt.metric) continue;
    if (!opt.method.empty() && r.method != opt.method) continue;
    out.push_back(r);
  }
  return out;
}

int method_rank(const std::string& method) {
  static const char* const order[] = {"none", "drrqr", "qrcp", "pca", "wanda", "l1", "taylor", "random"};
  for (int i = 0; i < static_cast<int>(sizeof order / sizeof order[0]); ++i)
    if (method == order[i]) return i;
  return 100;
}

bool method_less(const std::string& a, const std::string& b) {
  int ra = method_rank(a), rb = method_rank(b);
  if (ra != rb) return ra < rb;
  return a < b;
}

std::vector<ResultRow> sorted_results(std::vector<ResultRow> rows) {
  std::stable_sort(rows.begin(), rows.end(), [](const ResultRow& a, const ResultRow& b) {
    if (a.model != b.model) return a.model < b.model;
    if (a.task != b.task) return a.task < b.task;
    if (a.metric != b.metric) return a.metric < b.metric;
    if (a.method != b.method) return method_less(a.method, b.method);
    if (ratio_key(a.ratio) != ratio_key(b.ratio)) return a.ratio < b.ratio;
    return a.seed < b.seed;
  });
  return rows;
}

std::string format_value(double v, const std::string& metric) {
  if (!std::isfinite(v)) return nonfinite(v);
  int d = decimals_for(v, metric);
  return d < 0 ? scientific(v) : fixed(v, d);
}

std::string format_like(double v, double reference, const std::string& metric) {
  if (!std::isfinite(v)) return nonfinite(v);
  if (!std::isfinite(reference)) return format_value(v, metric);
  int d = decimals_for(reference, metric);
  if (d < 0) return format_value(v, metric);
  std::string s = fixed(v, d);
  if (v != 0.0 && std::strtod(s.c_str(), nullptr) == 0.0) {
    // would round to zero at the value's precision: two significant digits instead
    int e = static_cast<int>(std::floor(std::log10(std::fabs(v))));
    return e < -8 ? scientific(v) : fixed(v, std::max(0, 1 - e));
  }
  return s;
}

std::string format_ratio(double r) {
  if (!std::isfinite(r)) return nonfinite(r);
  std::string s = fixed(r, 6);
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  return s;
}

long long ratio_key(double r) {
  if (!std::isfinite(r)) return std::numeric_limits<long long>::min();
  return std::llround(r * 1e9);
}

const Cell* Pivot::find(const std::string& method, double ratio) const {
  auto it = cells.find({method, ratio_key(ratio)});
  return it == cells.end() ? nullptr : &it->second;
}

std::vector<Pivot> build_pivots(const std::vector<ResultRow>& rows) {
  std::map<std::tuple<std::string, std::string, std::string>, std::vector<const ResultRow*>> groups;
  for (const auto& r : rows) groups[{r.model, r.task, r.metric}].push_back(&r);
  std::vector<Pivot> out;
  for (auto& [key, members] : groups) {
    Pivot p;
    std::tie(p.model, p.task, p.metric) = key;
    std::set<std::string> methods;
    std::map<long long, double> ratios;
    for (const ResultRow* r : members) {
      methods.insert(r->method);
      ratios.emplace(ratio_key(r->ratio), r->ratio);
      p.cells[{r->method, ratio_key(r->ratio)}].rows.push_back(r);
    }
    p.methods.assign(methods.begin(), methods.end());
    std::sort(p.methods.begin(), p.methods.end(), method_less);
    for (const auto& kv : ratios) p.ratios.push_back(kv.second);
    for (auto& [ck, cell] : p.cells) {
      std::stable_sort(cell.rows.begin(), cell.rows.end(),
                       [](const ResultRow* a, const ResultRow* b) { return a->seed < b->seed; });
      double sum = 0.0, se_sum = 0.0;
      std::size_t se_n = 0;
      cell.min = std::numeric_limits<double>::infinity();
      cell.max = -std::numeric_limits<double>::infinity();
      for (const ResultRow* r : cell.rows) {
        sum += r->value;
        if (std::isfinite(r->value)) {
          ++cell.n_finite;
          cell.min = std::min(cell.min, r->value);
          cell.max = std::max(cell.max, r->value);
          if (r->stderr_value && std::isfinite(*r->stderr_value)) {
            se_sum += *r->stderr_value;
            ++se_n;
          }
        }
      }
      cell.mean = sum / static_cast<double>(cell.rows.size());
      if (cell.n_finite == 0) cell.min = cell.max = std::numeric_limits<double>::quiet_NaN();
      if (se_n) cell.stderr_mean = se_sum / static_cast<double>(se_n);
      cell.head_k_dim = cell.rows.front()->head_k_dim;
    }
    out.push_back(std::move(p));
  }
  return out;
}

std::string format_cell(const Cell* cell, const std::string& metric) {
  if (!cell || cell->rows.empty()) return "";
  std::string s = format_value(cell->mean, metric);
  if (cell->stderr_mean && std::isfinite(cell->mean))
    s += " ± " + format_like(*cell->stderr_mean, cell->mean, metric);
  std::size_t n = cell->rows.size();
  if (n > 1) {
    s += cat(" (", n, " seeds");
    if (cell->n_finite < n) s += cat(", ", n - cell->n_finite, " non-finite");
    s += ")";
  }
  return s;
}

std::vector<BestEntry> best_per_ratio(const Pivot& p) { return best_among(p, p.methods); }

namespace {
std::vector<BestEntry> best_among(const Pivot& p, const std::vector<std::string>& methods) {
  bool lower = lower_is_better(p.metric);
  std::vector<BestEntry> out;
  for (double r : p.ratios) {
    BestEntry b;
    b.ratio = r;
    for (const auto& m : methods) {
      const Cell* c = p.find(m, r);
      if (!c || !std::isfinite(c->mean)) continue;
      if (!b.cell || (lower ? c->mean < b.cell->mean : c->mean > b.cell->mean)) {
        b.cell = c;
        b.method = m;
      }
    }
    out.push_back(b);
  }
  return out;
}
}  // namespace

const Cell* baseline_cell(const Pivot& p) { return p.find("none", 0.0); }

std::string format_results(const std::vector<ResultRow>& rows, const QueryOptions& opt, Format f) {
  std::vector<ResultRow> filtered = sorted_results(filter_results(rows, opt));

  if (opt.best) {
    // The baseline reference comes from the rows without the method filter.
    QueryOptions no_method = opt;
    no_method.method.clear();
    std::vector<ResultRow> pool = sorted_results(filter_results(rows, no_method));
    std::vector<Pivot> pivots = build_pivots(pool);
    std::string text;
    std::vector<const Cell*> winners;
    bool seeds = false;
    for (const auto& p : pivots) {
      std::vector<std::string> header;
      std::vector<std::vector<std::string>> trows;
      std::vector<bool> right;
      std::size_t before = winners.size();
      best_rows(p, baseline_cell(p), opt.method, header, trows, right, &winners);
      if (trows.empty()) continue;
      for (std::size_t i = before; i < winners.size(); ++i) seeds = seeds || winners[i]->rows.size() > 1;
      if (f == Format::Table) {
        if (!text.empty()) text += "\n";
        text += pivot_title(p) + "\n" + text_table(header, trows, right);
      } else if (f == Format::Markdown) {
        if (!text.empty()) text += "\n";
        text += "### " + md_escape(pivot_title(p)) + "\n\n" + md_table(header, trows, right);
      }
    }
    if (f == Format::Csv || f == Format::Json) {
      std::vector<ResultRow> best;
      for (const Cell* c : winners)
        for (const ResultRow* r : c->rows) best.push_back(*r);
      return f == Format::Csv ? results_csv(best) : results_json(best);
    }
    if (text.empty()) return "no results match the filters\n";
    if (seeds) text += cat("\n", kSeedsFootnote, "\n");
    return text;
  }

  if (f == Format::Csv) return results_csv(filtered);
  if (f == Format::Json) return results_json(filtered);

  std::vector<Pivot> pivots = build_pivots(filtered);
  if (pivots.empty()) return "no results match the filters\n";
  std::string text;
  bool seeds = false;
  for (const auto& p : pivots) {
    std::vector<std::string> header;
    std::vector<std::vector<std::string>> trows;
    std::vector<bool> right;
    pivot_rows(p, header, trows, right);
    seeds = seeds || pivot_has_seeds(p);
    if (!text.empty()) text += "\n";
    if (f == Format::Table)
      text += pivot_title(p) + "\n" + text_table(header, trows, right);
    else
      text += "### " + md_escape(pivot_title(p)) + "\n\n" + md_table(header, trows, right);
  }
  if (seeds) text += cat("\n", kSeedsFootnote, "\n");
  return text;
}

std::string job_summary(const std::vector<JobRow>& jobs) {
  std::map<std::string, std::size_t> counts;
  for (const auto& j : jobs) ++counts[j.state];
  std::string out = cat(jobs.size(), jobs.size() == 1 ? " job" : " jobs");
  std::vector<std::string> parts;
  for (const char* s : {"pending", "running", "done", "failed"}) {
    auto it = counts.find(s);
    if (it != counts.end()) {
      parts.push_back(cat(it->second, " ", s));
      counts.erase(it);
    }
  }
  for (const auto& kv : counts) parts.push_back(cat(kv.second, " ", kv.first.empty() ? "(no state)" : kv.first));
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? ", " : ": ") + parts[i];
  return out;
}

std::string format_jobs(const std::vector<JobRow>& jobs, Format f) {
  static const std::vector<std::string> fields = {"id",   "model", "method",   "ratio",   "seed",
                                                  "task", "state", "attempts", "host",    "rank",
                                                  "started", "finished", "seconds", "error"};
  if (f == Format::Csv) {
    std::string out = csv_line(fields);
    for (const auto& j : jobs)
      out += csv_line({std::to_string(j.id), j.model, j.method, exact(j.ratio), std::to_string(j.seed),
                       j.task, j.state, std::to_string(j.attempts), j.host, std::to_string(j.rank),
                       j.started, j.finished, exact(j.seconds), j.error});
    return out;
  }
  if (f == Format::Json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& j : jobs) {
      nlohmann::json o;
      o["id"] = j.id;
      o["model"] = j.model;
      o["method"] = j.method;
      o["ratio"] = j.ratio;
      o["seed"] = j.seed;
      o["task"] = j.task;
      o["state"] = j.state;
      o["attempts"] = j.attempts;
      o["host"] = j.host;
      o["rank"] = j.rank;
      o["started"] = j.started.empty() ? nlohmann::json(nullptr) : nlohmann::json(j.started);
      o["finished"] = j.finished.empty() ? nlohmann::json(nullptr) : nlohmann::json(j.finished);
      o["seconds"] = j.seconds;
      o["error"] = j.error.empty() ? nlohmann::json(nullptr) : nlohmann::json(j.error);
      arr.push_back(std::move(o));
    }
    return arr.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& j : jobs) {
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.1f", j.seconds);
    rows.push_back({std::to_string(j.id), j.model, j.method, format_ratio(j.ratio), std::to_string(j.seed),
                    j.task, j.state, std::to_string(j.attempts), j.host, std::to_string(j.rank), j.started,
                    j.finished, j.started.empty() ? "" : secs, one_line(j.error, 80)});
  }
  std::vector<bool> right = {true, false, false, true, true, false, false, true, false, true,
                             false, false, true, false};
  std::string out = f == Format::Markdown ? md_table(fields, rows, right) : text_table(fields, rows, right);
  return out + "\n" + job_summary(jobs) + "\n";
}

}  // namespace rankprune::storage
