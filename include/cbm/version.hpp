// cbm/version.hpp - the library version.
#pragma once

#define CBM_VERSION_MAJOR 0
#define CBM_VERSION_MINOR 1
#define CBM_VERSION_PATCH 0

namespace cbm {
inline constexpr int version_major = CBM_VERSION_MAJOR;
inline constexpr int version_minor = CBM_VERSION_MINOR;
inline constexpr int version_patch = CBM_VERSION_PATCH;
}  // namespace cbm
