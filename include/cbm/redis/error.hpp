// cbm/redis/error.hpp - what the Redis bridge throws: cbm::redis::Error for
// an error reply or a reply of a shape the bridge did not expect, and
// cbm::redis::ConnectionError when the server cannot be reached or the
// connection broke. what() names the command and the endpoint.
#pragma once

#include <stdexcept>
#include <string>

namespace cbm::redis {

class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The connection is down (refused, reset, timed out). The bridge's
// consumers reconnect by themselves; Bridge::publish() throws this when it
// cannot reach the server (nothing is buffered).
class ConnectionError : public Error {
public:
    using Error::Error;
};

}  // namespace cbm::redis
