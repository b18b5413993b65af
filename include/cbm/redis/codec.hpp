// cbm/redis/codec.hpp - how an event becomes the bytes of a stream entry
// and back: the Codec concept, and cbm::redis::codec<E>, the codec the
// bridge uses for E unless it is given one.
//
//   struct OrderPaid { std::string id; double total; };
//   template <> struct cbm::redis::codec<OrderPaid> {
//       static std::string encode(const OrderPaid& e) { return nlohmann::json{{"id", e.id}, {"total", e.total}}.dump(); }
//       static OrderPaid decode(std::string_view s) { auto j = nlohmann::json::parse(s); return {j["id"], j["total"]}; }
//   };
//
// decode() reports bad input by throwing: the bridge sends the entry to the
// dead-letter stream with that error (it is never retried: the same bytes
// would fail again).
#pragma once

#include <concepts>
#include <string>
#include <string_view>

namespace cbm::redis {

// A codec for E: encode(const E&) -> std::string, decode(std::string_view) -> E.
template <class C, class E>
concept Codec = requires(const C& c, const E& e, std::string_view bytes) {
    { c.encode(e) } -> std::convertible_to<std::string>;
    { c.decode(bytes) } -> std::same_as<E>;
};

// The codec used for E when none is given: specialize it for your types
// (static members are enough). Built in for std::string (the bytes as
// they are).
template <class E>
struct codec;

template <>
struct codec<std::string> {
    static std::string encode(const std::string& s) { return s; }
    static std::string decode(std::string_view bytes) { return std::string(bytes); }
};

// True when codec<E> is specialized and fits the concept.
template <class E>
concept has_default_codec = requires { sizeof(codec<E>); } && Codec<codec<E>, E>;

}  // namespace cbm::redis
