// README "Asynchronous dispatch": any copyable type with execute(f) is an
// executor. This one gives each invocation a std::jthread of its own (Go's
// `go h()`, literally), and joins them when the last copy goes.
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
        std::vector<std::jthread> running;  // joined by ~vector
    };
    std::shared_ptr<Threads> threads_;
};

static_assert(cbm::Executor<ThreadPerTask>);

int main() {
    std::atomic<int> handled{0};
    {
        cbm::CallbackGroup<void(int)> events({.executor = ThreadPerTask{}});
        events.add([&handled](int x) { handled += x; });
        events.add([&handled](int x) { handled += 10 * x; });
        const cbm::TriggerResult res = events.trigger_async(2).get();
        std::printf("%zu callbacks ran on threads of their own\n", res.invoked);
    }  // the group, and with it the executor's last copy, joins the threads
    std::printf("handled %d\n", handled.load());
    return handled.load() == 22 ? 0 : 1;
}
