/* io_uring_holder: the counters workload, plus an io_uring held open (crt must
 * refuse to dump it, naming the pid, the fd number and "io_uring"). */
#define WITH_IO_URING 1
#include "counters.c"
