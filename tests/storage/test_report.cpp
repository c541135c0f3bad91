// storage/report.h: the self-contained HTML report. Coordinates are computed by hand in comments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "storage/report.h"

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
  r.head_k_dim = static_cast<int>(std::lround(128 * (1 - ratio)));
  r.task = task;
  r.metric = metric;
  r.value = value;
  r.stderr_value = se;
  return r;
}

std::size_t count(const std::string& hay, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

ReportInput small_input() {
  ReportInput in;
  in.title = "rankprune sweep: fixtures/delta_net";
  in.generated_at = "2024-05-01T12:00:00Z";
  in.facts = {{"database", "/tmp/results.db"}, {"git", "abc123"}};
  in.results = {row("none", 0, 0, "wikitext", "word_perplexity", 31.4),
                row("drrqr", 0.5, 0, "wikitext", "word_perplexity", 40.0),
                row("random", 0.5, 0, "wikitext", "word_perplexity", 80.0),
                row("random", 0.5, 1, "wikitext", "word_perplexity", 90.0),
                row("none", 0, 0, "piqa", "acc", 0.78, 0.0096),
                row("drrqr", 0.5, 0, "piqa", "acc", 0.74, 0.0102)};
  JobRow j;
  j.id = 7;
  j.model = "fixtures/delta_net";
  j.method = "drrqr";
  j.ratio = 0.5;
  j.task = "piqa";
  j.state = "failed";
  j.error = "boom <script>alert(1)</script>";
  in.jobs = {j};
  return in;
}

TEST(ReportHtml, WellFormedAndSelfContained) {
  std::string h = render_report_html(small_input());
  EXPECT_EQ(h.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(count(h, "<html"), 1u);
  EXPECT_EQ(count(h, "</html>"), 1u);
  EXPECT_EQ(count(h, "<body>"), 1u);
  EXPECT_EQ(count(h, "</body>"), 1u);
  EXPECT_EQ(count(h, "<style>"), 1u);
  // one plot per (task, metric): (piqa, acc) and (wikitext, word_perplexity)
  EXPECT_EQ(count(h, "<svg"), 2u);
  EXPECT_EQ(count(h, "</svg>"), 2u);
  EXPECT_EQ(count(h, "<figure>"), count(h, "</figure>"));
  EXPECT_EQ(count(h, "<table"), count(h, "</table>"));
  // nothing external
  for (const char* bad : {"http", "<script", "<link", "<img", "src=", "url(", "@import", "@font-face"})
    EXPECT_EQ(h.find(bad), std::string::npos) << bad;
  // tables and jobs below the plots
  std::size_t plots = h.find("<h2>Plots</h2>"), tables = h.find("<h2>Tables</h2>"), jobs = h.find("<h2>Jobs</h2>");
  ASSERT_NE(plots, std::string::npos);
  EXPECT_LT(plots, tables);
  EXPECT_LT(tables, jobs);
  EXPECT_NE(h.find("85.00 (2 seeds)"), std::string::npos);  // (80 + 90) / 2, as in the table format
  EXPECT_NE(h.find("1 job: 1 failed (model fixtures/delta_net)"), std::string::npos);
  EXPECT_NE(h.find("state-failed"), std::string::npos);
}

TEST(ReportHtml, EscapesAllText) {
  ReportInput in = small_input();
  const std::string nasty = "fixtures/<a&b>\"q\"";
  in.title = "rankprune sweep: " + nasty;
  in.facts.push_back({"models", nasty});
  for (auto& r : in.results) r.model = nasty;
  in.results.push_back(row("my<method>", 0.5, 0, "piqa", "acc", 0.7, std::nullopt, nasty));
  in.jobs[0].model = nasty;
  std::string h = render_report_html(in);
  EXPECT_EQ(h.find("<a&b>"), std::string::npos);
  EXPECT_EQ(h.find("<method>"), std::string::npos);
  EXPECT_EQ(h.find("<script>"), std::string::npos);
  EXPECT_NE(h.find("fixtures/&lt;a&amp;b&gt;&quot;q&quot;"), std::string::npos);
  EXPECT_NE(h.find("<title>rankprune sweep: fixtures/&lt;a&amp;b&gt;&quot;q&quot;</title>"), std::string::npos);
  EXPECT_NE(h.find("my&lt;method&gt;"), std::string::npos);
  EXPECT_NE(h.find("boom &lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_EQ(html_escape("a'b"), "a&#39;b");
}

TEST(ReportPlot, LogScaleDecision) {
  EXPECT_TRUE(use_log_scale("word_perplexity", {31.4, 12000.0}));
  EXPECT_TRUE(use_log_scale("perplexity", {3.0, std::numeric_limits<double>::infinity()}));
  EXPECT_FALSE(use_log_scale("acc", {0.5, 0.7}));
  EXPECT_FALSE(use_log_scale("bits_per_byte", {0.9, 1.2}));
  EXPECT_FALSE(use_log_scale("word_perplexity", {-1.0, 3.0}));  // not positive: linear
  EXPECT_FALSE(use_log_scale("word_perplexity", {std::nan("")}));

  const auto input = small_input();  // the pivots point into its results: keep it alive
  auto pivots = build_pivots(input.results);
  ASSERT_EQ(pivots.size(), 2u);
  EXPECT_FALSE(plot_frame(pivots[0]).log_y);  // piqa acc
  EXPECT_TRUE(plot_frame(pivots[1]).log_y);   // wikitext word_perplexity
  EXPECT_NE(render_plot(pivots[1]).svg.find("word_perplexity (log scale)"), std::string::npos);
  EXPECT_EQ(render_plot(pivots[0]).svg.find("(log scale)"), std::string::npos);
}

TEST(ReportPlot, CoordinateMappingByHand) {
  PlotFrame f;
  f.x_lo = 0;
  f.x_hi = 1;
  f.y_lo = 0;
  f.y_hi = 100;
  f.left = 100;
  f.right = 500;
  f.top = 50;
  f.bottom = 250;
  auto p = to_svg(f, 0.25, 40);  // x: 100 + 0.25 * 400; y: 250 - 0.4 * 200
  EXPECT_DOUBLE_EQ(p.first, 200);
  EXPECT_DOUBLE_EQ(p.second, 170);
  f.log_y = true;
  f.y_lo = 1;
  f.y_hi = 1000;
  p = to_svg(f, 1, 10);  // log10: 1/3 of the way up: 250 - 200 / 3
  EXPECT_DOUBLE_EQ(p.first, 500);
  EXPECT_NEAR(p.second, 250 - 200.0 / 3, 1e-9);
  EXPECT_NEAR(to_svg(f, 0, 1000).second, 50, 1e-9);
}

TEST(ReportPlot, TwoPointPolylineByHand) {
  std::vector<ResultRow> rows = {row("drrqr", 0.25, 0, "t", "acc", 10), row("drrqr", 0.5, 0, "t", "acc", 20)};
  auto pivots = build_pivots(rows);
  ASSERT_EQ(pivots.size(), 1u);
  PlotFrame f = plot_frame(pivots[0]);
  // x: [0, 0.5] padded by 0.025; y: [10, 20] padded by 0.8
  EXPECT_DOUBLE_EQ(f.x_lo, -0.025);
  EXPECT_DOUBLE_EQ(f.x_hi, 0.525);
  EXPECT_DOUBLE_EQ(f.y_lo, 9.2);
  EXPECT_DOUBLE_EQ(f.y_hi, 20.8);
  EXPECT_FALSE(f.log_y);
  // x(0.25) = 70 + 0.275 / 0.55 * 410 = 275;      y(10) = 330 - 0.8 / 11.6 * 310 = 308.6207
  // x(0.5)  = 70 + 0.525 / 0.55 * 410 = 461.3636; y(20) = 330 - 10.8 / 11.6 * 310 = 41.3793
  std::string svg = render_plot(pivots[0]).svg;
  EXPECT_NE(svg.find("points=\"275.00,308.62 461.36,41.38\""), std::string::npos) << svg;
  EXPECT_EQ(count(svg, "<polyline"), 1u);
  EXPECT_NE(svg.find("stroke=\"" + method_color("drrqr") + "\""), std::string::npos);
  EXPECT_EQ(svg.find("unpruned"), std::string::npos);  // no baseline rows
}

TEST(ReportPlot, NonFiniteValuesAreSkippedAndNoted) {
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<ResultRow> rows = {row("none", 0, 0, "t", "acc", 0.8),
                                 row("drrqr", 0.25, 0, "t", "acc", 0.7),
                                 row("drrqr", 0.5, 0, "t", "acc", 0.6),
                                 row("drrqr", 0.75, 0, "t", "acc", std::nan("")),
                                 row("random", 0.5, 0, "t", "acc", 0.5),
                                 row("random", 0.5, 1, "t", "acc", inf),
                                 row("random", 0.5, 2, "t", "acc", 0.4)};
  auto pivots = build_pivots(rows);
  PlotFrame f = plot_frame(pivots[0]);
  // plotted values only: baseline 0.8, drrqr 0.7 / 0.6 (random's mean is inf, its finite seeds
  // 0.4 / 0.5 are not drawn); span 0.2, pad 0.016
  EXPECT_NEAR(f.y_lo, 0.6 - 0.016, 1e-12);
  EXPECT_NEAR(f.y_hi, 0.8 + 0.016, 1e-12);
  PlotSvg p = render_plot(pivots[0]);
  EXPECT_EQ(p.svg.find("nan"), std::string::npos);
  EXPECT_EQ(p.svg.find("inf"), std::string::npos);
  ASSERT_EQ(p.notes.size(), 2u);
  EXPECT_EQ(p.notes[0], "drrqr at ratio 0.75 not plotted (value is nan)");
  EXPECT_EQ(p.notes[1], "random at ratio 0.5 not plotted (mean is inf; 1 of 3 seeds non-finite)");
  // drrqr keeps its two finite points as one line
  EXPECT_EQ(count(p.svg, "<polyline"), 1u);
  std::size_t pts = p.svg.find("points=\"");
  ASSERT_NE(pts, std::string::npos);
  std::string list = p.svg.substr(pts + 8, p.svg.find('"', pts + 8) - pts - 8);
  EXPECT_EQ(count(list, ","), 2u) << list;
  ReportInput in;
  in.title = "t";
  in.generated_at = "now";
  in.results = rows;
  std::string h = render_report_html(in);
  EXPECT_NE(h.find("drrqr at ratio 0.75 not plotted (value is nan)"), std::string::npos);
}

TEST(ReportPlot, BaselineOnlyAndSingleRatio) {
  auto only_base = build_pivots({row("none", 0, 0, "lambada_openai", "acc", 0.41)});
  PlotSvg b = render_plot(only_base[0]);
  EXPECT_NE(b.svg.find("stroke-dasharray"), std::string::npos);
  EXPECT_NE(b.svg.find("unpruned 0.4100"), std::string::npos);
  ASSERT_EQ(b.notes.size(), 1u);
  EXPECT_EQ(b.notes[0], "only the unpruned baseline was evaluated");
  PlotFrame f = plot_frame(only_base[0]);
  EXPECT_DOUBLE_EQ(f.x_lo, -0.05);  // [0, 1] padded
  EXPECT_DOUBLE_EQ(f.x_hi, 1.05);
  EXPECT_NEAR(f.y_lo, 0.41 - 0.0205, 1e-12);  // zero span: 5% of the value
  EXPECT_NEAR(f.y_hi, 0.41 + 0.0205, 1e-12);

  auto single = build_pivots({row("pca", 0.5, 0, "piqa", "acc", 0.6)});
  PlotSvg s = render_plot(single[0]);
  EXPECT_EQ(count(s.svg, "<polyline"), 0u);  // one point: a marker, no line
  EXPECT_NE(s.svg.find("<title>pca, ratio 0.5: 0.6000</title>"), std::string::npos) << s.svg;
  EXPECT_TRUE(s.notes.empty());
}

TEST(ReportPlot, SeedsShowMeanWithMinMaxBars) {
  const auto input = small_input();
  auto pivots = build_pivots(input.results);
  std::string svg = render_plot(pivots[1]).svg;  // wikitext: random seeds 80 and 90
  EXPECT_NE(svg.find("random (2 seeds)"), std::string::npos);
  EXPECT_NE(svg.find("bars: min-max over seeds"), std::string::npos);
  PlotFrame f = plot_frame(pivots[1]);
  auto lo = to_svg(f, 0.5, 80), hi = to_svg(f, 0.5, 90);
  char bar[128];
  std::snprintf(bar, sizeof bar, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/>", lo.first, lo.second,
                hi.first, hi.second);
  EXPECT_NE(svg.find(bar), std::string::npos) << bar;
}

TEST(ReportPlot, Ticks) {
  auto t = linear_ticks(0, 1, 5);
  ASSERT_EQ(t.size(), 6u);
  for (std::size_t i = 0; i < t.size(); ++i) EXPECT_NEAR(t[i], 0.2 * static_cast<double>(i), 1e-12);
  EXPECT_EQ(linear_ticks(9.2, 20.8, 5), (std::vector<double>{10, 12.5, 15, 17.5, 20}));  // step 11.6 / 5 -> 2.5
  EXPECT_EQ(log_ticks(20, 20000), (std::vector<double>{100, 1000, 10000}));
  EXPECT_EQ(log_ticks(20, 60), (std::vector<double>{20, 30, 40, 50, 60}));
  EXPECT_EQ(log_ticks(15, 600), (std::vector<double>{20, 50, 100, 200, 500}));
}


// ---- rank diagnostics ----

// Two layers x two heads, samples at t = 50 and 100. Layer 1 head 1 lacks query_gram_entropy_rank.
nlohmann::json small_analysis(const std::string& model = "runs/<m&1>\"x\"") {
  auto head = [](int h, std::vector<double> util, double sr, double uf, double g, double m, double k, double q) {
    return nlohmann::json{{"head", h},
                          {"key_head", h},
                          {"tokens", {50, 100}},
                          {"utilisation", util},
                          {"stable_rank", {1.0, 2.0}},
                          {"stable_rank_final", sr},
                          {"utilisation_final", uf},
                          {"gram_entropy_rank", g},
                          {"gram_top_half_mass", m},
                          {"key_gram_entropy_rank", k},
                          {"query_gram_entropy_rank", q}};
  };
  nlohmann::json j = {{"model", model},     {"seq_len", 100},   {"every", 50},
                      {"head_k_dim", 8},    {"head_v_dim", 8},  {"rank_cap", 8},
                      {"gram_tokens", 400}, {"data_sha", "abc"}};
  nlohmann::json l1h1 = head(1, {0.375, 0.75}, 6.0, 0.75, 3.0, 0.9, 2.0, 0.0);
  l1h1.erase("query_gram_entropy_rank");
  j["layers"] = {{{"layer", 0},
                  {"heads",
                   {head(0, {0.25, 0.5}, 2.2554, 0.28193, 5.2016, 0.80349, 6.0333, 12.5),
                    head(1, {0.125, 1.0}, 8.0, 1.0, 7.99951, 0.5, 7.0, 7.25)}}},
                 {{"layer", 1}, {"heads", {head(0, {0.5, 0.5}, 4.0, 0.5, 4.0, 0.6, 4.0, 4.0), l1h1}}}};
  return j;
}

std::string error_of(const nlohmann::json& j) {
  ReportInput in;
  in.analyses = {j};
  in.analysis_files = {"an.json"};
  try {
    render_report_html(in);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no InputError)";
}

// The svg elements of the rank diagnostics section, in order.
std::vector<std::string> section_svgs(const std::string& h) {
  std::vector<std::string> out;
  std::size_t sec = h.find("<h2>Rank diagnostics</h2>");
  if (sec == std::string::npos) return out;
  for (std::size_t p = h.find("<svg", sec); p != std::string::npos; p = h.find("<svg", p + 1))
    out.push_back(h.substr(p, h.find("</svg>", p) + 6 - p));
  return out;
}

TEST(ReportAnalysis, OnePlotPerLayerOneLinePerHead) {
  ReportInput in;
  in.title = "t";
  in.analyses = {small_analysis()};
  in.analysis_files = {"/tmp/an.json"};
  std::string h = render_report_html(in);
  // analyses alone: no sweep sections
  EXPECT_EQ(h.find("<h2>Plots</h2>"), std::string::npos);
  EXPECT_EQ(h.find("<h2>Jobs</h2>"), std::string::npos);
  EXPECT_NE(h.find("1 rank analysis"), std::string::npos);
  auto svgs = section_svgs(h);
  ASSERT_EQ(svgs.size(), 2u);  // one per layer
  EXPECT_EQ(count(h, "<svg"), 2u);
  EXPECT_EQ(count(h, "<table"), count(h, "</table>"));
  EXPECT_EQ(count(h, "<figure>"), count(h, "</figure>"));
  for (const auto& svg : svgs) {
    EXPECT_EQ(count(svg, "<polyline"), 2u) << svg;  // one per head
    EXPECT_NE(svg.find(">head 0</text>"), std::string::npos);
    EXPECT_NE(svg.find(">head 1</text>"), std::string::npos);
    EXPECT_NE(svg.find(">tokens read</text>"), std::string::npos);
    EXPECT_NE(svg.find("stroke=\"" + head_color(0) + "\""), std::string::npos);
    EXPECT_NE(svg.find("stroke=\"" + head_color(1) + "\""), std::string::npos);
  }
  EXPECT_NE(head_color(0), head_color(1));
  // x: [0, 100] padded by 5 -> [-5, 105]; y: [0, 1] padded by 0.05 -> [-0.05, 1.05]
  // x(50) = 70 + 55 / 110 * 410 = 275;  x(100) = 70 + 105 / 110 * 410 = 461.3636
  // y(0.25) = 330 - 0.30 / 1.1 * 310 = 245.4545;  y(0.5) = 330 - 0.55 / 1.1 * 310 = 175
  // y(0.125) = 330 - 0.175 / 1.1 * 310 = 280.6818; y(1) = 330 - 1.05 / 1.1 * 310 = 34.0909
  EXPECT_NE(svgs[0].find("points=\"275.00,245.45 461.36,175.00\""), std::string::npos) << svgs[0];
  EXPECT_NE(svgs[0].find("points=\"275.00,280.68 461.36,34.09\""), std::string::npos) << svgs[0];
  // y ticks 0, 0.2, ..., 1 and x ticks 0, 20, ..., 100
  EXPECT_NE(svgs[0].find(">0.2</text>"), std::string::npos);
  EXPECT_NE(svgs[0].find(">100</text>"), std::string::npos);
  EXPECT_NE(svgs[0].find("<title>head 1, 100 tokens: utilisation 1.000</title>"), std::string::npos);
  // the table, one row per (layer, head), 3 decimals
  EXPECT_NE(h.find("<tr><td class=\"num\">0</td><td class=\"num\">0</td><td class=\"num\">2.255</td>"
                   "<td class=\"num\">0.282</td><td class=\"num\">5.202</td><td class=\"num\">6.033</td>"
                   "<td class=\"num\">12.500</td><td class=\"num\">0.803</td></tr>"),
            std::string::npos)
      << h;
  EXPECT_NE(h.find("<tr><td class=\"num\">0</td><td class=\"num\">1</td><td class=\"num\">8.000</td>"
                   "<td class=\"num\">1.000</td><td class=\"num\">8.000</td><td class=\"num\">7.000</td>"
                   "<td class=\"num\">7.250</td><td class=\"num\">0.500</td></tr>"),
            std::string::npos);
  // missing field: "-" in the table and a visible note
  EXPECT_NE(h.find("<tr><td class=\"num\">1</td><td class=\"num\">1</td><td class=\"num\">6.000</td>"
                   "<td class=\"num\">0.750</td><td class=\"num\">3.000</td><td class=\"num\">2.000</td>"
                   "<td class=\"num\">-</td><td class=\"num\">0.900</td></tr>"),
            std::string::npos);
  EXPECT_NE(h.find("<p class=\"note\">field &#39;query_gram_entropy_rank&#39; missing or null in 1 of 4 head(s): "
                   "shown as -</p>"),
            std::string::npos)
      << h;
  EXPECT_NE(h.find("rank cap min(d_k, d_v) = 8"), std::string::npos);
  EXPECT_EQ(count(h, "<tr><td class=\"num\">"), 4u);
}

TEST(ReportAnalysis, EscapesModelPath) {
  ReportInput in;
  in.analyses = {small_analysis()};
  in.analysis_files = {"dir/<f>.json"};
  std::string h = render_report_html(in);
  EXPECT_EQ(h.find("<m&1>"), std::string::npos);
  EXPECT_EQ(h.find("<f>"), std::string::npos);
  EXPECT_NE(h.find("<h3>runs/&lt;m&amp;1&gt;&quot;x&quot; <span class=\"footnote\">dir/&lt;f&gt;.json</span></h3>"),
            std::string::npos)
      << h;
  EXPECT_NE(h.find("aria-label=\"layer 0 rank utilisation vs tokens (runs/&lt;m&amp;1&gt;&quot;x&quot;)\""),
            std::string::npos);
}

TEST(ReportAnalysis, MissingFieldsAreNotedNotFatal) {
  nlohmann::json j = small_analysis("m");
  j.erase("model");
  j["layers"][0]["heads"][1].erase("utilisation");
  j["layers"][1]["heads"][0]["utilisation"][1] = nullptr;  // non-finite, as nlohmann writes NaN
  ReportInput in;
  in.analyses = {j};
  std::string h = render_report_html(in);
  auto svgs = section_svgs(h);
  ASSERT_EQ(svgs.size(), 2u);
  EXPECT_EQ(count(svgs[0], "<polyline"), 1u);   // head 1 has no series
  EXPECT_NE(svgs[0].find(">head 1</text>"), std::string::npos);  // still in the legend
  EXPECT_EQ(count(svgs[1], "<polyline"), 1u);   // head 0 has one point left: no line
  EXPECT_NE(h.find("head 1: no utilisation series"), std::string::npos);
  EXPECT_NE(h.find("head 0: 1 of 2 samples not plotted (null or non-finite)"), std::string::npos);
  EXPECT_NE(h.find("(model not recorded)"), std::string::npos);
  EXPECT_NE(h.find("analysis #1"), std::string::npos);
  EXPECT_NE(h.find("field &#39;utilisation&#39; missing or null in 1 of 4 head(s)"), std::string::npos);
  EXPECT_EQ(h.find("nan"), std::string::npos);
}

TEST(ReportAnalysis, MalformedJsonNamesFileAndField) {
  nlohmann::json j = small_analysis();
  j["layers"][0]["heads"][1]["utilisation"][1] = "x";
  EXPECT_EQ(error_of(j), "an.json: field 'layers[0].heads[1].utilisation[1]' must be a number, got string");

  j = small_analysis();
  j["layers"][1]["heads"][0]["gram_entropy_rank"] = "5";
  EXPECT_EQ(error_of(j), "an.json: field 'layers[1].heads[0].gram_entropy_rank' must be a number, got string");

  j = small_analysis();
  j["layers"][0]["heads"][0]["tokens"] = {50, 100, 150};
  EXPECT_EQ(error_of(j),
            "an.json: field 'layers[0].heads[0].utilisation' has 2 entries but 'layers[0].heads[0].tokens' has 3");

  j = small_analysis();
  j.erase("layers");
  EXPECT_EQ(error_of(j), "an.json: field 'layers' is missing (not a `rankprune analyze` JSON?)");

  j = small_analysis();
  j["layers"][1]["heads"] = 3;
  EXPECT_EQ(error_of(j), "an.json: field 'layers[1].heads' must be an array, got number");

  j = small_analysis();
  j["model"] = 7;
  EXPECT_EQ(error_of(j), "an.json: field 'model' must be a string, got number");

  EXPECT_EQ(error_of(nlohmann::json::array()), "an.json: an analyze JSON must be an object, got array");
}

nlohmann::json tucker_only() {
  return {{"model", "stories260K.bin"},
          {"tucker",
           {{"layout", "[heads, head_dim, hidden]"},
            {"layers",
             {{{"layer", 0},
               {"projections",
                {{{"name", "q"}, {"shape", {8, 8, 64}}, {"entropy_rank", {7.5, 6.25, 30.125}},
                  {"singular_values", {{3.0, 2.0}, {4.0, 1.0}, {5.5, 0.5}}}},
                 {{"name", "k"}, {"shape", {4, 8, 64}}, {"entropy_rank", {3.5, 7.0, 20.0}},
                  {"singular_values", {{1.0}, {2.0}, {3.0}}}}}}}}}}}};
}

TEST(ReportAnalysis, TuckerSpectraTable) {
  ReportInput in;
  in.title = "t";
  in.analyses = {tucker_only()};
  in.analysis_files = {"tk.json"};
  const std::string h = render_report_html(in);
  EXPECT_NE(h.find("Multilinear spectra"), std::string::npos);
  EXPECT_NE(h.find("30.125"), std::string::npos);
  EXPECT_NE(h.find("8&times;8&times;64"), std::string::npos);
  EXPECT_NE(h.find("5.500"), std::string::npos);  // sigma_1 of the hidden mode
  EXPECT_EQ(h.find("<svg"), std::string::npos);   // no state series: no plots
  auto j = tucker_only();
  j["tucker"]["layers"][0]["projections"][1]["entropy_rank"] = {1.0, 2.0};
  EXPECT_EQ(error_of(j), "an.json: field 'tucker.layers[0].projections[1].entropy_rank' must have 3 entries, got 2");
  j = tucker_only();
  j["tucker"]["layers"][0]["projections"][0]["singular_values"][2][1] = "x";
  EXPECT_EQ(error_of(j), "an.json: field 'tucker.layers[0].projections[0].singular_values[2][1]' must be a number");
  j = tucker_only();
  j["tucker"] = 3;
  EXPECT_EQ(error_of(j), "an.json: field 'tucker' must be an object, got number");
}

TEST(ReportAnalysis, SectionSitsBetweenTablesAndJobs) {
  ReportInput in = small_input();
  in.analyses = {small_analysis(), small_analysis("other")};
  std::string h = render_report_html(in);
  std::size_t tables = h.find("<h2>Tables</h2>"), rank = h.find("<h2>Rank diagnostics</h2>"),
              jobs = h.find("<h2>Jobs</h2>");
  ASSERT_NE(rank, std::string::npos);
  EXPECT_LT(tables, rank);
  EXPECT_LT(rank, jobs);
  EXPECT_EQ(count(h, "<svg"), 2u + 4u);  // 2 sweep plots + 2 analyses x 2 layers
  EXPECT_NE(h.find("2 rank analyses"), std::string::npos);
  EXPECT_NE(h.find("<h3>other <span class=\"footnote\">analysis #2</span></h3>"), std::string::npos);
}

}  // namespace
}  // namespace rankprune::storage
