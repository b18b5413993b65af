// cbm/detail/dispatch.hpp - typed callback nodes and the trigger loop.
//
// Memory ordering: see callback_list.hpp. The loop below is the reader side:
// it takes no lock and, apart from claiming a `once` callback, performs no
// read-modify-write on memory shared with other threads.
#pragma once

#include <atomic>
#include <cstddef>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include "../callback.hpp"
#include "../context.hpp"
#include "../error_policy.hpp"
#include "../resilience.hpp"
#include "callback_list.hpp"

namespace cbm::detail {

template <class Signature>
struct FilterOf;
template <class R, class... Args>
struct FilterOf<R(Args...)> {
    using type = Callback<bool(const std::remove_cvref_t<Args>&...)>;
};

template <class Signature>
struct Node final : NodeBase {
    using Fn = Callback<Signature>;
    static_assert(sizeof(Fn) == kCallableBytes && alignof(Fn) <= alignof(void*),
                  "cbm: Callback layout changed; update kCallableBytes");

    typename FilterOf<Signature>::type filter;

    explicit Node(Fn&& f) noexcept { ::new (static_cast<void*>(callable)) Fn(std::move(f)); }
    ~Node() {
        fn().~Fn();
        delete stats;
        delete resilience;
    }

    const Fn& fn() const noexcept { return *std::launder(reinterpret_cast<const Fn*>(callable)); }
    Fn& fn() noexcept { return *std::launder(reinterpret_cast<Fn*>(callable)); }

    static void destroy_target_of(NodeBase* base) noexcept {
        auto* self = static_cast<Node*>(base);
        self->fn().reset();
        self->filter.reset();
    }
    static void delete_of(NodeBase* base) noexcept { delete static_cast<Node*>(base); }
};

// The resilience block for `options`, or null when none is asked for.
// Throws: std::invalid_argument for settings that make no sense.
template <class Options>
std::unique_ptr<Resilience> make_resilience(const Options& o) {
    if (o.timeout.count() < 0) throw std::invalid_argument("cbm: CallbackOptions::timeout must not be negative");
    if (o.retry.attempts == 0) throw std::invalid_argument("cbm: RetryOptions::attempts must be at least 1");
    if (!(o.retry.multiplier >= 1.0)) throw std::invalid_argument("cbm: RetryOptions::multiplier must be >= 1");
    if (!(o.retry.jitter >= 0.0 && o.retry.jitter <= 1.0)) {
        throw std::invalid_argument("cbm: RetryOptions::jitter must be within [0, 1]");
    }
    if (o.retry.initial_backoff.count() < 0 || o.retry.max_backoff < o.retry.initial_backoff) {
        throw std::invalid_argument("cbm: RetryOptions needs 0 <= initial_backoff <= max_backoff");
    }
    if (o.circuit_breaker.cool_down.count() < 0) {
        throw std::invalid_argument("cbm: CircuitBreakerOptions::cool_down must not be negative");
    }
    if (o.once && o.circuit_breaker.failures > 0) {
        throw std::invalid_argument("cbm: a once callback cannot have a circuit breaker (it runs at most once)");
    }
    if (o.timeout.count() == 0 && o.retry.attempts == 1 && o.circuit_breaker.failures == 0) return nullptr;
    auto r = std::make_unique<Resilience>();
    r->timeout = o.timeout;
    r->retry = o.retry;
    r->breaker = o.circuit_breaker;
    return r;
}

// Builds a node for `anchor`, not yet linked. Throws std::invalid_argument for
// an empty callable, before anything is allocated.
template <class Signature, class F, class Options>
Node<Signature>* make_node(Anchor& anchor, F&& f, Options&& options, std::string key_text = {}) {
    Callback<Signature> fn(std::forward<F>(f));
    if (!fn) throw std::invalid_argument("cbm: cannot register an empty callable");
    std::unique_ptr<Resilience> resilience = make_resilience(options);
    std::unique_ptr<CallbackStats> stats;
    if (anchor.metrics) stats = std::make_unique<CallbackStats>(std::move(key_text), std::move(options.labels));
    auto* node = new Node<Signature>(std::move(fn));
    node->stats = stats.release();
    node->resilience = resilience.release();
    node->filter = std::move(options.filter);
    node->state.store((node->filter ? kFiltered : 0u) | (options.once ? kOnce : 0u) |
                          (node->stats != nullptr ? kMeasured : 0u) | (node->resilience != nullptr ? kResilient : 0u),
                      std::memory_order_relaxed);
    node->priority = options.priority;
    node->name = std::move(options.name);
    node->destroy_target = &Node<Signature>::destroy_target_of;
    node->delete_node = &Node<Signature>::delete_of;
    node->anchor = &anchor;
    anchor.add_ref();
    return node;
}

// Records one exception (from the callback, or from its filter when
// `in_filter`) and reports it to the anchor's handler. Returns true when the
// policy says to stop. Kept out of line: the loop below stays small.
// A callback's failure (not its filter's) is final - after its retries -
// and also goes to the dead-letter handler, with `attempts`.
[[gnu::noinline]] inline bool record_failure(TriggerResult& result, Anchor& anchor, const ListCore& core,
                                             const NodeBase& node, std::exception_ptr error, bool in_filter,
                                             std::uint32_t attempts = 1) noexcept {
    ++result.failed;
    try {
        result.failures.push_back(Failure{node.name, error, in_filter});
        if (auto handler = anchor.error_handler(); handler && *handler) (*handler)(result.failures.back());
    } catch (...) {
        // The handler must not stop the other callbacks (error_policy.hpp).
    }
    if (!in_filter) {
        try {
            if (auto letters = anchor.dead_letter_handler(); letters && *letters) {
                const std::string key = core.describe != nullptr ? core.describe(&core) : std::string();
                (*letters)(DeadLetter{key, node.name, error, attempts});
            }
        } catch (...) {
            // Likewise: a throwing dead-letter handler stops nothing.
        }
    }
    return anchor.policy == ErrorPolicy::stop;
}

// What happened to one callback. `stop*`: the error policy ends the trigger.
enum class Outcome : std::uint8_t { invoked, invoked_once, skipped, failed_filter, stop_in_filter, stop, stop_once };

// Runs the callable of a node on the special path, with metrics, sampling
// and the observer where the node is instrumented. Returns the exception, if
// any.
// `sampled`: the caller already decided that this call is timed.
template <class Signature, class... A>
std::exception_ptr invoke_instrumented(Node<Signature>& node, Anchor& anchor, std::uint32_t thread_index,
                                       bool sampled, A&... args) {
    CallbackStats* stats = node.stats;
    std::exception_ptr error;
    if (stats == nullptr) {
        try {
            CallbackAccess::invoke(node.fn(), args...);
        } catch (...) {
            error = std::current_exception();
        }
        return error;
    }
    CallbackObserver* observer = anchor.observer.load(std::memory_order_acquire);
    const bool timed = observer != nullptr || sampled || sample_this_call(anchor.latency_sample_every);
    const CallbackEvent event{stats->key_text, node.name, stats->labels};
    std::chrono::steady_clock::time_point start{};
    if (timed) start = std::chrono::steady_clock::now();
    if (observer != nullptr) observer->on_begin(event);
    try {
        CallbackAccess::invoke(node.fn(), args...);
    } catch (...) {
        error = std::current_exception();
        CallbackStats::bump(stats->failed);
    }
    stats->invoked.add_from(thread_index);
    if (timed) {
        const auto duration =
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start);
        stats->latency.record(static_cast<std::uint64_t>(duration.count() < 0 ? 0 : duration.count()));
        if (observer != nullptr) observer->on_end(event, duration, error);
    }
    return error;
}

// The rarely taken part of the loop: a filter, a `once` claim, or an
// instrumented callback.
// One attempt of a callback with a timeout: under a child context with that
// deadline; an overrun (by the group's clock) is a deadline_exceeded failure.
template <class Signature, class... A>
std::exception_ptr attempt_with_timeout(Node<Signature>& node, Anchor& anchor, std::uint32_t thread_index,
                                        bool sampled, A&... args) {
    const Resilience& r = *node.resilience;
    if (r.timeout.count() == 0) return invoke_instrumented(node, anchor, thread_index, sampled, args...);
    std::exception_ptr error;
    bool overran = false;
    try {
        auto [child, cancel] = with_timeout(current_context(), r.timeout);
        const ContextScope scope(child);
        const auto start = anchor.clock.now();
        error = invoke_instrumented(node, anchor, thread_index, sampled, args...);
        overran = anchor.clock.now() - start > r.timeout || child.err() == errc::deadline_exceeded;
        cancel();
    } catch (...) {
        return std::current_exception();  // the child context could not be made
    }
    if (overran) {
        if (node.stats != nullptr) CallbackStats::bump(node.stats->timed_out);
        if (!error) {
            error = std::make_exception_ptr(
                std::system_error(make_error_code(errc::deadline_exceeded), "cbm: callback overran its timeout"));
        }
    }
    return error;
}

// Timeout, retries and the circuit breaker around one invocation.
// Returns the final error (null on success) and sets `attempts`; returns
// `skipped` = true without running anything while the circuit is open.
template <class Signature, class... A>
std::exception_ptr run_resilient(Node<Signature>& node, Anchor& anchor, std::uint32_t thread_index, bool sampled,
                                 std::uint32_t& attempts, bool& skipped, A&... args) {
    Resilience& r = *node.resilience;
    bool trial = false;
    if (r.breaker.failures > 0) {
        const std::int64_t until = r.open_until.load(std::memory_order_acquire);
        if (until != 0) {
            if (ticks(anchor.clock.now()) < until || r.trial.exchange(true, std::memory_order_acq_rel)) {
                if (node.stats != nullptr) CallbackStats::bump(node.stats->skipped_circuit_open);
                skipped = true;
                return nullptr;
            }
            trial = true;  // half-open: this invocation decides
        }
    }
    const Context& trigger_context = current_context();
    std::exception_ptr error;
    for (attempts = 1;; ++attempts) {
        error = attempt_with_timeout(node, anchor, thread_index, sampled, args...);
        sampled = false;
        if (!error || attempts >= r.retry.attempts || trigger_context.canceled()) break;
        bool waited = false;
        try {
            waited = anchor.clock.sleep_for(backoff_after(r.retry, attempts), trigger_context);
        } catch (...) {
            waited = false;
        }
        if (!waited) break;
        if (node.stats != nullptr) CallbackStats::bump(node.stats->retries);
    }
    if (r.breaker.failures > 0) {
        if (error) {
            const std::uint32_t failures = r.consecutive_failures.fetch_add(1, std::memory_order_acq_rel) + 1;
            if (trial || failures >= r.breaker.failures) {
                r.open_until.store(ticks(anchor.clock.now() + r.breaker.cool_down), std::memory_order_release);
            }
        } else {
            r.consecutive_failures.store(0, std::memory_order_relaxed);
            if (trial || r.open_until.load(std::memory_order_relaxed) != 0) r.open_until.store(0, std::memory_order_release);
        }
        if (trial) r.trial.store(false, std::memory_order_release);
    }
    return error;
}

template <class Signature, class... A>
Outcome run_special(Node<Signature>& node, Anchor& anchor, const ListCore& core, TriggerResult& result,
                    std::uint32_t thread_index, bool sampled, A&... args) {
    if ((node.state.load(std::memory_order_relaxed) & kFiltered) != 0) {
        bool selected = false;
        try {
            selected = node.filter(args...);
        } catch (...) {
            if (node.stats != nullptr) CallbackStats::bump(node.stats->failed);
            return record_failure(result, anchor, core, node, std::current_exception(), true) ? Outcome::stop_in_filter
                                                                                        : Outcome::failed_filter;
        }
        if (!selected) {
            if (node.stats != nullptr) node.stats->skipped_filtered.add_from(thread_index);
            return Outcome::skipped;
        }
    }
    const bool once = node.is_once();
    if (once && (node.state.fetch_or(kUnregistered, std::memory_order_acq_rel) & kUnregistered) != 0) {
        return Outcome::skipped;  // another thread claimed it
    }
    Outcome outcome = once ? Outcome::invoked_once : Outcome::invoked;
    std::uint32_t attempts = 1;
    bool circuit_open = false;
    std::exception_ptr error = node.resilience != nullptr
                                   ? run_resilient(node, anchor, thread_index, sampled, attempts, circuit_open, args...)
                                   : invoke_instrumented(node, anchor, thread_index, sampled, args...);
    if (circuit_open) return Outcome::skipped;  // never `once`: make_resilience refuses that
    if (error) {
        if (record_failure(result, anchor, core, node, std::move(error), false, attempts)) {
            outcome = once ? Outcome::stop_once : Outcome::stop;
        }
    }
    // Only the claiming thread ever runs a once callback's body, and it still
    // has the node announced (a blocking unregister waits for it), so its
    // captured state can go right now. The filter stays: other threads may
    // still be evaluating it; it goes when the node is reclaimed.
    if (once) node.fn().reset();
    return outcome;
}

// Counts the callbacks in slots [from, end) that a stopped trigger does not
// reach; `canceled`: stopped by its context or token (not by the policy).
inline std::size_t count_unreached(std::atomic<NodeBase*>* from, std::atomic<NodeBase*>* end, bool canceled) noexcept {
    std::size_t n = 0;
    for (; from != end; ++from) {
        NodeBase* node = from->load(std::memory_order_acquire);
        if ((node->state.load(std::memory_order_relaxed) & kUnregistered) == 0) {
            ++n;
            if (canceled && node->stats != nullptr) CallbackStats::bump(node->stats->skipped_canceled);
        }
    }
    return n;
}

// Runs the callbacks of `core` in order. `should_stop()` is checked before
// each callback. Runs inside the caller's TriggerScope for the domain, so that
// the registry's key lookup and the list walk are one read-side section.
// `Mode` is the barrier mode, fixed per call so the loop has no branch on it.
template <BarrierMode Mode, class Signature, class ShouldStop, class... A>
TriggerResult run_list_in(TriggerScope& scope, ListCore& core, Anchor& anchor, ShouldStop&& should_stop,
                          A&... args) {
    TriggerResult result;
    NodeArray* array = core.array.load(std::memory_order_acquire);
    if (array == nullptr) return result;
    std::size_t invoked = 0;
    std::size_t skipped = 0;
    std::atomic<NodeBase*>* slot = array->slots();
    std::atomic<NodeBase*>* const end = slot + array->count.load(std::memory_order_acquire);
    bool canceled = false;
    bool sampled = false;  // an instrumented call already chosen to be timed
    const std::uint32_t thread_index = scope.thread_index();
    for (; slot != end; ++slot) {
        if (should_stop()) {
            canceled = true;
            break;
        }
        auto& node = static_cast<Node<Signature>&>(*slot->load(std::memory_order_acquire));
        scope.announce<Mode>(&node);
        const std::uint32_t state = node.state.load(std::memory_order_acquire);
        Outcome outcome = Outcome::skipped;
        if (state == 0) {  // registered, no filter, not once: the common case
            outcome = Outcome::invoked;
            ++invoked;
            try {
                CallbackAccess::invoke(node.fn(), args...);
            } catch (...) {
                if (record_failure(result, anchor, core, node, std::current_exception(), false)) outcome = Outcome::stop;
            }
        } else if (state == kMeasured && !(sampled = anchor.observer.load(std::memory_order_relaxed) != nullptr ||
                                                     sample_this_call(anchor.latency_sample_every))) {
            // Instrumented, neither timed nor observed this time: count inline.
            outcome = Outcome::invoked;
            ++invoked;
            try {
                CallbackAccess::invoke(node.fn(), args...);
            } catch (...) {
                CallbackStats::bump(node.stats->failed);
                if (record_failure(result, anchor, core, node, std::current_exception(), false)) outcome = Outcome::stop;
            }
            node.stats->invoked.add_from(thread_index);
        } else if ((state & kUnregistered) == 0) {
            outcome = run_special(node, anchor, core, result, thread_index, sampled, args...);
            sampled = false;
            invoked += outcome == Outcome::invoked || outcome == Outcome::invoked_once || outcome == Outcome::stop ||
                       outcome == Outcome::stop_once;
            skipped += outcome == Outcome::skipped;
        }
        scope.withdraw<Mode>();
        if ((node.state.load(std::memory_order_relaxed) & kWaiter) != 0) notify_waiters(node);
        if (outcome != Outcome::invoked) [[unlikely]] {
            if (outcome == Outcome::invoked_once || outcome == Outcome::stop_once) detach(&node);
            if (outcome == Outcome::stop || outcome == Outcome::stop_in_filter || outcome == Outcome::stop_once) {
                ++slot;
                break;
            }
        }
    }
    if (slot != end) {  // stopped by the policy or the stop condition
        result.stopped = true;
        skipped += count_unreached(slot, end, canceled);
    }
    result.invoked = invoked;
    result.skipped = skipped;
    if (result.failed != 0 && anchor.policy == ErrorPolicy::rethrow && !result.failures.empty()) {
        std::rethrow_exception(result.failures.front().error);
    }
    return result;
}

template <class Signature, class ShouldStop, class... A>
TriggerResult run_list(TriggerScope& scope, ListCore& core, Anchor& anchor, ShouldStop&& should_stop,
                       A&... args) {
    if (scope.mode() == BarrierMode::membarrier) {
        return run_list_in<BarrierMode::membarrier, Signature>(scope, core, anchor, should_stop, args...);
    }
    return run_list_in<BarrierMode::fence, Signature>(scope, core, anchor, should_stop, args...);
}

struct NeverStop {
    constexpr bool operator()() const noexcept { return false; }
};

}  // namespace cbm::detail
