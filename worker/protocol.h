// The messages between a sweep's coordinator (rank 0) and its workers during evaluation. A
// message is a JSON header, a NUL byte, then an optional binary payload (a shard's scores).
// Every rank runs the same binary, so payloads are raw host bytes. No SQL, no scheduling: the
// coordinator decides (coordinator/scheduler.h), workers execute (worker/worker_loop.h).
//
//   rank 0 -> worker (tag kToWorker):    work {id, variant, task, lo, hi} | alive | stop
//   worker -> rank 0 (tag kToCoordinator): result {id, seconds} + scores | error {id, kind, message}
//                                          | alive | signal {signal}
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "eval/engine.h"

namespace rankprune::proto {

constexpr int kToWorker = 201;
constexpr int kToCoordinator = 202;

// Units [lo, hi) of task `task` (eval::PreparedTask::units) on variant `variant` (an index into
// the sweep's variant list, which every rank holds).
struct WorkItem {
  int64_t id = 0;
  int64_t variant = 0;
  std::string task;
  int64_t lo = 0, hi = 0;
};

struct ShardResult {
  int64_t id = 0;
  double seconds = 0;                           // compute time on the worker
  std::vector<std::vector<eval::Score>> units;  // one vector per unit, as eval::score_units returns
};

struct Envelope {
  std::string type;     // work, alive, stop, result, error, signal
  nlohmann::json head;  // the header's fields
  std::string payload;  // raw bytes after the header
};

std::string encode_work(const WorkItem& w);
std::string encode_simple(const std::string& type);  // alive, stop
std::string encode_result(const ShardResult& r);
// kind: "input" (the user's data or options; exit 1) or "internal".
std::string encode_error(int64_t id, const std::string& kind, const std::string& message);
std::string encode_signal(int signal);

// InternalError for a malformed message (both ends run the same binary: a bug, not user input).
Envelope decode(const std::string& bytes);
WorkItem work_of(const Envelope& e);
ShardResult result_of(const Envelope& e);

}  // namespace rankprune::proto
