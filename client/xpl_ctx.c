/*  xpl_ctx: one ZeroMQ context per process, shared by every libxplain
    object. The first object creates it and the last one terminates it,
    so a program that destroys its objects leaves no thread or memory
    behind (and a program that never uses the library pays nothing).  */
#include "xpl_private.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <zmq.h>

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static void *s_ctx;
static unsigned s_users;

void *
xpl_ctx_acquire(void)
{
    pthread_mutex_lock(&s_lock);
    if (!s_ctx) {
        s_ctx = zmq_ctx_new();
        if (!s_ctx) {
            pthread_mutex_unlock(&s_lock);
            xpl_fail_zmq("zmq_ctx_new");
            return NULL;
        }
    }
    s_users++;
    void *ctx = s_ctx;
    pthread_mutex_unlock(&s_lock);
    return ctx;
}

void
xpl_ctx_release(void)
{
    pthread_mutex_lock(&s_lock);
    if (s_users > 0 && --s_users == 0) {
        /* Every socket of ours is closed by now, so this only waits for
           the linger of messages still being sent. */
        zmq_ctx_term(s_ctx);
        s_ctx = NULL;
    }
    pthread_mutex_unlock(&s_lock);
}

static atomic_uint_fast64_t s_endpoints;

void
xpl_inproc_endpoint(char *ep, size_t size, const char *what)
{
    uint64_t n = (uint64_t)atomic_fetch_add(&s_endpoints, 1);
    snprintf(ep, size, "inproc://xpl-%s-%" PRIu64, what, n);
}

/* How long a socket is waited for while the context is full: the reaper
   needs milliseconds, this leaves room for a loaded machine. */
#define S_FULL_WAIT_MS 5000

static void
s_nap(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void *
xpl_socket(void *ctx, int type)
{
    int64_t deadline = xpl_now_ms() + S_FULL_WAIT_MS;
    long nap = 1;
    void *sock;
    while (!(sock = zmq_socket(ctx, type)) && zmq_errno() == EMFILE && xpl_now_ms() < deadline) {
        s_nap(nap);
        nap = nap < 32 ? nap * 2 : nap;
    }
    return sock;
}

int
xpl_socket_monitor(void *sock, const char *ep, int events)
{
    int64_t deadline = xpl_now_ms() + S_FULL_WAIT_MS;
    long nap = 1;
    int rc;
    while ((rc = zmq_socket_monitor(sock, ep, events)) && zmq_errno() == EMFILE
           && xpl_now_ms() < deadline) {
        s_nap(nap);
        nap = nap < 32 ? nap * 2 : nap;
    }
    return rc;
}

int64_t
xpl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
