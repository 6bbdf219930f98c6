/* eventfd_holder: the counters workload, plus an eventfd held open (crt must
 * refuse to dump it, naming the pid, the fd number and "eventfd"). */
#define WITH_EVENTFD 1
#include "counters.c"
