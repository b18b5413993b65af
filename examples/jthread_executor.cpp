// README "Asynchronous dispatch": any copyable type with execute(f) is an
// executor. This one gives each invocation a std::jthread of its own (Go's
// `go h()`, literally), and joins them when the last copy goes.
//
// Which thread drops the last copy is not fixed: the group keeps a copy, and
// so does each queued invocation until it has settled on its own thread. Keep
// one copy where you want the joins to happen (here: main), and never let a
// thread join itself.
#include <cbm/cbm.hpp>

#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

class ThreadPerTask {
public:
    ThreadPerTask() : threads_(std::make_shared<Threads>()) {}

    template <class F>
    void execute(F&& f) const {
        std::lock_guard<std::mutex> lock(threads_->mutex);
        threads_->running.emplace_back([g = std::forward<F>(f)]() mutable { g(); });
    }

private:
    struct Threads {
        std::mutex mutex;
        std::vector<std::jthread> running;

        ~Threads() {
            // Should a task's thread drop the last copy after all, joining
            // itself would throw (std::errc::resource_deadlock_would_occur).
            for (std::jthread& t : running) {
                if (t.get_id() == std::this_thread::get_id()) t.detach();
            }
        }  // ~vector joins the others
    };
    std::shared_ptr<Threads> threads_;
};

static_assert(cbm::Executor<ThreadPerTask>);

int main() {
    std::atomic<int> handled{0};
    const ThreadPerTask spawner;  // the last copy: its threads are joined here
    {
        cbm::CallbackGroup<void(int)> events({.executor = spawner});
        events.add([&handled](int x) { handled += x; });
        events.add([&handled](int x) { handled += 10 * x; });
        const cbm::TriggerResult res = events.trigger_async(2).get();
        std::printf("%zu callbacks ran on threads of their own\n", res.invoked);
    }  // the group waits for its callbacks; their threads may still be exiting
    std::printf("handled %d\n", handled.load());
    return handled.load() == 22 ? 0 : 1;
}
