// White-box looks into cbm's context machinery, for the context tests.
#pragma once

#include <cbm/context.hpp>

#include <cstddef>
#include <mutex>

namespace cbm_test {

// How many children a cancelable context holds in its list.
inline std::size_t children_held(const cbm::Context& ctx) {
    cbm::detail::CancelNode* node = cbm::detail::ContextAccess::canceler(ctx);
    std::lock_guard<cbm::detail::WordMutex> lock(node->mutex);
    std::size_t n = 0;
    if (const cbm::detail::CancelNode* first = node->children) {
        const cbm::detail::CancelNode* c = first;
        do {
            ++n;
            c = c->next;
        } while (c != first);
    }
    return n;
}

}  // namespace cbm_test
