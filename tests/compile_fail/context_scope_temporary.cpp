// Must not compile: a ContextScope made from a temporary context would point
// at it after it is gone; the context must live in a variable.
#include <cbm/context.hpp>
#include <cbm/trace.hpp>

int main() {
    cbm::ContextScope scope(cbm::with_trace_id(cbm::Context::background(), "req-1"));
    return cbm::current_context().canceled() ? 1 : 0;
}
