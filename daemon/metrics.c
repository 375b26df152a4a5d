/*  metrics: Prometheus text format over a tiny non-blocking HTTP server.
    See metrics.h.  */
#define _GNU_SOURCE
#include "metrics.h"

#include "global.h"
#include "log.h"
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#define CONN_TIMEOUT_NS 5000000000ll

int
metrics_init(metrics_t *m, const char *spec)
{
    memset(m, 0, sizeof *m);
    m->listen_fd = -1;
    for (int k = 0; k < METRICS_CONNS; k++)
        m->conns[k].fd = -1;
    if (!spec || !spec[0])
        return 0;
    char host[64] = "127.0.0.1";
    const char *colon = strrchr(spec, ':'), *port_s = colon ? colon + 1 : spec;
    if (colon) {
        size_t hl = (size_t)(colon - spec);
        if (hl == 0 || hl >= sizeof host) {
            log_err("metrics: bad address '%s' (expected ADDR:PORT or PORT)", spec);
            return -1;
        }
        memcpy(host, spec, hl);
        host[hl] = '\0';
    }
    char *end;
    long port = strtol(port_s, &end, 10);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (*end || port < 1 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        log_err("metrics: bad address '%s' (expected IPv4ADDR:PORT or PORT)", spec);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 16)) {
        log_err("metrics: cannot listen on %s:%ld: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (ntohl(sa.sin_addr.s_addr) >> 24 != 127)
        log_warn("metrics: listening on %s, which is not a loopback address", host);
    m->listen_fd = fd;
    log_info("metrics: serving http://%s:%ld/metrics", host, port);
    return 0;
}

static void
s_close(metrics_conn_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->out);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

void
metrics_destroy(metrics_t *m)
{
    for (int k = 0; k < METRICS_CONNS; k++)
        s_close(&m->conns[k]);
    if (m->listen_fd >= 0)
        close(m->listen_fd);
    m->listen_fd = -1;
}

int
metrics_poll_items(metrics_t *m, void *items_v)
{
    zmq_pollitem_t *items = items_v;
    if (m->listen_fd < 0)
        return 0;
    int n = 0;
    items[n++] = (zmq_pollitem_t){NULL, m->listen_fd, ZMQ_POLLIN, 0};
    for (int k = 0; k < METRICS_CONNS; k++)
        if (m->conns[k].fd >= 0)
            items[n++] = (zmq_pollitem_t){NULL, m->conns[k].fd,
                                          (short)(m->conns[k].out ? ZMQ_POLLOUT : ZMQ_POLLIN), 0};
    return n;
}

/* ---- rendering ----------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} sb_t;

__attribute__((format(printf, 2, 3))) static void
s_put(sb_t *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->oom = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
}

static void
s_counter(sb_t *b, const char *name, const char *help, uint64_t v)
{
    s_put(b, "# HELP xplaind_%s %s\n# TYPE xplaind_%s counter\nxplaind_%s %llu\n", name, help, name,
          name, (unsigned long long)v);
}

static void
s_gauge(sb_t *b, const char *name, const char *help, double v)
{
    s_put(b, "# HELP xplaind_%s %s\n# TYPE xplaind_%s gauge\nxplaind_%s %.17g\n", name, help, name,
          name, v);
}

/* One counter family with a value per model. */
static void
s_model_counter(sb_t *b, server_t *s, const char *name, const char *help, size_t offset)
{
    s_put(b, "# HELP xplaind_%s %s\n# TYPE xplaind_%s counter\n", name, help, name);
    for (uint32_t k = 0; k < s->models.count; k++) {
        const model_t *md = s->models.items[k];
        uint64_t v = *(const uint64_t *)((const char *)md + offset);
        s_put(b, "xplaind_%s{model=\"%s\"} %llu\n", name, md->name, (unsigned long long)v);
    }
}

char *
metrics_render(server_t *s, size_t *len)
{
    sb_t b = {.cap = 16384};
    if (!(b.buf = malloc(b.cap)))
        return NULL;
    const stats_t *st = &s->stats;
    s_put(&b, "# HELP xplaind_build_info Version of the running daemon.\n"
              "# TYPE xplaind_build_info gauge\nxplaind_build_info{version=\"%s\"} 1\n", XPL_VERSION);
    s_gauge(&b, "uptime_seconds", "Seconds since the daemon started.",
            (double)(now_mono_ns() - st->start_ns) / 1e9);
    s_gauge(&b, "models", "Models tracked.", s->models.count);
    s_counter(&b, "received_messages_total", "Ingest messages received.", st->received);
    s_counter(&b, "received_trades_total", "Trades in ingest messages that decoded.", st->received_trades);
    s_counter(&b, "explained_trades_total", "Trades explained and published.", st->explained);
    s_counter(&b, "published_messages_total", "Messages sent on the PUB socket.", st->published);
    s_counter(&b, "dropped_messages_total", "PUB sends refused by ZeroMQ.", st->dropped);
    s_counter(&b, "lost_messages_total", "Ingest messages missing from publisher seq gaps.", st->lost);
    s_counter(&b, "publisher_restarts_total", "Publisher restarts (seq went back).", st->restarts);
    s_put(&b, "# HELP xplaind_rejected_total Ingest messages (or trades, for nonfinite) rejected, "
              "by reason.\n# TYPE xplaind_rejected_total counter\n");
    for (int r = 1; r < XR_NREASONS; r++)
        s_put(&b, "xplaind_rejected_total{reason=\"%s\"} %llu\n", xr_reason_name((xr_reason_t)r),
              (unsigned long long)st->rejected[r]);
    s_counter(&b, "queries_total", "Queries answered.", st->queries);
    s_counter(&b, "query_errors_total", "Queries answered with ok: false.", st->query_errors);
    s_counter(&b, "query_dropped_total", "Queries that could not be answered.", st->query_dropped);
    s_counter(&b, "query_too_large_total", "Queries over query.max_size (answered bad_request).",
              st->query_too_large);
    s_counter(&b, "snapshots_total", "State snapshots written.", st->snapshots);
    s_counter(&b, "snapshot_errors_total", "State snapshots that failed.", st->snapshot_errors);
    s_counter(&b, "auth_admitted_total", "CURVE peers admitted by the ZAP handler.", s->auth.admitted);
    s_counter(&b, "auth_refused_total", "CURVE peers refused, every kind.", s->auth.refused);
    s_put(&b, "# HELP xplaind_auth_handshake_failures_total CURVE handshakes that failed, by kind "
              "(incomplete: connection lost during the handshake).\n"
              "# TYPE xplaind_auth_handshake_failures_total counter\n");
    for (int k = 0; k < 5; k++)
        s_put(&b, "xplaind_auth_handshake_failures_total{kind=\"%s\"} %llu\n", auth_kind_names[k],
              (unsigned long long)s->auth.by_kind[k]);
    s_gauge(&b, "cache_bytes", "Bytes held by the recent-trade cache.", (double)s->cache.bytes);
    s_counter(&b, "metrics_requests_total", "HTTP requests served on this endpoint.", s->metrics.served);

    s_put(&b, "# HELP xplaind_latency_seconds Time from the ingest socket's receipt of a message "
              "(at most: from when it was last seen empty) to having published a trade's explanation.\n# TYPE xplaind_latency_seconds histogram\n");
    for (int k = 0; k < STATS_LE_COUNT; k++)
        s_put(&b, "xplaind_latency_seconds_bucket{le=\"%g\"} %llu\n", stats_le_bounds_ns[k] / 1e9,
              (unsigned long long)st->latency_le[k]);
    s_put(&b, "xplaind_latency_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)st->latency.count);
    s_put(&b, "xplaind_latency_seconds_sum %.9g\n", st->latency.sum / 1e9);
    s_put(&b, "xplaind_latency_seconds_count %llu\n", (unsigned long long)st->latency.count);
    s_put(&b, "# HELP xplaind_event_latency_seconds Time from a trade's own ts (the publisher's "
              "clock) to having published its explanation.\n"
              "# TYPE xplaind_event_latency_seconds histogram\n");
    for (int k = 0; k < STATS_LE_COUNT; k++)
        s_put(&b, "xplaind_event_latency_seconds_bucket{le=\"%g\"} %llu\n",
              stats_le_bounds_ns[k] / 1e9, (unsigned long long)st->latency_ts_le[k]);
    s_put(&b, "xplaind_event_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
          (unsigned long long)st->latency_ts.count);
    s_put(&b, "xplaind_event_latency_seconds_sum %.9g\n", st->latency_ts.sum / 1e9);
    s_put(&b, "xplaind_event_latency_seconds_count %llu\n", (unsigned long long)st->latency_ts.count);
    s_counter(&b, "attention_warned_total", "Trades explained although their attention rows "
              "failed the check (attention-check warn).", st->attention_warned);

    s_model_counter(&b, s, "model_received_messages_total", "Ingest messages received per model.",
                    offsetof(model_t, received));
    s_model_counter(&b, s, "model_explained_trades_total", "Trades explained per model.",
                    offsetof(model_t, explained));
    s_model_counter(&b, s, "model_rejected_total", "Rejections per model.", offsetof(model_t, rejected));
    s_model_counter(&b, s, "model_lost_messages_total", "Lost ingest messages per model.",
                    offsetof(model_t, lost));
    s_put(&b, "# HELP xplaind_model_epoch Current schema epoch per model.\n"
              "# TYPE xplaind_model_epoch gauge\n");
    for (uint32_t k = 0; k < s->models.count; k++) {
        const model_t *md = s->models.items[k];
        s_put(&b, "xplaind_model_epoch{model=\"%s\"} %u\n", md->name, md->cur->epoch);
    }
    s_put(&b, "# HELP xplaind_model_drift_alerts_total Drift alerts raised per model.\n"
              "# TYPE xplaind_model_drift_alerts_total counter\n");
    for (uint32_t k = 0; k < s->models.count && k < s->global.cap; k++) {
        const gmodel_t *gm = s->global.models[k];
        s_put(&b, "xplaind_model_drift_alerts_total{model=\"%s\"} %llu\n", s->models.items[k]->name,
              (unsigned long long)(gm ? gm->alerts_total : 0));
    }
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    *len = b.len;
    return b.buf;
}

/* ---- HTTP ---------------------------------------------------------------- */

static void
s_respond(metrics_conn_t *c, const char *status, const char *ctype, const char *body, size_t blen)
{
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n", status, ctype, blen);
    c->out = malloc((size_t)hl + blen);
    if (!c->out) {
        c->out_len = 0;
        return;
    }
    memcpy(c->out, head, (size_t)hl);
    memcpy(c->out + hl, body, blen);
    c->out_len = (size_t)hl + blen;
    c->out_off = 0;
}

static void
s_request(server_t *s, metrics_conn_t *c)
{
    /* Only the request line matters: "GET /metrics HTTP/1.x". */
    if (strncmp(c->req, "GET ", 4) != 0 && strncmp(c->req, "HEAD ", 5) != 0) {
        static const char msg[] = "only GET /metrics is served\n";
        s_respond(c, "405 Method Not Allowed", "text/plain", msg, sizeof msg - 1);
        return;
    }
    const char *path = strchr(c->req, ' ') + 1;
    size_t plen = strcspn(path, " ?\r\n");
    if (plen != 8 || strncmp(path, "/metrics", 8) != 0) {
        static const char msg[] = "not found: try /metrics\n";
        s_respond(c, "404 Not Found", "text/plain", msg, sizeof msg - 1);
        return;
    }
    size_t len;
    char *text = metrics_render(s, &len);
    if (!text) {
        static const char msg[] = "out of memory\n";
        s_respond(c, "500 Internal Server Error", "text/plain", msg, sizeof msg - 1);
        return;
    }
    s_respond(c, "200 OK", "text/plain; version=0.0.4; charset=utf-8", text,
              strncmp(c->req, "HEAD", 4) == 0 ? 0 : len);
    free(text);
    s->metrics.served++;
}

static void
s_accept(metrics_t *m)
{
    for (;;) {
        int fd = accept4(m->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        metrics_conn_t *c = NULL;
        for (int k = 0; k < METRICS_CONNS && !c; k++)
            if (m->conns[k].fd < 0)
                c = &m->conns[k];
        if (!c) {
            m->refused++;
            close(fd);
            continue;
        }
        c->fd = fd;
        c->deadline = now_mono_ns() + CONN_TIMEOUT_NS;
        c->in = 0;
    }
}

/* After the answer: half-close and read what the client still sends
   until it closes, so that closing with unread input does not reset the
   connection and destroy the answer in flight (RFC 7230, 6.6). */
static void
s_drain(metrics_conn_t *c)
{
    char scratch[4096];
    for (;;) {
        ssize_t r = read(c->fd, scratch, sizeof scratch);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            s_close(c);
            return;
        }
    }
}

static void
s_write(metrics_conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        if (w <= 0) {
            s_close(c);
            return;
        }
        c->out_off += (size_t)w;
    }
    free(c->out);
    c->out = NULL;
    shutdown(c->fd, SHUT_WR);
    c->draining = 1;
    s_drain(c);
}

static void
s_read(server_t *s, metrics_conn_t *c)
{
    for (;;) {
        ssize_t r = read(c->fd, c->req + c->in, sizeof c->req - 1 - c->in);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            s_close(c);
            return;
        }
        c->in += (size_t)r;
        c->req[c->in] = '\0';
        if (strstr(c->req, "\r\n\r\n") || strstr(c->req, "\n\n")) {
            s_request(s, c);
            if (c->out)
                s_write(c);
            else
                s_close(c);
            return;
        }
        if (c->in == sizeof c->req - 1) {
            static const char msg[] = "request too large\n";
            s_respond(c, "431 Request Header Fields Too Large", "text/plain", msg, sizeof msg - 1);
            if (c->out)
                s_write(c);
            else
                s_close(c);
            return;
        }
    }
}

void
metrics_handle(server_t *s, const void *items_v, int count)
{
    metrics_t *m = &s->metrics;
    const zmq_pollitem_t *items = items_v;
    for (int k = 0; k < count; k++) {
        if (!items[k].revents)
            continue;
        if (items[k].fd == m->listen_fd) {
            s_accept(m);
            continue;
        }
        for (int c = 0; c < METRICS_CONNS; c++) {
            metrics_conn_t *conn = &m->conns[c];
            if (conn->fd != items[k].fd)
                continue;
            if (items[k].revents & ZMQ_POLLERR)
                s_close(conn);
            else if (conn->out)
                s_write(conn);
            else if (conn->draining)
                s_drain(conn);
            else
                s_read(s, conn);
            break;
        }
    }
    int64_t now = now_mono_ns();
    for (int c = 0; c < METRICS_CONNS; c++)
        if (m->conns[c].fd >= 0 && now > m->conns[c].deadline)
            s_close(&m->conns[c]);
}
