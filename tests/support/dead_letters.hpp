// Collects the dead letters a handler receives, from any thread.
#pragma once

#include <cbm/error_policy.hpp>

#include <cstddef>
#include <mutex>
#include <vector>

namespace cbm_test {

struct DeadLetters {
    std::mutex mutex;
    std::vector<cbm::DeadLetter> all;
    void operator()(const cbm::DeadLetter& d) {
        std::lock_guard<std::mutex> lock(mutex);
        all.push_back(d);
    }
    std::size_t size() {
        std::lock_guard<std::mutex> lock(mutex);
        return all.size();
    }
};

}  // namespace cbm_test
