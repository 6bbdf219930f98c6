/* eventfd_holder: the counters workload, plus an eventfd holding a counter
 * value that must survive the dump (checked at SIGTERM). */
#define WITH_EVENTFD 1
#include "counters.c"
