// attnkit benchmarks: measurement helpers shared by bench/ and examples/tour (no Google Benchmark
// dependency here; bench/common.hpp adds the Google Benchmark glue on top).
//
// The machines we measure on deschedule their vCPUs for hundreds of milliseconds at a time (steal
// time), and both wall time and thread CPU time include the stalls. Everything here therefore
// estimates a time as the MINIMUM over many short samples (a few ms each), and a long operator
// call is timed on a representative slice of its work (a few heads, a few blocks of query rows)
// whose time is scaled by (FLOPs of the whole call) / (FLOPs of the slice). See plan_samples().
//
// The helpers are split by section: measure/timing.hpp (clocks, threads, inputs, FMA peak),
// measure/attention.hpp (problems, FLOPs, sampled timing), measure/combiner.hpp (plans and
// their cost), measure/vision.hpp (lambda layers, CoAtNet).
#pragma once

#include "measure/attention.hpp"
#include "measure/combiner.hpp"
#include "measure/timing.hpp"
#include "measure/vision.hpp"
