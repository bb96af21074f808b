/* A work pool in which the caller never waits for a thread that has not started.
 *
 * Why not an OpenMP parallel region: a region ends at a barrier that waits
 * for every thread of the team. When other processes keep the cores busy, a
 * helper thread may not be scheduled for several milliseconds; the caller
 * then spins at the barrier (holding a core the helper needs) and a call
 * that takes 0.5 ms alone took 15-19 ms (measured with two neighbour
 * processes looping fastxent on 2 cores). OMP_WAIT_POLICY=passive cures
 * that but costs ~30 us per region on a quiet machine.
 *
 * Here a call is cut into chunks that the caller and the helpers claim from
 * one atomic counter. The caller starts on the first chunk at once and keeps
 * claiming; a helper that wakes late finds nothing left and goes back to
 * sleep. The caller waits only for chunks a helper has already claimed.
 * Helpers spin briefly after each job (so back-to-back calls start fast),
 * then sleep on a condition variable. Which thread runs a chunk never
 * changes the result: chunks are fixed by the unit index alone and units
 * are independent.
 *
 * One job at a time: a second thread calling while the pool is busy runs its
 * job alone. A forked child never uses the pool (its threads do not exist
 * there); the Cython side already runs forked children serially.
 */
#ifndef FX_POOL_H
#define FX_POOL_H

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <Python.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FX_PAUSE() _mm_pause()
#else
#define FX_PAUSE() ((void)0)
#endif

/* A task runs units [first, last) and returns nonzero on failure (no memory). */
typedef int (*fx_task)(void *context, Py_ssize_t first, Py_ssize_t last);

#define FX_POOL_MAX_HELPERS 255
/* Spins (each a pause) a helper waits for the next job before it sleeps:
 * tens of microseconds, enough for back-to-back calls, little CPU when idle. */
#define FX_POOL_SPINS 20000

typedef struct {
    pthread_mutex_t lock;      /* guards sleeping and started */
    pthread_cond_t wake;
    pthread_mutex_t busy;      /* held by the caller whose job is running */
    int started;               /* helpers created */
    int sleeping;              /* helpers waiting on `wake` */
    /* The job: written by the caller before it publishes `ticket`. */
    fx_task task;
    void *context;
    Py_ssize_t units, chunk, chunks;
    int helpers_wanted;        /* helpers 0..helpers_wanted-1 may join */
    uint64_t ticket;           /* (generation << 32) | next chunk to claim */
    Py_ssize_t done;           /* chunks finished */
    int failed;
} fx_pool_t;

static fx_pool_t fx_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER};

/* Claim and run chunks of generation `generation` until none is left. */
static void fx_pool_work(uint64_t generation) {
    for (;;) {
        uint64_t ticket = __atomic_load_n(&fx_pool.ticket, __ATOMIC_ACQUIRE);
        if ((ticket >> 32) != generation) return;
        Py_ssize_t chunk = (Py_ssize_t)(ticket & 0xffffffffu);
        if (chunk >= __atomic_load_n(&fx_pool.chunks, __ATOMIC_RELAXED)) return;
        if (!__atomic_compare_exchange_n(&fx_pool.ticket, &ticket, ticket + 1, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue;
        /* The claim succeeded for this generation: the job's fields are this generation's. */
        Py_ssize_t first = chunk * fx_pool.chunk;
        Py_ssize_t last = first + fx_pool.chunk < fx_pool.units ? first + fx_pool.chunk : fx_pool.units;
        if (fx_pool.task(fx_pool.context, first, last)) __atomic_store_n(&fx_pool.failed, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&fx_pool.done, 1, __ATOMIC_RELEASE);
    }
}

static void *fx_pool_helper(void *arg) {
    int index = (int)(intptr_t)arg;
    uint64_t seen = __atomic_load_n(&fx_pool.ticket, __ATOMIC_ACQUIRE) >> 32;
    for (;;) {
        uint64_t generation = seen;
        for (int spin = 0; spin < FX_POOL_SPINS; spin++) {
            generation = __atomic_load_n(&fx_pool.ticket, __ATOMIC_ACQUIRE) >> 32;
            if (generation != seen) break;
            FX_PAUSE();
        }
        if (generation == seen) {
            pthread_mutex_lock(&fx_pool.lock);
            __atomic_add_fetch(&fx_pool.sleeping, 1, __ATOMIC_SEQ_CST);
            while ((generation = __atomic_load_n(&fx_pool.ticket, __ATOMIC_SEQ_CST) >> 32) == seen)
                pthread_cond_wait(&fx_pool.wake, &fx_pool.lock);
            __atomic_sub_fetch(&fx_pool.sleeping, 1, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&fx_pool.lock);
        }
        seen = generation;
        if (index < __atomic_load_n(&fx_pool.helpers_wanted, __ATOMIC_ACQUIRE)) fx_pool_work(generation);
    }
    return NULL;
}

/* Start helpers until there are `wanted` (or as many as could be created). */
static void fx_pool_grow(int wanted) {
    if (wanted > FX_POOL_MAX_HELPERS) wanted = FX_POOL_MAX_HELPERS;
    if (__atomic_load_n(&fx_pool.started, __ATOMIC_ACQUIRE) >= wanted) return;
    pthread_mutex_lock(&fx_pool.lock);
    while (fx_pool.started < wanted) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&thread, &attr, fx_pool_helper, (void *)(intptr_t)fx_pool.started);
        pthread_attr_destroy(&attr);
        if (failed) break; /* fewer helpers: the caller does their share */
        __atomic_add_fetch(&fx_pool.started, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&fx_pool.lock);
}

/* Run task over units [0, units) in chunks of `chunk` units on up to `threads`
 * threads (the caller included). Returns nonzero if any chunk failed. */
static int fx_pool_run(int threads, Py_ssize_t units, Py_ssize_t chunk, fx_task task, void *context) {
    Py_ssize_t chunks = chunk > 0 ? (units + chunk - 1) / chunk : 1;
    if (threads <= 1 || chunks <= 1 || chunks > 0xffffffffLL || pthread_mutex_trylock(&fx_pool.busy) != 0)
        return task(context, 0, units);
    fx_pool_grow(threads - 1);
    fx_pool.task = task;
    fx_pool.context = context;
    fx_pool.units = units;
    fx_pool.chunk = chunk;
    __atomic_store_n(&fx_pool.chunks, chunks, __ATOMIC_RELAXED);
    __atomic_store_n(&fx_pool.done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fx_pool.failed, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fx_pool.helpers_wanted, threads - 1, __ATOMIC_RELAXED);
    uint64_t generation = (__atomic_load_n(&fx_pool.ticket, __ATOMIC_RELAXED) >> 32) + 1;
    __atomic_store_n(&fx_pool.ticket, generation << 32, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&fx_pool.sleeping, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&fx_pool.lock);
        pthread_cond_broadcast(&fx_pool.wake);
        pthread_mutex_unlock(&fx_pool.lock);
    }
    fx_pool_work(generation);
    /* Every chunk is claimed; wait for those a helper is still running. */
    for (long spin = 0; __atomic_load_n(&fx_pool.done, __ATOMIC_ACQUIRE) < chunks; spin++) {
        if (spin < 4096)
            FX_PAUSE();
        else
            sched_yield(); /* a descheduled helper needs this core more than we do */
    }
    int failed = __atomic_load_n(&fx_pool.failed, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&fx_pool.busy);
    return failed;
}

#endif /* FX_POOL_H */
