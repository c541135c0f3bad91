// Result and job formatting for `rankprune query` / `rankprune jobs`: pure functions over plain
// rows (storage/rows.h). Torch-free, SQL-free. The HTML report (storage/report.h) reuses the
// pivot tables built here so that both show the same numbers.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "storage/rows.h"

namespace rankprune::storage {

enum class Format { Table, Csv, Json, Markdown };

// "table" | "csv" | "json" | "markdown"; anything else is a UsageError naming --format and the
// accepted values.
Format parse_format(const std::string& s);

// Filters: an empty string matches anything.
struct QueryOptions {
  std::string task, metric, method;
  bool best = false;
};

// Default view (table/markdown): for each (model, task, metric) a method x ratio pivot. One row per
// method (the unpruned baseline "none" first, then drrqr, qrcp, pca, wanda, l1, taylor, random,
// then other methods alphabetically), one column per ratio (the 0 column holds the baseline).
// A cell is "value ± stderr"; several seeds of one (method, ratio) give their mean with the seed
// count, e.g. "40.12 ± 0.30 (3 seeds)", explained in a footnote.
// --best: per (model, task, metric, ratio) the best method (direction from lower_is_better) with
// its value, and the unpruned value for reference.
// csv/json: long form, one record per ResultRow after filtering (all fields; stderr empty / null
// when absent). With --best they hold the rows of the winning (method, ratio) cells only.
std::string format_results(const std::vector<ResultRow>& rows, const QueryOptions& opt, Format f);

// Jobs: id, model, method, ratio, seed, task, state, attempts, host, rank, started, finished,
// seconds, error. table/markdown end with a summary line of counts per state.
std::string format_jobs(const std::vector<JobRow>& jobs, Format f);

// ---- building blocks, shared with the HTML report and exposed for tests ----

// Rows matching the filters of `opt` (task/metric/method; `best` is ignored here).
std::vector<ResultRow> filter_results(const std::vector<ResultRow>& rows, const QueryOptions& opt);

// Position of a method in the display order: none, drrqr, qrcp, pca, wanda, l1, taylor, random,
// then everything else (alphabetically among themselves, via method_less).
int method_rank(const std::string& method);
bool method_less(const std::string& a, const std::string& b);

// Rows sorted by model, task, metric, method order, ratio, seed (stable otherwise).
std::vector<ResultRow> sorted_results(std::vector<ResultRow> rows);

// A number for humans: perplexities with 2 decimals, everything else about 4 significant digits
// ("0.7812", "31.42", "1235"); huge / tiny magnitudes in scientific notation; "nan", "inf".
std::string format_value(double v, const std::string& metric);
// The same number of decimals as format_value(reference, metric) would use (for "± stderr").
std::string format_like(double v, double reference, const std::string& metric);
// A prune ratio: shortest form, "0", "0.25", "0.5".
std::string format_ratio(double r);

// All seeds of one (model, task, metric, method, ratio).
struct Cell {
  std::vector<const ResultRow*> rows;   // sorted by seed
  std::size_t n_finite = 0;             // rows with a finite value
  double mean = 0.0;                    // over finite values; NaN when none is finite
  double min = 0.0, max = 0.0;          // over finite values
  std::optional<double> stderr_mean;    // mean of the stderrs present (finite rows only)
  int head_k_dim = 0;                   // of the first row
  // Mean of all values when none is finite (nan / inf / -inf as it happens).
  double display_value() const;
};

// One (model, task, metric) table.
struct Pivot {
  std::string model, task, metric;
  std::vector<std::string> methods;   // display order
  std::vector<double> ratios;         // ascending
  std::map<std::pair<std::string, long long>, Cell> cells;  // (method, ratio_key(ratio))
  const Cell* find(const std::string& method, double ratio) const;
};

// Ratios equal to 1e-9 share a key.
long long ratio_key(double r);

// Groups rows into pivots, ordered by model, task, metric. The returned pivots point into `rows`,
// which must outlive them.
std::vector<Pivot> build_pivots(const std::vector<ResultRow>& rows);

// The text of one pivot cell: "31.42", "0.7812 ± 0.0096", "40.12 ± 0.30 (3 seeds)",
// "40.12 (3 seeds, 1 non-finite)". Empty when the cell is null.
std::string format_cell(const Cell* cell, const std::string& metric);

// The best method at every ratio of a pivot: the finite cell mean that is lowest
// (lower_is_better) or highest; ties go to the earlier method in display order.
struct BestEntry {
  double ratio = 0.0;
  std::string method;          // empty when no method has a finite value at this ratio
  const Cell* cell = nullptr;  // the winning cell
};
std::vector<BestEntry> best_per_ratio(const Pivot& p);

// The unpruned baseline cell of a pivot (method "none", ratio 0), or nullptr.
const Cell* baseline_cell(const Pivot& p);

// Footnote for pivots with several seeds in a cell.
extern const char* const kSeedsFootnote;

// Job state counts in the order pending, running, done, failed, then others alphabetically:
// "5 jobs: 1 pending, 1 running, 2 done, 1 failed".
std::string job_summary(const std::vector<JobRow>& jobs);

}  // namespace rankprune::storage
