/* pgod-live: cumulative profile snapshots from a program that keeps running (issue 20).
 *
 * Linked (uninstrumented, compiled by the package's own clang) into every instrumented module. It
 * refers to LLVM's profile runtime weakly: in a module without instrumented code it does nothing.
 *
 * Minimal first version, for benchmarks/live_runtime.py (not yet the framed two-slot file of
 * docs/design/live-profiles.md §2, no OFD lock, no atfork):
 *   - on only when LLVM_PROFILE_FILE names a folder this process may write (and the runtime is
 *     not in continuous mode); otherwise the runtime's own exit write works as always;
 *   - the runtime's file name is pointed at /dev/null at once (priority-101 constructor, before the
 *     runtime's initializer: the API name outranks LLVM_PROFILE_FILE, so the runtime never tries
 *     to open the folder as a file);
 *   - a dumper thread, every PGOD_LIVE_INTERVAL_S seconds (default 60), sums the counters
 *     (__llvm_profile_begin_counters .. end) and, when the sum changed, writes a cumulative snapshot
 *     with __llvm_profile_write_file to a private temp name in the folder, then renames it to
 *     live-<pid>-<128-bit random hex>.profraw (a reader sees a whole snapshot or the previous one);
 *   - at exit (an atexit handler registered after the runtime's, so it runs first) it stops the
 *     thread and writes a last snapshot under the same mutex; the runtime's own exit write then goes
 *     to /dev/null (if the last snapshot failed, to <folder>/%p.profraw as without this object).
 * Test-only: PGOD_LIVE_STATS=<file> appends one line at exit: dumps, skipped, thread CPU ns spent
 * in dumps (final one excluded), bytes of the last snapshot, the live file's name.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The runtime's API (compiler-rt/lib/profile), weak: absent → 0. Counters are char* since LLVM 14. */
extern int __llvm_profile_write_file(void) __attribute__((weak));
extern void __llvm_profile_set_filename(const char *) __attribute__((weak));
extern char *__llvm_profile_begin_counters(void) __attribute__((weak));
extern char *__llvm_profile_end_counters(void) __attribute__((weak));
extern int __llvm_profile_is_continuous_mode_enabled(void) __attribute__((weak));
extern int __llvm_profile_register_write_file_atexit(void) __attribute__((weak));

static pthread_mutex_t live_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_wake = PTHREAD_COND_INITIALIZER;
static pthread_t live_thread;
static int live_on, live_stop;
static unsigned live_interval_s = 60;
static char live_tmp[4096], live_name[4096];
static uint64_t live_last_sum;
static int live_have_sum;
static unsigned long live_dumps, live_skipped;
static uint64_t live_dump_cpu_ns;
static long long live_bytes;

static uint64_t counter_sum(void) {
  const char *begin = __llvm_profile_begin_counters(), *end = __llvm_profile_end_counters();
  uint64_t sum = 0;
  for (const volatile uint64_t *c = (const volatile uint64_t *)begin; (const char *)(c + 1) <= end; c++)
    sum += *c;
  return sum;
}

static uint64_t thread_cpu_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* One snapshot, the mutex held. force: write even when no counter moved (the final one). */
static int live_dump(int force) {
  uint64_t sum = counter_sum();
  if (!force && live_have_sum && sum == live_last_sum) {
    live_skipped++;
    return 0;
  }
  unlink(live_tmp); /* a leftover from a failed rename would be appended to ("ab") */
  __llvm_profile_set_filename(live_tmp);
  int failed = __llvm_profile_write_file();
  __llvm_profile_set_filename("/dev/null");
  if (failed || rename(live_tmp, live_name) != 0) {
    unlink(live_tmp);
    return -1;
  }
  struct stat st;
  if (stat(live_name, &st) == 0) live_bytes = st.st_size;
  live_last_sum = sum;
  live_have_sum = 1;
  live_dumps++;
  return 0;
}

static void *live_main(void *unused) {
  (void)unused;
  pthread_mutex_lock(&live_mutex);
  while (!live_stop) {
    struct timespec due;
    clock_gettime(CLOCK_MONOTONIC, &due);
    due.tv_sec += live_interval_s;
    while (!live_stop && pthread_cond_timedwait(&live_wake, &live_mutex, &due) != ETIMEDOUT) {
    }
    if (live_stop) break;
    uint64_t began = thread_cpu_ns();
    live_dump(0);
    live_dump_cpu_ns += thread_cpu_ns() - began;
  }
  pthread_mutex_unlock(&live_mutex);
  return NULL;
}

static void live_exit(void) {
  if (!live_on) return;
  pthread_mutex_lock(&live_mutex);
  live_stop = 1;
  pthread_cond_signal(&live_wake);
  pthread_mutex_unlock(&live_mutex);
  pthread_join(live_thread, NULL);
  pthread_mutex_lock(&live_mutex);
  if (live_dump(1) != 0) {
    /* fallback: the runtime's own exit write, to the folder's %p name */
    char fallback[4096];
    snprintf(fallback, sizeof fallback, "%s/%%p.profraw", getenv("LLVM_PROFILE_FILE"));
    __llvm_profile_set_filename(fallback);
  }
  live_on = 0;
  pthread_mutex_unlock(&live_mutex);
  const char *stats = getenv("PGOD_LIVE_STATS");
  if (stats && *stats) {
    FILE *f = fopen(stats, "a");
    if (f) {
      fprintf(f, "dumps=%lu skipped=%lu dump_cpu_ns=%llu bytes=%lld file=%s\n", live_dumps, live_skipped,
              (unsigned long long)live_dump_cpu_ns, live_bytes, live_name);
      fclose(f);
    }
  }
}

__attribute__((constructor(101))) static void live_start(void) {
  if (!__llvm_profile_write_file || !__llvm_profile_set_filename || !__llvm_profile_begin_counters ||
      !__llvm_profile_end_counters || !__llvm_profile_register_write_file_atexit)
    return; /* no profile runtime in this module */
  const char *folder = getenv("LLVM_PROFILE_FILE");
  struct stat st;
  if (!folder || !*folder || strlen(folder) > 3000 || stat(folder, &st) != 0 || !S_ISDIR(st.st_mode) ||
      access(folder, W_OK | X_OK) != 0)
    return;
  if (__llvm_profile_is_continuous_mode_enabled && __llvm_profile_is_continuous_mode_enabled()) return;
  const char *interval = getenv("PGOD_LIVE_INTERVAL_S");
  if (interval && atoi(interval) > 0) live_interval_s = (unsigned)atoi(interval);
  unsigned char rnd[16];
  if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd) return;
  char hex[33];
  for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
  snprintf(live_name, sizeof live_name, "%s/live-%d-%s.profraw", folder, (int)getpid(), hex);
  snprintf(live_tmp, sizeof live_tmp, "%s/.live-%d-%s.tmp", folder, (int)getpid(), hex);
  __llvm_profile_set_filename("/dev/null");
  /* the runtime's atexit write first, ours after it: ours runs first (LIFO) */
  __llvm_profile_register_write_file_atexit();
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&live_wake, &ca);
  pthread_attr_t ta;
  pthread_attr_init(&ta);
  pthread_attr_setstacksize(&ta, 256 * 1024);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread takes no signals of the program's */
  int failed = pthread_create(&live_thread, &ta, live_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&ta);
  if (failed) {
    char fallback[4096];
    snprintf(fallback, sizeof fallback, "%s/%%p.profraw", folder); /* the runtime's exit write, as without us */
    __llvm_profile_set_filename(fallback);
    return;
  }
  live_on = 1;
  atexit(live_exit);
}
