// cbm/detail/pipeline.hpp - how one callback runs, step by step, when it is
// not the trigger loop's plain case (a filter, `once`, metrics, resilience):
//
//   filter -> once claim -> dispatch -> resilience
//          -> instrumentation -> invoke with exception capture
//
// Each step is one function below (or in the file named). Failures are
// reported by failure.hpp only. To add a step, put it where it belongs in
// this chain and give it its own function; docs/architecture.md says more.
//
// Memory ordering: the once claim is the only read-modify-write a trigger
// makes on a node (fetch_or of kUnregistered, acq_rel: exactly one thread
// claims). Everything else here runs while the node is announced
// (unregister.hpp), so a blocking unregister waits for it.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <utility>

#include "../error_policy.hpp"
#include "callback_list.hpp"
#include "callback_stats.hpp"
#include "failure.hpp"
#include "group_state.hpp"
#include "instrument.hpp"
#include "node.hpp"
#include "resilience_steps.hpp"
#include "typed_node.hpp"
#include "unregister.hpp"

namespace cbm::detail {

// What happened to one callback. `stop*`: the error policy ends the trigger.
enum class Outcome : std::uint8_t { invoked, invoked_once, skipped, failed_filter, stop_in_filter, stop, stop_once };

// Where one pipeline run reports to.
struct PipelineContext {
    GroupState& group;
    const CallbackList& list;
    TriggerResult& result;
    std::uint32_t thread_index;
    bool sampled;  // the trigger loop already chose this call to be timed
};

// Step 1, the filter. Returns whether the callback runs; a filter that
// throws is a failure (in_filter) and sets `outcome`.
// True (and counted) when a cbm::Blocker blocks the node: it is skipped
// before its filter, and a blocked `once` callback is not claimed.
inline bool skips_blocked(const NodeBase& node, const PipelineContext& p) noexcept {
    if ((node.state.load(std::memory_order_acquire) & kBlocked) == 0) return false;
    if (node.stats != nullptr) node.stats->skipped_blocked.add_from(p.thread_index);
    ++p.result.blocked;
    return true;
}

template <class Signature, class... A>
bool passes_filter(const Node<Signature>& node, const PipelineContext& p, Outcome& outcome, A&... args) {
    if ((node.state.load(std::memory_order_relaxed) & kFiltered) == 0) return true;
    bool selected = false;
    try {
        selected = node.filter(args...);
    } catch (...) {
        outcome = report_failure(p.result, p.group, p.list, node, std::current_exception(), true)
                      ? Outcome::stop_in_filter
                      : Outcome::failed_filter;
        return false;
    }
    if (!selected) {
        if (node.stats != nullptr) node.stats->skipped_filtered.add_from(p.thread_index);
        outcome = Outcome::skipped;
    }
    return selected;
}

// Step 2, the once claim: a `once` callback runs on the one thread whose
// fetch_or first marks it unregistered.
inline bool claims_once(NodeBase& node) noexcept {
    return !node.is_once() || (node.state.fetch_or(kUnregistered, std::memory_order_acq_rel) & kUnregistered) == 0;
}

// Steps 4 to 6: resilience (if configured), instrumentation, invoke.
// Returns the final error; sets `attempts`, and `circuit_open` when the
// breaker refused the call.
template <class Signature, class... A>
std::exception_ptr run_claimed(const Node<Signature>& node, const PipelineContext& p, std::uint32_t& attempts,
                               bool& circuit_open, A&... args) {
    if (node.resilience != nullptr) {
        return run_resilient(node, p.group, p.list, p.thread_index, p.sampled, attempts, circuit_open, args...);
    }
    return invoke_instrumented(node, p.group, p.thread_index, p.sampled, args...);
}

// Step 3, dispatch: the call runs here, on the thread that announced the
// node. (trigger_async hands whole invocations to executors before step 1;
// each task then runs this chain under its own announcement:
// async_dispatch.hpp.)
template <class Signature, class... A>
std::exception_ptr dispatch(const Node<Signature>& node, const PipelineContext& p, std::uint32_t& attempts,
                            bool& circuit_open, A&... args) {
    return run_claimed(node, p, attempts, circuit_open, args...);
}

// The whole chain for one callback that is registered (as the trigger loop
// last saw it).
template <class Signature, class... A>
Outcome run_pipeline(Node<Signature>& node, const PipelineContext& p, A&... args) {
    Outcome outcome = Outcome::skipped;
    if (skips_blocked(node, p)) return Outcome::skipped;
    if (!passes_filter(node, p, outcome, args...)) return outcome;
    if (!claims_once(node)) return Outcome::skipped;  // another thread claimed it
    const bool once = node.is_once();
    // A claimed `once` callback is unregistered: it leaves its list before it
    // runs, so size(), clear() and erase() see it as removed (and the latter
    // wait for it) while it runs.
    if (once) detach(&node);
    outcome = once ? Outcome::invoked_once : Outcome::invoked;
    std::uint32_t attempts = 1;
    bool circuit_open = false;
    std::exception_ptr error = dispatch(node, p, attempts, circuit_open, args...);
    if (circuit_open) return Outcome::skipped;  // never `once`: validate.hpp refuses that
    if (error && report_failure(p.result, p.group, p.list, node, std::move(error), false, attempts)) {
        outcome = once ? Outcome::stop_once : Outcome::stop;
    }
    // Only the claiming thread ever runs a once callback's body, and it still
    // has the node announced (a blocking unregister waits for it), so its
    // captured state can go right now. The filter stays: other threads may
    // still be evaluating it; it goes with the callable, once no trigger
    // announces the node (epoch.hpp).
    if (once) node.fn().reset();
    return outcome;
}

}  // namespace cbm::detail
