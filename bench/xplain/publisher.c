/*  publisher: the driver's side of the ingest stream, pre-encoded bodies
    sent zero-copy from a ring.  */
#define _GNU_SOURCE
#include "bench_xplain.h"

#include <errno.h>
#include <unistd.h>
#include <zmq.h>

static void
s_ring_free(void *data, void *hint)
{
    (void)data;
    *(_Atomic int *)hint = 0;
}

void
ring_make(ring_t *r, const wmsg_t *m)
{
    size_t per = m->body.size;
    r->n = (uint32_t)(((size_t)64 << 20) / per);
    r->n = r->n < 4 ? 4 : r->n > 64 ? 64 : r->n;
    r->slots = calloc(r->n, sizeof *r->slots);
    r->busy = calloc(r->n, sizeof *r->busy);
    for (uint32_t k = 0; k < r->n; k++) {
        r->slots[k] = *m;
        r->slots[k].body.data = malloc(per);
        memcpy(r->slots[k].body.data, m->body.data, per);
    }
    r->next = 0;
}

void
ring_free(ring_t *r)
{
    for (uint32_t k = 0; k < r->n; k++)
        while (r->busy[k])
            usleep(1000);
    for (uint32_t k = 0; k < r->n; k++)
        free(r->slots[k].body.data);
    free(r->slots);
    free((void *)r->busy);
}

/* A free slot to patch (waits for ZeroMQ to release one). */
wmsg_t *
ring_get(ring_t *r, int *slot)
{
    for (;;) {
        for (uint32_t t = 0; t < r->n; t++) {
            uint32_t k = (r->next + t) % r->n;
            if (!r->busy[k]) {
                r->next = (k + 1) % r->n;
                *slot = (int)k;
                return &r->slots[k];
            }
        }
        usleep(10);
    }
}

int
ring_send(void *pub, ring_t *r, int slot)
{
    wmsg_t *m = &r->slots[slot];
    for (;;) {
        if (zmq_send(pub, m->topic, m->topic_len, ZMQ_SNDMORE) >= 0)
            break;
        if (errno != EAGAIN && errno != EINTR)
            return -1;
        usleep(20);
    }
    zmq_msg_t msg;
    r->busy[slot] = 1;
    zmq_msg_init_data(&msg, m->body.data, m->body.size, s_ring_free, (void *)&r->busy[slot]);
    while (zmq_msg_send(&msg, pub, 0) < 0)
        if (errno != EAGAIN && errno != EINTR) {
            zmq_msg_close(&msg);
            return -1;
        }
    return 0;
}
