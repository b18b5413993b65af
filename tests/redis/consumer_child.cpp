// A consumer process for the crash test: it joins a consumer group, takes
// one entry, says so by creating a marker file, and then never finishes
// handling it. The test kills it with SIGKILL at that point.
//   redis_consumer_child PORT TOPIC GROUP CONSUMER MARKER
#include <cbm/redis/bridge.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

int main(int argc, char** argv) {
    if (argc != 6) {
        std::fprintf(stderr, "usage: %s PORT TOPIC GROUP CONSUMER MARKER\n", argv[0]);
        return 2;
    }
    const std::string marker = argv[5];
    cbm::redis::Bridge bridge({.endpoint = {.host = "127.0.0.1", .port = std::atoi(argv[1])}});
    auto consumer = bridge.subscribe<std::string>(
        argv[2],
        [&](const std::string&) {
            std::ofstream(marker) << "handling\n";
            // Hangs (until killed): the entry stays pending for this consumer.
            for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
        },
        {.group = argv[3], .consumer = argv[4], .batch = 1, .from_beginning = true});
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}
