// README: cbm::Snapshot, Go's atomic.Value for any C++ type.
#include <cbm/cbm.hpp>

#include <cstdio>
#include <string>
#include <thread>

struct Config {
    std::string endpoint;
    int timeout_ms;
};

int main() {
    cbm::Snapshot<Config> config{Config{"https://a.example", 100}};

    std::jthread reader([&config] {
        for (int i = 0; i < 1000; ++i) {
            auto cfg = config.load();  // wait-free; pins this value while `cfg` lives
            if (cfg->endpoint.empty() || cfg->timeout_ms <= 0) std::printf("torn read!\n");
        }
    });
    config.store(Config{"https://b.example", 250});  // the old value is freed once unpinned
    reader.join();

    auto now = config.load();
    std::printf("%s %d\n", now->endpoint.c_str(), now->timeout_ms);
    return now->timeout_ms == 250 ? 0 : 1;
}
