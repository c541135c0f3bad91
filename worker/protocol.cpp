#include "worker/protocol.h"

#include <cstring>

#include "common/error.h"

namespace rankprune::proto {

namespace {

std::string with_payload(const nlohmann::json& head, const std::string& payload = {}) {
  std::string out = head.dump();
  out.push_back('\0');
  out += payload;
  return out;
}

template <typename T>
void put(std::string& out, const T& v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

template <typename T>
T get(const std::string& in, std::size_t& pos) {
  RP_ASSERT(pos + sizeof(T) <= in.size(), "truncated shard result");
  T v;
  std::memcpy(&v, in.data() + pos, sizeof v);
  pos += sizeof v;
  return v;
}

}  // namespace

std::string encode_work(const WorkItem& w) {
  return with_payload({{"type", "work"}, {"id", w.id}, {"variant", w.variant}, {"task", w.task}, {"lo", w.lo}, {"hi", w.hi}});
}

std::string encode_simple(const std::string& type) { return with_payload({{"type", type}}); }

std::string encode_result(const ShardResult& r) {
  // Per unit: count (int64), then count x (logprob double, greedy uint8).
  std::string payload;
  for (const auto& u : r.units) {
    put(payload, static_cast<int64_t>(u.size()));
    for (const auto& s : u) {
      put(payload, s.logprob);
      put(payload, static_cast<uint8_t>(s.greedy ? 1 : 0));
    }
  }
  return with_payload({{"type", "result"}, {"id", r.id}, {"seconds", r.seconds}, {"units", r.units.size()}}, payload);
}

std::string encode_error(int64_t id, const std::string& kind, const std::string& message) {
  return with_payload({{"type", "error"}, {"id", id}, {"kind", kind}, {"message", message}});
}

std::string encode_signal(int signal) { return with_payload({{"type", "signal"}, {"signal", signal}}); }

Envelope decode(const std::string& bytes) {
  const auto nul = bytes.find('\0');
  RP_ASSERT(nul != std::string::npos, "protocol message without a header terminator");
  Envelope e;
  try {
    e.head = nlohmann::json::parse(bytes.substr(0, nul));
    e.type = e.head.at("type").get<std::string>();
  } catch (const nlohmann::json::exception& ex) {
    throw_internal(__FILE__, __LINE__, cat("malformed protocol header: ", ex.what()));
  }
  e.payload = bytes.substr(nul + 1);
  return e;
}

WorkItem work_of(const Envelope& e) {
  RP_ASSERT(e.type == "work", "expected a work message, got ", e.type);
  WorkItem w;
  w.id = e.head.at("id").get<int64_t>();
  w.variant = e.head.at("variant").get<int64_t>();
  w.task = e.head.at("task").get<std::string>();
  w.lo = e.head.at("lo").get<int64_t>();
  w.hi = e.head.at("hi").get<int64_t>();
  return w;
}

ShardResult result_of(const Envelope& e) {
  RP_ASSERT(e.type == "result", "expected a result message, got ", e.type);
  ShardResult r;
  r.id = e.head.at("id").get<int64_t>();
  r.seconds = e.head.at("seconds").get<double>();
  const auto n = e.head.at("units").get<std::size_t>();
  std::size_t pos = 0;
  for (std::size_t u = 0; u < n; ++u) {
    const auto count = get<int64_t>(e.payload, pos);
    std::vector<eval::Score> scores(static_cast<std::size_t>(count));
    for (auto& s : scores) {
      s.logprob = get<double>(e.payload, pos);
      s.greedy = get<uint8_t>(e.payload, pos) != 0;
    }
    r.units.push_back(std::move(scores));
  }
  RP_ASSERT(pos == e.payload.size(), "trailing bytes in a shard result");
  return r;
}

}  // namespace rankprune::proto
