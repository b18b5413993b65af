// README: callbacks meet contexts - trigger(ctx, ...), current_context(),
// and callbacks that unregister themselves when a context is canceled.
#include <cbm/cbm.hpp>

#include <cstdio>
#include <string>

static const cbm::ContextKey<std::string> user{"user"};

void audit(const std::string& action) {
    // Deep inside a callback: the trigger's context, without passing it along.
    const std::string* who = cbm::current_context().value(user);
    std::printf("audit: %s by %s\n", action.c_str(), who != nullptr ? who->c_str() : "?");
}

int main() {
    cbm::CallbackRegistry<std::string, void(const std::string&)> events;
    auto [session, end_session] = cbm::with_cancel(cbm::Context::background());

    events.add("save", [](const std::string& file) { audit("save " + file); });
    // Lives as long as the session: unregistered when it is canceled.
    events.add("save", [](const std::string& file) { std::printf("session autosave of %s\n", file.c_str()); },
               {.name = "autosave", .context = session});

    const cbm::Context request = cbm::with_value(session, user, std::string("ada"));
    events.trigger(request, "save", "notes.txt");  // both run; audit sees user "ada"

    end_session();
    cbm::TriggerResult r = events.trigger(request, "save", "notes.txt");  // canceled: nothing runs
    std::printf("after the session: invoked %zu, stopped %d\n", r.invoked, r.stopped);
    events.trigger("save", "draft.txt");  // no context: only audit remains
    return r.invoked == 0 && events.size("save") == 1 ? 0 : 1;
}
