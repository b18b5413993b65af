// A model-based fuzz target: bytes become operations on one registry (keys
// 0..3) and two groups (one collecting failures, one stopping on them), and
// every step is checked against a plain sequential model of what cbm
// promises: which callbacks exist under which key, the sizes, which callbacks
// a trigger runs and in which order, what it reports, what unregister, erase
// and clear return, each handle's state, and when each callable and filter
// may and must be destroyed.
//
// Callbacks are small interpreters: each carries a slice of the input and,
// when run, decodes it as further operations (add, unregister, trigger,
// erase, clear, cancel a context) on the same registry and groups, so the
// re-entrant paths are fuzzed as much as the top-level ones.
//
// Built two ways: with libFuzzer (clang, -fsanitize=fuzzer,address,undefined;
// CMake option CBM_BUILD_FUZZERS) to search, and with replay_main.cpp in every
// build, where CTest replays the committed corpus (tests/fuzz/corpus).
// A mismatch prints what differed and aborts.
#include <cbm/callback_group.hpp>
#include <cbm/callback_registry.hpp>
#include <cbm/context.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace {

[[noreturn]] void mismatch(const char* what, long a = 0, long b = 0) {
    std::fprintf(stderr, "model mismatch: %s (%ld vs %ld)\n", what, a, b);
    std::abort();
}

// The input, read one byte at a time; past the end it reads zeros.
class Bytes {
public:
    Bytes(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    bool empty() const noexcept { return at_ == size_; }
    std::uint8_t next() noexcept { return at_ < size_ ? data_[at_++] : 0; }
    // The next `n` bytes (fewer at the end), as a program for a callback.
    std::vector<std::uint8_t> take(std::size_t n) {
        n = std::min(n, size_ - at_);
        std::vector<std::uint8_t> out(data_ + at_, data_ + at_ + n);
        at_ += n;
        return out;
    }

private:
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t at_ = 0;
};

constexpr int kKeys = 4;          // lists 0..3: registry keys
constexpr int kGroupCollect = 4;  // list 4: a group with ErrorPolicy::collect
constexpr int kGroupStop = 5;     // list 5: a group with ErrorPolicy::stop
constexpr int kLists = 6;
constexpr int kContexts = 3;
constexpr std::size_t kMaxCallbacks = 48;
constexpr int kMaxTriggerDepth = 4;
constexpr int kMaxSteps = 600;  // operations per input, nested ones included

class Driver;

// What the model knows about one callback.
struct ModelCallback {
    int list = 0;
    int priority = 0;
    long sequence = 0;  // registration order
    bool once = false;
    bool filtered = false;
    int modulus = 2;
    int remainder = 0;
    int context = -1;  // bound context, or -1
    bool throws = false;
    std::vector<std::uint8_t> program;
    bool ever_registered = false;
    bool registered = false;
    int running = 0;            // invocations of it on the stack now
    bool must_be_dead = false;  // its callable must have been destroyed
    int body_token = -1;        // lifetime slots (see Driver::live_)
    int filter_token = -1;
    cbm::Registration handle;

    bool selects(int arg) const { return !filtered || arg % modulus == remainder; }
};

// The callable cbm stores: runs the model's program for callback `id`.
struct Body {
    Driver* driver;
    int id;
    int token;  // -1 once moved from
    Body(Driver* d, int i, int t) noexcept : driver(d), id(i), token(t) {}
    Body(Body&& other) noexcept : driver(other.driver), id(other.id), token(std::exchange(other.token, -1)) {}
    Body(const Body&) = delete;
    Body& operator=(const Body&) = delete;
    Body& operator=(Body&&) = delete;
    ~Body();
    void operator()(int arg);
};

// The filter cbm stores: arg % modulus == remainder, counted like Body.
struct Selector {
    Driver* driver;
    int token;
    int modulus;
    int remainder;
    Selector(Driver* d, int t, int m, int r) noexcept : driver(d), token(t), modulus(m), remainder(r) {}
    Selector(Selector&& other) noexcept
        : driver(other.driver), token(std::exchange(other.token, -1)), modulus(other.modulus),
          remainder(other.remainder) {}
    Selector(const Selector&) = delete;
    Selector& operator=(const Selector&) = delete;
    Selector& operator=(Selector&&) = delete;
    ~Selector();
    bool operator()(const int& arg) const { return arg % modulus == remainder; }
};

// One trigger in progress, as the model sees it.
struct Frame {
    int list;
    int arg;
    std::vector<int> snapshot;  // the callbacks registered when it began, in order
    std::size_t cursor = 0;
    std::size_t invoked = 0;
    std::size_t failed = 0;
    std::size_t skipped = 0;
    bool stopped = false;
};

class Driver {
public:
    Driver()
        : registry_(cbm::ErrorPolicy::collect), collect_(cbm::ErrorPolicy::collect), stop_(cbm::ErrorPolicy::stop) {
        for (int c = 0; c < kContexts; ++c) {
            auto [ctx, cancel] = cbm::with_cancel(cbm::Context::background());
            contexts_[c] = std::move(ctx);
            cancels_[c] = std::move(cancel);
        }
    }

    void run(Bytes& in, int depth) {
        while (!in.empty() && steps_ < kMaxSteps) {
            ++steps_;
            step(in, depth);
            check_all();
        }
    }

    // Destroys the registry and groups, then checks that nothing cbm stored
    // outlived them.
    void finish() {
        registry_.reset();
        collect_.reset();
        stop_.reset();
        for (auto& cb : model_) cb.must_be_dead = true, cb.registered = false;
        for (std::size_t t = 0; t < live_.size(); ++t) {
            if (live_[t] != 0) mismatch("a callable or filter outlived its group or registry", static_cast<long>(t));
        }
    }

    void released(int token) {
        if (token < 0 || static_cast<std::size_t>(token) >= live_.size() || live_[token] != 1) {
            mismatch("a callable or filter was destroyed twice", token);
        }
        live_[token] = 0;
    }

    void invoked(int id, int arg);

private:
    void step(Bytes& in, int depth) {
        switch (in.next() % 10) {
            case 0:
            case 1: add(in); break;
            case 2:
            case 3: {
                const int list = in.next() % kLists;  // two statements: arguments have no evaluation order
                trigger(list, in.next(), depth);
                break;
            }
            case 4: unregister(in.next(), true); break;
            case 5: unregister(in.next(), false); break;
            case 6: erase(in.next() % kKeys); break;
            case 7: clear(in.next() % 3); break;
            case 8: cancel(in.next() % kContexts); break;
            default: reset_scoped(in.next()); break;
        }
    }

    int new_token() {
        live_.push_back(1);
        return static_cast<int>(live_.size() - 1);
    }

    void add(Bytes& in) {
        const int list = in.next() % kLists;
        const int priority = in.next() % 3 - 1;
        const std::uint8_t flags = in.next();
        const std::uint8_t filter_byte = in.next();
        std::vector<std::uint8_t> program = in.take(in.next() % 16);
        if (model_.size() == kMaxCallbacks) return;

        const int id = static_cast<int>(model_.size());
        ModelCallback cb;
        cb.list = list;
        cb.priority = priority;
        cb.sequence = next_sequence_++;
        cb.once = (flags & 1) != 0;
        cb.filtered = (flags & 2) != 0;
        cb.modulus = 2 + filter_byte % 3;
        cb.remainder = (filter_byte / 3) % cb.modulus;
        cb.context = (flags >> 2) % 4 - 1;
        cb.throws = (flags & 16) != 0;
        cb.program = std::move(program);
        cb.body_token = new_token();
        if (cb.filtered) cb.filter_token = new_token();
        model_.push_back(std::move(cb));
        ModelCallback& m = model_.back();

        cbm::CallbackOptions<void(int)> options;
        options.priority = m.priority;
        options.once = m.once;
        if (m.filtered) options.filter = Selector(this, m.filter_token, m.modulus, m.remainder);
        if (m.context >= 0) options.context = contexts_[m.context];
        Body body(this, id, m.body_token);
        cbm::Registration handle =
            list < kKeys ? registry_->add(list, std::move(body), std::move(options))
                         : group(list).add(std::move(body), std::move(options));
        model_[id].handle = std::move(handle);

        ModelCallback& cbm_ = model_[id];
        if (cbm_.context >= 0 && canceled_[cbm_.context]) {
            // Never registered: the context was canceled first.
            cbm_.must_be_dead = true;
            if (cbm_.handle.state() == cbm::CallbackState::registered) mismatch("added under a canceled context");
            return;
        }
        cbm_.ever_registered = true;
        cbm_.registered = true;
        auto& order = lists_[list];
        const auto position = std::find_if(order.begin(), order.end(), [&](int other) {
            return model_[other].priority < cbm_.priority;
        });
        order.insert(position, id);
    }

    cbm::CallbackGroup<void(int)>& group(int list) { return list == kGroupCollect ? *collect_ : *stop_; }

    void trigger(int list, int arg, int depth) {
        if (depth >= kMaxTriggerDepth) return;
        frames_.push_back(Frame{list, arg, lists_[list]});
        const cbm::TriggerResult result = list < kKeys ? registry_->trigger(list, arg) : group(list).trigger(arg);
        Frame frame = std::move(frames_.back());
        frames_.pop_back();
        if (frame.stopped) {
            for (; frame.cursor < frame.snapshot.size(); ++frame.cursor) {
                if (model_[frame.snapshot[frame.cursor]].registered) ++frame.skipped;
            }
        } else {
            advance(frame);
            if (frame.cursor != frame.snapshot.size()) {
                mismatch("a trigger ended before running a callback it should have run",
                         frame.snapshot[frame.cursor]);
            }
        }
        if (result.invoked != frame.invoked) mismatch("TriggerResult::invoked", long(result.invoked), long(frame.invoked));
        if (result.failed != frame.failed) mismatch("TriggerResult::failed", long(result.failed), long(frame.failed));
        if (result.skipped != frame.skipped) mismatch("TriggerResult::skipped", long(result.skipped), long(frame.skipped));
        if (result.stopped != frame.stopped) mismatch("TriggerResult::stopped", result.stopped, frame.stopped);
        if (result.failures.size() != frame.failed) mismatch("TriggerResult::failures");
    }

    // Moves the frame's cursor past callbacks that a trigger passes over: the
    // unregistered (not counted) and the filtered out (counted as skipped).
    void advance(Frame& frame) {
        for (; frame.cursor < frame.snapshot.size(); ++frame.cursor) {
            const ModelCallback& cb = model_[frame.snapshot[frame.cursor]];
            if (!cb.registered) continue;
            if (!cb.selects(frame.arg)) {
                ++frame.skipped;
                continue;
            }
            return;
        }
    }

    // The model's side of unregistering `id` by any path; `blocking`: the
    // call waits, so a callable not running on this stack must be gone.
    void remove(int id, bool blocking) {
        ModelCallback& cb = model_[id];
        if (cb.registered) {
            cb.registered = false;
            auto& order = lists_[cb.list];
            order.erase(std::find(order.begin(), order.end(), id));
        }
        if (blocking && cb.running == 0 && cb.ever_registered) cb.must_be_dead = true;
    }

    ModelCallback* pick(std::uint8_t which) {
        if (model_.empty()) return nullptr;
        return &model_[which % model_.size()];
    }

    void unregister(std::uint8_t which, bool blocking) {
        ModelCallback* cb = pick(which);
        if (cb == nullptr) return;
        const bool expected = cb->registered;
        const int id = static_cast<int>(cb - model_.data());
        // The handle is copied: the call may run callbacks that add to model_.
        cbm::Registration handle = cb->handle;
        const bool got = blocking ? handle.unregister() : handle.unregister_nowait();
        if (got != expected) mismatch(blocking ? "unregister() result" : "unregister_nowait() result", got, expected);
        remove(id, blocking);
    }

    // ScopedRegistration::reset is a blocking unregister through a scope.
    void reset_scoped(std::uint8_t which) {
        ModelCallback* cb = pick(which);
        if (cb == nullptr) return;
        const int id = static_cast<int>(cb - model_.data());
        const bool was_registered = cb->registered;
        cbm::ScopedRegistration scoped(cb->handle);
        scoped.reset();
        if (scoped.state() != cbm::CallbackState::idle) mismatch("ScopedRegistration::reset left it attached");
        remove(id, true);
        if (was_registered && model_[id].handle.state() != cbm::CallbackState::unregistered) {
            mismatch("ScopedRegistration::reset did not unregister");
        }
    }

    std::size_t remove_list(int list) {
        std::size_t n = 0;
        for (std::size_t id = 0; id < model_.size(); ++id) {
            if (model_[id].list != list) continue;
            n += model_[id].registered;
            remove(static_cast<int>(id), true);
        }
        return n;
    }

    void erase(int key) {
        std::size_t expected = 0;
        for (int id : lists_[key]) expected += model_[id].registered;
        const std::size_t got = registry_->erase(key);
        if (got != expected) mismatch("erase() result", long(got), long(expected));
        remove_list(key);
    }

    void clear(int which) {
        std::size_t expected = 0;
        const int first = which == 0 ? 0 : (which == 1 ? kGroupCollect : kGroupStop);
        const int last = which == 0 ? kKeys : first + 1;
        for (int l = first; l < last; ++l) expected += lists_[l].size();
        const std::size_t got = which == 0 ? registry_->clear() : group(first).clear();
        if (got != expected) mismatch("clear() result", long(got), long(expected));
        for (int l = first; l < last; ++l) remove_list(l);
    }

    void cancel(int c) {
        canceled_[c] = true;
        cancels_[c]();
        for (std::size_t id = 0; id < model_.size(); ++id) {
            if (model_[id].context == c) remove(static_cast<int>(id), false);
        }
    }

    void check_all() {
        std::size_t keys = 0;
        for (int l = 0; l < kLists; ++l) {
            const std::size_t got = l < kKeys ? registry_->size(l) : group(l).size();
            if (got != lists_[l].size()) mismatch("size", long(got), long(lists_[l].size()));
            keys += l < kKeys && !lists_[l].empty();
        }
        if (registry_->key_count() != keys) mismatch("key_count()", long(registry_->key_count()), long(keys));
        for (const ModelCallback& cb : model_) {
            if (!cb.ever_registered) continue;
            const cbm::CallbackState want = !cb.registered ? cbm::CallbackState::unregistered
                                            : cb.running > 0 ? cbm::CallbackState::executing
                                                             : cbm::CallbackState::registered;
            const cbm::CallbackState got = cb.handle.state();
            if (got != want) mismatch("Registration::state()", static_cast<long>(got), static_cast<long>(want));
            if ((cb.registered || cb.running > 0) && live_[cb.body_token] != 1) {
                mismatch("a callable was destroyed while registered or running", cb.body_token);
            }
            if (cb.registered && cb.filtered && live_[cb.filter_token] != 1) {
                mismatch("a filter was destroyed while registered", cb.filter_token);
            }
            if (cb.must_be_dead && live_[cb.body_token] != 0) {
                mismatch("a callable outlived a blocking removal (or its once run)", cb.body_token);
            }
        }
    }

    std::optional<cbm::CallbackRegistry<int, void(int)>> registry_;
    std::optional<cbm::CallbackGroup<void(int)>> collect_;
    std::optional<cbm::CallbackGroup<void(int)>> stop_;
    std::array<cbm::Context, kContexts> contexts_;
    std::array<cbm::CancelFunc, kContexts> cancels_;
    std::array<bool, kContexts> canceled_{};
    std::vector<ModelCallback> model_;
    std::array<std::vector<int>, kLists> lists_;
    std::vector<Frame> frames_;
    std::vector<int> live_;  // per token: 1 while the object cbm holds exists
    long next_sequence_ = 0;
    int steps_ = 0;

    friend struct Body;
};

Body::~Body() {
    if (token >= 0) driver->released(token);
}
Selector::~Selector() {
    if (token >= 0) driver->released(token);
}
void Body::operator()(int arg) { driver->invoked(id, arg); }

void Driver::invoked(int id, int arg) {
    if (frames_.empty()) mismatch("a callback ran outside any trigger", id);
    Frame& frame = frames_.back();
    if (frame.arg != arg) mismatch("a callback got another argument", arg, frame.arg);
    advance(frame);
    if (frame.cursor == frame.snapshot.size()) mismatch("a callback ran that the model did not expect", id);
    if (frame.snapshot[frame.cursor] != id) mismatch("callbacks ran out of order", id, frame.snapshot[frame.cursor]);
    ++frame.cursor;
    ++frame.invoked;
    const std::size_t depth = frames_.size();
    if (model_[id].once) remove(id, false);  // claimed: unregistered before it runs
    ++model_[id].running;
    const std::vector<std::uint8_t> program = model_[id].program;  // model_ may grow meanwhile
    Bytes in(program.data(), program.size());
    run(in, static_cast<int>(depth));
    ModelCallback& cb = model_[id];
    --cb.running;
    // A once callable goes right after its only run.
    if (cb.once && cb.running == 0) cb.must_be_dead = true;
    if (cb.throws) {
        Frame& mine = frames_[depth - 1];
        ++mine.failed;
        if (mine.list == kGroupStop) mine.stopped = true;
        throw 7;  // NOLINT: any type is a failure
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Bytes in(data, size);
    Driver driver;
    driver.run(in, 0);
    driver.finish();
    return 0;
}
