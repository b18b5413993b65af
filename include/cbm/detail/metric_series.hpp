// cbm/detail/metric_series.hpp - the metric series of an instrumented group
// or registry: one CallbackStats per series, shared by the callbacks that
// have its identity, and kept after they are gone.
//
// Identity: a named callback's series is (key, name, labels), so callbacks
// with the same ones add to one series, and a callback added again under
// them continues its counts (Prometheus sees no reset). An unnamed callback
// gets a series of its own, told apart by an id (a per-group sequence
// number) that the export shows as a label. The identity is the exported
// label set itself (labels sorted by name, values escaped and ill-formed
// UTF-8 replaced), so two series never export alike.
//
// Retention: a series whose last callback went (its callable destroyed)
// stays in the export, with its counts, until the group is destroyed; at
// most `retention_limit` such series are kept, the oldest dropped first and
// counted (`dropped()`). A dropped series is freed once no node points at it.
// A callback that was never registered (add failed, or its context was
// canceled already) leaves nothing behind: a series only it made goes.
//
// Memory ordering: the table and each series' `registered` count are under
// the table's mutex; a series' reference count is dropped with acq_rel (the
// last holder sees every write); its counters are callback_stats.hpp's.
#pragma once

#include <atomic>
#include <cstddef>
#include <algorithm>
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
#include "prometheus_text.hpp"

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
        std::sort(labels.begin(), labels.end());
        std::string identity;
        if (!name.empty()) identity = label_set(SeriesLabels{key, name, 0, &labels});
        const std::lock_guard<std::mutex> lock(mutex_);
        if (!identity.empty()) {
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
        if (!identity.empty()) {
            auto placed = by_identity_.emplace(std::move(identity), s).first;
            s->identity = &placed->first;  // a node-based map: stable while the entry lives
        }
        order_.push_back(owned.release());  // the table's reference
        if (s->id != 0) ++next_id_;
        s->registered = 1;
        s->add_ref();  // the node's
        return s;
    }

    // Effect: one registered callback of `s` is gone (its callable
    // destroyed). Keeps the series, dropping the oldest kept one past the
    // limit.
    void detach(CallbackStats* s) noexcept { release_registration(s, true); }

    // Effect: a callback of `s` that was never registered is gone. A series
    // that no registered callback ever had goes with it.
    void abandon(CallbackStats* s) noexcept { release_registration(s, false); }

    // Visits every series in creation order, under the table's mutex.
    template <class Visit>
    void for_each(Visit&& visit) {
        const std::lock_guard<std::mutex> lock(mutex_);
        for (CallbackStats* s : order_) visit(*s);
    }

    std::size_t size() const {
        const std::lock_guard<std::mutex> lock(mutex_);
        return order_.size();
    }

    std::uint64_t dropped() const {
        const std::lock_guard<std::mutex> lock(mutex_);
        return dropped_;
    }

private:
    void release_registration(CallbackStats* s, bool was_registered) noexcept {
        CallbackStats* gone = nullptr;
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            if (was_registered) s->ever_registered = true;
            if (--s->registered != 0 || !s->in_table) return;
            if (!s->ever_registered) {
                remove_locked(s);  // never had a registered callback: as if never made
                gone = s;
            } else {
                ++retained_;
                ++s->retained_round;
                try {
                    retired_order_.emplace_back(s, s->retained_round);
                } catch (...) {
                    // Out of memory: this series is kept past the limit instead.
                }
                if (retained_ > limit_) gone = drop_oldest_locked();
                // Entries go stale as series are registered again; keep the
                // queue proportional to what it can still drop.
                if (retired_order_.size() > 2 * retained_ + 64) drop_stale_locked();
            }
        }
        if (gone != nullptr) gone->release_ref();
    }

    static bool stale(const CallbackStats* s, std::uint64_t round) noexcept {
        return !s->in_table || s->registered != 0 || s->retained_round != round;
    }

    void drop_stale_locked() noexcept {
        std::erase_if(retired_order_, [](const auto& entry) { return stale(entry.first, entry.second); });
    }

    // Under mutex_: takes `s` out of the table (its reference is the caller's now).
    void remove_locked(CallbackStats* s) noexcept {
        s->in_table = false;
        std::erase(order_, s);
        if (const std::string* identity = std::exchange(s->identity, nullptr)) {
            // By iterator: the key lives in the node being erased. No allocation.
            if (auto found = by_identity_.find(*identity); found != by_identity_.end()) by_identity_.erase(found);
        }
    }

    // Under mutex_: removes the oldest series that is still kept without a
    // callback and returns it with the table's reference, or null.
    CallbackStats* drop_oldest_locked() noexcept {
        while (!retired_order_.empty()) {
            const auto [s, round] = retired_order_.front();
            retired_order_.pop_front();
            if (stale(s, round)) continue;  // registered again since, or gone
            --retained_;
            ++dropped_;
            remove_locked(s);
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
