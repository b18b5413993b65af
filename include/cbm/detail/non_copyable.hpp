// cbm/detail/non_copyable.hpp - a base for machinery that owns something
// (threads, retired memory, taken nodes) and so must be neither copied nor
// moved.
#pragma once

namespace cbm::detail {

class NonCopyable {
public:
    NonCopyable(const NonCopyable&) = delete;
    NonCopyable& operator=(const NonCopyable&) = delete;

protected:
    NonCopyable() = default;
    ~NonCopyable() = default;
};

}  // namespace cbm::detail
