// cbm/detail/prometheus_text.hpp - pieces of the Prometheus text exposition
// format (version 0.0.4): metric and label names, label sets with escaped,
// valid UTF-8 values, and numbers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <charconv>
#include <system_error>
#include <string>
#include <string_view>
#include <utility>

#include "../observer.hpp"

namespace cbm::detail {

// The label names cbm itself puts on every series (or on some).
inline constexpr std::string_view kReservedLabels[] = {"key", "callback", "id", "quantile", "reason", "sampled", "le"};

// A label name Prometheus accepts ([a-zA-Z_][a-zA-Z0-9_]*, not starting with
// __) that does not collide with one cbm adds.
inline bool valid_label_name(std::string_view n) noexcept {
    if (n.empty() || (n.size() >= 2 && n[0] == '_' && n[1] == '_')) return false;
    for (std::size_t i = 0; i < n.size(); ++i) {
        const char c = n[i];
        const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    for (std::string_view reserved : kReservedLabels) {
        if (n == reserved) return false;
    }
    return true;
}

// A metric name prefix Prometheus accepts: [a-zA-Z_:][a-zA-Z0-9_:]*.
inline bool valid_metric_prefix(std::string_view p) noexcept {
    if (p.empty()) return false;
    for (std::size_t i = 0; i < p.size(); ++i) {
        const char c = p[i];
        const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!letter && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return true;
}

// The UTF-8 sequence at the start of `s` (not empty): its length, and
// whether it is well formed (overlong forms, surrogates and values past
// U+10FFFF are not). An ill-formed one has the length of its maximal
// subpart (at least 1 byte), which becomes one U+FFFD (Unicode's practice).
struct Utf8Sequence {
    std::size_t length;
    bool valid;
};

inline Utf8Sequence utf8_sequence(std::string_view s) noexcept {
    const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
    const unsigned char b0 = byte(0);
    if (b0 < 0x80) return {1, true};
    std::size_t length = 0;
    unsigned char low = 0x80;
    unsigned char high = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        length = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        length = 3;
        if (b0 == 0xE0) low = 0xA0;
        if (b0 == 0xED) high = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        length = 4;
        if (b0 == 0xF0) low = 0x90;
        if (b0 == 0xF4) high = 0x8F;
    } else {
        return {1, false};
    }
    for (std::size_t i = 1; i < length; ++i) {
        if (i >= s.size() || byte(i) < low || byte(i) > high) return {i, false};
        low = 0x80;
        high = 0xBF;
    }
    return {length, true};
}

// A label value: backslash, double quote and newline escaped; every
// ill-formed UTF-8 sequence replaced by U+FFFD.
inline void append_escaped(std::string& out, std::string_view value) {
    while (!value.empty()) {
        const Utf8Sequence seq = utf8_sequence(value);
        if (!seq.valid) {
            out += "\xEF\xBF\xBD";
        } else if (seq.length == 1) {
            switch (value[0]) {
                case '\\': out += "\\\\"; break;
                case '"': out += "\\\""; break;
                case '\n': out += "\\n"; break;
                default: out += value[0];
            }
        } else {
            out.append(value.data(), seq.length);
        }
        value.remove_prefix(seq.length);
    }
}

// One series' labels: key, callback, id (unnamed callbacks only), the
// callback's own labels, then up to two more (name, value) pairs.
struct SeriesLabels {
    std::string_view key;
    std::string_view callback;
    std::uint64_t id = 0;
    const Labels* labels = nullptr;
};

// Appends `name="value"` (escaped), after a comma unless it is the first.
inline void append_label(std::string& out, std::string_view name, std::string_view value, bool first = false) {
    if (!first) out += ',';
    out += name;
    out += "=\"";
    append_escaped(out, value);
    out += '"';
}

inline std::string label_set(const SeriesLabels& series, std::string_view extra_name = {}, std::string_view extra = {},
                             std::string_view more_name = {}, std::string_view more = {}) {
    std::string out = "{";
    append_label(out, "key", series.key, true);
    append_label(out, "callback", series.callback);
    if (series.id != 0) {
        out += ",id=\"";
        out += std::to_string(series.id);
        out += '"';
    }
    if (series.labels != nullptr) {
        for (const auto& [name, value] : *series.labels) append_label(out, name, value);
    }
    for (const auto& [name, value] : {std::pair{extra_name, extra}, std::pair{more_name, more}}) {
        if (!name.empty()) append_label(out, name, value);
    }
    out += '}';
    return out;
}

// Labels of a series that has no key or callback (a pool's): "" when
// there are none, else {name="value",...}.
inline std::string plain_label_set(const Labels& labels) {
    if (labels.empty()) return {};
    std::string out = "{";
    for (const auto& [name, value] : labels) append_label(out, name, value, out.size() == 1);
    out += '}';
    return out;
}

// Seconds from nanoseconds, printed so that Prometheus parses it: nine
// significant digits, always with a '.' (std::to_chars ignores the locale,
// which printf's %g would follow).
inline std::string seconds(double ns) {
    char buffer[40];
    const auto [end, error] = std::to_chars(buffer, buffer + sizeof buffer, ns * 1e-9, std::chars_format::general, 9);
    if (error != std::errc{}) return "NaN";
    return std::string(buffer, end);
}

}  // namespace cbm::detail
