// Task readers against the shipped files: item counts, the exact lm-eval prompt of each file's
// first item, wikitext documents and detokenizer, rolling windows, malformed-row errors.
#include <gtest/gtest.h>

#include "tests/testing/testing.h"

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "common/error.h"
#include "common/sha256.h"
#include "eval/tasks.h"

namespace rankprune::eval {
namespace {

// rp_testing's data_dir() needs LibTorch; this binary does not, so it resolves the same way here.
std::string data_dir() {
  if (const char* env = std::getenv("RANKPRUNE_DATA_DIR"); env && *env) return env;
  return std::string(RANKPRUNE_SOURCE_DIR) + "/../shared/data";
}
std::string task_file(const std::string& rel) { return data_dir() + "/tasks/" + rel; }
std::string wikitext_file() { return data_dir() + "/text/wikitext2/wiki.test.raw"; }

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = (std::filesystem::temp_directory_path() /
             ("rp_test_eval_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
                .string();
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string write(const std::string& name, const std::string& content) const {
    const std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }

 private:
  std::string path_;
};

// Header-only helper; this torch-free binary does not link rp_testing.
using rankprune::testing::expect_input_error;

TEST(Tasks, ItemCounts) {
  EXPECT_EQ(read_piqa(task_file("piqa/valid.jsonl"), task_file("piqa/valid-labels.lst")).size(), 1838u);
  EXPECT_EQ(read_hellaswag(task_file("hellaswag/hellaswag_val_full.txt")).size(), 10042u);
  EXPECT_EQ(read_arc(task_file("llmfoundry/arc_easy.jsonl")).size(), 2376u);
  EXPECT_EQ(read_arc(task_file("llmfoundry/arc_challenge.jsonl")).size(), 1172u);
  EXPECT_EQ(read_winogrande(task_file("llmfoundry/winogrande.jsonl")).size(), 1267u);
  EXPECT_EQ(read_lambada(task_file("lambada_openai/lambada_test.jsonl")).size(), 5153u);
}

TEST(Tasks, LimitTakesFirstItemsInFileOrder) {
  const auto all = read_arc(task_file("llmfoundry/arc_easy.jsonl"));
  const auto three = read_arc(task_file("llmfoundry/arc_easy.jsonl"), 3);
  ASSERT_EQ(three.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(three[i].context, all[i].context);
  EXPECT_EQ(read_arc(task_file("llmfoundry/arc_easy.jsonl"), 0).size(), all.size());
  EXPECT_EQ(read_arc(task_file("llmfoundry/arc_easy.jsonl"), -1).size(), all.size());
  EXPECT_EQ(read_hellaswag(task_file("hellaswag/hellaswag_val_full.txt"), 2).size(), 2u);
  EXPECT_EQ(read_piqa(task_file("piqa/valid.jsonl"), task_file("piqa/valid-labels.lst"), 5).size(), 5u);
  EXPECT_EQ(read_wikitext(wikitext_file(), 4).size(), 4u);
  EXPECT_EQ(read_lambada(task_file("lambada_openai/lambada_test.jsonl"), 10000).size(), 5153u);
}

TEST(Tasks, PiqaFirstItem) {
  // piqa.yaml: doc_to_text "Question: {{goal}}\nAnswer:", doc_to_choice [sol1, sol2], target
  // delimiter " "; valid-labels.lst line 1 is 0.
  const auto items = read_piqa(task_file("piqa/valid.jsonl"), task_file("piqa/valid-labels.lst"), 1);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].context, "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:");
  ASSERT_EQ(items[0].continuations.size(), 2u);
  EXPECT_EQ(items[0].continuations[0],
            " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
            "you will also need to supply it with a water bottle and a food dish.");
  EXPECT_EQ(items[0].continuations[1],
            " Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, "
            "you will also need to supply it with a water bottle and a food dish.");
  EXPECT_EQ(items[0].gold, 0);
}

TEST(Tasks, ArcFirstItems) {
  // arc_easy.yaml: "Question: {{question}}\nAnswer:"; llm-foundry's query is "Question: {question}"
  // without the answer cue, so "\nAnswer:" is appended; choices are " " + text; gold as given.
  const auto easy = read_arc(task_file("llmfoundry/arc_easy.jsonl"), 1);
  ASSERT_EQ(easy.size(), 1u);
  EXPECT_EQ(easy[0].context,
            "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:");
  EXPECT_EQ(easy[0].continuations,
            (std::vector<std::string>{" Sunlight is the source of energy for nearly all ecosystems.",
                                      " Most ecosystems are found on land instead of in water.",
                                      " Carbon dioxide is more available than other gases.",
                                      " The producers in all ecosystems are plants."}));
  EXPECT_EQ(easy[0].gold, 0);
  const auto challenge = read_arc(task_file("llmfoundry/arc_challenge.jsonl"), 1);
  ASSERT_EQ(challenge.size(), 1u);
  EXPECT_EQ(challenge[0].context,
            "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the "
            "most likely effect of this increase in rotation?\nAnswer:");
  EXPECT_EQ(challenge[0].continuations,
            (std::vector<std::string>{" Planetary density will decrease.", " Planetary years will become longer.",
                                      " Planetary days will become shorter.",
                                      " Planetary gravity will become stronger."}));
  EXPECT_EQ(challenge[0].gold, 2);
}

TEST(Tasks, HellaswagFirstItems) {
  // Item 1 is HF hellaswag validation row 0: activity_label "Roof shingle removal",
  // ctx_a "A man is sitting on a roof.", ctx_b "he". lm-eval: preprocess(label + ": " + ctx_a + " "
  // + "he".capitalize()) = "Roof shingle removal: A man is sitting on a roof. He"; choices
  // " " + preprocess(ending); label 3.
  const auto items = read_hellaswag(task_file("hellaswag/hellaswag_val_full.txt"), 2);
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].context, "Roof shingle removal: A man is sitting on a roof. He");
  EXPECT_EQ(items[0].continuations,
            (std::vector<std::string>{" is using wrap to wrap a pair of skis.", " is ripping level tiles off.",
                                      " is holding a rubik's cube.", " starts pulling up roofing on a roof."}));
  EXPECT_EQ(items[0].gold, 3);
  // Item 2: ctx_b "the lady" -> "The lady".
  EXPECT_EQ(items[1].context,
            "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady");
  EXPECT_EQ(items[1].gold, 3);
}

TEST(Tasks, HellaswagCtxBRecovery) {
  TempDir dir;
  // Row 1: ActivityNet-like; ctx_b "the man in BLUE" -> capitalize -> "The man in blue".
  // Row 2: WikiHow-like, ctx ends with a full sentence: untouched. Row 3: ends with '.' after an
  // abbreviation, lower-case fragment: untouched. Row 4: bracket tags and " [title]" are cleaned.
  const std::string f = dir.write("h.txt",
                                  "Act: Someone runs. the man in BLUE\n0\na\nb\nc\nd\n"
                                  "Home: Wash it. Dry it well.\n1\n[step] e\nf\ng\nh\n"
                                  "Travel: Go to St. louis.\n2\ni\nj\nk\nl\n"
                                  "Home: [header] How to x [title] Do y.\n3\nm  n\no\np\nq\n");
  const auto items = read_hellaswag(f);
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(items[0].context, "Act: Someone runs. The man in blue");
  EXPECT_EQ(items[1].context, "Home: Wash it. Dry it well.");
  // preprocess("[step] e") drops the tag but not the space after it (strip runs first): " e",
  // and the delimiter makes it "  e", as in lm-eval.
  EXPECT_EQ(items[1].continuations[0], "  e");
  EXPECT_EQ(items[2].context, "Travel: Go to St. louis.");
  // " [title]" -> ". " then "[header]" removed then "  " -> " ": "Home: How to x. Do y." after the
  // leading tag leaves "Home:  How" which the double-space pass turns into "Home: How".
  EXPECT_EQ(items[3].context, "Home: How to x. Do y.");
  EXPECT_EQ(items[3].continuations[0], " m n");
  EXPECT_EQ(items[3].gold, 3);
}

TEST(Tasks, WinograndeFirstItem) {
  // lm-eval: contexts sentence[:blank] + option, shared target " " + sentence[blank+1:].strip();
  // gold from answer "2" -> 1.
  const auto items = read_winogrande(task_file("llmfoundry/winogrande.jsonl"), 1);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].contexts,
            (std::vector<std::string>{"Sarah was a much better surgeon than Maria so Sarah",
                                      "Sarah was a much better surgeon than Maria so Maria"}));
  EXPECT_EQ(items[0].continuation, " always got the easier cases.");
  EXPECT_EQ(items[0].gold, 1);
}

TEST(Tasks, LambadaFirstItem) {
  // lambada_openai.yaml: context " ".join(text.split(" ")[:-1]), target " " + text.split(" ")[-1].
  const auto items = read_lambada(task_file("lambada_openai/lambada_test.jsonl"), 1);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].target, " signs");
  const std::string tail = "his mouth curved in a confident grin, I don't care about";
  ASSERT_GE(items[0].context.size(), tail.size());
  EXPECT_EQ(items[0].context.substr(items[0].context.size() - tail.size()), tail);
  EXPECT_EQ(items[0].context.rfind("In my palm is a clear stone", 0), 0u);
  TempDir dir;
  const auto one = read_lambada(dir.write("l.jsonl", "{\"text\": \"word\"}\n{\"text\": \"a  b\"}\n"));
  EXPECT_EQ(one[0].context, "");
  EXPECT_EQ(one[0].target, " word");
  EXPECT_EQ(one[1].context, "a ");  // split(" ") keeps the empty piece: ["a", "", "b"]
  EXPECT_EQ(one[1].target, " b");
}

TEST(Tasks, WikitextDocuments) {
  // Checked against a Python run of the wikitext_document_level split, lm-eval's
  // wikitext_detokenizer and len(re.split(r"\s+", page)) on the same file: 62 documents.
  const auto docs = read_wikitext(wikitext_file());
  ASSERT_EQ(docs.size(), 62u);
  EXPECT_EQ(docs[0].page.rfind(" = Robert Boulter = \n \n Robert Boulter is an English film", 0), 0u);
  EXPECT_EQ(docs[0].text.rfind(" = Robert Boulter =\n\nRobert Boulter is an English film, television and theatre "
                               "actor. He had a guest-starring role on the television series The Bill in 2000.",
                               0),
            0u);
  EXPECT_EQ(docs[0].words, 1093);
  EXPECT_EQ(docs[0].bytes, 5667);
  EXPECT_EQ(docs[61].words, 3479);
  EXPECT_EQ(docs[61].bytes, 17903);
  std::int64_t words = 0, bytes = 0;
  std::string joined;
  for (std::size_t i = 0; i < docs.size(); ++i) {
    words += docs[i].words;
    bytes += docs[i].bytes;
    if (i) joined += '\0';
    joined += docs[i].text;
  }
  EXPECT_EQ(words, 241335);
  EXPECT_EQ(bytes, 1290527);
  EXPECT_EQ(joined.size(), 1240466u + 61u);
  EXPECT_EQ(sha256_hex(joined), "b0ae50e166add20959a5406d9b3c99fe1f23819ec0a10149047149434fb85d81");
}

TEST(Tasks, WikitextSplitRule) {
  // Top-level headings open pages; "= = Section = =" does not; whitespace-only pages vanish.
  const auto pages = split_wikitext_documents(" \n = A = \n x \n = = B = = \n y \n = C = \n z \n");
  ASSERT_EQ(pages.size(), 2u);
  EXPECT_EQ(pages[0], " = A = \n x \n = = B = = \n y ");
  EXPECT_EQ(pages[1], " = C = \n z \n");
}

TEST(Tasks, WikitextDetokenizer) {
  // Expected strings are Python's output of lm-eval's wikitext_detokenizer on the same inputs.
  EXPECT_EQ(wikitext_detokenize("a @-@ b"), "a-b");
  EXPECT_EQ(wikitext_detokenize("3 @.@ 5 @,@ 000 @-@ year"), "3.5,000-year");
  EXPECT_EQ(wikitext_detokenize("a ( b c ) d"), "a (b c) d");
  EXPECT_EQ(wikitext_detokenize("it 's John 's  '  x '"), "it's John's  'x'");
  EXPECT_EQ(wikitext_detokenize("x /' 5/ y"), "x /'[0-9]/ y");
  EXPECT_EQ(wikitext_detokenize("\" a \" b \" c"), "\"a\" b \" c");
  EXPECT_EQ(wikitext_detokenize("[ x ] [ y"), "[x] [ y");
  EXPECT_EQ(wikitext_detokenize("{  }"), "{}");
  EXPECT_EQ(wikitext_detokenize("The Beatles ' song"), "The Beatles' song");
  EXPECT_EQ(wikitext_detokenize(" = = = Sub = = = \n"), " === Sub ===\n");
  EXPECT_EQ(wikitext_detokenize("N N N"), "N 1 N");
  EXPECT_EQ(wikitext_detokenize("a ( b ( c ) d )"), "a (b ( c) d )");
  EXPECT_EQ(wikitext_detokenize("20 \xC2\xB0 C"), "20\xC2\xB0" "C");
}

TEST(Tasks, PythonWhitespaceSplitCount) {
  // len(re.split(r"\s+", s)): "" -> 1, " " -> 2, "a b" -> 2, " a  b\t\n" -> 4,
  // "a\u00a0b\u3000c" -> 3 (Unicode spaces count).
  EXPECT_EQ(python_split_ws_count(""), 1);
  EXPECT_EQ(python_split_ws_count(" "), 2);
  EXPECT_EQ(python_split_ws_count("a b"), 2);
  EXPECT_EQ(python_split_ws_count(" a  b\t\n"), 4);
  EXPECT_EQ(python_split_ws_count("a\xC2\xA0" "b\xE3\x80\x80" "c"), 3);
  EXPECT_EQ(python_capitalize("the LADY"), "The lady");
  EXPECT_EQ(python_capitalize("\"the Man"), "\"the man");
  EXPECT_EQ(utf8_length("caf\xC3\xA9"), 4u);
}

TEST(Tasks, RollingWindowsTenTokensMaxFour) {
  // get_rolling_token_windows(tokens 0..9, prefix P, max_seq_len 4, context_len 1):
  //   pred_len = 4. First: ([P,0,1,2], [0,1,2,3]); predicted 4.
  //   window_pred_len 4, end 8: ([3,4,5,6], [4,5,6,7]); predicted 8.
  //   window_pred_len 2, end 10: ([5,6,7,8], [8,9]).
  // make_disjoint_window keeps a[:len(a) - (len(b) - 1)]:
  //   ([P], [0..3]), ([3], [4..7]), ([5,6,7], [8,9]).
  const auto w = rolling_windows(10, 4);
  ASSERT_EQ(w.size(), 3u);
  std::vector<int> tokens(10);
  for (int i = 0; i < 10; ++i) tokens[i] = 100 + i;
  const int P = 7;
  auto t0 = window_tokens(w[0], tokens, P);
  EXPECT_EQ(t0.context, (std::vector<int>{P}));
  EXPECT_EQ(t0.continuation, (std::vector<int>{100, 101, 102, 103}));
  auto t1 = window_tokens(w[1], tokens, P);
  EXPECT_EQ(t1.context, (std::vector<int>{103}));
  EXPECT_EQ(t1.continuation, (std::vector<int>{104, 105, 106, 107}));
  auto t2 = window_tokens(w[2], tokens, P);
  EXPECT_EQ(t2.context, (std::vector<int>{105, 106, 107}));
  EXPECT_EQ(t2.continuation, (std::vector<int>{108, 109}));
}

TEST(Tasks, RollingWindowsEdgeCases) {
  EXPECT_TRUE(rolling_windows(0, 4).empty());
  // Shorter than the window: one window, prefix context.
  auto w = rolling_windows(3, 4);
  ASSERT_EQ(w.size(), 1u);
  EXPECT_TRUE(w[0].prefix);
  EXPECT_EQ(w[0].cont_end, 3u);
  // Exactly two full windows (N=8, max 4): ([P],[0..3]), ([3],[4..7]).
  w = rolling_windows(8, 4);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_FALSE(w[1].prefix);
  EXPECT_EQ(w[1].context_begin, 3u);
  EXPECT_EQ(w[1].context_end, 4u);
  EXPECT_EQ(w[1].cont_begin, 4u);
  EXPECT_EQ(w[1].cont_end, 8u);
  // max 1: each token after the first is conditioned on the one before it.
  w = rolling_windows(3, 1);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[2].context_begin, 1u);
  EXPECT_EQ(w[2].context_end, 2u);
  EXPECT_EQ(w[2].cont_begin, 2u);
  // Every token is scored exactly once, in order.
  w = rolling_windows(1000, 37);
  std::size_t next = 0;
  for (const auto& x : w) {
    EXPECT_EQ(x.cont_begin, next);
    EXPECT_LE(x.cont_end - x.cont_begin + (x.context_end - x.context_begin) + (x.prefix ? 1 : 0), 38u);
    next = x.cont_end;
  }
  EXPECT_EQ(next, 1000u);
  EXPECT_THROW(rolling_windows(5, 0), InputError);
}

TEST(Tasks, MissingFilesAreNamed) {
  expect_input_error([] { read_arc("/nonexistent/arc.jsonl"); }, {"/nonexistent/arc.jsonl"});
  expect_input_error([] { read_wikitext("/nonexistent/wiki.test.raw"); }, {"/nonexistent/wiki.test.raw"});
  expect_input_error([] { read_piqa(task_file("piqa/valid.jsonl"), "/nonexistent/labels.lst"); },
                     {"/nonexistent/labels.lst"});
}

TEST(Tasks, MalformedRowsNameFileAndLine) {
  TempDir dir;
  const std::string good_arc = "{\"query\": \"Question: q?\", \"choices\": [\"a\", \"b\"], \"gold\": 1}\n";
  const std::string arc = dir.write("arc.jsonl", good_arc + good_arc + "{\"query\": \"Question: q?\", \"choices\"\n");
  expect_input_error([&] { read_arc(arc); }, {arc, ":3:"});
  EXPECT_EQ(read_arc(arc, 2).size(), 2u);  // the limit stops before the bad row
  const std::string arc_gold =
      dir.write("arc_gold.jsonl", good_arc + "{\"query\": \"Question: q?\", \"choices\": [\"a\"], \"gold\": 4}\n");
  expect_input_error([&] { read_arc(arc_gold); }, {arc_gold, ":2:", "gold"});

  const std::string wino = dir.write("w.jsonl", "{\"context_options\": [\"a\"], \"continuation\": \"x\", \"gold\": 0}\n");
  expect_input_error([&] { read_winogrande(wino); }, {wino, ":1:", "context_options"});

  const std::string lam = dir.write("l.jsonl", "{\"text\": \"a b\"}\n{\"txt\": \"a b\"}\n");
  expect_input_error([&] { read_lambada(lam); }, {lam, ":2:", "text"});

  const std::string piqa = dir.write("p.jsonl", "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n"
                                                "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n");
  const std::string labels = dir.write("p.lst", "1\n2\n");
  expect_input_error([&] { read_piqa(piqa, labels); }, {labels, ":2:"});
  const std::string short_labels = dir.write("p_short.lst", "1\n");
  expect_input_error([&] { read_piqa(piqa, short_labels); }, {short_labels, ":2:"});

  const std::string hs = dir.write("h.txt", "A: b c\n1\ne\nf\ng\nh\nA: b c\n9\ne\nf\ng\nh\n");
  expect_input_error([&] { read_hellaswag(hs); }, {hs, ":8:"});
  const std::string hs_short = dir.write("h2.txt", "A: b c\n1\ne\nf\ng\nh\nA: b c\n1\ne\n");
  expect_input_error([&] { read_hellaswag(hs_short); }, {hs_short, ":7:"});
}

}  // namespace
}  // namespace rankprune::eval
