// How far apart two cores are: two threads, pinned one to each, pass a counter back and forth
// through one cache line, and the mean round trip is returned in nanoseconds. Two cores under one
// L3 cache pass the line in tens of nanoseconds; cores of different L3 caches (another CCD of an
// AMD EPYC, or another socket) take several times as long. On a virtual machine the host chooses
// where the guest's cores run, and may change it while a benchmark runs: docs/benchmarks.md, "The
// machine's two paces". Built and loaded by benchmarks/throughput.py through
// minibert/machinery/c_library.py.
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

static _Atomic long counter __attribute__((aligned(64)));  // the cache line the cores pass
static _Atomic int ready, failed;  // threads pinned so far; whether one could not be

struct player {
    int cpu, first;  // first: the thread that starts each round trip
    long rounds;
    double seconds;
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void *play(void *arg) {
    struct player *p = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(p->cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) atomic_store(&failed, 1);
    atomic_fetch_add(&ready, 1);
    while (atomic_load(&ready) < 2) {}  // both pinned before the first round trip
    if (atomic_load(&failed)) return NULL;
    double start = now();
    for (long i = 0; i < p->rounds; i++) {
        if (p->first) {  // round trip i: the first thread writes 2i + 1, the other answers 2i + 2
            atomic_store_explicit(&counter, 2 * i + 1, memory_order_release);
            while (atomic_load_explicit(&counter, memory_order_acquire) != 2 * i + 2) {}
        } else {
            while (atomic_load_explicit(&counter, memory_order_acquire) != 2 * i + 1) {}
            atomic_store_explicit(&counter, 2 * i + 2, memory_order_release);
        }
    }
    p->seconds = now() - start;
    return NULL;
}

// The mean round trip between cores cpu_a and cpu_b over `rounds` round trips, in nanoseconds;
// -1 where a thread cannot be started or pinned. The calling thread is not pinned: it only waits.
double core_round_trip_ns(int cpu_a, int cpu_b, long rounds) {
    struct player a = {cpu_a, 1, rounds, 0}, b = {cpu_b, 0, rounds, 0};
    pthread_t ta, tb;
    atomic_store(&counter, 0);
    atomic_store(&ready, 0);
    atomic_store(&failed, 0);
    if (pthread_create(&tb, NULL, play, &b) != 0) return -1;
    if (pthread_create(&ta, NULL, play, &a) != 0) {
        atomic_store(&failed, 1);  // releases the other thread, which returns without playing
        atomic_fetch_add(&ready, 1);
        pthread_join(tb, NULL);
        return -1;
    }
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    return atomic_load(&failed) ? -1 : 1e9 * a.seconds / rounds;
}
