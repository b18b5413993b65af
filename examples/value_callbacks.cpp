// README "Callbacks that return values": a quote from every carrier, and a
// collector that stops at the first good enough one.
#include <cbm/cbm.hpp>

#include <cstdio>
#include <stdexcept>
#include <string>

struct Parcel {
    double kg;
};

class Carrier {
public:
    explicit Carrier(double base) : base_(base) {}
    double quote(const Parcel& p) const { return base_ + 2.0 * p.kg; }

private:
    double base_;
};

int main() {
    cbm::CallbackGroup<double(const Parcel&)> quotes;
    const Carrier ups(9.0);
    quotes.add(&Carrier::quote, &ups, {.name = "ups"});
    quotes.add([](const Parcel& p) { return 4.5 + 3.0 * p.kg; }, {.name = "local"});
    quotes.add([](const Parcel& p) -> double {
        if (p.kg > 20) throw std::runtime_error("too heavy");  // no value; counted as failed
        return 7.0;
    }, {.name = "bike"});

    const cbm::ValueResult<double> all = quotes.trigger(Parcel{2.0});  // every value, in call order
    for (const cbm::CallbackValue<double>& q : all.values) std::printf("%s: %.2f\n", q.name.c_str(), q.value);

    std::string first_cheap = "none";
    const cbm::TriggerResult r = quotes.collect([&](cbm::CallbackValue<double>&& q) {
        if (q.value > 12.0) return true;  // keep asking
        first_cheap = q.name;
        return false;                     // good enough: the remaining callbacks are skipped
    }, Parcel{1.0});
    std::printf("first under 12: %s (%zu asked, %zu skipped)\n", first_cheap.c_str(), r.invoked, r.skipped);
    return all.values.size() == 3 && r.stopped ? 0 : 1;
}
