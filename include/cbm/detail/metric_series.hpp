// cbm/detail/metric_series.hpp - the metric series of an instrumented group
// or registry: one CallbackStats per series, shared by the callbacks that
// have its identity, and kept after they are gone.
//
// Identity: a named callback's series is (key, name, labels), so callbacks
// with the same ones add to one series, and a callback added again under
// them continues its counts (Prometheus sees no reset). An unnamed callback
// gets a series of its own, told apart by an id (a per-group sequence
// number) that the export shows as a label.
//
// Retention: a series whose last callback went (its callable destroyed)
// stays in the export, with its counts, until the group is destroyed; at
// most `retention_limit` such series are kept, the oldest dropped first and
// counted (`dropped()`). A dropped series is freed once no node points at it.
//
// Memory ordering: the table and each series' `registered` count are under
// the table's mutex; a series' reference count is dropped with acq_rel (the
// last holder sees every write); its counters are callback_stats.hpp's.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../observer.hpp"
#include "callback_stats.hpp"

namespace cbm::detail {

// How a new series is measured (from the options of its first callback).
struct SeriesSettings {
    bool exact_latency = false;              // every invocation is timed
    std::uint64_t slow_threshold_ns = 0;     // 0: no slow-call counter
};

class SeriesTable {
public:
    explicit SeriesTable(std::size_t retention_limit) noexcept : limit_(retention_limit) {}
    SeriesTable(const SeriesTable&) = delete;
    SeriesTable& operator=(const SeriesTable&) = delete;
    ~SeriesTable() {
        for (CallbackStats* s : order_) s->release_ref();
    }

    // Returns the series of a callback being added, with one reference for
    // its node, and counts the callback as registered in it. A named series
    // that exists already is reused (its settings stay those it was made
    // with). Throws: std::bad_alloc (nothing changed).
    CallbackStats* attach(std::string key, std::string name, Labels labels, const SeriesSettings& settings) {
        const std::lock_guard<std::mutex> lock(mutex_);
        std::string identity;
        if (!name.empty()) {
            identity = identity_of(key, name, labels);
            if (auto found = by_identity_.find(identity); found != by_identity_.end()) {
                CallbackStats* s = found->second;
                if (s->registered++ == 0) --retained_;
                s->add_ref();
                return s;
            }
        }
        auto owned = std::make_unique<CallbackStats>(std::move(key), std::move(labels));
        CallbackStats* s = owned.get();
        s->name = std::move(name);
        s->id = s->name.empty() ? next_id_ : 0;
        s->exact_latency = settings.exact_latency;
        s->slow_threshold_ns = settings.slow_threshold_ns;
        order_.reserve(order_.size() + 1);
        if (!identity.empty()) by_identity_.emplace(std::move(identity), s);
        order_.push_back(owned.release());  // the table's reference
        if (s->id != 0) ++next_id_;
        s->registered = 1;
        s->add_ref();  // the node's
        return s;
    }

    // Effect: one callback of `s` is gone (its callable destroyed, or it was
    // never registered). Keeps the series, dropping the oldest kept one past
    // the limit.
    void detach(CallbackStats* s) noexcept {
        CallbackStats* dropped = nullptr;
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            if (--s->registered != 0 || !s->in_table) return;
            ++retained_;
            ++s->retained_round;
            try {
                retired_order_.emplace_back(s, s->retained_round);
            } catch (...) {
                // Out of memory: this series is kept past the limit instead.
            }
            if (retained_ > limit_) dropped = drop_oldest_locked();
        }
        if (dropped != nullptr) dropped->release_ref();
    }

    // Visits every series in creation order, under the table's mutex.
    template <class Visit>
    void for_each(Visit&& visit) const {
        const std::lock_guard<std::mutex> lock(mutex_);
        for (const CallbackStats* s : order_) visit(*s);
    }

    std::uint64_t dropped() const {
        const std::lock_guard<std::mutex> lock(mutex_);
        return dropped_;
    }

private:
    static std::string identity_of(const std::string& key, const std::string& name, const Labels& labels) {
        std::string id = key;
        id += '\0';
        id += name;
        for (const auto& [label, value] : labels) {
            id += '\0';
            id += label;
            id += '=';
            id += value;
        }
        return id;
    }

    // Under mutex_: removes the oldest series that is still kept without a
    // callback and returns it with the table's reference, or null.
    CallbackStats* drop_oldest_locked() noexcept {
        while (!retired_order_.empty()) {
            const auto [s, round] = retired_order_.front();
            retired_order_.pop_front();
            // Stale entries: the series was registered again since.
            if (!s->in_table || s->registered != 0 || s->retained_round != round) continue;
            s->in_table = false;
            --retained_;
            ++dropped_;
            std::erase(order_, s);
            if (!s->name.empty()) by_identity_.erase(identity_of(s->key_text, s->name, s->labels));
            return s;
        }
        return nullptr;
    }

    mutable std::mutex mutex_;
    std::vector<CallbackStats*> order_;                          // every kept series; the table's references
    std::unordered_map<std::string, CallbackStats*> by_identity_;  // the named ones
    std::deque<std::pair<CallbackStats*, std::uint64_t>> retired_order_;  // (series, round) as they lost their last callback
    std::size_t retained_ = 0;  // kept series without a callback
    std::uint64_t next_id_ = 1;
    std::uint64_t dropped_ = 0;
    const std::size_t limit_;
};

}  // namespace cbm::detail
