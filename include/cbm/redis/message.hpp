// cbm/redis/message.hpp - cbm::redis::Message<E>: one delivery of a stream
// entry to a consumer, for handlers that want more than the event: the
// entry's id and how often it was delivered (for idempotency: delivery is
// at least once), and the trace id it carried.
#pragma once

#include <cstdint>
#include <string_view>

namespace cbm::redis {

template <class E>
struct Message {
    std::string_view topic;         // the stream
    std::string_view id;            // the entry's id ("1700000000000-0"): the same on every delivery
    std::uint32_t delivery_count;   // 1 the first time; more after a consumer failed, hung or crashed
    std::string_view trace_id;      // the publisher's cbm::trace_id() ("" if it had none)
    const E& event;

    bool redelivered() const noexcept { return delivery_count > 1; }
};

}  // namespace cbm::redis
