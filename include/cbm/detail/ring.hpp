// cbm/detail/ring.hpp - intrusive circular doubly-linked lists (rings).
//
// `T` has `T* prev` and `T* next`; a ring is named by a pointer to its head
// (null when empty). Used for a CancelNode's children and listeners. No
// synchronisation: the owner's lock protects a ring.
#pragma once

namespace cbm::detail {

template <class T>
void ring_push_back(T*& head, T* item) noexcept {
    if (head == nullptr) {
        item->prev = item->next = item;
        head = item;
        return;
    }
    item->prev = head->prev;
    item->next = head;
    head->prev->next = item;
    head->prev = item;
}

template <class T>
void ring_unlink(T*& head, T* item) noexcept {
    if (item->next == item) {
        head = nullptr;
    } else {
        item->prev->next = item->next;
        item->next->prev = item->prev;
        if (head == item) head = item->next;
    }
    item->prev = item->next = nullptr;
}

template <class T>
T* ring_pop_front(T*& head) noexcept {
    T* item = head;
    if (item != nullptr) ring_unlink(head, item);
    return item;
}

}  // namespace cbm::detail
