// A layering violation the include check must report (tests/CMakeLists.txt).
#pragma once
#include "../core/fine.hpp"
#include "../full/detail/private.hpp"
