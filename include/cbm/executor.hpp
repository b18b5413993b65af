// cbm/executor.hpp - where a callback runs when it is triggered
// asynchronously: the Executor concept, cbm::Task (the unit of work an
// executor receives from cbm), cbm::AnyExecutor (any executor, type-erased)
// and cbm::inline_executor().
//
//   cbm::ThreadPool pool({.max_threads = 8});                     // thread_pool.hpp
//   cbm::CallbackGroup<void(const Order&)> g({.executor = pool.executor()});
//   g.add(audit, {.executor = cbm::inline_executor()});           // this one runs on the caller
//   asio::thread_pool io(4);
//   g.add(ship, {.executor = io.get_executor()});                 // asio's executors fit as they are
//
// An Executor is any copyable object `e` with `e.execute(f)` for a nullary,
// move-only function object `f`: the shape of asio's standard executors
// (asio::thread_pool::executor_type, asio::io_context::executor_type), of
// ThreadPool::Executor, and of a three-line struct around std::jthread.
// A type whose execute() is spelled differently gets a specialization of
// cbm::executor_traits; <cbm/interop/asio.hpp> has the one for asio's
// standard executors where execute() is not public (asio before 1.24, as
// in Debian 12), for standalone asio and Boost.Asio alike.
//
// What cbm needs of an executor:
// * execute() either takes the work (and later runs it, or destroys it
//   without running it) or throws; cbm reports the exception as the
//   invocation's failure. A task that is destroyed without having run
//   reports itself (errc::task_dropped): no work is lost uncounted.
// * execute() may run the work inline (inline_executor, a full ThreadPool
//   with Overflow::caller_runs).
// * execute() must be safe to call from several threads at once, as asio's
//   and ThreadPool's are.
#pragma once

#include <concepts>
#include <cstddef>
#include <functional>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace cbm {

// A nullary move-only function: what cbm hands an executor. Function
// objects of up to four pointers that move without throwing are stored
// inline (the task of one asynchronous invocation is three), larger ones on
// the heap. Calling an empty Task is undefined; `bool(task)` tells.
class Task {
public:
    static constexpr std::size_t kInlineBytes = 4 * sizeof(void*);

    Task() noexcept = default;

    template <class F>
        requires(!std::is_same_v<std::remove_cvref_t<F>, Task> && std::is_invocable_v<std::decay_t<F>&>)
    Task(F&& f) {  // NOLINT(google-explicit-constructor): as std::function, a Task is made from any callable
        using Stored = std::decay_t<F>;
        if constexpr (fits_inline<Stored>()) {
            ::new (static_cast<void*>(storage_)) Stored(std::forward<F>(f));
            ops_ = &inline_ops<Stored>;
        } else {
            *reinterpret_cast<Stored**>(storage_) = new Stored(std::forward<F>(f));
            ops_ = &heap_ops<Stored>;
        }
    }

    Task(Task&& other) noexcept : ops_(other.ops_) {
        if (ops_ != nullptr) ops_->move(other.storage_, storage_);
        other.ops_ = nullptr;
    }
    Task& operator=(Task&& other) noexcept {
        if (this != &other) {
            reset();
            ops_ = other.ops_;
            if (ops_ != nullptr) ops_->move(other.storage_, storage_);
            other.ops_ = nullptr;
        }
        return *this;
    }
    Task(const Task&) = delete;
    Task& operator=(const Task&) = delete;
    ~Task() { reset(); }

    explicit operator bool() const noexcept { return ops_ != nullptr; }

    // Runs the function. A Task may be run more than once if its function
    // allows it; cbm's own tasks run once and ignore later calls.
    void operator()() { ops_->call(storage_); }

    // Destroys the function (without running it).
    void reset() noexcept {
        if (ops_ != nullptr) {
            const Ops* ops = ops_;
            ops_ = nullptr;
            ops->destroy(storage_);
        }
    }

private:
    struct Ops {
        void (*call)(unsigned char*);
        void (*move)(unsigned char* from, unsigned char* to) noexcept;
        void (*destroy)(unsigned char*) noexcept;
    };

    template <class F>
    static constexpr bool fits_inline() noexcept {
        return sizeof(F) <= kInlineBytes && alignof(F) <= alignof(void*) && std::is_nothrow_move_constructible_v<F>;
    }
    template <class F>
    static F* inline_object(unsigned char* s) noexcept {
        return std::launder(reinterpret_cast<F*>(s));
    }
    template <class F>
    static F*& heap_object(unsigned char* s) noexcept {
        return *reinterpret_cast<F**>(s);
    }

    template <class F>
    static constexpr Ops inline_ops{
        [](unsigned char* s) { (*inline_object<F>(s))(); },
        [](unsigned char* from, unsigned char* to) noexcept {
            F* source = inline_object<F>(from);
            ::new (static_cast<void*>(to)) F(std::move(*source));
            source->~F();
        },
        [](unsigned char* s) noexcept { inline_object<F>(s)->~F(); },
    };
    template <class F>
    static constexpr Ops heap_ops{
        [](unsigned char* s) { (*heap_object<F>(s))(); },
        [](unsigned char* from, unsigned char* to) noexcept {
            *reinterpret_cast<F**>(to) = heap_object<F>(from);
        },
        [](unsigned char* s) noexcept { delete heap_object<F>(s); },
    };

    const Ops* ops_ = nullptr;
    alignas(void*) unsigned char storage_[kInlineBytes];
};

// How cbm hands work to an executor of type E: specialize for an executor
// whose execute() is not a public member, with
//   static void execute(const E& e, F&& f)   // for nullary move-only F
// The primary template has none: E's own execute() is used.
template <class E>
struct executor_traits {};

namespace detail {
// A nullary move-only function object: what the Executor concept is
// checked with.
struct MoveOnlyWork {
    MoveOnlyWork() = default;
    MoveOnlyWork(MoveOnlyWork&&) = default;
    MoveOnlyWork(const MoveOnlyWork&) = delete;
    void operator()() {}
};
}  // namespace detail

namespace detail {
template <class E>
concept has_member_execute = requires(E& e, MoveOnlyWork work) { e.execute(std::move(work)); };
template <class E>
concept has_traits_execute =
    requires(const E& e, MoveOnlyWork work) { executor_traits<E>::execute(e, std::move(work)); };
}  // namespace detail

// Any copyable object that can be given a nullary move-only function: by
// its execute() member, or through executor_traits.
template <class E>
concept Executor = std::copy_constructible<std::remove_cvref_t<E>> &&
                   (detail::has_member_execute<std::remove_cvref_t<E>> ||
                    detail::has_traits_execute<std::remove_cvref_t<E>>);

namespace detail {
// Hands `f` to `e` the way its type takes work.
template <class E, class F>
void execute_on(E& e, F&& f) {
    if constexpr (has_member_execute<E>) {
        e.execute(std::forward<F>(f));
    } else {
        executor_traits<E>::execute(e, std::forward<F>(f));
    }
}
}  // namespace detail

// Runs the work at once, on the calling thread. As a callback's executor,
// it means "run this callback on the triggering thread, during
// trigger_async()", even when the group has an executor.
struct InlineExecutor {
    template <class F>
    void execute(F&& f) const {
        std::forward<F>(f)();
    }
    friend bool operator==(const InlineExecutor&, const InlineExecutor&) noexcept = default;
};

inline InlineExecutor inline_executor() noexcept { return {}; }

// Any Executor behind one type. Empty (default-constructed): no executor
// (a group without one runs trigger_async()'s callbacks inline).
// Copying copies the executor it holds; execute() is as thread-safe as that
// executor's.
class AnyExecutor {
public:
    AnyExecutor() noexcept = default;

    template <class E>
        requires(!std::is_same_v<std::remove_cvref_t<E>, AnyExecutor> && Executor<E>)
    AnyExecutor(E&& e)  // NOLINT(google-explicit-constructor): any executor converts, as in the options
        : model_(std::make_unique<Model<std::remove_cvref_t<E>>>(std::forward<E>(e))),
          inline_(std::is_same_v<std::remove_cvref_t<E>, InlineExecutor>) {}

    AnyExecutor(const AnyExecutor& other) : model_(other.model_ ? other.model_->clone() : nullptr), inline_(other.inline_) {}
    AnyExecutor& operator=(const AnyExecutor& other) {
        if (this != &other) *this = AnyExecutor(other);
        return *this;
    }
    AnyExecutor(AnyExecutor&&) noexcept = default;
    AnyExecutor& operator=(AnyExecutor&&) noexcept = default;
    ~AnyExecutor() = default;

    // True when it holds an executor.
    explicit operator bool() const noexcept { return model_ != nullptr; }
    // True when it holds an InlineExecutor.
    bool is_inline() const noexcept { return inline_; }

    // Effect: hands `task` to the executor held (whatever it does with it).
    // Throws: what that executor's execute() throws; std::bad_function_call
    // when empty.
    void execute(Task&& task) const {
        if (!model_) throw std::bad_function_call();
        model_->execute(std::move(task));
    }
    template <class F>
        requires(!std::is_same_v<std::remove_cvref_t<F>, Task> && std::is_invocable_v<std::decay_t<F>&>)
    void execute(F&& f) const {
        execute(Task(std::forward<F>(f)));
    }

    // The executor held, if it is an `E`; else null.
    template <class E>
    const E* target() const noexcept {
        auto* m = dynamic_cast<const Model<E>*>(model_.get());
        return m != nullptr ? &m->executor : nullptr;
    }

private:
    struct Concept {
        virtual ~Concept() = default;
        virtual void execute(Task&& task) = 0;
        virtual std::unique_ptr<Concept> clone() const = 0;
    };
    template <class E>
    struct Model final : Concept {
        template <class X>
        explicit Model(X&& x) : executor(std::forward<X>(x)) {}
        // A Task, not a wrapper around it: an executor that knows Task (as
        // ThreadPool's does) stores it as it is.
        void execute(Task&& task) override { detail::execute_on(executor, std::move(task)); }
        std::unique_ptr<Concept> clone() const override { return std::make_unique<Model>(executor); }
        E executor;
    };

    std::unique_ptr<Concept> model_;
    bool inline_ = false;
};

}  // namespace cbm
