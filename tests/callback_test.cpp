// Tests for cbm/callback.hpp.
#include <cbm/callback.hpp>

#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <string>

#include "test_support.hpp"

namespace {
std::atomic<long> g_allocations{0};
}

void* operator new(std::size_t size) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return operator new(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    return std::malloc(size == 0 ? 1 : size);
}
void* operator new[](std::size_t size, const std::nothrow_t& tag) noexcept { return operator new(size, tag); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

using cbm::Callback;
using cbm_test::Counter;
using cbm_test::Tracked;


TEST_CASE("a callback is move-only and nothrow-movable", "[callback]") {
    STATIC_REQUIRE(std::is_nothrow_move_constructible_v<Callback<int(int)>>);
    STATIC_REQUIRE(std::is_nothrow_move_assignable_v<Callback<int(int)>>);
    STATIC_REQUIRE_FALSE(std::is_copy_assignable_v<Callback<int(int)>>);
    STATIC_REQUIRE_FALSE(std::is_copy_constructible_v<Callback<int(int)>>);
}

TEST_CASE("a callback forwards its arguments and returns the callable's result", "[callback]") {
    Callback<int(int, const std::string&)> f = [](int a, const std::string& s) { return a + static_cast<int>(s.size()); };
    REQUIRE(f(40, "ab") == 42);
}

TEST_CASE("a lambda capturing three pointers is stored without allocating", "[callback]") {
    int a = 1, b = 2, c = 3;
    int* pa = &a;
    int* pb = &b;
    int* pc = &c;
    const long before = g_allocations.load();
    Callback<int()> f = [pa, pb, pc] { return *pa + *pb + *pc; };
    Callback<int()> moved = std::move(f);
    const long after = g_allocations.load();
    REQUIRE(after == before);
    REQUIRE(moved() == 6);
}

TEST_CASE("a larger callable is stored on the heap and still works", "[callback]") {
    std::string big(100, 'x');
    const long before = g_allocations.load();
    Callback<std::size_t()> f = [big, pad = std::array<char, 64>{}] { return big.size() + pad.size(); };
    REQUIRE(g_allocations.load() > before);
    REQUIRE(f() == 164);
}

TEST_CASE("a stored callable is destroyed exactly once, inline or on the heap", "[callback][lifetime]") {
    Counter counter;
    {
        Callback<void()> small = [t = Tracked(counter)] { (void)t; };
        Callback<void()> large = [t = Tracked(counter), pad = std::array<char, 128>{}] { (void)t; (void)pad; };
        Callback<void()> moved_small = std::move(small);
        Callback<void()> moved_large = std::move(large);
        moved_small = std::move(moved_large);
        REQUIRE(counter.alive() == 1);
    }
    REQUIRE(counter.alive() == 0);
    REQUIRE(counter.errors == 0);
}

TEST_CASE("calling an empty callback throws std::bad_function_call", "[callback]") {
    Callback<void()> empty;
    REQUIRE_FALSE(empty);
    REQUIRE_THROWS_AS(empty(), std::bad_function_call);
}

TEST_CASE("a null function pointer or an empty std::function gives an empty callback", "[callback]") {
    void (*null_fn)(int) = nullptr;
    Callback<void(int)> from_null = null_fn;
    REQUIRE_FALSE(from_null);
    Callback<void(int)> from_empty_function = std::function<void(int)>{};
    REQUIRE_FALSE(from_empty_function);
    Callback<void(int)> from_function = std::function<void(int)>([](int) {});
    REQUIRE(from_function);
}

TEST_CASE("a moved-from callback is empty and reset destroys the callable", "[callback]") {
    Counter counter;
    Callback<void()> f = [t = Tracked(counter)] { (void)t; };
    Callback<void()> g = std::move(f);
    REQUIRE_FALSE(f);  // NOLINT(bugprone-use-after-move): documented state
    REQUIRE(g);
    g.reset();
    REQUIRE_FALSE(g);
    REQUIRE(counter.alive() == 0);
}

TEST_CASE("a mutable lambda keeps its state between calls", "[callback]") {
    Callback<int()> next = [n = 0]() mutable { return ++n; };
    next();
    next();
    REQUIRE(next() == 3);
}

namespace {
int twice(int x) { return 2 * x; }
}  // namespace

TEST_CASE("a Callback can be built from a function named directly, which is never empty", "[callback]") {
    cbm::Callback<int(int)> f(twice);
    REQUIRE(f);
    REQUIRE(f(21) == 42);
}
