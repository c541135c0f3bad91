// storage/format.h: pivot tables, --best, filters, csv/json long form, jobs. Expected values are
// computed by hand in the comments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "storage/format.h"

namespace rankprune::storage {
namespace {

ResultRow row(const std::string& method, double ratio, std::int64_t seed, const std::string& task,
              const std::string& metric, double value, std::optional<double> se = std::nullopt,
              const std::string& model = "fixtures/delta_net") {
  ResultRow r;
  r.model = model;
  r.method = method;
  r.ratio = ratio;
  r.seed = seed;
  r.head_k_dim = ratio == 0.0 ? 128 : 64;
  r.task = task;
  r.metric = metric;
  r.value = value;
  r.stderr_value = se;
  return r;
}

// wikitext word_perplexity (lower is better) and piqa acc (higher is better), rows deliberately
// not in display order.
std::vector<ResultRow> sample() {
  return {
      row("random", 0.5, 2, "wikitext", "word_perplexity", 59.5),
      row("l1", 0.5, 0, "wikitext", "word_perplexity", 48.0),
      row("random", 0.5, 0, "wikitext", "word_perplexity", 50.0),
      row("drrqr", 0.5, 0, "wikitext", "word_perplexity", 35.126),
      row("none", 0.0, 0, "wikitext", "word_perplexity", 31.4159),
      row("random", 0.5, 1, "wikitext", "word_perplexity", 53.0),
      row("random", 0.5, 0, "piqa", "acc", 0.70, 0.0107),
      row("random", 0.5, 1, "piqa", "acc", 0.71, 0.0106),
      row("random", 0.5, 2, "piqa", "acc", 0.72, 0.0105),
      row("l1", 0.5, 0, "piqa", "acc", 0.7500, 0.0101),
      row("drrqr", 0.5, 0, "piqa", "acc", 0.7431, 0.0102),
      row("none", 0.0, 0, "piqa", "acc", 0.7812, 0.0096),
  };
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream is(s);
  for (std::string l; std::getline(is, l);) out.push_back(l);
  return out;
}

// Index of the first line at or after `from` that starts with `prefix`, or -1.
int line_starting(const std::vector<std::string>& lines, const std::string& prefix, int from = 0) {
  for (int i = from; i < static_cast<int>(lines.size()); ++i)
    if (lines[i].rfind(prefix, 0) == 0) return i;
  return -1;
}

// Cells of a " | "-separated table line, trimmed.
std::vector<std::string> cells_of(const std::string& line) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    std::size_t bar = line.find(" | ", start);
    std::string c = line.substr(start, bar == std::string::npos ? std::string::npos : bar - start);
    while (!c.empty() && c.front() == ' ') c.erase(0, 1);
    while (!c.empty() && c.back() == ' ') c.pop_back();
    out.push_back(c);
    if (bar == std::string::npos) {
      if (line.size() >= 2 && line.compare(line.size() - 2, 2, " |") == 0) {  // trailing empty cell
        out.back().pop_back();
        while (!out.back().empty() && out.back().back() == ' ') out.back().pop_back();
        out.push_back("");
      }
      break;
    }
    start = bar + 3;
  }
  return out;
}

TEST(FormatParse, AcceptsTheFourFormats) {
  EXPECT_EQ(parse_format("table"), Format::Table);
  EXPECT_EQ(parse_format("csv"), Format::Csv);
  EXPECT_EQ(parse_format("json"), Format::Json);
  EXPECT_EQ(parse_format("markdown"), Format::Markdown);
}

TEST(FormatParse, RejectsOthersWithUsageErrorNamingTheOption) {
  for (const char* bad : {"xml", "", "Table", "md"}) {
    try {
      parse_format(bad);
      ADD_FAILURE() << "expected UsageError for '" << bad << "'";
    } catch (const UsageError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find("--format"), std::string::npos) << msg;
      EXPECT_NE(msg.find("table, csv, json, markdown"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::string("'") + bad + "'"), std::string::npos) << msg;
    }
  }
}

TEST(FormatValue, RoundsSensibly) {
  EXPECT_EQ(format_value(31.4159, "word_perplexity"), "31.42");
  EXPECT_EQ(format_value(12345.678, "word_perplexity"), "12345.68");
  EXPECT_EQ(format_value(0.78123, "acc"), "0.7812");
  EXPECT_EQ(format_value(1234.56, "acc"), "1235");
  EXPECT_EQ(format_value(12.3456, "bits_per_byte"), "12.35");
  EXPECT_EQ(format_value(2.5e8, "word_perplexity"), "2.500e+08");
  EXPECT_EQ(format_value(std::nan(""), "acc"), "nan");
  EXPECT_EQ(format_value(std::numeric_limits<double>::infinity(), "word_perplexity"), "inf");
  EXPECT_EQ(format_like(0.00958, 0.7812, "acc"), "0.0096");
  EXPECT_EQ(format_like(0.0068, 0.0, "acc"), "0.0068");  // would round to 0: two significant digits
  EXPECT_EQ(format_like(0.3, 1234.0, "acc"), "0.30");
  EXPECT_EQ(format_ratio(0.0), "0");
  EXPECT_EQ(format_ratio(0.25), "0.25");
  EXPECT_EQ(format_ratio(0.5), "0.5");
}

TEST(FormatPivot, SeedMeanMinMaxByHand) {
  auto rows = sample();
  auto pivots = build_pivots(rows);
  ASSERT_EQ(pivots.size(), 2u);  // (piqa, acc) then (wikitext, word_perplexity)
  EXPECT_EQ(pivots[0].task, "piqa");
  const Pivot& w = pivots[1];
  EXPECT_EQ(w.metric, "word_perplexity");
  ASSERT_EQ(w.ratios.size(), 2u);
  const Cell* c = w.find("random", 0.5);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(c->rows.size(), 3u);
  EXPECT_EQ(c->rows[0]->seed, 0);
  EXPECT_EQ(c->rows[2]->seed, 2);
  EXPECT_DOUBLE_EQ(c->mean, (50.0 + 53.0 + 59.5) / 3);  // 54.1666...
  EXPECT_DOUBLE_EQ(c->min, 50.0);
  EXPECT_DOUBLE_EQ(c->max, 59.5);
  EXPECT_FALSE(c->stderr_mean.has_value());
  EXPECT_EQ(format_cell(c, w.metric), "54.17 (3 seeds)");
  // piqa random: mean 0.71, stderr mean (0.0107 + 0.0106 + 0.0105) / 3 = 0.0106
  EXPECT_EQ(format_cell(pivots[0].find("random", 0.5), "acc"), "0.7100 ± 0.0106 (3 seeds)");
  EXPECT_EQ(format_cell(pivots[0].find("none", 0.0), "acc"), "0.7812 ± 0.0096");
  EXPECT_EQ(w.find("none", 0.5), nullptr);
}

TEST(FormatPivot, TableHasBaselineFirstMethodOrderAndSeedCounts) {
  std::string out = format_results(sample(), {}, Format::Table);
  auto lines = lines_of(out);
  int wiki = line_starting(lines, "wikitext / word_perplexity (lower is better)");
  ASSERT_GE(wiki, 0) << out;
  int header = wiki + 1;
  EXPECT_EQ(cells_of(lines[header]), (std::vector<std::string>{"method \\ ratio", "0", "0.5"}));
  // rows right after the rule line: none, drrqr, l1, random
  EXPECT_EQ(cells_of(lines[header + 2]), (std::vector<std::string>{"none", "31.42", "-"}));
  EXPECT_EQ(cells_of(lines[header + 3]), (std::vector<std::string>{"drrqr", "-", "35.13"}));
  EXPECT_EQ(cells_of(lines[header + 4]), (std::vector<std::string>{"l1", "-", "48.00"}));
  EXPECT_EQ(cells_of(lines[header + 5]), (std::vector<std::string>{"random", "-", "54.17 (3 seeds)"}));

  int piqa = line_starting(lines, "piqa / acc (higher is better)");
  ASSERT_GE(piqa, 0);
  EXPECT_LT(piqa, wiki);  // pivots sorted by task
  EXPECT_EQ(cells_of(lines[piqa + 3]), (std::vector<std::string>{"none", "0.7812 ± 0.0096", "-"}));
  EXPECT_EQ(cells_of(lines[piqa + 6]), (std::vector<std::string>{"random", "-", "0.7100 ± 0.0106 (3 seeds)"}));
  EXPECT_NE(out.find(kSeedsFootnote), std::string::npos);
}

TEST(FormatPivot, MethodOrder) {
  std::vector<std::string> m = {"random", "zeta", "none", "l1", "alpha", "taylor", "drrqr", "wanda", "pca", "qrcp"};
  std::sort(m.begin(), m.end(), method_less);
  EXPECT_EQ(m, (std::vector<std::string>{"none", "drrqr", "qrcp", "pca", "wanda", "l1", "taylor", "random",
                                         "alpha", "zeta"}));
  std::vector<ResultRow> rows;
  for (const char* name : {"zeta", "random", "alpha", "pca", "none", "qrcp"})
    rows.push_back(row(name, std::string(name) == "none" ? 0.0 : 0.25, 0, "t", "acc", 0.5));
  auto lines = lines_of(format_results(rows, {}, Format::Table));
  std::vector<std::string> order;
  for (std::size_t i = 3; i < lines.size() && !lines[i].empty(); ++i) order.push_back(cells_of(lines[i])[0]);
  EXPECT_EQ(order, (std::vector<std::string>{"none", "qrcp", "pca", "random", "alpha", "zeta"}));
}

TEST(FormatFilter, TaskMetricMethod) {
  auto rows = sample();
  QueryOptions o;
  o.task = "piqa";
  std::string t = format_results(rows, o, Format::Table);
  EXPECT_EQ(t.find("wikitext"), std::string::npos);
  EXPECT_NE(t.find("piqa / acc"), std::string::npos);

  QueryOptions m;
  m.metric = "word_perplexity";
  EXPECT_EQ(lines_of(format_results(rows, m, Format::Csv)).size(), 1u + 6u);

  QueryOptions r;
  r.method = "random";
  auto csv = lines_of(format_results(rows, r, Format::Csv));
  ASSERT_EQ(csv.size(), 1u + 6u);
  for (std::size_t i = 1; i < csv.size(); ++i) EXPECT_EQ(csv[i].rfind("fixtures/delta_net,random,", 0), 0u) << csv[i];

  QueryOptions both;
  both.task = "piqa";
  both.method = "l1";
  EXPECT_EQ(lines_of(format_results(rows, both, Format::Csv)).size(), 2u);

  QueryOptions none;
  none.task = "nope";
  EXPECT_EQ(format_results(rows, none, Format::Table), "no results match the filters\n");
  EXPECT_EQ(format_results(rows, none, Format::Json), "[]\n");
}

TEST(FormatBest, MinForPerplexityMaxForAccuracy) {
  QueryOptions o;
  o.best = true;
  std::string t = format_results(sample(), o, Format::Table);
  auto lines = lines_of(t);
  int wiki = line_starting(lines, "wikitext / word_perplexity");
  int piqa = line_starting(lines, "piqa / acc");
  ASSERT_GE(wiki, 0) << t;
  ASSERT_GE(piqa, 0) << t;
  EXPECT_EQ(cells_of(lines[wiki + 1]),
            (std::vector<std::string>{"ratio", "best method", "value", "unpruned", "vs unpruned"}));
  EXPECT_EQ(cells_of(lines[wiki + 3]), (std::vector<std::string>{"0", "none", "31.42", "31.42", "+0.0%"}));
  // (35.126 - 31.4159) / 31.4159 = +11.81 %
  EXPECT_EQ(cells_of(lines[wiki + 4]), (std::vector<std::string>{"0.5", "drrqr", "35.13", "31.42", "+11.8%"}));
  // (0.75 - 0.7812) / 0.7812 = -3.99 %
  EXPECT_EQ(cells_of(lines[piqa + 4]),
            (std::vector<std::string>{"0.5", "l1", "0.7500 ± 0.0101", "0.7812 ± 0.0096", "-4.0%"}));

  auto j = nlohmann::json::parse(format_results(sample(), o, Format::Json));
  ASSERT_EQ(j.size(), 4u);  // piqa: none, l1; wikitext: none, drrqr
  EXPECT_EQ(j[0]["method"], "none");
  EXPECT_EQ(j[1]["method"], "l1");
  EXPECT_DOUBLE_EQ(j[1]["value"].get<double>(), 0.75);
  EXPECT_EQ(j[3]["method"], "drrqr");
  EXPECT_DOUBLE_EQ(j[3]["value"].get<double>(), 35.126);
}

TEST(FormatBest, SeveralSeedsWinAsAMeanAndKeepAllRecords) {
  // random mean (0.80 + 0.70 + 0.78) / 3 = 0.76 beats drrqr 0.75, though seed 1 alone would not.
  std::vector<ResultRow> rows = {row("drrqr", 0.5, 0, "piqa", "acc", 0.75), row("random", 0.5, 0, "piqa", "acc", 0.80),
                                 row("random", 0.5, 1, "piqa", "acc", 0.70), row("random", 0.5, 2, "piqa", "acc", 0.78)};
  QueryOptions o;
  o.best = true;
  auto csv = lines_of(format_results(rows, o, Format::Csv));
  ASSERT_EQ(csv.size(), 4u);
  EXPECT_EQ(csv[1], "fixtures/delta_net,random,0.5,0,64,piqa,acc,0.8,");
  EXPECT_EQ(csv[2], "fixtures/delta_net,random,0.5,1,64,piqa,acc,0.7,");
  std::string t = format_results(rows, o, Format::Table);
  auto tl = lines_of(t);
  ASSERT_GE(tl.size(), 4u) << t;
  // no baseline rows: "-" in the unpruned column, no change
  EXPECT_EQ(cells_of(tl[3]), (std::vector<std::string>{"0.5", "random", "0.7600 (3 seeds)", "-", ""})) << t;
}

TEST(FormatBest, MethodFilterKeepsBaselineReference) {
  QueryOptions o;
  o.best = true;
  o.method = "random";
  o.task = "wikitext";
  auto lines = lines_of(format_results(sample(), o, Format::Table));
  ASSERT_EQ(lines.size(), 6u);  // title, header, rule, one row, blank, seeds footnote
  // (54.1667 - 31.4159) / 31.4159 = +72.42 %
  EXPECT_EQ(cells_of(lines[3]), (std::vector<std::string>{"0.5", "random", "54.17 (3 seeds)", "31.42", "+72.4%"}));
}

TEST(FormatCsv, QuotesCommasAndQuotesAndLeavesStderrEmpty) {
  std::vector<ResultRow> rows = {row("none", 0.0, 0, "wikitext", "word_perplexity", 31.4159, std::nullopt,
                                     "models/a,b \"c\""),
                                 row("l1", 0.25, 0, "piqa", "acc", 0.75, 0.0101, "plain")};
  auto lines = lines_of(format_results(rows, {}, Format::Csv));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], "model,method,ratio,seed,head_k_dim,task,metric,value,stderr");
  // sorted by model: "models/..." < "plain"
  EXPECT_EQ(lines[1], "\"models/a,b \"\"c\"\"\",none,0,0,128,wikitext,word_perplexity,31.4159,");
  EXPECT_EQ(lines[2], "plain,l1,0.25,0,64,piqa,acc,0.75,0.0101");
}

TEST(FormatJson, ParsesBackWithTheRightNumbers) {
  auto j = nlohmann::json::parse(format_results(sample(), {}, Format::Json));
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 12u);
  int seen = 0;
  for (const auto& o : j) {
    ASSERT_EQ(o.size(), 9u);
    if (o["task"] == "piqa" && o["method"] == "random" && o["seed"] == 1) {
      EXPECT_DOUBLE_EQ(o["value"].get<double>(), 0.71);
      EXPECT_DOUBLE_EQ(o["stderr"].get<double>(), 0.0106);
      EXPECT_DOUBLE_EQ(o["ratio"].get<double>(), 0.5);
      EXPECT_EQ(o["head_k_dim"], 64);
      EXPECT_EQ(o["model"], "fixtures/delta_net");
      ++seen;
    }
    if (o["task"] == "wikitext" && o["method"] == "none") {
      EXPECT_DOUBLE_EQ(o["value"].get<double>(), 31.4159);
      EXPECT_TRUE(o["stderr"].is_null());
      ++seen;
    }
  }
  EXPECT_EQ(seen, 2);
  // long form in display order: piqa first, none first within it
  EXPECT_EQ(j[0]["task"], "piqa");
  EXPECT_EQ(j[0]["method"], "none");
}

TEST(FormatMarkdown, PivotAsMarkdownTable) {
  std::string md = format_results(sample(), {}, Format::Markdown);
  EXPECT_EQ(md.rfind("### piqa / acc", 0), 0u) << md;
  EXPECT_NE(md.find("| method \\ ratio | 0 | 0.5 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| --- | ---: | ---: |"), std::string::npos);
  EXPECT_NE(md.find("| random | - | 54.17 (3 seeds) |"), std::string::npos) << md;
}

std::vector<JobRow> jobs() {
  JobRow a;
  a.id = 1;
  a.model = "fixtures/delta_net";
  a.method = "drrqr";
  a.ratio = 0.5;
  a.task = "wikitext";
  a.state = "done";
  a.attempts = 1;
  a.host = "node1";
  a.started = "2024-05-01T10:00:00Z";
  a.finished = "2024-05-01T10:01:00Z";
  a.seconds = 60.04;
  JobRow b = a;
  b.id = 2;
  b.method = "random";
  b.seed = 2;
  b.state = "failed";
  b.attempts = 3;
  b.error = "CUDA out of memory, \"allocator\" | retry";
  JobRow c = a;
  c.id = 3;
  c.state = "running";
  c.finished.clear();
  return {a, b, c};
}

TEST(FormatJobs, TableWithSummaryAndCsvJson) {
  std::string t = format_jobs(jobs(), Format::Table);
  auto lines = lines_of(t);
  ASSERT_EQ(lines.size(), 7u) << t;  // header, rule, 3 jobs, blank, summary
  EXPECT_EQ(lines.back(), "3 jobs: 1 running, 1 done, 1 failed");
  auto c1 = cells_of(lines[2]);
  ASSERT_EQ(c1.size(), 14u);
  EXPECT_EQ(c1[0], "1");
  EXPECT_EQ(c1[6], "done");
  EXPECT_EQ(c1[12], "60.0");

  auto csv = lines_of(format_jobs(jobs(), Format::Csv));
  ASSERT_EQ(csv.size(), 4u);
  EXPECT_EQ(csv[0], "id,model,method,ratio,seed,task,state,attempts,host,rank,started,finished,seconds,error");
  EXPECT_EQ(csv[2],
            "2,fixtures/delta_net,random,0.5,2,wikitext,failed,3,node1,0,2024-05-01T10:00:00Z,"
            "2024-05-01T10:01:00Z,60.04,\"CUDA out of memory, \"\"allocator\"\" | retry\"");

  auto j = nlohmann::json::parse(format_jobs(jobs(), Format::Json));
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j[1]["state"], "failed");
  EXPECT_EQ(j[1]["attempts"], 3);
  EXPECT_TRUE(j[0]["error"].is_null());
  EXPECT_TRUE(j[2]["finished"].is_null());
  EXPECT_DOUBLE_EQ(j[0]["seconds"].get<double>(), 60.04);

  std::string md = format_jobs(jobs(), Format::Markdown);
  EXPECT_NE(md.find("\\| retry"), std::string::npos) << md;
  EXPECT_NE(md.find("3 jobs: 1 running, 1 done, 1 failed"), std::string::npos);
  EXPECT_EQ(format_jobs({}, Format::Json), "[]\n");
}

}  // namespace
}  // namespace rankprune::storage
