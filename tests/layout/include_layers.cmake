# Checks the include rule of docs/architecture.md ("Layers"): run as
#   cmake -DCBM_INCLUDE_DIR=<repo>/include -P include_layers.cmake
#
# Every header under include/cbm/ has a layer below. A header may include
# cbm headers of its own layer or lower layers only, and a detail/ header
# may include a public header only from a lower layer: machinery never
# includes the public API it implements, only the vocabulary beneath it.
# A new header must be given a layer here, and a new public header must be
# included by the umbrella cbm.hpp, except the optional parts that need a
# third-party library (interop/: asio; redis/: hiredis).

set(layer_0 # vocabulary: includes only the standard library
  callback.hpp errc.hpp error_policy.hpp executor.hpp histogram.hpp observer.hpp version.hpp
  interop/asio.hpp detail/block_cache.hpp detail/event_type.hpp detail/tick_clock.hpp)
set(layer_1 # reports and once: vocabulary only
  metrics.hpp prometheus.hpp detail/prometheus_text.hpp once.hpp async_result.hpp)
set(layer_2 # context machinery
  detail/intrusive_ref.hpp detail/non_copyable.hpp detail/ring.hpp detail/word_mutex.hpp detail/service_lifetime.hpp
  detail/timer_service.hpp detail/async_runner.hpp detail/context_node.hpp detail/after_func_entry.hpp
  detail/delivery_state.hpp)
set(layer_3 # context API and the settings written in it
  context.hpp after_func.hpp trace.hpp resilience.hpp group_options.hpp thread_pool.hpp delivery.hpp subscribe_options.hpp)
set(layer_4 # callback machinery
  detail/barrier.hpp detail/backoff.hpp detail/thread_records.hpp detail/epoch.hpp detail/callback_stats.hpp
  detail/metric_series.hpp
  detail/group_state.hpp detail/node.hpp detail/callback_list.hpp detail/unregister.hpp detail/typed_node.hpp
  detail/resilience_state.hpp detail/validate.hpp detail/make_node.hpp detail/failure.hpp detail/invoke.hpp
  detail/instrument.hpp detail/resilience_steps.hpp detail/pipeline.hpp detail/trigger_loop.hpp
  detail/context_binding.hpp detail/key_table.hpp detail/async_dispatch.hpp detail/group_core.hpp detail/bus_core.hpp)
set(layer_5 # callback API
  snapshot.hpp registration.hpp self.hpp track.hpp callback_options.hpp callback_values.hpp callback_group.hpp callback_registry.hpp)
set(layer_6 # event bus: built on the callback API
  detail/event_channel.hpp event_bus.hpp cbm.hpp)
set(layer_7 # optional, needs hiredis: the Redis Streams bridge, built on the event bus
  redis/error.hpp redis/connection.hpp redis/codec.hpp redis/message.hpp redis/detail/consumer_loop.hpp redis/bridge.hpp)

foreach(layer RANGE 0 7)
  foreach(header IN LISTS layer_${layer})
    set(layer_of_${header} ${layer})
  endforeach()
endforeach()

get_filename_component(root "${CBM_INCLUDE_DIR}/cbm" ABSOLUTE)
file(GLOB_RECURSE headers RELATIVE "${root}" "${root}/*.hpp")
if(NOT headers)
  message(FATAL_ERROR "cbm include rule: no headers under ${root} (pass -DCBM_INCLUDE_DIR=<repo>/include)")
endif()
set(problems "")
foreach(header IN LISTS headers)
  if(NOT DEFINED layer_of_${header})
    string(APPEND problems "  ${header}: has no layer in tests/layout/include_layers.cmake\n")
    continue()
  endif()
  set(own ${layer_of_${header}})
  get_filename_component(dir "${header}" DIRECTORY)
  file(STRINGS "${root}/${header}" includes REGEX "^#include \"")
  foreach(line IN LISTS includes)
    string(REGEX REPLACE "^#include \"([^\"]+)\".*" "\\1" target "${line}")
    if(dir STREQUAL "")
      set(target_path "${target}")
    else()
      set(target_path "${dir}/${target}")
    endif()
    cmake_path(NORMAL_PATH target_path)
    if(NOT DEFINED layer_of_${target_path})
      string(APPEND problems "  ${header}: includes ${target_path}, which has no layer\n")
      continue()
    endif()
    set(theirs ${layer_of_${target_path}})
    if(theirs GREATER own)
      string(APPEND problems "  ${header} (layer ${own}) includes ${target_path} (layer ${theirs}): a higher layer\n")
    endif()
    string(FIND "${header}" "detail/" header_is_detail)
    string(FIND "${target_path}" "detail/" target_is_detail)
    if(header_is_detail EQUAL 0 AND NOT target_is_detail EQUAL 0 AND theirs EQUAL own)
      string(APPEND problems
        "  ${header} (layer ${own}) includes the public ${target_path} of its own layer: machinery must not include the API it implements\n")
    endif()
  endforeach()
endforeach()

# The umbrella header includes every public header.
file(STRINGS "${root}/cbm.hpp" umbrella REGEX "^#include \"")
foreach(header IN LISTS headers)
  string(FIND "${header}" "detail/" is_detail)
  string(FIND "${header}" "interop/" is_optional)
  string(FIND "${header}" "redis/" is_redis)
  if(is_detail EQUAL 0 OR is_optional EQUAL 0 OR is_redis EQUAL 0 OR header STREQUAL "cbm.hpp")
    continue()
  endif()
  list(FIND umbrella "#include \"${header}\"" found)
  if(found EQUAL -1)
    string(APPEND problems "  cbm.hpp does not include ${header}\n")
  endif()
endforeach()

if(problems)
  message(FATAL_ERROR "cbm include rule broken:\n${problems}")
endif()
list(LENGTH headers count)
message(STATUS "cbm include rule holds for ${count} headers")
