// cbm/redis/bridge.hpp - cbm::redis::Bridge: callbacks across processes on
// Redis Streams. publish() appends an event to a stream (XADD) with the
// caller's trace id; subscribe() runs a handler for each entry of a stream
// in a consumer group (XREADGROUP), in this or any other process, and
// acknowledges it (XACK) when the handler returns.
//
//   cbm::redis::Bridge bridge({.endpoint = {.host = "127.0.0.1", .port = 6379}});
//   auto billing = bridge.subscribe<std::string>("orders", [](const std::string& order) { bill(order); },
//                                                {.group = "billing", .ack_timeout = 5s});
//   bridge.publish("orders", std::string("o-1"));
//
// Delivery is at least once. An entry is acknowledged only after its
// handler returned. One whose handler threw stays pending, as does one
// whose consumer hung or died: after ack_timeout a consumer of the group
// claims it (XAUTOCLAIM) and delivers it again, up to max_deliveries; then
// it goes to the dead-letter stream "<topic>:dead" (with the error, the
// delivery count and its origin), is acknowledged, and the bridge's
// dead-letter handler is called. An entry the codec cannot decode goes
// there at once. So a handler may see an entry again (after a failure, a
// crash, a connection lost before the acknowledgement, or a handler slower
// than ack_timeout): Message<E>::id and delivery_count are there to make
// it idempotent.
//
// Consumers run on threads of their own, one connection each, and
// reconnect with backoff when the server goes away (the group and the
// stream are created again if the server lost them). A consumer's handler
// runs on its thread, or, with ConsumeOptions::executor, on that executor:
// a batch's entries at once, acknowledged when all of them ran. Besides a
// handler, a consumer can feed an EventBus or a CallbackRegistry
// (attach()). publish() does not
// buffer: while the server cannot be reached it throws ConnectionError.
//
// Thread safety: every member may be called from any thread at once.
// publish() serialises on the bridge's one publishing connection.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "../callback_registry.hpp"
#include "../context.hpp"
#include "../error_policy.hpp"
#include "../event_bus.hpp"
#include "../trace.hpp"
#include "codec.hpp"
#include "connection.hpp"
#include "detail/consumer_loop.hpp"
#include "error.hpp"
#include "message.hpp"

namespace cbm::redis {

struct BridgeOptions {
    Endpoint endpoint = {};
    // The wait before the k-th reconnection attempt in a row:
    // reconnect_initial * 2^(k-1), at most reconnect_max.
    std::chrono::milliseconds reconnect_initial{50};
    std::chrono::milliseconds reconnect_max{2000};
};

struct PublishOptions {
    // Trims the stream to about this many entries (XADD MAXLEN ~ n: whole
    // radix-tree nodes, so a few more may stay). 0: never trimmed.
    std::size_t max_len = 0;
};

// A running consumer (see Bridge::subscribe). Stops when destroyed.
class Consumer {
public:
    Consumer() noexcept = default;
    Consumer(Consumer&&) noexcept = default;
    Consumer& operator=(Consumer&&) noexcept = default;
    ~Consumer() { stop(); }

    // Effect: finishes the batch of entries in hand, acknowledges what
    // succeeded, and stops reading. Idempotent.
    // Blocks: until then (about ConsumeOptions::block, plus the handlers).
    void stop() noexcept {
        if (loop_) loop_->stop();
    }

    // Precondition: not empty (default-constructed or moved from).
    ConsumerMetrics metrics() const noexcept { return loop_->metrics(); }
    // This consumer's name in its group.
    const std::string& name() const noexcept { return loop_->consumer_name(); }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

    explicit Consumer(std::unique_ptr<detail::ConsumerLoop> loop) noexcept : loop_(std::move(loop)) {}

private:
    std::unique_ptr<detail::ConsumerLoop> loop_;
};

class Bridge {
public:
    // Does not connect yet: publish() and each consumer connect when first
    // needed, so a bridge can be made while the server is still starting.
    explicit Bridge(BridgeOptions options = {})
        : options_(std::move(options)), handlers_(std::make_shared<detail::BridgeHandlers>()) {}
    Bridge(const Bridge&) = delete;
    Bridge& operator=(const Bridge&) = delete;

    // Effect: appends `event`, encoded by `codec`, to the stream `topic`
    // (created if missing), with the caller's cbm::trace_id().
    // Returns: the entry's id.
    // Throws: ConnectionError when the server cannot be reached (one new
    // connection is tried first: if the old one broke after the server took
    // the entry, the event may be appended twice, as at least once allows);
    // Error for an error reply; what `codec` throws. std::invalid_argument
    // for an empty topic.
    template <class E, class C = codec<E>>
        requires Codec<C, E>
    std::string publish(std::string_view topic, const E& event, PublishOptions options = {}, const C& codec = C{}) {
        const std::string payload = codec.encode(event);
        return publish_encoded(topic, std::span<const std::string>(&payload, 1), options).front();
    }

    // Effect: as publish() for each event, in one round trip (pipelined).
    // Returns: the entries' ids, in order.
    template <class E, class C = codec<E>>
        requires Codec<C, E>
    std::vector<std::string> publish_batch(std::string_view topic, std::span<const E> events, PublishOptions options = {},
                                           const C& codec = C{}) {
        std::vector<std::string> payloads;
        payloads.reserve(events.size());
        for (const E& e : events) payloads.push_back(codec.encode(e));
        return publish_encoded(topic, payloads, options);
    }

    // Effect: starts a consumer of `topic` in `options.group`, on a thread
    // of its own: `handler` receives each entry decoded by `codec` (on that
    // thread, or on options.executor when set: then on several threads at
    // once, so it must be thread-safe), as
    // `const E&` or as `const cbm::redis::Message<E>&`, under a Context that
    // carries the publisher's trace id (and the handler_timeout deadline).
    // A handler that returns acknowledges the entry; one that throws fails
    // this delivery (see the header comment for what follows).
    // Returns: the consumer; it stops when destroyed.
    // Throws: std::invalid_argument for options that make no sense (an
    // empty topic or group, a batch of 0, non-positive times, 0 deliveries).
    template <class E, class F, class C = codec<E>>
        requires Codec<C, E>
    [[nodiscard]] Consumer subscribe(std::string topic, F&& handler, ConsumeOptions options, const C& codec = C{}) {
        static_assert(std::is_invocable_v<std::decay_t<F>&, const E&> ||
                          std::is_invocable_v<std::decay_t<F>&, const Message<E>&>,
                      "cbm::redis::Bridge::subscribe<E>: the handler must be callable as f(const E&) or "
                      "f(const cbm::redis::Message<E>&)");
        validate(topic, options);
        auto invoke = [f = std::decay_t<F>(std::forward<F>(handler)), codec](std::string_view payload,
                                                                           const detail::EntryInfo& info) mutable {
            std::optional<E> event;
            try {
                event.emplace(codec.decode(payload));
            } catch (...) {
                throw detail::DecodeError("cbm::redis: cannot decode the entry " + std::string(info.id) + ": " +
                                          describe(std::current_exception()));
            }
            if constexpr (std::is_invocable_v<std::decay_t<F>&, const Message<E>&>) {
                f(Message<E>{info.topic, info.id, info.delivery_count, info.trace_id, *event});
            } else {
                f(*event);
            }
        };
        return Consumer(std::make_unique<detail::ConsumerLoop>(
            options_.endpoint, detail::ReconnectBackoff{options_.reconnect_initial, options_.reconnect_max}, handlers_,
            std::move(topic), std::move(options), std::move(invoke)));
    }

    // Effect: as subscribe(), delivering each entry to `bus` with
    // publish(): the entry is acknowledged when every delivery the bus made
    // succeeded (a failed one leaves it pending, to come again for all the
    // bus's subscribers). `bus` must outlive the consumer.
    template <class E, class C = codec<E>>
        requires Codec<C, E>
    [[nodiscard]] Consumer attach(std::string topic, EventBus& bus, ConsumeOptions options, const C& codec = C{}) {
        return subscribe<E>(
            std::move(topic), [&bus](const E& event) { require_ok(bus.publish(event)); }, std::move(options), codec);
    }

    // Effect: as subscribe(), running the callbacks `registry` holds under
    // the key `key_of(event)` (or under `key_of` itself, when it is a key)
    // with registry.trigger(current_context(), key, event), so the
    // handler_timeout deadline and the trace id reach them. The entry is
    // acknowledged when the trigger was ok(): no callback failed and none
    // was cut short. A key with no callbacks acknowledges it. `registry`
    // must outlive the consumer.
    // Throws: as subscribe().
    template <class Key, class E, class Hash, class KeyEqual, class KeyOf, class C = codec<E>>
        requires Codec<C, E> &&
                 (std::is_invocable_r_v<Key, const KeyOf&, const E&> || std::is_convertible_v<const KeyOf&, Key>)
    [[nodiscard]] Consumer attach(std::string topic, CallbackRegistry<Key, void(const E&), Hash, KeyEqual>& registry,
                                  KeyOf key_of, ConsumeOptions options, const C& codec = C{}) {
        return subscribe<E>(
            std::move(topic),
            [&registry, key_of = std::move(key_of)](const E& event) {
                if constexpr (std::is_invocable_r_v<Key, const KeyOf&, const E&>) {
                    require_ok(registry.trigger(current_context(), std::invoke(key_of, event), event));
                } else {
                    require_ok(registry.trigger(current_context(), static_cast<Key>(key_of), event));
                }
            },
            std::move(options), codec);
    }

    // Effect: `handler` receives every entry given up on (moved to the
    // dead-letter stream): key = the topic, name = the consumer's name
    // option (or its group), error, attempts = the deliveries made. On the
    // consumer's thread. Pass {} to remove.
    void set_dead_letter_handler(DeadLetterHandler handler) {
        std::lock_guard<std::mutex> lock(handlers_->mutex);
        handlers_->dead_letter = std::move(handler);
    }

    // Effect: `handler` receives every failure: a handler that threw, and a
    // consumer's lost connection (before it reconnects). Pass {} to remove.
    void set_error_handler(ErrorHandler handler) {
        std::lock_guard<std::mutex> lock(handlers_->mutex);
        handlers_->error = std::move(handler);
    }

    // Entries published, and publish() calls that failed.
    std::uint64_t published() const noexcept { return published_.load(std::memory_order_relaxed); }
    std::uint64_t publish_failures() const noexcept { return publish_failures_.load(std::memory_order_relaxed); }

    const BridgeOptions& options() const noexcept { return options_; }

    // ------------------------------------------------------------------
    // End of public interface. Implementation details follow.

private:
    std::vector<std::string> publish_encoded(std::string_view topic, std::span<const std::string> payloads,
                                             const PublishOptions& options) {
        if (topic.empty()) throw std::invalid_argument("cbm::redis::Bridge::publish: the topic must not be empty");
        const std::string max_len = std::to_string(options.max_len);
        const std::string& trace = trace_id();
        std::vector<std::vector<std::string_view>> commands;
        commands.reserve(payloads.size());
        for (const std::string& payload : payloads) {
            std::vector<std::string_view> c{"XADD", topic};
            if (options.max_len != 0) {
                c.push_back("MAXLEN");
                c.push_back("~");
                c.push_back(max_len);
            }
            for (std::string_view a : {std::string_view("*"), std::string_view("data"), std::string_view(payload),
                                       std::string_view("trace"), std::string_view(trace)}) {
                c.push_back(a);
            }
            commands.push_back(std::move(c));
        }
        std::vector<Reply> replies;
        {
            std::lock_guard<std::mutex> lock(publish_mutex_);
            for (int attempt = 0;; ++attempt) {
                try {
                    if (!publisher_ || publisher_->broken()) publisher_.emplace(options_.endpoint);
                    replies = publisher_->pipeline(commands);
                    break;
                } catch (const ConnectionError&) {
                    publisher_.reset();
                    if (attempt == 0) continue;  // the server may have restarted: one new connection
                    publish_failures_.fetch_add(1, std::memory_order_relaxed);
                    throw;
                }
            }
        }
        std::vector<std::string> ids;
        ids.reserve(replies.size());
        for (const Reply& r : replies) {
            try {
                r.check("XADD");
            } catch (...) {
                publish_failures_.fetch_add(1, std::memory_order_relaxed);
                throw;
            }
            ids.emplace_back((*r).text());
        }
        published_.fetch_add(ids.size(), std::memory_order_relaxed);
        return ids;
    }

    // A trigger that was not ok() fails the delivery: with its first
    // failure, or with why it was cut short (the context's error code).
    static void require_ok(const TriggerResult& r) {
        if (!r.failures.empty()) std::rethrow_exception(r.failures.front().error);
        if (r.stopped) {
            const std::error_code why = current_context().err();
            if (why) throw std::system_error(why, "cbm::redis: the local callbacks were cut short");
            throw Error("cbm::redis: the local callbacks were cut short (ErrorPolicy::stop)");
        }
    }

    static void validate(const std::string& topic, const ConsumeOptions& o) {
        auto fail = [](const std::string& what) {
            throw std::invalid_argument("cbm::redis::Bridge::subscribe: " + what);
        };
        if (topic.empty()) fail("the topic must not be empty");
        if (o.group.empty()) fail("a consumer needs a group (ConsumeOptions::group)");
        if (o.batch == 0) fail("batch must be at least 1");
        if (o.block.count() <= 0) fail("block must be positive");
        if (o.ack_timeout.count() <= 0) fail("ack_timeout must be positive");
        if (o.max_deliveries == 0) fail("max_deliveries must be at least 1");
        if (o.handler_timeout.count() < 0) fail("handler_timeout must not be negative");
    }

    const BridgeOptions options_;
    const std::shared_ptr<detail::BridgeHandlers> handlers_;
    std::mutex publish_mutex_;
    std::optional<Connection> publisher_;  // under publish_mutex_
    std::atomic<std::uint64_t> published_{0};
    std::atomic<std::uint64_t> publish_failures_{0};
};

}  // namespace cbm::redis
