// cbm/interop/asio.hpp - asio's standard executors as cbm executors, as
// they are: asio::thread_pool::executor_type, asio::io_context::
// executor_type, strands, and their Boost.Asio twins.
//
//   #include <asio.hpp>
//   #include <cbm/interop/asio.hpp>
//   asio::thread_pool io(4);
//   cbm::CallbackGroup<void(int)> g({.executor = io.get_executor()});
//
// Asio 1.24 and later make execute() a public member, which cbm::Executor
// accepts without this header; earlier versions (Debian 12 ships 1.22)
// keep it private behind the asio::execution::execute customization point,
// which this header plugs into cbm::executor_traits.
//
// An optional part of cbm: it needs standalone asio (Debian: libasio-dev)
// or Boost.Asio (libboost-dev), and the umbrella <cbm/cbm.hpp> leaves it
// out. What asio does with a task it never runs (an io_context destroyed
// with work queued) cbm reports as that invocation's failure
// (errc::task_dropped).
#pragma once

#include <utility>

#include "../executor.hpp"

// One asio per translation unit (the two cannot be included together):
// the one included already, else standalone asio, else Boost.Asio.
#if defined(ASIO_VERSION) || (!defined(BOOST_ASIO_VERSION) && __has_include(<asio/execution.hpp>))
#include <asio/execution.hpp>
#define CBM_HAS_STANDALONE_ASIO 1
#elif defined(BOOST_ASIO_VERSION) || __has_include(<boost/asio/execution.hpp>)
#include <boost/asio/execution.hpp>
#define CBM_HAS_BOOST_ASIO 1
#else
#error "cbm/interop/asio.hpp needs standalone asio (apt-get install libasio-dev) or Boost.Asio (libboost-dev)"
#endif

namespace cbm {

#if defined(CBM_HAS_STANDALONE_ASIO)
template <class E>
    requires(asio::execution::is_executor<E>::value && !detail::has_member_execute<E>)
struct executor_traits<E> {
    template <class F>
    static void execute(const E& e, F&& f) {
        asio::execution::execute(e, std::forward<F>(f));
    }
};
#endif

#if defined(CBM_HAS_BOOST_ASIO)
template <class E>
    requires(boost::asio::execution::is_executor<E>::value && !detail::has_member_execute<E>)
struct executor_traits<E> {
    template <class F>
    static void execute(const E& e, F&& f) {
        boost::asio::execution::execute(e, std::forward<F>(f));
    }
};
#endif

}  // namespace cbm
