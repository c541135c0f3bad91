// A small random checkpoint made by the real `rankprune init`, shared by the CLI tests.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "tests/testing/testing.h"

namespace rankprune::testing {

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = tmp_.file("model");
    auto r = run_rankprune({"init", "--arch", "delta_net", "--out", model_, "--hidden-size", "32", "--num-layers", "2",
                            "--num-heads", "2", "--head-k-dim", "8", "--head-v-dim", "8", "--vocab-size", "300",
                            "--dtype", "f32", "--init-std", "0.2", "--seed", "3"});
    ASSERT_EQ(r.exit_code, 0) << r.out;
  }
  TempDir tmp_;
  std::string model_;
};

}  // namespace rankprune::testing
