// cbm/redis/detail/consumer_loop.hpp - the thread behind one consumer of a
// Redis Streams consumer group: it reads entries in batches (XREADGROUP),
// claims entries other consumers left pending too long (XAUTOCLAIM), runs
// the typed handler on each, acknowledges what succeeded (XACK), moves
// what is given up on to the dead-letter stream, and reconnects with
// backoff when the server goes away.
//
// Synchronisation: the loop's own thread is the only one that touches its
// connection. With an executor, the handlers of one batch run as tasks on
// it; each task writes only its own entry's result, under the batch's
// mutex, and the loop reads the results (and acknowledges) only after
// every task of the batch ran or was dropped. Counters are relaxed atomics
// read by metrics(). Stopping is a std::stop_token: the loop sees it
// between batches (a read blocks at most `block`), so the batch in hand is
// finished and acknowledged first.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "../../context.hpp"
#include "../../errc.hpp"
#include "../../error_policy.hpp"
#include "../../executor.hpp"
#include "../../trace.hpp"
#include "../connection.hpp"
#include "../error.hpp"

namespace cbm::redis {

// How a consumer reads, and when it gives an entry up. Fields in this order
// for designated initializers: {.group = "billing", .consumer = "b1", .ack_timeout = 5s}.
struct ConsumeOptions {
    // The consumer group (created, with the stream, when missing). Required.
    std::string group;
    // This consumer's name in the group; consumers of one group need
    // distinct names. "": "<hostname>-<pid>-<n>".
    std::string consumer = {};
    // Entries per read (>= 1).
    std::size_t batch = 64;
    // How long one read waits for new entries; stop() is seen within about
    // this long (> 0).
    std::chrono::milliseconds block{100};
    // An entry delivered but not acknowledged for this long (its consumer
    // failed it, hung or died) is claimed by a consumer of the group and
    // delivered again (> 0).
    std::chrono::milliseconds ack_timeout{30'000};
    // Deliveries of one entry, the first included (>= 1); an entry that
    // fails the last one, or is found delivered more often, goes to the
    // dead-letter stream "<topic>:dead" and is acknowledged.
    std::uint32_t max_deliveries = 5;
    // The deadline of the Context a handler runs under (0: none).
    std::chrono::milliseconds handler_timeout{0};
    // A group this consumer creates starts at the stream's first entry;
    // otherwise at entries added after it was created.
    bool from_beginning = false;
    // Reported in Failure::name and DeadLetter::name. "": the group's name.
    std::string name = {};
    // Where the handler runs. Empty: on the consumer's own thread, one entry
    // after another. Set: each entry of a batch is one task on it, so up to
    // `batch` entries are handled at once (the handler must then be
    // thread-safe); the batch is acknowledged once every task ran. A task
    // the executor refuses (throws) runs on the consumer's thread; one it
    // destroys unrun fails that delivery with errc::task_dropped.
    AnyExecutor executor = {};
};

// A consumer's numbers.
struct ConsumerMetrics {
    std::uint64_t received = 0;       // deliveries (first ones and redeliveries)
    std::uint64_t acked = 0;          // entries handled and acknowledged
    std::uint64_t failed = 0;         // deliveries whose handler threw
    std::uint64_t claimed = 0;        // entries claimed from a consumer that did not acknowledge in time
    std::uint64_t dead_lettered = 0;  // entries moved to the dead-letter stream
    std::uint64_t decode_errors = 0;  // entries the codec could not decode (dead-lettered at once)
    std::uint64_t reconnects = 0;     // connections made again after one broke
    bool connected = false;
};

namespace detail {

// Thrown by a typed handler when the codec cannot decode the entry: an
// error no redelivery can cure.
class DecodeError : public Error {
public:
    using Error::Error;
};

// What a delivery carries to the typed side.
struct EntryInfo {
    std::string_view topic;
    std::string_view id;
    std::uint32_t delivery_count;
    std::string_view trace_id;
};

// The bridge's handlers, shared with its consumers (which may outlive it).
struct BridgeHandlers {
    std::mutex mutex;
    DeadLetterHandler dead_letter;
    ErrorHandler error;

    void report_dead_letter(const DeadLetter& letter) noexcept { report(&BridgeHandlers::dead_letter, letter); }
    void report_failure(const Failure& failure) noexcept { report(&BridgeHandlers::error, failure); }

private:
    // Calls the handler `which` (copied under the mutex, called outside it).
    template <class Handler, class Arg>
    void report(Handler BridgeHandlers::*which, const Arg& arg) noexcept {
        try {
            Handler h;
            {
                std::lock_guard<std::mutex> lock(mutex);
                h = this->*which;
            }
            if (h) h(arg);
        } catch (...) {  // a handler that throws (or no memory to copy it) stops nothing
        }
    }
};

// Waits before the k-th consecutive reconnection attempt.
struct ReconnectBackoff {
    std::chrono::milliseconds initial{50};
    std::chrono::milliseconds max{2000};
    std::chrono::milliseconds after(std::uint32_t attempt) const noexcept {
        auto wait = initial;
        for (std::uint32_t i = 1; i < attempt && wait < max; ++i) wait *= 2;
        return std::min(wait, max);
    }
};

inline std::string default_consumer_name() {
    static std::atomic<std::uint64_t> next{0};
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    return std::string(host[0] != '\0' ? host : "host") + "-" + std::to_string(getpid()) + "-" +
           std::to_string(next.fetch_add(1));
}

class ConsumerLoop {
public:
    // Runs one delivery of an entry's payload; throws DecodeError when it
    // cannot decode it, anything else when its handler failed.
    using Invoke = std::function<void(std::string_view payload, const EntryInfo& info)>;

    ConsumerLoop(Endpoint endpoint, ReconnectBackoff backoff, std::shared_ptr<BridgeHandlers> handlers,
                 std::string topic, ConsumeOptions options, Invoke invoke)
        : endpoint_(std::move(endpoint)),
          backoff_(backoff),
          handlers_(std::move(handlers)),
          topic_(std::move(topic)),
          dead_topic_(topic_ + ":dead"),
          options_(std::move(options)),
          invoke_(std::move(invoke)) {
        if (options_.consumer.empty()) options_.consumer = default_consumer_name();
        if (options_.name.empty()) options_.name = options_.group;
        thread_ = std::jthread([this](std::stop_token stop) { run(stop); });
    }
    ConsumerLoop(const ConsumerLoop&) = delete;
    ConsumerLoop& operator=(const ConsumerLoop&) = delete;
    ~ConsumerLoop() { stop(); }

    // Effect: the loop finishes (and acknowledges) the batch in hand and
    // ends. Blocks until it has. Idempotent.
    void stop() noexcept {
        thread_.request_stop();
        wake_.notify_all();
        if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
    }

    ConsumerMetrics metrics() const noexcept {
        ConsumerMetrics m;
        m.received = received_.load(std::memory_order_relaxed);
        m.acked = acked_.load(std::memory_order_relaxed);
        m.failed = failed_.load(std::memory_order_relaxed);
        m.claimed = claimed_.load(std::memory_order_relaxed);
        m.dead_lettered = dead_lettered_.load(std::memory_order_relaxed);
        m.decode_errors = decode_errors_.load(std::memory_order_relaxed);
        m.reconnects = reconnects_.load(std::memory_order_relaxed);
        m.connected = connected_.load(std::memory_order_relaxed);
        return m;
    }

    const std::string& consumer_name() const noexcept { return options_.consumer; }

private:
    struct Entry {
        std::string id;
        std::string payload;
        std::string trace_id;
        bool has_payload = false;
        std::uint32_t deliveries = 1;
    };

    void run(std::stop_token stop) noexcept {
        std::uint32_t failures_in_a_row = 0;
        while (!stop.stop_requested()) {
            try {
                if (!connection_) connect();
                failures_in_a_row = 0;
                if (claim_due()) claim_stale();
                read_new();
            } catch (...) {
                // Connection lost, refused, or the server answered what the
                // loop cannot use (a group lost in a restart): reconnect
                // (and create the group again) after a backoff.
                connection_.reset();
                connected_.store(false, std::memory_order_relaxed);
                report_failure(std::current_exception());
                wait(stop, backoff_.after(++failures_in_a_row));
            }
        }
    }

    void wait(std::stop_token& stop, std::chrono::milliseconds delay) {
        std::unique_lock<std::mutex> lock(wait_mutex_);
        wake_.wait_for(lock, stop, delay, [] { return false; });
    }

    void connect() {
        Endpoint e = endpoint_;
        e.command_timeout = endpoint_.command_timeout + options_.block;  // a read blocks that long first
        Connection c(e);
        Reply created = c.command({"XGROUP", "CREATE", topic_, options_.group, options_.from_beginning ? "0" : "$",
                                   "MKSTREAM"});
        if ((*created).is_error() && !(*created).text().starts_with("BUSYGROUP")) created.check("XGROUP CREATE");
        connection_.emplace(std::move(c));
        if (ever_connected_) reconnects_.fetch_add(1, std::memory_order_relaxed);
        ever_connected_ = true;
        connected_.store(true, std::memory_order_relaxed);
        next_claim_ = std::chrono::steady_clock::now();  // look for entries left by a dead consumer at once
    }

    bool claim_due() const noexcept { return std::chrono::steady_clock::now() >= next_claim_; }

    // Claims entries pending longer than ack_timeout (XAUTOCLAIM, from any
    // consumer of the group, this one included) and delivers them again.
    void claim_stale() {
        const std::string idle = std::to_string(options_.ack_timeout.count());
        const std::string count = std::to_string(options_.batch);
        Reply reply = connection_->command(
            {"XAUTOCLAIM", topic_, options_.group, options_.consumer, idle, claim_cursor_, "COUNT", count});
        reply.check("XAUTOCLAIM");
        const ReplyView r = *reply;
        if (!r.is_array() || r.size() < 2) throw Error("cbm::redis: XAUTOCLAIM: unexpected reply");
        claim_cursor_ = std::string(r[0].text());
        std::vector<Entry> entries = parse_entries(r[1]);
        if (claim_cursor_ == "0-0") {
            // A full pass: the next one after a while (an entry becomes
            // claimable ack_timeout after its delivery).
            next_claim_ = std::chrono::steady_clock::now() +
                          std::max(std::chrono::milliseconds(10), std::min(options_.ack_timeout / 4, std::chrono::milliseconds(1000)));
        }
        if (entries.empty()) return;
        claimed_.fetch_add(entries.size(), std::memory_order_relaxed);
        // Their delivery counts (XAUTOCLAIM counted this claim): one round trip.
        std::vector<std::vector<std::string_view>> queries;
        queries.reserve(entries.size());
        for (const Entry& e : entries) queries.push_back({"XPENDING", topic_, options_.group, e.id, e.id, "1"});
        std::vector<Reply> counts = connection_->pipeline(queries);
        for (std::size_t i = 0; i < entries.size(); ++i) {
            const ReplyView p = *counts[i];
            if (p.is_array() && p.size() == 1 && p[0].size() >= 4) {
                entries[i].deliveries = static_cast<std::uint32_t>(std::max<long long>(1, p[0][3].integer()));
            } else {
                entries[i].deliveries = 2;  // acknowledged meanwhile (it will not be again): a redelivery all the same
            }
        }
        deliver(std::move(entries));
    }

    void read_new() {
        const std::string count = std::to_string(options_.batch);
        const std::string block = std::to_string(options_.block.count());
        Reply reply = connection_->command(
            {"XREADGROUP", "GROUP", options_.group, options_.consumer, "COUNT", count, "BLOCK", block, "STREAMS", topic_, ">"});
        reply.check("XREADGROUP");
        const ReplyView r = *reply;
        if (r.is_nil() || r.size() == 0) return;  // nothing within `block`
        const ReplyView stream = r[0];
        if (stream.size() < 2) throw Error("cbm::redis: XREADGROUP: unexpected reply");
        std::vector<Entry> entries = parse_entries(stream[1]);
        deliver(std::move(entries));
    }

    // [[id, [field, value, ...]], ...]
    static std::vector<Entry> parse_entries(ReplyView list) {
        std::vector<Entry> out;
        out.reserve(list.size());
        for (std::size_t i = 0; i < list.size(); ++i) {
            const ReplyView item = list[i];
            if (item.size() < 2) continue;  // an entry deleted meanwhile
            Entry e;
            e.id = std::string(item[0].text());
            const ReplyView fields = item[1];
            for (std::size_t f = 0; f + 1 < fields.size(); f += 2) {
                const std::string_view name = fields[f].text();
                if (name == "data") {
                    e.payload = std::string(fields[f + 1].text());
                    e.has_payload = true;
                } else if (name == "trace") {
                    e.trace_id = std::string(fields[f + 1].text());
                }
            }
            out.push_back(std::move(e));
        }
        return out;
    }

    // Runs each entry; acknowledges, in one command, those handled or
    // dead-lettered. A failed entry with deliveries left stays pending: it
    // is claimed again after ack_timeout.
    void deliver(std::vector<Entry> entries) {
        const std::size_t n = entries.size();
        std::vector<Outcome> outcomes(n, Outcome::pending);
        std::vector<bool> to_run(n, false);
        for (std::size_t i = 0; i < n; ++i) {
            received_.fetch_add(1, std::memory_order_relaxed);
            const std::optional<Outcome> refused = refuse(entries[i]);
            if (refused) {
                outcomes[i] = *refused;
            } else {
                to_run[i] = true;
            }
        }
        if (options_.executor) {
            auto batch = std::make_shared<Batch>(std::move(entries));
            run_on_executor(batch, to_run);
            std::lock_guard<std::mutex> lock(batch->mutex);  // (every task is done: for the reads' ordering)
            entries = std::move(batch->entries);
            for (std::size_t i = 0; i < n; ++i) {
                if (to_run[i]) outcomes[i] = settle(entries[i], batch->results[i]);
            }
        } else {
            for (std::size_t i = 0; i < n; ++i) {
                if (to_run[i]) outcomes[i] = settle(entries[i], run_handler(entries[i]));
            }
        }
        std::vector<std::string_view> ack{"XACK", topic_, options_.group};
        std::uint64_t handled = 0;
        for (std::size_t i = 0; i < n; ++i) {
            if (outcomes[i] == Outcome::pending) continue;
            if (outcomes[i] == Outcome::handled) ++handled;
            ack.push_back(entries[i].id);
        }
        if (ack.size() == 3) return;
        connection_->command(std::span<const std::string_view>(ack)).check("XACK");
        acked_.fetch_add(handled, std::memory_order_relaxed);
    }

    enum class Outcome : std::uint8_t { handled, dead_lettered, pending };

    // What one run of the handler left: no error, its error, or a decode error.
    struct HandlerResult {
        std::exception_ptr error;
        bool decode = false;
    };

    // An entry no handler may see (no payload, delivered too often): its
    // dead-lettering. Else nothing.
    std::optional<Outcome> refuse(const Entry& e) {
        if (!e.has_payload) {
            return dead_letter(e, std::make_exception_ptr(Error("cbm::redis: the entry has no \"data\" field")), true);
        }
        if (e.deliveries > options_.max_deliveries) {
            return dead_letter(e, std::make_exception_ptr(Error(
                                      "cbm::redis: delivered " + std::to_string(e.deliveries) +
                                      " times, more than max_deliveries (" + std::to_string(options_.max_deliveries) + ")")),
                               false);
        }
        return std::nullopt;
    }

    // Runs the handler on this thread under a Context with the entry's
    // trace id (and the handler_timeout deadline). Touches no connection:
    // executor tasks call it.
    HandlerResult run_handler(const Entry& e) noexcept {
        try {
            Context ctx = with_trace_id(Context::background(), e.trace_id);
            if (options_.handler_timeout.count() > 0) {
                auto [timed, cancel] = with_timeout(ctx, options_.handler_timeout);
                ContextScope scope(timed);
                invoke_(e.payload, EntryInfo{topic_, e.id, e.deliveries, e.trace_id});
            } else {
                ContextScope scope(ctx);
                invoke_(e.payload, EntryInfo{topic_, e.id, e.deliveries, e.trace_id});
            }
            return {};
        } catch (const DecodeError&) {
            return {std::current_exception(), true};
        } catch (...) {
            return {std::current_exception(), false};
        }
    }

    // On the loop's thread: what follows from a run of the handler.
    Outcome settle(const Entry& e, const HandlerResult& r) {
        if (!r.error) return Outcome::handled;
        if (r.decode) return dead_letter(e, r.error, true);
        failed_.fetch_add(1, std::memory_order_relaxed);
        report_failure(r.error);
        if (e.deliveries >= options_.max_deliveries) return dead_letter(e, r.error, false);
        return Outcome::pending;
    }

    // A batch whose handlers run on the executor. Shared with its tasks: a
    // task the executor keeps (or destroys) after the loop moved on still
    // finds its entry.
    struct Batch {
        explicit Batch(std::vector<Entry> e) : entries(std::move(e)), results(entries.size()) {}
        std::vector<Entry> entries;
        std::vector<HandlerResult> results;  // under mutex
        std::size_t running = 0;             // under mutex: tasks not finished
        std::mutex mutex;
        std::condition_variable done;

        void finish(std::size_t i, HandlerResult r) noexcept {
            std::lock_guard<std::mutex> lock(mutex);
            results[i] = std::move(r);
            if (--running == 0) done.notify_all();
        }
    };

    // One entry's handler, as a task. Destroyed unrun, it records the
    // delivery failed with errc::task_dropped.
    struct HandlerTask {
        ConsumerLoop* loop;
        std::shared_ptr<Batch> batch;
        std::size_t index;
        HandlerTask(ConsumerLoop* l, std::shared_ptr<Batch> b, std::size_t i) noexcept
            : loop(l), batch(std::move(b)), index(i) {}
        HandlerTask(HandlerTask&&) noexcept = default;
        HandlerTask(const HandlerTask&) = delete;
        ~HandlerTask() {
            if (!batch) return;
            batch->finish(index, {std::make_exception_ptr(std::system_error(
                                      make_error_code(errc::task_dropped),
                                      "cbm::redis: the consumer's executor dropped the delivery of " +
                                          batch->entries[index].id)),
                                  false});
        }
        void operator()() {
            if (!batch) return;
            const std::shared_ptr<Batch> mine = std::move(batch);
            mine->finish(index, loop->run_handler(mine->entries[index]));
        }
    };

    // Hands each entry to run to the executor and waits until every task
    // ran or was dropped (the loop, and so the handler, outlives them all).
    void run_on_executor(const std::shared_ptr<Batch>& batch, const std::vector<bool>& to_run) {
        for (std::size_t i = 0; i < to_run.size(); ++i) {
            if (!to_run[i]) continue;
            {
                std::lock_guard<std::mutex> lock(batch->mutex);
                ++batch->running;
            }
            // Only the task finishes its entry: run, destroyed unrun (then
            // dropped; also when making it fails), or run here when the
            // executor refuses it and gives it back.
            Task task;
            try {
                task = Task(HandlerTask(this, batch, i));
                options_.executor.execute(std::move(task));
            } catch (...) {
                if (task) task();
            }
        }
        std::unique_lock<std::mutex> lock(batch->mutex);
        batch->done.wait(lock, [&] { return batch->running == 0; });
    }

    // Effect: moves the entry to "<topic>:dead" (with the error, the
    // deliveries and where it came from) and tells the dead-letter handler.
    // Returns: dead_lettered (the entry is then acknowledged).
    Outcome dead_letter(const Entry& e, std::exception_ptr error, bool decode) {
        const std::string why = describe(error);
        const std::string deliveries = std::to_string(e.deliveries);
        connection_
            ->command({"XADD", dead_topic_, "*", "data", e.payload, "error", why, "deliveries", deliveries, "id", e.id,
                       "group", options_.group, "consumer", options_.consumer, "trace", e.trace_id})
            .check("XADD (dead letter)");
        dead_lettered_.fetch_add(1, std::memory_order_relaxed);
        if (decode) decode_errors_.fetch_add(1, std::memory_order_relaxed);
        handlers_->report_dead_letter(DeadLetter{topic_, options_.name, error, e.deliveries});
        return Outcome::dead_lettered;
    }

    // A handler's failure, or the loop's own (a lost connection): the
    // bridge's error handler.
    void report_failure(std::exception_ptr error) noexcept {
        try {
            handlers_->report_failure(Failure{options_.name, error});
        } catch (...) {  // no memory for the name: unreported
        }
    }

    const Endpoint endpoint_;
    const ReconnectBackoff backoff_;
    const std::shared_ptr<BridgeHandlers> handlers_;
    const std::string topic_;
    const std::string dead_topic_;
    ConsumeOptions options_;
    const Invoke invoke_;

    // The loop thread's own:
    std::optional<Connection> connection_;
    std::string claim_cursor_ = "0-0";
    std::chrono::steady_clock::time_point next_claim_{};
    bool ever_connected_ = false;

    std::atomic<std::uint64_t> received_{0}, acked_{0}, failed_{0}, claimed_{0}, dead_lettered_{0},
        decode_errors_{0}, reconnects_{0};
    std::atomic<bool> connected_{false};
    std::mutex wait_mutex_;
    std::condition_variable_any wake_;
    std::jthread thread_;  // last: starts once everything above exists
};

}  // namespace detail
}  // namespace cbm::redis
