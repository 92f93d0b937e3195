/* pgod-live: live profiles from programs that keep running (issue 20).
 *
 * Linked, uninstrumented and compiled by the package's own clang, into every module (executable,
 * shared library) of an instrumented package. It implements the writer of
 * docs/design/live-protocol.md:
 *
 *   - one run per (process, module): live-<pid>-<32 hex>.profraw in the spool folder, appearing
 *     with the run's first snapshot (periodic, or at exit: a short program pays for one file at its
 *     exit, as without this object), every inode at the name write-locked with an OFD lock over
 *     the whole file (F_OFD_SETLK) for as long as the process lives;
 *   - a snapshot (a cumulative raw profile of this module, __llvm_profile_write_file through
 *     __llvm_profile_set_file_object) goes to .live-<pid>-<hex>.tmp in the same folder, which is
 *     opened and locked before the profile is written and renamed over the name; the previous
 *     inode's descriptor is closed after the rename, so the inode at the name is locked at every
 *     instant;
 *   - a dumper thread (all signals blocked) writes one every PGOD_LIVE_INTERVAL_S seconds (default:
 *     PGOD_LIVE_DEFAULT_INTERVAL_S, set by the adapter) when the sum of the counters changed; an
 *     atexit handler, registered after the runtime's own so that it runs first, writes the last;
 *   - the runtime's own file name is pointed at /dev/null at start (a priority-101 constructor,
 *     before the runtime's initializer; the API outranks LLVM_PROFILE_FILE), and back at the
 *     program's own pattern only if the last snapshot fails before any was published, so the
 *     runtime's exit write stays the fallback (after a published snapshot it would count that
 *     snapshot's counts a second time: the reader takes the last published one as final);
 *   - pthread_atfork: prepare takes the mutex (no fork mid-snapshot), the parent releases it, the
 *     child re-initialises it, closes its copy of the parent's descriptor (the lock stays the
 *     parent's), resets its counters (they are the parent's), starts a run of its own and its own
 *     dumper thread. The child's name appears with its first snapshot (periodic or at exit), so a
 *     fork that is followed by exec or _exit leaves nothing in the spool;
 *   - exec closes the descriptors (O_CLOEXEC): the run ends with its last snapshot; so do SIGKILL
 *     and every other death (the kernel drops the lock), and dlclose of a library (its atexit
 *     handler writes the last snapshot, joins the thread and closes the module's descriptors).
 *
 * Off, the runtime untouched (its exit write works as without this object), when:
 *   - the module has no profile runtime (every runtime symbol is a hidden weak reference);
 *   - the file pattern (LLVM_PROFILE_FILE if set and non-empty, else the one baked in with
 *     -fprofile-instrument-path) is /dev/null, asks for continuous mode (%c), or is neither a
 *     folder nor a per-process pattern (a last component with %p) in a folder this process can
 *     open (a folder it cannot write to fails the last snapshot: the runtime's exit write then
 *     fails as it would without this object);
 *   - PGOD_LIVE_INTERVAL_S is 0.
 *
 * Every symbol is static or hidden: an executable and each instrumented shared library get their
 * own copy, bound to their own module's runtime and counters (the runtime's functions are hidden
 * in libclang_rt.profile; the references here are hidden too, so even a default-visibility
 * definition binds to the module's own copy, and clang 14's default-visibility profile data is
 * made hidden the same way). A second copy of this object in one module
 * (a partial link, then the final one) stays off: the weak hidden claim below is shared.
 *
 * If the program closes our descriptors (daemons closing every fd), the lock is gone and the
 * reader takes the run as ended: the object notices (fstat against the inodes it made) and stops
 * without touching the descriptor numbers, which may belong to the program by then. Counts made
 * after the last snapshot are lost then, never counted twice.
 *
 * Test-only: PGOD_LIVE_STATS=<file> appends one line at the last snapshot: dumps (the last one
 * included), skipped, thread CPU ns spent in periodic dumps, bytes of the last snapshot, pid, the
 * live file's name (benchmarks/live_runtime.py reads it).
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
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef F_OFD_SETLK
#define F_OFD_SETLK 37
#endif
#ifndef PGOD_LIVE_DEFAULT_INTERVAL_S
#define PGOD_LIVE_DEFAULT_INTERVAL_S 60
#endif

#define HIDDEN __attribute__((visibility("hidden")))
#define HIDDEN_WEAK __attribute__((weak, visibility("hidden")))

/* The runtime's API (compiler-rt/lib/profile), present in clang 14 to 19. Counters are char* since 14. */
extern int __llvm_profile_write_file(void) HIDDEN_WEAK;
extern void __llvm_profile_set_filename(const char *) HIDDEN_WEAK;
extern void __llvm_profile_set_file_object(FILE *, int) HIDDEN_WEAK;
extern char *__llvm_profile_begin_counters(void) HIDDEN_WEAK;
extern char *__llvm_profile_end_counters(void) HIDDEN_WEAK;
extern void __llvm_profile_reset_counters(void) HIDDEN_WEAK;
extern int __llvm_profile_register_write_file_atexit(void) HIDDEN_WEAK;
extern int __llvm_profile_is_continuous_mode_enabled(void) HIDDEN_WEAK;
/* The pattern baked in by -fprofile-instrument-path (empty without one). */
extern const char __llvm_profile_filename[] HIDDEN_WEAK;

/* Data clang 14's compiler and runtime define with default visibility: an executable exports them
 * when a library defines them too, and the library's runtime then uses the executable's copy (a
 * library built by another clang would write the executable's raw version into its header). A
 * hidden reference makes the module's own definition hidden (the most constraining visibility of
 * a symbol wins at link time); only the addresses are taken. */
extern const char __llvm_profile_raw_version[] HIDDEN_WEAK;
extern const char lprofDirMode[] HIDDEN_WEAK;
extern const char __llvm_profile_counter_bias_default[] HIDDEN_WEAK;
__attribute__((used)) static const void *const live_hidden_refs[] = {__llvm_profile_raw_version, lprofDirMode,
                                                                      __llvm_profile_counter_bias_default, __llvm_profile_filename};

/* One live copy per module, whatever links it twice. */
HIDDEN_WEAK int pgod_live_module_claimed;

static pthread_mutex_t live_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_wake;
static pthread_t live_thread;
static int live_on;        /* this process's run is live (the runtime points at /dev/null) */
static int live_thread_up; /* live_thread runs */
static int live_stop;
static unsigned live_interval_s = PGOD_LIVE_DEFAULT_INTERVAL_S;
static int live_dir = -1; /* the folder, O_PATH */
static int live_fd = -1;  /* the inode at the name, locked; -1: no snapshot published yet */
static dev_t live_dir_dev, live_fd_dev;
static ino_t live_dir_ino, live_fd_ino;
static char live_name[80], live_tmp[80]; /* relative to live_dir */
static char live_folder[3072];           /* as given, for the statistics line */
static char live_fallback[3100];         /* the runtime's exit write if the last snapshot fails */
static uint64_t live_last_sum;
static int live_have_sum;
static unsigned long live_dumps, live_skipped;
static uint64_t live_dump_cpu_ns;
static long long live_bytes;
static const char *live_stats; /* PGOD_LIVE_STATS, test-only */

static uint64_t counter_sum(void) {
  const char *begin = __llvm_profile_begin_counters(), *end = __llvm_profile_end_counters();
  uint64_t sum = 0;
  if (!begin || !end) return 0;
  for (const volatile uint64_t *c = (const volatile uint64_t *)begin; (const char *)(c + 1) <= end; c++)
    sum += *c;
  return sum;
}

static uint64_t thread_cpu_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int lock_whole(int fd) {
  struct flock l;
  memset(&l, 0, sizeof l); /* l_pid must be 0 for OFD locks */
  l.l_type = F_WRLCK;
  l.l_whence = SEEK_SET;
  return fcntl(fd, F_OFD_SETLK, &l);
}

/* Is fd still the inode we made (the program may have closed it and reused the number)? */
static int still_ours(int fd, dev_t dev, ino_t ino) {
  struct stat st;
  return fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

/* A fresh name for this process's run: 128 random bits (never blocking: early boot falls back to
 * clocks and addresses, which only need to be unique). */
static void new_names(void) {
  uint64_t r[2];
  if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
    struct timespec a, b;
    clock_gettime(CLOCK_REALTIME, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    uint64_t x = (uint64_t)a.tv_sec * 1000000000u + (uint64_t)a.tv_nsec, y = (uint64_t)b.tv_nsec ^ (uint64_t)(uintptr_t)&a;
    for (int i = 0; i < 2; i++) { /* splitmix64 */
      x += 0x9e3779b97f4a7c15u + y + (uint64_t)getpid();
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
      r[i] = z ^ (z >> 31);
    }
  }
  int pid = (int)getpid();
  snprintf(live_name, sizeof live_name, "live-%d-%016llx%016llx.profraw", pid, (unsigned long long)r[0], (unsigned long long)r[1]);
  snprintf(live_tmp, sizeof live_tmp, ".live-%d-%016llx%016llx.tmp", pid, (unsigned long long)r[0], (unsigned long long)r[1]);
}

/* The process stops reporting: our descriptors are not ours any more (closed by the program), or
 * a snapshot cannot be made at all. The runtime stays at /dev/null: the reader has counted, or
 * will count, the last snapshot; an exit write on top would count it twice. */
static void live_give_up(void) {
  live_on = 0;
  live_fd = -1;
  live_dir = -1;
}

/* One snapshot, the mutex held. force: write even when no counter moved (the last one).
 * 0: published (or nothing to do); -1: not published, the previous snapshot stands. */
static int live_snapshot(int force) {
  if (!still_ours(live_dir, live_dir_dev, live_dir_ino) || (live_fd >= 0 && !still_ours(live_fd, live_fd_dev, live_fd_ino))) {
    live_give_up();
    return -1;
  }
  if (__llvm_profile_is_continuous_mode_enabled && __llvm_profile_is_continuous_mode_enabled()) return -1;
  uint64_t sum = counter_sum();
  /* unchanged: nothing to write; at the end too when the name was never published (a fork child
   * that ran no code of this module leaves nothing behind) */
  if ((!force || live_fd < 0) && live_have_sum && sum == live_last_sum) {
    live_skipped++;
    return 0;
  }
  int fd = openat(live_dir, live_tmp, O_CREAT | O_EXCL | O_NOFOLLOW | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EEXIST && unlinkat(live_dir, live_tmp, 0) == 0) /* a leftover of a failed attempt */
    fd = openat(live_dir, live_tmp, O_CREAT | O_EXCL | O_NOFOLLOW | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  struct stat st;
  FILE *out = NULL;
  int writer = -1;
  if (lock_whole(fd) != 0 || fstat(fd, &st) != 0) goto failed;
  writer = fcntl(fd, F_DUPFD_CLOEXEC, 0); /* the FILE closes its own descriptor, never the locked one */
  if (writer < 0 || !(out = fdopen(writer, "wb"))) goto failed;
  writer = -1;
  __llvm_profile_set_file_object(out, 0);
  int bad = __llvm_profile_write_file();
  __llvm_profile_set_file_object(NULL, 0);
  bad |= fclose(out);
  out = NULL;
  if (bad || renameat(live_dir, live_tmp, live_dir, live_name) != 0) goto failed;
  if (live_fd >= 0) close(live_fd); /* releases the previous inode's lock */
  live_fd = fd;
  live_fd_dev = st.st_dev;
  live_fd_ino = st.st_ino;
  if (live_stats && fstat(fd, &st) == 0) live_bytes = (long long)st.st_size;
  live_last_sum = sum;
  live_have_sum = 1;
  live_dumps++;
  return 0;
failed:
  if (out) fclose(out);
  if (writer >= 0) close(writer);
  close(fd);
  unlinkat(live_dir, live_tmp, 0);
  return -1;
}

static void *live_main(void *unused) {
  (void)unused;
  prctl(PR_SET_NAME, "pgod-live"); /* its own name, one syscall (naming it from outside opens /proc) */
  pthread_mutex_lock(&live_mutex);
  while (!live_stop && live_on) {
    struct timespec due;
    clock_gettime(CLOCK_MONOTONIC, &due);
    due.tv_sec += live_interval_s;
    while (!live_stop && pthread_cond_timedwait(&live_wake, &live_mutex, &due) != ETIMEDOUT) {
    }
    if (live_stop || !live_on) break;
    uint64_t began = thread_cpu_ns();
    live_snapshot(0);
    live_dump_cpu_ns += thread_cpu_ns() - began;
  }
  pthread_mutex_unlock(&live_mutex);
  return NULL;
}

/* The dumper thread, all signals blocked from its first instruction (it takes none of the
 * program's), a small stack. Cheap enough for every fork child: glibc >= 2.32 starts it with the
 * mask given (no mask switching here), stacks come from glibc's cache. */
static void start_thread(void) {
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&live_wake, &ca);
  pthread_condattr_destroy(&ca);
  live_stop = 0;
  pthread_attr_t ta;
  pthread_attr_init(&ta);
  pthread_attr_setstacksize(&ta, 256 * 1024);
  sigset_t all;
  sigfillset(&all);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  pthread_attr_setsigmask_np(&ta, &all);
  live_thread_up = pthread_create(&live_thread, &ta, live_main, NULL) == 0;
#else
  sigset_t old;
  pthread_sigmask(SIG_SETMASK, &all, &old);
  live_thread_up = pthread_create(&live_thread, &ta, live_main, NULL) == 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
#endif
  pthread_attr_destroy(&ta);
  /* without a thread the run still gets its last snapshot at exit */
}

static void write_stats(void) {
  if (!live_stats) return;
  FILE *f = fopen(live_stats, "ae");
  if (!f) return;
  fprintf(f, "dumps=%lu skipped=%lu dump_cpu_ns=%llu bytes=%lld pid=%d file=%s/%s\n", live_dumps, live_skipped,
          (unsigned long long)live_dump_cpu_ns, live_bytes, (int)getpid(), live_folder, live_name);
  fclose(f);
}

static void live_exit(void) {
  pthread_mutex_lock(&live_mutex);
  int up = live_thread_up;
  live_stop = 1;
  live_thread_up = 0;
  if (up) pthread_cond_signal(&live_wake);
  pthread_mutex_unlock(&live_mutex);
  if (up) pthread_join(live_thread, NULL);
  pthread_mutex_lock(&live_mutex);
  if (live_on) {
    if (live_snapshot(1) != 0 && live_on) {
      /* the runtime's own exit write, to the program's own pattern, as without this object; only
       * when nothing was published, else it would hold the published counts a second time */
      if (live_dumps == 0) __llvm_profile_set_filename(live_fallback);
    }
    live_on = 0;
    write_stats();
    /* the run ends here: at exit a moment early, at dlclose of a library (which runs its atexit
     * handlers) while the process goes on, so nothing of the unloaded module stays open */
    if (live_fd >= 0 && still_ours(live_fd, live_fd_dev, live_fd_ino)) close(live_fd);
    if (live_dir >= 0 && still_ours(live_dir, live_dir_dev, live_dir_ino)) close(live_dir);
    live_fd = live_dir = -1;
  }
  pthread_mutex_unlock(&live_mutex);
}

static void live_prepare(void) { pthread_mutex_lock(&live_mutex); }

static void live_parent(void) { pthread_mutex_unlock(&live_mutex); }

static void live_child(void) {
  pthread_mutex_init(&live_mutex, NULL);
  live_thread_up = 0; /* the parent's thread is not here */
  if (!live_on) return;
  if (live_fd >= 0) {
    if (!still_ours(live_fd, live_fd_dev, live_fd_ino)) {
      live_give_up();
      return;
    }
    close(live_fd); /* our copy of the parent's descriptor: the lock stays the parent's */
    live_fd = -1;
  }
  __llvm_profile_reset_counters(); /* one thread here: nothing races the reset */
  live_last_sum = 0; /* all reset: skip until this process counts something */
  live_have_sum = 1;
  live_dumps = live_skipped = 0;
  live_dump_cpu_ns = 0;
  live_bytes = 0;
  new_names(); /* the name appears with the child's first snapshot */
  start_thread();
}

/* The folder of the file pattern and the runtime's fallback pattern; -1: leave the runtime alone. */
static int live_folder_of(const char *pattern) {
  size_t n = strlen(pattern);
  if (n == 0 || n >= sizeof live_folder - 1 || strcmp(pattern, "/dev/null") == 0) return -1;
  if (strstr(pattern, "%c")) return -1; /* continuous mode: the runtime's own mapped file */
  struct stat st;
  if (stat(pattern, &st) == 0 && S_ISDIR(st.st_mode)) { /* a folder: its %p name is the fallback */
    memcpy(live_folder, pattern, n + 1);
    snprintf(live_fallback, sizeof live_fallback, "%s/%%p.profraw", pattern);
    return 0;
  }
  const char *slash = strrchr(pattern, '/');
  const char *base = slash ? slash + 1 : pattern;
  if (!strstr(base, "%p")) return -1; /* one name for every process: the runtime's business */
  if (!slash) {
    strcpy(live_folder, ".");
  } else if (slash == pattern) {
    strcpy(live_folder, "/");
  } else {
    memcpy(live_folder, pattern, (size_t)(slash - pattern));
    live_folder[slash - pattern] = 0;
  }
  if (strchr(live_folder, '%')) return -1; /* a folder per %-expansion: the runtime's business */
  memcpy(live_fallback, pattern, n + 1);
  return 0;
}

__attribute__((constructor(101))) static void live_start(void) {
  if (!__llvm_profile_write_file || !__llvm_profile_set_filename || !__llvm_profile_set_file_object ||
      !__llvm_profile_begin_counters || !__llvm_profile_end_counters || !__llvm_profile_reset_counters ||
      !__llvm_profile_register_write_file_atexit)
    return; /* no profile runtime in this module */
  if (pgod_live_module_claimed) return;
  pgod_live_module_claimed = 1;
  const char *interval = getenv("PGOD_LIVE_INTERVAL_S");
  if (interval && *interval) {
    char *end;
    errno = 0;
    unsigned long d = strtoul(interval, &end, 10);
    if (*end == 0 && errno == 0 && d == 0) return; /* off */
    if (*end == 0 && errno == 0 && d <= 86400 * 366) live_interval_s = (unsigned)d;
  }
  live_stats = getenv("PGOD_LIVE_STATS");
  if (live_stats && !*live_stats) live_stats = NULL;
  const char *env = getenv("LLVM_PROFILE_FILE");
  const char *pattern = env && *env ? env : (__llvm_profile_filename ? __llvm_profile_filename : "");
  if (live_folder_of(pattern) != 0) return;
  struct stat st;
  live_dir = open(live_folder, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (live_dir < 0) return;
  if (fstat(live_dir, &st) != 0) goto off;
  live_dir_dev = st.st_dev;
  live_dir_ino = st.st_ino;
  /* The name appears with the first snapshot (periodic, or at exit), not now: a short program
   * then pays for one file, at its exit, as without this object, and nothing at its start but the
   * thread (measured: benchmarks/live_runtime --fork-loop, the exit and exec rows). */
  new_names();
  live_last_sum = counter_sum(); /* nothing ran yet (constructors of instrumented code may have) */
  live_have_sum = 1;
  __llvm_profile_set_filename("/dev/null");
  /* the runtime's atexit write first, ours after it: ours runs first (LIFO) */
  __llvm_profile_register_write_file_atexit();
  if (atexit(live_exit) != 0 || pthread_atfork(live_prepare, live_parent, live_child) != 0) {
    /* cannot end the run properly: back to the runtime's exit write */
    __llvm_profile_set_filename(live_fallback);
    goto off;
  }
  live_on = 1;
  start_thread();
  return;
off:
  close(live_dir);
  live_dir = -1;
}
