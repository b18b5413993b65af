// cbm/detail/validate.hpp - the checks add() makes before anything is
// allocated or registered: each bad option is an std::invalid_argument that
// says what is wrong and what would be right.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "../observer.hpp"
#include "prometheus_text.hpp"

namespace cbm::detail {

// Throws std::invalid_argument naming the first label that cannot be a
// Prometheus label (or collides with one cbm adds).
inline void check_labels(const Labels& labels) {
    for (std::size_t i = 0; i < labels.size(); ++i) {
        if (!valid_label_name(labels[i].first)) {
            throw std::invalid_argument("cbm: invalid metric label name \"" + labels[i].first +
                                        "\" (use [a-zA-Z_][a-zA-Z0-9_]*, not starting with __, and not key, "
                                        "callback, id, quantile, reason, sampled or le)");
        }
        for (std::size_t j = 0; j < i; ++j) {
            if (labels[j].first == labels[i].first) {
                throw std::invalid_argument("cbm: duplicate metric label \"" + labels[i].first + "\"");
            }
        }
    }
}

// Throws std::invalid_argument for resilience settings that make no sense.
template <class Options>
void check_resilience(const Options& o) {
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
}

// True when the options ask for any resilience at all.
template <class Options>
bool wants_resilience(const Options& o) noexcept {
    return o.timeout.count() != 0 || o.retry.attempts != 1 || o.circuit_breaker.failures != 0;
}

}  // namespace cbm::detail
