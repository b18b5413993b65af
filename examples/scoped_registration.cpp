// README: tie a callback's lifetime to an object, safely across threads.
#include <cbm/cbm.hpp>

#include <atomic>
#include <cstdio>
#include <memory>
#include <thread>

class Sensor {
public:
    explicit Sensor(cbm::CallbackGroup<void(double)>& readings)
        : subscription_(readings.add([this](double v) { last_ = v; })) {}
    // The destructor of subscription_ unregisters and waits: once it returns,
    // no thread can still be inside the lambda, so `this` is safe to free.
    double last() const { return last_.load(); }

private:
    std::atomic<double> last_{0.0};
    cbm::ScopedRegistration subscription_;  // declared last: unregistered first
};

int main() {
    cbm::CallbackGroup<void(double)> readings;
    std::atomic<bool> stop{false};
    std::jthread producer([&] {
        for (double v = 0; !stop.load(); v += 1) readings.trigger(v);
    });
    for (int i = 0; i < 100; ++i) {
        auto sensor = std::make_unique<Sensor>(readings);
        sensor.reset();  // never a use-after-free, whatever the producer is doing
    }
    stop.store(true);
    std::printf("100 sensors came and went while the producer triggered\n");
    return 0;
}
