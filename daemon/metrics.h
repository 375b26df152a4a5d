/*  metrics: Prometheus text exposition (format 0.0.4) over HTTP, served
    by libmicrohttpd inside the main loop.

    `--metrics ADDR:PORT` (ADDR defaults to 127.0.0.1) opens a listening
    TCP socket; libmicrohttpd runs in its external epoll mode. One epoll
    descriptor of ours (the listening socket, the guard's connections,
    libmicrohttpd's own epoll descriptor) sits in the main loop's zmq_poll
    next to the ZeroMQ sockets, and metrics_handle accepts, guards and
    runs MHD_run when it is ready. The daemon stays single-threaded: the exposition is rendered
    from the live state by the thread that owns it, with no lock and no
    copy, and a scrape reads the same state as the `drift` query.

    What keeps a hostile client from stalling anything: every socket is
    non-blocking. A connection first sits with a small guard here, which
    only peeks at what it sent, until its request head is complete (then
    it goes to libmicrohttpd, which parses it in a fixed 8 KiB pool and
    answers), holds a NUL byte (answered 400 at once: libmicrohttpd 0.9.75
    would read the line or value only up to the NUL), or outgrows 8 KiB
    (answered 431). A connection gets `timeout` to send
    its whole request and ten times that to take the answer: a slowloris
    trickling bytes is cut at the deadline, not kept alive by them. At
    most `max_conns` connections are open (further ones wait in the
    kernel's listen queue until a slot frees) and at most `max_per_ip`
    from one address (further ones are refused at once). Renders are
    rate-limited: a flood of scrapes shares one rendering. Refusals,
    timeouts and bad requests are counted, exported, and logged through
    the rate limiter.  */
#ifndef XPLD_METRICS_H
#define XPLD_METRICS_H

#include "config.h"
#include "global.h"
#include "models.h"
#include "stats.h"

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct MHD_Daemon;
struct MHD_Response;

/* Poll items metrics_poll_items adds at most. */
#define METRICS_POLL_ITEMS 1

/* HTTP status codes counted by xplaind_metrics_requests_total. */
#define METRICS_CODES 6

typedef struct metrics_t metrics_t;

/* What an exposition is rendered from: the owners' state, read only,
   through pointers, so every rendering sees it as it is then. */
typedef struct {
    stats_view_t counters;      /* the daemon-wide counters (stats.h); the cache
                                   owner's bytes are the cache_bytes gauge */
    const models_t *models;
    const global_t *global;
    const metrics_t *metrics;   /* the endpoint's own counters */
    uint32_t top_features;      /* metrics.top_features */
} metrics_view_t;

/* One HTTP connection (a slot of metrics_t.conns): first the guard's
   (until its request head is in), then libmicrohttpd's. */
typedef enum { MC_FREE = 0, MC_PENDING, MC_HANDING, MC_MHD } metrics_conn_state_t;

typedef struct {
    metrics_conn_state_t state;
    bool requested;         /* its request arrived: the deadline is for the answer */
    bool expired;           /* past its deadline, shutdown sent */
    int fd;
    struct sockaddr_in addr;
    int64_t deadline;       /* monotonic ns */
} metrics_conn_t;

struct metrics_t {
    struct MHD_Daemon *mhd;     /* NULL: metrics off */
    int epoll_fd;               /* polled by the main loop: the listening socket, the
                                   guard's connections, libmicrohttpd's epoll */
    int listen_fd;
    bool listening;             /* listen_fd in epoll_fd (not while every slot is taken) */
    uint32_t max_conns, max_per_ip;
    int64_t timeout_ns;
    metrics_conn_t *conns;      /* [max_conns] */
    uint32_t nconns;
    int64_t next_sweep;         /* earliest deadline (monotonic ns), 0: none */

    /* Last rendering, shared by the scrapes it answers (refcounted by
       libmicrohttpd), and the render budget (token bucket). */
    struct MHD_Response *last;
    double tokens;
    int64_t tokens_ns;

    uint64_t requests[METRICS_CODES];   /* by status code, see metrics.c */
    uint64_t renders, reused;
    uint64_t refused_per_ip;
    uint64_t limit_reached;     /* times every slot was taken */
    uint64_t timed_out;
    uint64_t closed_early;      /* client went away before its answer was complete */

    metrics_view_t view;        /* what a scrape renders (metrics_init) */
};

/* Listen on cfg->metrics ("ADDR:PORT" or "PORT"; empty: off) with the
   limits of cfg, and answer scrapes with renderings of *view (copied;
   what it points to must outlive m; its .metrics is set to m). Returns 0,
   or -1 with the reason logged. */
int metrics_init(metrics_t *m, const config_t *cfg, const metrics_view_t *view);
void metrics_destroy(metrics_t *m);

/* Fill ZeroMQ poll items (at most METRICS_POLL_ITEMS); returns how many
   were written. */
int metrics_poll_items(metrics_t *m, void *items);

/* Milliseconds until metrics_handle must run even with nothing ready
   (connection deadlines, data libmicrohttpd already holds), -1: none. */
long metrics_timeout_ms(metrics_t *m, int64_t now);

/* After a poll: let libmicrohttpd read, answer and close, and cut the
   connections past their deadline. Call every loop turn. */
void metrics_handle(metrics_t *m, const void *items, int count);

/* Render the exposition text into a malloc'ed buffer (caller frees);
   NULL when out of memory. */
char *metrics_render_view(const metrics_view_t *v, size_t *len);

#endif
