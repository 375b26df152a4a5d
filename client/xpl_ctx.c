/*  xpl_ctx: one ZeroMQ context per process, shared by every libxplain
    object. The first object creates it and the last one terminates it,
    so a program that destroys its objects leaves no thread or memory
    behind (and a program that never uses the library pays nothing).  */
#include "xpl_private.h"

#include <pthread.h>
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

int64_t
xpl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
