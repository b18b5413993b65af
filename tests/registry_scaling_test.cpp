// CallbackRegistry::clear() and ~CallbackRegistry() do work linear in the
// number of keys. Measured in bytes allocated (a count, not a time): this
// program replaces the global operator new to count them, so it is an
// executable of its own.
#include <cbm/callback_registry.hpp>

#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <optional>

namespace {
std::atomic<std::size_t> g_allocated{0};
}

// g++ 12 at -O2 flags free() of what this operator new returned as a
// mismatch (it pairs malloc with free itself); the pairing is right.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t size) {
    g_allocated.fetch_add(size, std::memory_order_relaxed);
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

constexpr std::size_t kKeys = 20'000;
// Generous: a linear clear allocates a few pointers and links per key; the
// quadratic one allocated kKeys / 2 pointers per key.
constexpr std::size_t kBudgetPerKey = 1024;

template <class Registry>
void fill(Registry& registry) {
    for (std::size_t k = 0; k < kKeys; ++k) registry.add(static_cast<int>(k), [](int) {});
}

int check(const char* what, std::size_t bytes) {
    const std::size_t budget = kKeys * kBudgetPerKey;
    std::printf("%s of %zu keys allocated %zu bytes (budget %zu)\n", what, kKeys, bytes, budget);
    if (bytes > budget) {
        std::printf("FAILED: %s is not linear in the number of keys\n", what);
        return 1;
    }
    return 0;
}

}  // namespace

int main() {
    int failures = 0;
    {
        cbm::CallbackRegistry<int, void(int)> registry;
        fill(registry);
        const std::size_t before = g_allocated.load();
        registry.clear();
        failures += check("clear()", g_allocated.load() - before);
        if (registry.key_count() != 0) {
            std::printf("FAILED: keys left after clear()\n");
            ++failures;
        }
    }
    {
        std::optional<cbm::CallbackRegistry<int, void(int)>> registry;
        registry.emplace();
        fill(*registry);
        const std::size_t before = g_allocated.load();
        registry.reset();
        failures += check("~CallbackRegistry()", g_allocated.load() - before);
    }
    return failures == 0 ? 0 : 1;
}
