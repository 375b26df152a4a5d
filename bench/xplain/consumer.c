/*  consumer: the null sink and the xpl/ subscriber, the programs the
    driver spawns as `bench_xplain sink EP HWM` and `bench_xplain sub EP
    HWM`. Each prints READY on its first message and one RESULT line at
    the END message (see bench_xplain.c for the protocol).  */
#define _GNU_SOURCE
#include "bench_xplain.h"

#include <inttypes.h>
#include <malloc.h>
#include <zmq.h>

/* Latency samples */
typedef struct {
    int64_t *v;
    size_t n, cap;
} lat_t;

static void
lat_add(lat_t *l, int64_t ns)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1 << 16;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v)
            exit(2);
    }
    l->v[l->n++] = ns;
}

static int
s_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double
lat_pct_us(const lat_t *l, double q)
{
    if (!l->n)
        return 0;
    size_t k = (size_t)(q * (double)(l->n - 1) + 0.5);
    return (double)l->v[k] / 1e3;
}

/* Walk the top-level map of a body: the sink reads "ts" and the first
   of "ids" (and their count); the subscriber "ts" and "id". Bins and
   everything else are skipped by their headers, never read. */
int
consumer_header(const void *body, size_t len, int64_t *ts, uint64_t *id0, uint32_t *count)
{
    mpr_t r;
    mpr_obj_t o, k;
    mpr_init(&r, body, len);
    if (mpr_next(&r, &o) || o.type != MPR_MAP)
        return -1;
    *count = 1;
    const uint32_t pairs = o.v.count;
    for (uint32_t p = 0; p < pairs; p++) {
        if (mpr_next(&r, &k) || k.type != MPR_STR)
            return -1;
        if (mpr_str_eq(&k, "ts")) {
            if (mpr_next(&r, &o))
                return -1;
            *ts = o.type == MPR_INT ? o.v.i : (int64_t)o.v.u;
        } else if (mpr_str_eq(&k, "id")) {
            if (mpr_next(&r, &o))
                return -1;
            *id0 = o.v.u;
        } else if (mpr_str_eq(&k, "ids")) {
            mpr_obj_t a;
            if (mpr_next(&r, &a) || a.type != MPR_ARRAY || a.v.count == 0)
                return -1;
            *count = a.v.count;
            for (uint32_t b = 0; b < a.v.count; b++) {
                if (mpr_next(&r, &o))
                    return -1;
                if (b == 0)
                    *id0 = o.v.u;
            }
        } else if (mpr_skip(&r, 32)) {
            return -1;
        }
    }
    return 0;
}

int
cmd_consume(int argc, char **argv, bool xpl)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_xplain %s EP HWM\n", xpl ? "sub" : "sink");
        return 2;
    }
    if (!getenv("XPL_SINK_PLAIN_MALLOC")) {
        /* The transport limit: keep glibc from giving every received
           message's pages back to the kernel and faulting them in again
           (ZeroMQ allocates each message; 256 KiB is above the default
           mmap threshold and trim threshold). */
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_SUB);
    int hwm = atoi(argv[1]), linger = 0, tmo = 60000;
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    zmq_setsockopt(s, ZMQ_SUBSCRIBE, xpl ? "xpl/" : "attn/", xpl ? 4 : 5);
    if (zmq_connect(s, argv[0])) {
        fprintf(stderr, "connect %s: %s\n", argv[0], zmq_strerror(errno));
        return 1;
    }
    bool ready = false, timed = false;
    uint64_t count = 0, bad = 0;
    int64_t first = 0, last = 0;
    lat_t lat = {0};
    zmq_msg_t topic, body;
    zmq_msg_init(&topic);
    zmq_msg_init(&body);
    for (;;) {
        if (zmq_msg_recv(&topic, s, 0) < 0) {
            timed = true;
            break;
        }
        if (!zmq_msg_more(&topic) || zmq_msg_recv(&body, s, 0) < 0) {
            bad++;
            continue;
        }
        int64_t now = now_wall(), ts = 0;
        uint64_t id0 = 0;
        uint32_t cnt = 1;
        if (consumer_header(zmq_msg_data(&body), zmq_msg_size(&body), &ts, &id0, &cnt)) {
            bad++;
            continue;
        }
        if (!ready) {
            printf("READY\n");
            fflush(stdout);
            ready = true;
        }
        if (id0 >= END_ID)
            break;
        if (id0 < BASE)
            continue;
        if (!count) {
            first = now;
            tmo = 5000;
            zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
        }
        last = now;
        count += cnt;
        lat_add(&lat, now - ts);
    }
    qsort(lat.v, lat.n, sizeof *lat.v, s_cmp_i64);
    printf("RESULT count=%" PRIu64 " first_ns=%" PRId64 " last_ns=%" PRId64
           " p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f bad=%" PRIu64 " timeout=%d\n",
           count, first, last, lat_pct_us(&lat, 0.5), lat_pct_us(&lat, 0.99),
           lat_pct_us(&lat, 0.999), lat.n ? (double)lat.v[lat.n - 1] / 1e3 : 0.0, bad, timed);
    fflush(stdout);
    zmq_msg_close(&topic);
    zmq_msg_close(&body);
    zmq_close(s);
    zmq_ctx_term(ctx);
    free(lat.v);
    return 0;
}
