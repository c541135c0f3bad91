// lm-eval metric arithmetic on hand-computed examples.
#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "eval/metrics.h"

namespace rankprune::eval {
namespace {

TEST(Metrics, ArgmaxTakesFirstOfEqualMaxima) {
  EXPECT_EQ(argmax_first({1.0, 3.0, 3.0, 2.0}), 1u);
  EXPECT_EQ(argmax_first({-2.0}), 0u);
  EXPECT_EQ(argmax_first({-5.0, -5.0}), 0u);
  EXPECT_THROW(argmax_first({}), InternalError);
}

TEST(Metrics, AccNormLengthExcludesTheDelimiterAndCountsCharacters) {
  // lm-eval divides by len(choice) of the undelimited choice: " abc" -> "abc" -> 3.
  EXPECT_EQ(acc_norm_length(" abc"), 3.0);
  // "é" is 2 UTF-8 bytes but one Python character: " café" -> 4.
  EXPECT_EQ(acc_norm_length(" caf\xC3\xA9"), 4.0);
  // Only the one delimiter space goes: "  x" is the choice " x", length 2.
  EXPECT_EQ(acc_norm_length("  x"), 2.0);
}

TEST(Metrics, AccAndAccNormDisagreeOnUnequalLengths) {
  // Choices " ab" (len 2) and " abcdefgh" (len 8), lls -3 and -8.
  // acc: argmax(-3, -8) = 0. acc_norm: (-3/2, -8/8) = (-1.5, -1.0) -> 1.
  const std::vector<std::string> conts = {" ab", " abcdefgh"};
  McResult g1 = score_multiple_choice({-3.0, -8.0}, conts, 1);
  EXPECT_EQ(g1.pred, 0u);
  EXPECT_EQ(g1.pred_norm, 1u);
  EXPECT_EQ(g1.acc, 0.0);
  EXPECT_EQ(g1.acc_norm, 1.0);
  McResult g0 = score_multiple_choice({-3.0, -8.0}, conts, 0);
  EXPECT_EQ(g0.acc, 1.0);
  EXPECT_EQ(g0.acc_norm, 0.0);
  // Equal normalised scores: -2/1 == -4/2 -> first index wins for acc_norm; acc picks 0 too.
  McResult tie = score_multiple_choice({-2.0, -4.0}, {" a", " bc"}, 1);
  EXPECT_EQ(tie.pred_norm, 0u);
  EXPECT_EQ(tie.acc_norm, 0.0);
}

TEST(Metrics, MeanAndSampleStderr) {
  // values 1, 0, 1, 1: mean 0.75; squared deviations 1/16, 9/16, 1/16, 1/16 = 12/16 = 0.75;
  // sample variance 0.75 / 3 = 0.25, std 0.5; stderr 0.5 / sqrt(4) = 0.25.
  MeanStderr m = mean_stderr({1, 0, 1, 1});
  EXPECT_DOUBLE_EQ(m.mean, 0.75);
  EXPECT_DOUBLE_EQ(m.std_err, 0.25);
  // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sum sq dev 32, sample var 32/7, stderr sqrt(32/7)/sqrt(8).
  MeanStderr m2 = mean_stderr({2, 4, 4, 4, 5, 5, 7, 9});
  EXPECT_DOUBLE_EQ(m2.mean, 5.0);
  EXPECT_NEAR(m2.std_err, std::sqrt(32.0 / 7.0) / std::sqrt(8.0), 1e-15);
  EXPECT_NEAR(m2.std_err, 0.7559289460184544, 1e-12);
  EXPECT_TRUE(std::isnan(mean_stderr({3.0}).std_err));
}

TEST(Metrics, Perplexity) {
  // lls -1, -2, -3: mean -2 -> exp(2) = 7.38905609893065.
  EXPECT_NEAR(perplexity({-1, -2, -3}), 7.38905609893065, 1e-12);
}

TEST(Metrics, WordAndBytePerplexityAndBitsPerByte) {
  // Two documents: lls -10 and -20 (sum -30); words 5 and 10 (sum 15); bytes 20 and 40 (sum 60).
  const std::vector<double> lls = {-10, -20};
  // word_perplexity = exp(30 / 15) = exp(2) = 7.38905609893065
  EXPECT_NEAR(word_perplexity(lls, {5, 10}), 7.38905609893065, 1e-12);
  // byte_perplexity = exp(30 / 60) = exp(0.5) = 1.6487212707001282
  EXPECT_NEAR(byte_perplexity(lls, {20, 40}), 1.6487212707001282, 1e-12);
  // bits_per_byte = 30 / 60 / ln 2 = 0.5 / 0.6931471805599453 = 0.7213475204444817
  EXPECT_NEAR(bits_per_byte(lls, {20, 40}), 0.7213475204444817, 1e-12);
  // It is log2 of byte_perplexity, and the per-document mean would differ (sum, not mean of ratios).
  EXPECT_NEAR(bits_per_byte(lls, {20, 40}), std::log2(byte_perplexity(lls, {20, 40})), 1e-12);
  EXPECT_NEAR(weighted_perplexity({-1, -1}, {1, 3}), std::exp(0.5), 1e-12);
}

}  // namespace
}  // namespace rankprune::eval
