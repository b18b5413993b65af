// Builds only if cbm::redis carries hiredis's include path and library, and cbm's.
#include <cbm/redis/bridge.hpp>

#include <string>

int main() {
    // Nothing to connect to here: the bridge connects when first used.
    cbm::redis::Bridge bridge({.endpoint = {.host = "127.0.0.1", .port = 1}});
    const std::string encoded = cbm::redis::codec<std::string>::encode("ok");
    return encoded == "ok" && bridge.published() == 0 ? 0 : 1;
}
