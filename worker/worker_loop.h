// The evaluation loop of ranks 1..P-1: take work items from rank 0, run them on the Executor,
// send back scores (or the error), until rank 0 says stop.
//
// Liveness both ways, so no rank waits forever on a dead peer: while a worker computes it sends
// "alive" after a batch when a quarter of the timeout has passed since its last message; rank 0
// does the same towards idle workers. A worker that hears nothing from rank 0 for the timeout
// throws cluster::CommError naming rank 0 and its host.
#pragma once

#include <atomic>

#include "cluster/communicator.h"
#include "worker/executor.h"

namespace rankprune {

// Returns when rank 0 sends stop (after every queued item is done). `stop_signal` (may be null):
// a signal this process caught; it is forwarded to rank 0 once, which decides.
void run_worker(cluster::Communicator& comm, Executor& executor, const std::atomic<int>* stop_signal);

}  // namespace rankprune
