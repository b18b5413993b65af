// Helpers of the Redis bridge tests: where the fixture's server is, a
// server of a test's own (for a test that restarts it), unique stream
// names, and raw commands to look at what the bridge left in Redis.
#pragma once

#include <cbm/redis/connection.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "test_support.hpp"

namespace cbm_redis_test {

// The directory of the fixture's server (CTest sets CBM_REDIS_DIR).
inline std::string fixture_dir() {
    const char* dir = std::getenv("CBM_REDIS_DIR");
    if (dir == nullptr) throw std::runtime_error("CBM_REDIS_DIR is not set: run the Redis tests through CTest");
    return dir;
}

inline int port_in(const std::string& dir) {
    std::ifstream in(dir + "/port");
    int port = 0;
    if (!(in >> port)) throw std::runtime_error("no Redis port in " + dir + "/port (did the fixture start?)");
    return port;
}

inline cbm::redis::Endpoint endpoint_in(const std::string& dir) {
    return {.host = "127.0.0.1", .port = port_in(dir), .connect_timeout = std::chrono::milliseconds(500)};
}

inline cbm::redis::Endpoint fixture_endpoint() { return endpoint_in(fixture_dir()); }

// A stream name no other test uses (tests share the fixture's server).
inline std::string unique_topic(const std::string& what) {
    static int n = 0;
    return "cbm-test:" + what + ":" + std::to_string(::getpid()) + ":" + std::to_string(++n);
}

inline long long integer_of(cbm::redis::Connection& c, std::initializer_list<std::string_view> args) {
    cbm::redis::Reply r = c.command(args);
    r.check("test command");
    return (*r).integer();
}

// Entries of `topic` delivered to `group` and not acknowledged.
inline long long pending(cbm::redis::Connection& c, const std::string& topic, const std::string& group) {
    cbm::redis::Reply r = c.command({"XPENDING", topic, group});
    r.check("XPENDING");
    return (*r).size() > 0 ? (*r)[0].integer() : 0;
}

inline long long stream_length(cbm::redis::Connection& c, const std::string& topic) {
    return integer_of(c, {"XLEN", topic});
}

// A redis-server of one test's own, started and stopped by the fixture
// script (tests/redis/redis_fixture.sh), so that the test may restart it.
class OwnServer {
public:
    explicit OwnServer(std::string name) : dir_(fixture_dir() + "-" + std::move(name)) { run("start"); }
    ~OwnServer() {
        try {
            run("stop");
        } catch (...) {
        }
    }
    OwnServer(const OwnServer&) = delete;
    OwnServer& operator=(const OwnServer&) = delete;

    cbm::redis::Endpoint endpoint() const { return endpoint_in(dir_); }

    // Effect: shuts the server down (its append-only file synced) and
    // starts it again on the same port, from the same files.
    void restart() {
        {
            cbm::redis::Connection c(endpoint());
            try {
                c.command({"SHUTDOWN"});
            } catch (const cbm::redis::ConnectionError&) {  // the server closes the connection as it goes
            }
        }
        const bool down = cbm_test::eventually([&] {
            try {
                cbm::redis::Connection probe(endpoint());
                return false;
            } catch (const cbm::redis::ConnectionError&) {
                return true;
            }
        });
        if (!down) throw std::runtime_error("OwnServer: the server did not go down");
        if (std::system(("redis-server " + dir_ + "/redis.conf").c_str()) != 0) {
            throw std::runtime_error("OwnServer: redis-server did not start again");
        }
        const bool up = cbm_test::eventually([&] {
            try {
                cbm::redis::Connection probe(endpoint());
                return (*probe.command({"PING"})).text() == "PONG";
            } catch (const cbm::redis::Error&) {
                return false;
            }
        });
        if (!up) throw std::runtime_error("OwnServer: the server did not come back");
    }

private:
    void run(const char* action) {
        const std::string command = std::string(CBM_REDIS_FIXTURE_SCRIPT) + " " + action + " " + dir_;
        if (std::system(command.c_str()) != 0) throw std::runtime_error("OwnServer: " + command + " failed");
    }
    std::string dir_;
};

}  // namespace cbm_redis_test
