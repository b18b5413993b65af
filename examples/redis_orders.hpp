// The event the two Redis examples share, and its codec: JSON by
// nlohmann::json (Debian: nlohmann-json3-dev). A codec is any type with
// encode(const E&) -> std::string and decode(std::string_view) -> E;
// specializing cbm::redis::codec<E> makes it the default for E.
#pragma once

#include <cbm/redis/codec.hpp>
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

struct OrderPaid {
    std::string id;
    double total = 0;
};

template <>
struct cbm::redis::codec<OrderPaid> {
    static std::string encode(const OrderPaid& e) { return nlohmann::json{{"id", e.id}, {"total", e.total}}.dump(); }
    static OrderPaid decode(std::string_view bytes) {
        const auto j = nlohmann::json::parse(bytes);  // throws on bad input: the entry is dead-lettered
        return {j.at("id").get<std::string>(), j.at("total").get<double>()};
    }
};
