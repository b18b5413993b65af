// Emit cost: one trigger of N callbacks, from one and from two threads at
// once on the same group. The floor is an unsynchronized loop over a
// std::vector<std::function<void(int)>>.
//
// trigger_parts: where the fixed cost of a one-callback trigger goes. Each
// row adds one piece of the trigger's protocol to a std::function call,
// using cbm's own internals (thread_records.hpp, trigger_loop.hpp), so the
// rows climb step by step toward the real CallbackGroup::trigger:
//   result    the TriggerResult every trigger returns (counts and failures);
//   scope     the thread's trigger level: its record, the reclamation epoch,
//             the domain (what a group's destructor and reclamation wait on);
//   announce  the node announced before its state is read and withdrawn
//             after, plus the waiter check (what a blocking unregister waits
//             on: the "not running elsewhere when unregister returns" part).
// What remains between the last part and the real trigger is the group's
// indirections (group -> state -> list -> array -> slot -> node) and the
// stored callable's call.
#include <atomic>
#include <cstdint>

#include "peers.hpp"

namespace {

using namespace cbm_bench;

template <class Peer>
void emit(benchmark::State& state) {
    static Peer* peer = nullptr;
    if (state.thread_index() == 0) {
        peer = new Peer;
        peer->setup(static_cast<int>(state.range(0)));
    }
    int x = 1;
    benchmark::DoNotOptimize(x);
    for (auto _ : state) peer->emit(x);
    state.SetItemsProcessed(state.iterations() * state.range(0));
    if (state.thread_index() == 0) {
        delete peer;
        peer = nullptr;
    }
}

template <class Peer>
void register_emit(const char* name, int max_threads) {
    auto* b = benchmark::RegisterBenchmark(name, &emit<Peer>);
    b->Arg(1)->Arg(8)->Arg(64)->UseRealTime();
    for (int t : cbm_bench::thread_counts(max_threads)) b->Threads(t);
}

struct OneCall {
    std::function<void(int)> callback = kBody;
    void setup(int) {}
};

struct FloorOneCall : OneCall {
    void emit(int x) { callback(x); }
};

struct PartResult : OneCall {
    void emit(int x) {
        cbm::TriggerResult result;
        callback(x);
        result.invoked = 1;
        benchmark::DoNotOptimize(result);  // as a returned result: its vector is destroyed for real
    }
};

// The thread's level around the call, as every trigger publishes it.
struct PartResultScope : OneCall {
    std::atomic<bool> fenced_entry{false};
    void emit(int x) {
        cbm::TriggerResult result;
        {
            cbm::detail::TriggerScope scope(this, fenced_entry);
            callback(x);
            result.invoked = 1;
        }
        benchmark::DoNotOptimize(result);
    }
};

// And the node's announcement, state check, withdrawal and waiter check.
struct PartResultScopeAnnounce : OneCall {
    std::atomic<bool> fenced_entry{false};
    std::atomic<std::uint32_t> state{0};  // stands for the node's state word
    template <cbm::detail::BarrierMode Mode>
    void call_announced(cbm::detail::TriggerScope& scope, cbm::TriggerResult& result, int x) {
        scope.announce<Mode>(&state);
        if (state.load(std::memory_order_acquire) == 0) {
            callback(x);
            ++result.invoked;
        }
        scope.withdraw<Mode>();
        if ((state.load(std::memory_order_relaxed) & cbm::detail::kWaiter) != 0) std::abort();  // nobody waits here
    }
    void emit(int x) {
        cbm::TriggerResult result;
        {
            cbm::detail::TriggerScope scope(this, fenced_entry);
            if (scope.mode() == cbm::detail::BarrierMode::membarrier) {
                call_announced<cbm::detail::BarrierMode::membarrier>(scope, result, x);
            } else {
                call_announced<cbm::detail::BarrierMode::fence>(scope, result, x);
            }
        }
        benchmark::DoNotOptimize(result);
    }
};

template <class Part>
void register_part(const char* name) {
    benchmark::RegisterBenchmark(name, &emit<Part>)->Arg(1)->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
    register_emit<FloorLoop>("emit/floor_std_function_loop", 2);
    register_emit<CbmGroup>("emit/cbm_group", 2);
    register_emit<CbmRegistry>("emit/cbm_registry", 2);
    register_emit<SharedMutexVector>("emit/shared_mutex_vector", 2);
#if CBM_BENCH_HAVE_BOOST
    register_emit<BoostSignals2>("emit/boost_signals2", 2);
#else
    note_missing("Boost.Signals2", "libboost-dev");
#endif
#if CBM_BENCH_HAVE_SIGCPP
    register_emit<SigcSignal>("emit/sigcpp_single_threaded", 1);
#else
    note_missing("libsigc++ 3", "libsigc++-3.0-dev");
#endif
    register_part<FloorOneCall>("trigger_parts/floor_std_function_call");
    register_part<PartResult>("trigger_parts/cbm_part_result");
    register_part<PartResultScope>("trigger_parts/cbm_part_result_scope");
    register_part<PartResultScopeAnnounce>("trigger_parts/cbm_part_result_scope_announce");
    register_part<CbmGroup>("trigger_parts/cbm_group");
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
