// cbm/detail/prometheus_text.hpp - pieces of the Prometheus text exposition
// format (version 0.0.4): label sets with escaped values, and numbers.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

#include "../observer.hpp"

namespace cbm::detail {

// Prometheus label value escaping: backslash, double quote and newline.
inline void append_escaped(std::string& out, std::string_view value) {
    for (char c : value) {
        switch (c) {
            case '\\': out += "\\\\"; break;
            case '"': out += "\\\""; break;
            case '\n': out += "\\n"; break;
            default: out += c;
        }
    }
}

// {key="...",callback="...",<labels>[,<extra_name>="<extra>"]}
inline std::string label_set(std::string_view key, std::string_view callback, const Labels& labels,
                             std::string_view extra_name = {}, std::string_view extra = {}) {
    std::string out = "{key=\"";
    append_escaped(out, key);
    out += "\",callback=\"";
    append_escaped(out, callback);
    out += '"';
    for (const auto& [name, value] : labels) {
        out += ',';
        out += name;
        out += "=\"";
        append_escaped(out, value);
        out += '"';
    }
    if (!extra_name.empty()) {
        out += ',';
        out += extra_name;
        out += "=\"";
        out += extra;
        out += '"';
    }
    out += '}';
    return out;
}

// Seconds from nanoseconds, printed so that Prometheus parses it.
inline std::string seconds(double ns) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.9g", ns * 1e-9);
    return buffer;
}

}  // namespace cbm::detail
