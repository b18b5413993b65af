// cbm/redis/connection.hpp - one synchronous connection to a Redis server
// (hiredis underneath) and the replies it returns: what the bridge speaks
// Redis with, usable on its own for commands the bridge does not wrap.
//
// Thread safety: a Connection is used by one thread at a time (the bridge
// gives each consumer its own and guards the publisher's with a mutex).
// Replies are plain values and may be read on any thread.
#pragma once

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "error.hpp"

namespace cbm::redis {

// Where the server is, and how long to wait for it.
struct Endpoint {
    std::string host = "127.0.0.1";
    int port = 6379;
    std::chrono::milliseconds connect_timeout{1000};
    // How long one command may take before the connection counts as broken
    // (a blocking read adds its own block time to this).
    std::chrono::milliseconds command_timeout{2000};

    std::string describe() const { return host + ":" + std::to_string(port); }
};

// A read-only view of one reply node (a reply is a tree: arrays of
// replies). Valid while the Reply that owns the tree lives.
class ReplyView {
public:
    explicit ReplyView(const redisReply* r) noexcept : r_(r) {}

    bool is_nil() const noexcept { return r_ == nullptr || r_->type == REDIS_REPLY_NIL; }
    bool is_error() const noexcept { return r_ != nullptr && r_->type == REDIS_REPLY_ERROR; }
    bool is_array() const noexcept { return r_ != nullptr && r_->type == REDIS_REPLY_ARRAY; }
    bool is_integer() const noexcept { return r_ != nullptr && r_->type == REDIS_REPLY_INTEGER; }
    bool is_text() const noexcept {
        return r_ != nullptr && (r_->type == REDIS_REPLY_STRING || r_->type == REDIS_REPLY_STATUS ||
                                 r_->type == REDIS_REPLY_ERROR);
    }

    // The text of a string, status or error reply ("" for others).
    std::string_view text() const noexcept {
        return is_text() ? std::string_view(r_->str, r_->len) : std::string_view{};
    }
    // The value of an integer reply (0 for others).
    long long integer() const noexcept { return is_integer() ? r_->integer : 0; }
    // The elements of an array reply (0 for others).
    std::size_t size() const noexcept { return is_array() ? r_->elements : 0; }
    // Precondition: i < size().
    ReplyView operator[](std::size_t i) const noexcept { return ReplyView(r_->element[i]); }

private:
    const redisReply* r_;
};

// The owner of a reply tree.
class Reply {
public:
    Reply() noexcept = default;
    explicit Reply(redisReply* r) noexcept : r_(r) {}
    ReplyView view() const noexcept { return ReplyView(r_.get()); }
    ReplyView operator*() const noexcept { return view(); }

    // Throws: cbm::redis::Error with the server's message, if it is an
    // error reply (`what` names the command).
    const Reply& check(std::string_view what) const {
        if (view().is_error()) throw Error("cbm::redis: " + std::string(what) + ": " + std::string(view().text()));
        return *this;
    }

private:
    struct Free {
        void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
    };
    std::unique_ptr<redisReply, Free> r_;
};

class Connection {
public:
    // Effect: connects to `endpoint`.
    // Throws: ConnectionError if it cannot.
    explicit Connection(Endpoint endpoint) : endpoint_(std::move(endpoint)) {
        const timeval connect = to_timeval(endpoint_.connect_timeout);
        redisContext* c = redisConnectWithTimeout(endpoint_.host.c_str(), endpoint_.port, connect);
        if (c == nullptr) throw ConnectionError("cbm::redis: cannot connect to " + endpoint_.describe() + ": out of memory");
        context_.reset(c);
        if (c->err != 0) {
            throw ConnectionError("cbm::redis: cannot connect to " + endpoint_.describe() + ": " + c->errstr);
        }
        set_timeout(endpoint_.command_timeout);
    }
    Connection(Connection&&) noexcept = default;
    Connection& operator=(Connection&&) noexcept = default;
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    const Endpoint& endpoint() const noexcept { return endpoint_; }

    // True once an I/O error broke it: every later command throws
    // ConnectionError; make a new Connection.
    bool broken() const noexcept { return !context_ || context_->err != 0; }

    // Effect: sends one command (each argument one bulk string, binary
    // safe) and waits for its reply.
    // Returns: the reply, which may be an error reply (see Reply::check).
    // Throws: ConnectionError if the connection is or becomes broken.
    Reply command(std::initializer_list<std::string_view> args) {
        return command(std::span<const std::string_view>(args.begin(), args.size()));
    }
    Reply command(std::span<const std::string_view> args) {
        append(args);
        return read_reply(args.empty() ? std::string_view{} : args.front());
    }

    // Effect: sends every command before reading any reply (one round trip
    // for all of them).
    // Returns: the replies, in order.
    // Throws: ConnectionError if the connection is or becomes broken.
    std::vector<Reply> pipeline(std::span<const std::vector<std::string_view>> commands) {
        for (const auto& c : commands) append(c);
        std::vector<Reply> replies;
        replies.reserve(commands.size());
        for (const auto& c : commands) replies.push_back(read_reply(c.empty() ? std::string_view{} : c.front()));
        return replies;
    }

    // Effect: from now on a command may take `timeout` (0: forever) before
    // the connection counts as broken.
    void set_timeout(std::chrono::milliseconds timeout) {
        if (broken()) throw_broken("SET TIMEOUT");
        if (redisSetTimeout(context_.get(), to_timeval(timeout)) != REDIS_OK) throw_broken("SET TIMEOUT");
    }

private:
    static timeval to_timeval(std::chrono::milliseconds ms) noexcept {
        timeval tv{};
        tv.tv_sec = static_cast<decltype(tv.tv_sec)>(ms.count() / 1000);
        tv.tv_usec = static_cast<decltype(tv.tv_usec)>((ms.count() % 1000) * 1000);
        return tv;
    }

    template <class Args>
    void append(const Args& args) {
        if (broken()) throw_broken(args.empty() ? std::string_view{} : args[0]);
        argv_.clear();
        lengths_.clear();
        for (std::string_view a : args) {
            argv_.push_back(a.data());
            lengths_.push_back(a.size());
        }
        if (redisAppendCommandArgv(context_.get(), static_cast<int>(argv_.size()), argv_.data(), lengths_.data()) !=
            REDIS_OK) {
            throw_broken(args.empty() ? std::string_view{} : args[0]);
        }
    }

    Reply read_reply(std::string_view what) {
        void* raw = nullptr;
        if (redisGetReply(context_.get(), &raw) != REDIS_OK || raw == nullptr) throw_broken(what);
        return Reply(static_cast<redisReply*>(raw));
    }

    [[noreturn]] void throw_broken(std::string_view what) const {
        std::string why = context_ ? std::string(context_->errstr) : std::string("no connection");
        if (why.empty()) why = "connection lost";
        throw ConnectionError("cbm::redis: " + std::string(what) + " on " + endpoint_.describe() + ": " + why);
    }

    struct Free {
        void operator()(redisContext* c) const noexcept { redisFree(c); }
    };
    Endpoint endpoint_;
    std::unique_ptr<redisContext, Free> context_;
    std::vector<const char*> argv_;
    std::vector<std::size_t> lengths_;
};

}  // namespace cbm::redis
