// README: Go's sync.Once, OnceValue and OnceFunc.
#include <cbm/cbm.hpp>

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

int main() {
    cbm::Once init;
    cbm::OnceValue<std::string> config;
    auto expensive = cbm::once_func([] {
        std::printf("computing once\n");
        return 6 * 7;
    });

    std::vector<std::jthread> workers;
    for (int i = 0; i < 4; ++i) {
        workers.emplace_back([&] {
            init.call([] { std::printf("init runs once\n"); });             // later callers wait, then see its effects
            const std::string& c = config.get([] { return std::string("loaded"); });  // cached after the first get
            if (c != "loaded" || expensive() != 42) std::printf("unexpected\n");
        });
    }
    workers.clear();
    return init.done() && config.has_value() ? 0 : 1;
}
