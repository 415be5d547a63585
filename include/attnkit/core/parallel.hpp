// attnkit: parallel_for over independent tasks. Every task writes its own outputs and the
// partition of work into tasks never depends on the thread count, so results are bitwise identical
// for any number of threads. Uses OpenMP when the consumer compiles with it, else runs serially.
#pragma once

#include <algorithm>
#include <exception>
#include <limits>

#include "config.hpp"

#if ATTNKIT_HAS_OPENMP
#include <omp.h>
#endif

ATTNKIT_BEGIN_NAMESPACE

/// The number of threads `threads` (0: all) resolves to for `tasks` tasks: at least 1, at most tasks,
/// and at most max(256, 8 x the processors) however many are asked for (an absurd count would make
/// the OpenMP runtime abort creating them; results do not depend on the count anyway).
inline int resolve_threads(int threads, index_t tasks) {
#if ATTNKIT_HAS_OPENMP
  const int cap = std::max(256, 8 * omp_get_num_procs());
  int nt = threads > 0 ? std::min(threads, cap) : omp_get_max_threads();
  if (omp_in_parallel()) nt = 1;  // never nest: the caller already owns the cores
#else
  int nt = 1;
  (void)threads;
#endif
  if (tasks < nt) nt = tasks < 1 ? 1 : static_cast<int>(tasks);
  return nt;
}

/// Calls f(task, thread) for every task in [0, n) on up to `threads` threads (0: all); thread is
/// in [0, resolve_threads(threads, n)). An exception never escapes a worker thread: when tasks
/// throw (std::bad_alloc, say), the exception of the lowest-numbered failing task is rethrown on
/// the calling thread once every worker has stopped, whatever the thread count (the tasks after
/// it may or may not have run).
template <class F>
void parallel_for(index_t n, int threads, F&& f) {
  const int nt = resolve_threads(threads, n);
#if ATTNKIT_HAS_OPENMP
  if (nt > 1) {
    std::exception_ptr error;
    index_t error_task = std::numeric_limits<index_t>::max();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (index_t t = 0; t < n; ++t) {
      try {
        f(t, omp_get_thread_num());
      } catch (...) {
#pragma omp critical(attnkit_parallel_for_error)
        if (t < error_task) {
          error_task = t;
          error = std::current_exception();
        }
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  (void)nt;
  for (index_t t = 0; t < n; ++t) f(t, 0);
}

ATTNKIT_END_NAMESPACE
