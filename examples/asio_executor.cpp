// README "Asynchronous dispatch": asio's executors run cbm callbacks as they
// are; <cbm/interop/asio.hpp> plugs in the execution::execute of asio
// before 1.24 (Debian 12 has 1.22). An io_context that is destroyed with
// invocations still queued reports each one as failed (errc::task_dropped).
#include <asio.hpp>
#include <cbm/cbm.hpp>
#include <cbm/interop/asio.hpp>

#include <cstdio>

int main() {
    asio::thread_pool io(4);
    cbm::CallbackGroup<void(int)> events({.executor = io.get_executor()});
    events.add([](int x) { std::printf("on an asio thread: %d\n", x); });

    asio::io_context loop;  // a single-threaded event loop, run below
    events.add([](int x) { std::printf("on the io_context: %d\n", x); }, {.executor = loop.get_executor()});

    cbm::AsyncResult r = events.trigger_async(42);
    loop.run();  // runs the second callback here
    const cbm::TriggerResult res = r.get();
    io.join();
    return res.invoked == 2 ? 0 : 1;
}
