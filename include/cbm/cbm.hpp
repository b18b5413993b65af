// cbm/cbm.hpp - the whole library in one include.
#pragma once

#include "callback.hpp"
#include "callback_group.hpp"
#include "callback_registry.hpp"
#include "context.hpp"
#include "errc.hpp"
#include "error_policy.hpp"
#include "histogram.hpp"
#include "metrics.hpp"
#include "once.hpp"
#include "registration.hpp"
#include "snapshot.hpp"
#include "trace.hpp"
#include "version.hpp"
