/*  metrics: Prometheus text exposition (format 0.0.4) over HTTP.

    `--metrics ADDR:PORT` (ADDR defaults to 127.0.0.1) opens a listening
    TCP socket that the main loop polls next to its ZeroMQ sockets. Each
    connection is non-blocking and has a small fixed buffer and a
    deadline, so a slow or malicious HTTP client can neither stall ingest
    nor make the daemon allocate: GET /metrics gets the counters, anything
    else a 404 or 405, and the connection is closed after one answer.  */
#ifndef XPLD_METRICS_H
#define XPLD_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct server_t;

#define METRICS_CONNS 8

typedef struct {
    int fd;                 /* -1: free */
    int64_t deadline;       /* monotonic ns */
    size_t in;              /* request bytes read */
    char req[2048];
    char *out;              /* response being written (owned) */
    size_t out_len, out_off;
    int draining;           /* answered: read to EOF, then close */
} metrics_conn_t;

typedef struct {
    int listen_fd;          /* -1: metrics off */
    metrics_conn_t conns[METRICS_CONNS];
    uint64_t served, refused;
} metrics_t;

/* Parse "ADDR:PORT" or "PORT" and listen; -1 with the reason logged. */
int metrics_init(metrics_t *m, const char *spec);
void metrics_destroy(metrics_t *m);

/* Fill ZeroMQ poll items for the listening socket and the connections;
   returns how many were written (at most 1 + METRICS_CONNS). */
int metrics_poll_items(metrics_t *m, void *items);

/* Handle readiness on the metrics fds after a poll, and expire
   connections past their deadline. */
void metrics_handle(struct server_t *s, const void *items, int count);

/* Render the exposition text into a malloc'ed buffer (caller frees). */
char *metrics_render(struct server_t *s, size_t *len);

#endif
