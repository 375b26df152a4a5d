/*  metrics: Prometheus text format over libmicrohttpd. See metrics.h.  */
#define _GNU_SOURCE
#include "metrics.h"

#include "cache.h"
#include "global.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

/* Largest request head (request line and headers): the guard's peek
   buffer and libmicrohttpd's memory per connection (which also holds
   the answer's header). A scrape request is a few hundred bytes. */
#define CONN_MEMORY (8 * 1024)

/* File descriptors left for everything else when the connection limit
   is fitted to RLIMIT_NOFILE. */
#define FD_RESERVE 256

/* A client gets metrics.timeout_ms to send its request and this many
   times as long to read the answer (a large exposition on a slow link). */
#define ANSWER_TIMEOUTS 10

/* Renders: a burst of this many, then this many per second; scrapes
   beyond share the last rendering (at most 1/RENDER_RATE s old). */
#define RENDER_BURST 10.0
#define RENDER_RATE 20.0

/* Connections accepted per main-loop turn. */
#define ACCEPT_BURST 64

/* epoll tags of the guard's descriptors other than connections. */
#define TAG_LISTEN UINT64_MAX
#define TAG_MHD (UINT64_MAX - 1)

static const unsigned s_codes[METRICS_CODES] = {200, 400, 404, 405, 431, 500};

static void
s_count_code(metrics_t *m, unsigned code)
{
    for (int k = 0; k < METRICS_CODES; k++)
        if (s_codes[k] == code) {
            m->requests[k]++;
            return;
        }
    m->requests[1]++;       /* any other 4xx is counted as a bad request */
}

static const char *
s_ip(const metrics_conn_t *c, char *buf)
{
    return inet_ntop(AF_INET, &c->addr.sin_addr, buf, INET_ADDRSTRLEN) ? buf : "?";
}

/* ---- the guard: connections until their request head is in ------------- */

static void
s_listen(metrics_t *m, bool on)
{
    if (m->listening == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_LISTEN};
    if (epoll_ctl(m->epoll_fd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, m->listen_fd, &ev) == 0)
        m->listening = on;
}

static void
s_free(metrics_t *m, metrics_conn_t *c)
{
    c->state = MC_FREE;
    m->nconns--;
    s_listen(m, true);
}

/* Close a connection the guard still owns. */
static void
s_drop(metrics_t *m, metrics_conn_t *c)
{
    close(c->fd);       /* also leaves the epoll set */
    s_free(m, c);
}

/* Answer a request head the guard refuses, and close: a NUL byte
   (libmicrohttpd 0.9.75 would read a line or header value only up to it)
   or a head larger than CONN_MEMORY. What was sent is read first, so that
   closing does not reset the answer in flight. */
static void
s_reject(metrics_t *m, metrics_conn_t *c, size_t have, unsigned code)
{
    static const char nul[] = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                              "Content-Type: text/plain\r\nContent-Length: 31\r\n\r\n"
                              "bad request: NUL byte in head\r\n";
    static const char big[] = "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                              "Content-Type: text/plain\r\nContent-Length: 23\r\n\r\n"
                              "request head too large\n";
    const char *resp = code == 400 ? nul : big;
    char scratch[CONN_MEMORY];
    if (recv(c->fd, scratch, have, MSG_DONTWAIT) < 0) {
        /* the answer below is sent anyway */
    }
    if (send(c->fd, resp, strlen(resp), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* best effort: the connection closes either way */
    }
    shutdown(c->fd, SHUT_WR);
    s_count_code(m, code);
    char ip[INET_ADDRSTRLEN];
    log_limited(LOGK_HTTP_BAD, LOG_WARN_, "metrics: bad request from %s: %s", s_ip(c, ip),
                code == 400 ? "NUL byte in the request head" : "request head over 8 KiB");
    s_drop(m, c);
}

/* Hand a connection whose request head is complete to libmicrohttpd;
   the data stays in the socket for it to read. */
static void
s_handoff(metrics_t *m, metrics_conn_t *c)
{
    epoll_ctl(m->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    c->state = MC_HANDING;
    if (MHD_add_connection(m->mhd, c->fd, (const struct sockaddr *)&c->addr, sizeof c->addr) != MHD_YES) {
        /* libmicrohttpd closed the socket (and logged why) */
        if (c->state != MC_FREE)
            s_free(m, c);
        return;
    }
    if (c->state == MC_HANDING)     /* not attached: cannot happen, but never leak the slot */
        s_free(m, c);
}

/* Look at what a pending connection sent so far, without reading it. */
static void
s_guard(metrics_t *m, metrics_conn_t *c)
{
    char buf[CONN_MEMORY];
    ssize_t r = recv(c->fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (r <= 0) {
        s_drop(m, c);       /* gone before sending a request */
        return;
    }
    size_t n = (size_t)r;
    const char *end = memmem(buf, n, "\r\n\r\n", 4), *end2 = memmem(buf, n, "\n\n", 2);
    if (!end || (end2 && end2 < end))
        end = end2;
    const char *nul = memchr(buf, '\0', n);
    if (nul && (!end || nul < end))
        s_reject(m, c, n, 400);
    else if (end)
        s_handoff(m, c);
    else if (n == sizeof buf)
        s_reject(m, c, n, 431);
}

static void
s_accept(metrics_t *m)
{
    for (int k = 0; k < ACCEPT_BURST && m->nconns < m->max_conns; k++) {
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        int fd = accept4(m->listen_fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        uint32_t same = 0;
        metrics_conn_t *c = NULL;
        for (uint32_t i = 0; i < m->max_conns; i++) {
            metrics_conn_t *x = &m->conns[i];
            if (x->state == MC_FREE)
                c = c ? c : x;
            else
                same += x->addr.sin_addr.s_addr == sa.sin_addr.s_addr;
        }
        if (same >= m->max_per_ip || !c) {
            m->refused_per_ip++;
            close(fd);
            char ip[INET_ADDRSTRLEN];
            log_limited(LOGK_HTTP_REFUSED, LOG_WARN_, "metrics: refused a connection from %s: it has %"
                        PRIu32 " open (max_per_ip)",
                        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip) ? ip : "?", same);
            continue;
        }
        *c = (metrics_conn_t){.state = MC_PENDING, .fd = fd, .addr = sa,
                              .deadline = now_mono_ns() + m->timeout_ns};
        if (m->nconns++ == 0 || !m->next_sweep || c->deadline < m->next_sweep)
            m->next_sweep = c->deadline;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET,
                                 .data.u64 = (uint64_t)(c - m->conns)};
        if (epoll_ctl(m->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            s_drop(m, c);
            continue;
        }
        s_guard(m, c);      /* the request may be there already */
    }
    if (m->nconns >= m->max_conns) {
        /* Full: stop accepting; new connections wait in the listen queue
           until a slot frees (s_free). */
        s_listen(m, false);
        m->limit_reached++;
        log_limited(LOGK_HTTP_LIMIT, LOG_WARN_, "metrics: %" PRIu32 " connections open "
                    "(max_connections): new ones wait until one closes", m->nconns);
    }
}

/* ---- connections in libmicrohttpd ------------------------------------- */

static void
s_notify_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                    enum MHD_ConnectionNotificationCode toe)
{
    metrics_t *m = cls;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        metrics_conn_t *c = *socket_context;
        if (c && c->state == MC_MHD)
            s_free(m, c);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *fdi = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    metrics_conn_t *c = NULL;
    for (uint32_t k = 0; fdi && k < m->max_conns && !c; k++)
        if (m->conns[k].state == MC_HANDING && m->conns[k].fd == fdi->connect_fd)
            c = &m->conns[k];
    if (c)
        c->state = MC_MHD;
    *socket_context = c;
}

static void
s_notify_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                   enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    (void)req_cls;
    metrics_t *m = cls;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && toe != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN)
        m->closed_early++;
}

/* libmicrohttpd's own messages (a client's broken request): network
   input, so rate-limited. */
static void
s_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char buf[256];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t len = strlen(buf);
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        buf[--len] = '\0';
    log_limited(LOGK_HTTP_MHD, LOG_INFO_, "metrics: libmicrohttpd: %s", buf);
}

/* Close the connections past their deadline: the guard's at once;
   libmicrohttpd's by shutdown(), which makes it see the end of the
   stream on its next turn and close the connection itself (it owns the
   descriptor then). */
static void
s_sweep(metrics_t *m, int64_t now)
{
    if (!m->nconns || now < m->next_sweep)
        return;
    int64_t next = 0;
    for (uint32_t k = 0; k < m->max_conns; k++) {
        metrics_conn_t *c = &m->conns[k];
        if ((c->state != MC_PENDING && c->state != MC_MHD) || c->expired)
            continue;
        if (now < c->deadline) {
            if (!next || c->deadline < next)
                next = c->deadline;
            continue;
        }
        m->timed_out++;
        char ip[INET_ADDRSTRLEN];
        log_limited(LOGK_HTTP_TIMEOUT, LOG_WARN_, "metrics: closed a connection from %s: %s in %.1f s",
                    s_ip(c, ip), c->requested ? "answer not read" : "no complete request",
                    (double)m->timeout_ns / 1e9 * (c->requested ? ANSWER_TIMEOUTS : 1));
        if (c->state == MC_PENDING) {
            s_drop(m, c);
        } else {
            c->expired = true;
            shutdown(c->fd, SHUT_RDWR);
        }
    }
    m->next_sweep = next;
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

/* A label value, escaped as the text format wants (\\, \", \n). */
static void
s_label(sb_t *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\')
            s_put(b, "\\\\");
        else if (*v == '"')
            s_put(b, "\\\"");
        else if (*v == '\n')
            s_put(b, "\\n");
        else
            s_put(b, "%c", *v);
    }
}

static void
s_family(sb_t *b, const char *name, const char *type, const char *help)
{
    s_put(b, "# HELP xplaind_%s %s\n# TYPE xplaind_%s %s\n", name, help, name, type);
}

static void
s_counter(sb_t *b, const char *name, const char *help, uint64_t v)
{
    s_family(b, name, "counter", help);
    s_put(b, "xplaind_%s %" PRIu64 "\n", name, v);
}

static void
s_gauge(sb_t *b, const char *name, const char *help, double v)
{
    s_family(b, name, "gauge", help);
    s_put(b, "xplaind_%s %.17g\n", name, v);
}

/* One counter family with a value per model. */
static void
s_model_counter(sb_t *b, const metrics_view_t *v, const stats_model_counter_t *c)
{
    s_family(b, c->metric, "counter", c->help);
    for (uint32_t k = 0; k < v->models->count; k++) {
        const model_t *md = v->models->items[k];
        s_put(b, "xplaind_%s{model=\"%s\"} %" PRIu64 "\n", c->metric, md->name,
              stats_model_value(c, md));
    }
}

/* The daemon-wide counters, in the order of their table. */
static void
s_counters(sb_t *b, const stats_view_t *sv)
{
    for (size_t r = 0; r < stats_ncounters; r++) {
        const stats_counter_t *c = &stats_counters[r];
        if (!c->metric)
            continue;
        if (!c->label) {
            s_counter(b, c->metric, c->help, stats_counter_value(c, sv, 0));
            continue;
        }
        s_family(b, c->metric, "counter", c->help);
        for (int k = c->first; k < c->end; k++)
            s_put(b, "xplaind_%s{%s=\"%s\"} %" PRIu64 "\n", c->metric, c->label, c->label_name(k),
                  stats_counter_value(c, sv, k));
    }
}

/* The drift families: one sample per model and method of the current
   epoch, through a getter that returns false when there is no value. */
typedef bool (*drift_get_t)(const gepoch_t *e, int m, double *v);

static void
s_drift_family(sb_t *b, const metrics_view_t *v, const char *name, const char *type, const char *help,
               drift_get_t get)
{
    s_family(b, name, type, help);
    for (uint32_t k = 0; k < v->models->count; k++) {
        const model_t *md = v->models->items[k];
        const gepoch_t *e = global_current(v->global, md);
        for (int m = 0; e && m < XM_NMETHODS; m++) {
            double x;
            if ((e->methods & XM_BIT(m)) && get(e, m, &x))
                s_put(b, "xplaind_%s{model=\"%s\",method=\"%s\"} %.17g\n", name, md->name,
                      xm_method_name((xm_method_t)m), x);
        }
    }
}

/* A statistic of the last closed window, when that window was compared
   and the statistic is defined for it. */
static bool
s_stat(const gepoch_t *e, int m, const drift_stat_t *st, double *v)
{
    const glast_t *l = &e->last[m];
    if (!l->valid || !l->compared || !st->defined)
        return false;
    *v = st->value;
    return true;
}

static bool
s_get_rho(const gepoch_t *e, int m, double *v)
{
    return s_stat(e, m, &e->last[m].spearman, v);
}

static bool
s_get_ndcg(const gepoch_t *e, int m, double *v)
{
    return s_stat(e, m, &e->last[m].ndcg, v);
}

static bool
s_get_js(const gepoch_t *e, int m, double *v)
{
    return s_stat(e, m, &e->last[m].js, v);
}

static bool
s_get_alert(const gepoch_t *e, int m, double *v)
{
    *v = e->last[m].valid && e->last[m].alert;
    return true;
}

static bool
s_get_windows(const gepoch_t *e, int m, double *v)
{
    *v = (double)e->drift[m].closed;
    return true;
}

static bool
s_get_filled(const gepoch_t *e, int m, double *v)
{
    *v = e->drift[m].filled;
    return true;
}

static bool
s_get_last_ts(const gepoch_t *e, int m, double *v)
{
    *v = (double)e->last[m].ts / 1e9;
    return e->last[m].valid;
}

static bool
s_get_count(const gepoch_t *e, int m, double *v)
{
    *v = (double)e->all[m].count;
    return true;
}

/* xplaind_drift_reference: a state set, 1 for the kind in force. */
static void
s_drift_reference(sb_t *b, const metrics_view_t *v)
{
    s_family(b, "drift_reference", "gauge",
             "Reference the drift windows are compared with (1 for the kind in force: none yet, "
             "baseline, pinned or external).");
    for (uint32_t k = 0; k < v->models->count; k++) {
        const model_t *md = v->models->items[k];
        const gepoch_t *e = global_current(v->global, md);
        for (int m = 0; e && m < XM_NMETHODS; m++) {
            if (!(e->methods & XM_BIT(m)))
                continue;
            for (int r = DRIFT_REF_NONE; r <= DRIFT_REF_EXTERNAL; r++)
                s_put(b, "xplaind_drift_reference{model=\"%s\",method=\"%s\",reference=\"%s\"} %d\n",
                      md->name, xm_method_name((xm_method_t)m), drift_ref_name((drift_ref_t)r),
                      e->drift[m].ref_kind == (drift_ref_t)r);
        }
    }
}

/* Indices of the features to export for one method: the `k` largest by
   max(mean, decayed), in feature order (k == 0 or k >= nf: all). */
static uint32_t
s_top_features(const agg_t *a, uint32_t nf, uint32_t k, uint32_t *idx, bool *pick)
{
    if (k == 0 || k >= nf) {
        for (uint32_t j = 0; j < nf; j++)
            idx[j] = j;
        return nf;
    }
    memset(pick, 0, nf * sizeof *pick);
    for (uint32_t n = 0; n < k; n++) {
        uint32_t best = UINT32_MAX;
        double bv = -INFINITY;
        for (uint32_t j = 0; j < nf; j++) {
            double v = a->decayed && a->decayed[j] > a->mean[j] ? a->decayed[j] : a->mean[j];
            if (!pick[j] && (best == UINT32_MAX || v > bv)) {
                best = j;
                bv = v;
            }
        }
        pick[best] = true;
    }
    uint32_t n = 0;
    for (uint32_t j = 0; j < nf; j++)
        if (pick[j])
            idx[n++] = j;
    return n;
}

/* xplaind_attribution_mean and _decayed for the selected features. A
   feature name that repeats within the schema gets "#<index>" appended
   so that every series stays unique. */
static void
s_attributions(sb_t *b, const metrics_view_t *v, bool decayed)
{
    if (decayed)
        s_family(b, "attribution_decayed", "gauge",
                 "Exponentially decayed mean attribution of a feature (half-life global.half_life "
                 "trades), current schema epoch.");
    else
        s_family(b, "attribution_mean", "gauge",
                 "Mean attribution of a feature over every trade of the current schema epoch.");
    uint32_t topk = v->top_features;
    for (uint32_t k = 0; k < v->models->count; k++) {
        const model_t *md = v->models->items[k];
        const gepoch_t *e = global_current(v->global, md);
        const schema_t *sc = e ? model_schema(md, e->epoch) : NULL;
        if (!e || !sc || sc->nf != e->nf || e->nf == 0)
            continue;
        uint32_t *idx = malloc(e->nf * sizeof *idx);
        bool *pick = malloc(e->nf * sizeof *pick);
        if (!idx || !pick) {
            free(idx);
            free(pick);
            b->oom = 1;
            return;
        }
        for (int m = 0; m < XM_NMETHODS; m++) {
            const agg_t *a = &e->all[m];
            if (!(e->methods & XM_BIT(m)) || a->count == 0)
                continue;
            uint32_t n = s_top_features(a, e->nf, topk, idx, pick);
            for (uint32_t i = 0; i < n; i++) {
                uint32_t j = idx[i];
                s_put(b, "xplaind_attribution_%s{model=\"%s\",method=\"%s\",feature=\"",
                      decayed ? "decayed" : "mean", md->name, xm_method_name((xm_method_t)m));
                s_label(b, sc->features[j]);
                bool dup = false;
                for (uint32_t p = 0; p < j && !dup; p++)
                    dup = strcmp(sc->features[p], sc->features[j]) == 0;
                if (dup)
                    s_put(b, "#%" PRIu32, j);
                s_put(b, "\"} %.17g\n", decayed && a->decayed ? a->decayed[j] : a->mean[j]);
            }
        }
        free(idx);
        free(pick);
    }
}

/* The drift mode's evidence on the last closed window, per statistic:
   the standardised departure z and (cusum mode) the CUSUM S; absent
   while calibrating, for a baseline window, or when undefined. */
static void
s_verdicts(sb_t *b, const metrics_view_t *v, bool cusum)
{
    static const char *names[DETECT_NSTAT] = {"spearman", "ndcg", "js"};
    if (cusum)
        s_family(b, "drift_cusum", "gauge",
                 "CUSUM of a drift statistic's standardised departure after the last closed "
                 "window (drift.mode cusum); alerts above drift.cusum_h.");
    else
        s_family(b, "drift_z", "gauge",
                 "Standardised departure of a drift statistic in the last closed window, in "
                 "calibrated standard deviations (drift.mode calibrated or cusum).");
    for (uint32_t k = 0; k < v->models->count; k++) {
        const model_t *md = v->models->items[k];
        const gepoch_t *e = global_current(v->global, md);
        for (int m = 0; e && m < XM_NMETHODS; m++) {
            const glast_t *l = &e->last[m];
            if (!(e->methods & XM_BIT(m)) || !l->valid)
                continue;
            for (int i = 0; i < DETECT_NSTAT; i++)
                if (l->verdict.scored[i] && (!cusum || l->verdict.mode == DETECT_CUSUM))
                    s_put(b, "xplaind_drift_%s{model=\"%s\",method=\"%s\",statistic=\"%s\"} %.17g\n",
                          cusum ? "cusum" : "z", md->name, xm_method_name((xm_method_t)m),
                          names[i], cusum ? l->verdict.cusum[i] : l->verdict.z[i]);
        }
    }
}

/* xplaind_drift_moved: the what-moved list of the last closed window,
   the value change of each listed feature, labelled with its place. */
static void
s_moved(sb_t *b, const metrics_view_t *v)
{
    s_family(b, "drift_moved", "gauge",
             "Change of mean attribution (window minus reference) of the drift.moved_k features "
             "that moved most in the last closed window; rank 1 moved most.");
    for (uint32_t k = 0; k < v->models->count; k++) {
        const model_t *md = v->models->items[k];
        const gepoch_t *e = global_current(v->global, md);
        const schema_t *sc = e ? model_schema(md, e->epoch) : NULL;
        if (!e || !sc || sc->nf != e->nf)
            continue;
        for (int m = 0; m < XM_NMETHODS; m++) {
            const glast_t *l = &e->last[m];
            if (!(e->methods & XM_BIT(m)) || !l->valid)
                continue;
            for (uint32_t r = 0; r < l->nmoved; r++) {
                uint32_t j = l->moved[r].feature;
                s_put(b, "xplaind_drift_moved{model=\"%s\",method=\"%s\",rank=\"%" PRIu32
                         "\",feature=\"", md->name, xm_method_name((xm_method_t)m), r + 1);
                s_label(b, sc->features[j]);
                bool dup = false;
                for (uint32_t p = 0; p < j && !dup; p++)
                    dup = strcmp(sc->features[p], sc->features[j]) == 0;
                if (dup)
                    s_put(b, "#%" PRIu32, j);
                s_put(b, "\"} %.17g\n", l->moved[r].delta);
            }
        }
    }
}

/* Segments: how many are tracked, the trades of those that are not, and
   each tracked segment's last verdict per method. */
static void
s_segments(sb_t *b, const metrics_view_t *v)
{
    s_family(b, "segments", "gauge",
             "Segments tracked for a model's current epoch (global.segment_by, at most "
             "global.max_segments).");
    for (uint32_t k = 0; k < v->models->count; k++) {
        const gepoch_t *e = global_current(v->global, v->models->items[k]);
        if (e)
            s_put(b, "xplaind_segments{model=\"%s\"} %" PRIu32 "\n", v->models->items[k]->name,
                  e->segs.n);
    }
    s_family(b, "segment_overflow_trades_total", "counter",
             "Trades of segments beyond global.max_segments (counted overall only), current epoch.");
    for (uint32_t k = 0; k < v->models->count; k++) {
        const gepoch_t *e = global_current(v->global, v->models->items[k]);
        if (e)
            s_put(b, "xplaind_segment_overflow_trades_total{model=\"%s\"} %" PRIu64 "\n",
                  v->models->items[k]->name, e->segs.overflow);
    }
    s_family(b, "segment_drift_alert", "gauge",
             "1 when a segment's last closed drift window alerted (drift.mode's verdict).");
    for (uint32_t k = 0; k < v->models->count; k++) {
        const model_t *md = v->models->items[k];
        const gepoch_t *e = global_current(v->global, md);
        for (uint32_t i = 0; e && e->seg && i < e->segs.n; i++) {
            const gseg_t *sg = e->seg[i];
            for (int m = 0; sg && m < XM_NMETHODS; m++)
                if ((sg->methods & XM_BIT(m)) && sg->last[m].valid) {
                    s_put(b, "xplaind_segment_drift_alert{model=\"%s\",method=\"%s\",segment=\"",
                          md->name, xm_method_name((xm_method_t)m));
                    s_label(b, segtab_label(&e->segs, i));
                    s_put(b, "\"} %d\n", sg->last[m].alert);
                }
        }
    }
}

static bool
s_get_calibrating(const gepoch_t *e, int m, double *v)
{
    *v = e->detect[m].opts.mode != DETECT_FIXED && !e->detect[m].ready;
    return true;
}

static void
s_render_drift(sb_t *b, const metrics_view_t *v)
{
    const drift_opts_t *o = &v->global->p.drift;
    s_family(b, "drift_threshold", "gauge",
             "Drift alert thresholds: a window alerts when spearman_rho < rho_min, ndcg < ndcg_min "
             "or js_divergence > js_max.");
    s_put(b, "xplaind_drift_threshold{threshold=\"rho_min\"} %.17g\n", o->rho_min);
    s_put(b, "xplaind_drift_threshold{threshold=\"ndcg_min\"} %.17g\n", o->ndcg_min);
    s_put(b, "xplaind_drift_threshold{threshold=\"js_max\"} %.17g\n", o->js_max);
    s_gauge(b, "drift_ndcg_k", "k of the nDCG@k drift statistic.", o->ndcg_k);
    s_gauge(b, "drift_window_trades", "Trades per tumbling drift window.", v->global->p.window);
    s_drift_family(b, v, "drift_spearman_rho", "gauge",
                   "Spearman's rho of the last closed window's mean attribution against the "
                   "reference (absent when undefined or the window became the baseline).",
                   s_get_rho);
    s_drift_family(b, v, "drift_ndcg", "gauge",
                   "nDCG@k of the last closed window's ranking against the reference's (absent when "
                   "undefined or the window became the baseline).", s_get_ndcg);
    s_drift_family(b, v, "drift_js_divergence", "gauge",
                   "Jensen-Shannon divergence (base 2) of the last closed window's mean attribution "
                   "from the reference (absent when undefined or the window became the baseline).",
                   s_get_js);
    s_drift_family(b, v, "drift_alert", "gauge",
                   "1 when the last closed window alerted (a statistic across its threshold), else 0.",
                   s_get_alert);
    s_family(b, "drift_mode", "gauge",
             "Drift verdict mode in force (drift.mode): 1 for the mode, 0 for the others.");
    for (int md = 0; md < 3; md++)
        s_put(b, "xplaind_drift_mode{mode=\"%s\"} %d\n", detect_mode_name((detect_mode_t)md),
              (int)v->global->p.detect.mode == md);
    s_drift_family(b, v, "drift_calibrating", "gauge",
                   "1 while the calibrated or cusum mode is still measuring the windows after a "
                   "reference (no alert meanwhile).", s_get_calibrating);
    s_verdicts(b, v, false);
    s_verdicts(b, v, true);
    s_moved(b, v);
    s_segments(b, v);
    s_drift_family(b, v, "drift_windows_total", "counter",
                   "Drift windows closed in the current schema epoch.", s_get_windows);
    s_drift_family(b, v, "drift_window_filled_trades", "gauge",
                   "Trades in the open drift window.", s_get_filled);
    s_drift_family(b, v, "drift_last_window_timestamp_seconds", "gauge",
                   "Unix time the last drift window closed.", s_get_last_ts);
    s_drift_reference(b, v);
    s_drift_family(b, v, "attribution_trades", "gauge",
                   "Trades behind the global attributions of a method, current schema epoch.",
                   s_get_count);
    s_attributions(b, v, false);
    s_attributions(b, v, true);
}

static void
s_render_http(sb_t *b, const metrics_view_t *v)
{
    const metrics_t *m = v->metrics;
    s_family(b, "metrics_requests_total", "counter",
             "HTTP requests answered on the metrics endpoint, by status code.");
    for (int k = 0; k < METRICS_CODES; k++)
        s_put(b, "xplaind_metrics_requests_total{code=\"%u\"} %" PRIu64 "\n", s_codes[k],
              m->requests[k]);
    s_gauge(b, "metrics_connections", "HTTP connections open on the metrics endpoint.", m->nconns);
    s_gauge(b, "metrics_connections_max", "Most HTTP connections open at once (metrics.max_connections).",
            m->max_conns);
    s_family(b, "metrics_connections_refused_total", "counter",
             "HTTP connections refused, by reason (per_ip: metrics.max_per_ip from one address).");
    s_put(b, "xplaind_metrics_connections_refused_total{reason=\"per_ip\"} %" PRIu64 "\n",
          m->refused_per_ip);
    s_counter(b, "metrics_connection_limit_reached_total",
              "Times every connection slot was taken (new connections then wait to be accepted).",
              m->limit_reached);
    s_counter(b, "metrics_connections_timed_out_total",
              "HTTP connections closed for not sending a request or not reading the answer within "
              "metrics.timeout_ms.", m->timed_out);
    s_counter(b, "metrics_connections_closed_early_total",
              "HTTP requests whose client went away (or was cut) before the whole answer was sent.",
              m->closed_early);
    s_counter(b, "metrics_renders_total", "Expositions rendered (scrapes beyond the render budget "
              "share the last one).", m->renders);
}

char *
metrics_render_view(const metrics_view_t *v, size_t *len)
{
    sb_t b = {.cap = 16384};
    if (!(b.buf = malloc(b.cap)))
        return NULL;
    const stats_t *st = v->counters.stats;
    s_put(&b, "# HELP xplaind_build_info Version of the running daemon.\n"
              "# TYPE xplaind_build_info gauge\nxplaind_build_info{version=\"%s\"} 1\n", XPL_VERSION);
    s_gauge(&b, "uptime_seconds", "Seconds since the daemon started.",
            (double)(now_mono_ns() - st->start_ns) / 1e9);
    s_gauge(&b, "models", "Models tracked.", v->models->count);
    if (v->global->nshards) {
        s_gauge(&b, "aggregate_shards", "Shards this aggregator merges (aggregate.shards).",
                v->global->nshards);
        s_gauge(&b, "aggregate_shards_stale", "Shards that sent no state for aggregate.stale_ms "
                "(their last state still counts).", __builtin_popcount(v->global->stale_mask));
    }
    s_counters(&b, &v->counters);
    const cache_t *cache = v->counters.cache;
    s_gauge(&b, "cache_bytes", "Bytes held by the recent-trade cache.",
            cache ? (double)cache->bytes : 0);
    s_render_http(&b, v);

    s_family(&b, "latency_seconds", "histogram",
             "Time from the ingest socket's receipt of a message (at most: from when it was "
             "last seen empty) to having published a trade's explanation.");
    for (int k = 0; k < STATS_LE_COUNT; k++)
        s_put(&b, "xplaind_latency_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
              stats_le_bounds_ns[k] / 1e9, st->latency_le[k]);
    s_put(&b, "xplaind_latency_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", st->latency.count);
    s_put(&b, "xplaind_latency_seconds_sum %.9g\n", st->latency.sum / 1e9);
    s_put(&b, "xplaind_latency_seconds_count %" PRIu64 "\n", st->latency.count);
    s_family(&b, "event_latency_seconds", "histogram",
             "Time from a trade's own ts (the publisher's clock) to having published its "
             "explanation.");
    for (int k = 0; k < STATS_LE_COUNT; k++)
        s_put(&b, "xplaind_event_latency_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
              stats_le_bounds_ns[k] / 1e9, st->latency_ts_le[k]);
    s_put(&b, "xplaind_event_latency_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n",
          st->latency_ts.count);
    s_put(&b, "xplaind_event_latency_seconds_sum %.9g\n", st->latency_ts.sum / 1e9);
    s_put(&b, "xplaind_event_latency_seconds_count %" PRIu64 "\n", st->latency_ts.count);
    for (size_t r = 0; r < stats_nmodel_counters; r++)
        if (stats_model_counters[r].metric)
            s_model_counter(&b, v, &stats_model_counters[r]);
    s_family(&b, "model_epoch", "gauge", "Current schema epoch per model.");
    for (uint32_t k = 0; k < v->models->count; k++) {
        const model_t *md = v->models->items[k];
        s_put(&b, "xplaind_model_epoch{model=\"%s\"} %" PRIu32 "\n", md->name, md->cur->epoch);
    }
    s_family(&b, "model_drift_alerts_total", "counter", "Drift alerts raised per model.");
    for (uint32_t k = 0; k < v->models->count; k++) {
        const gmodel_t *gm = global_model_const(v->global, v->models->items[k]);
        s_put(&b, "xplaind_model_drift_alerts_total{model=\"%s\"} %" PRIu64 "\n",
              v->models->items[k]->name, gm ? gm->alerts_total : 0);
    }
    s_render_drift(&b, v);
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    *len = b.len;
    return b.buf;
}

/* ---- HTTP ---------------------------------------------------------------- */

static enum MHD_Result
s_text(metrics_t *m, struct MHD_Connection *conn, unsigned code, const char *msg)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(msg), (void *)msg, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    s_count_code(m, code);
    enum MHD_Result rc = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return rc;
}

/* The exposition to answer with: a fresh rendering while the budget
   allows, else the last one. */
static struct MHD_Response *
s_exposition(metrics_t *m)
{
    int64_t now = now_mono_ns();
    m->tokens += (double)(now - m->tokens_ns) / 1e9 * RENDER_RATE;
    if (m->tokens > RENDER_BURST)
        m->tokens = RENDER_BURST;
    m->tokens_ns = now;
    if (m->last && m->tokens < 1.0) {
        m->reused++;
        return m->last;
    }
    size_t len;
    char *text = metrics_render_view(&m->view, &len);
    if (!text)
        return m->last;
    struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return m->last;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    if (m->last)
        MHD_destroy_response(m->last);     /* queued answers hold their own reference */
    m->last = r;
    m->tokens -= 1.0;
    m->renders++;
    return r;
}

static enum MHD_Result
s_access(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
         const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)req_cls;
    metrics_t *m = cls;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    metrics_conn_t *c = ci ? ci->socket_context : NULL;
    if (c && !c->requested) {
        /* The request is in: the deadline now bounds reading the answer. */
        c->requested = true;
        c->deadline = now_mono_ns() + ANSWER_TIMEOUTS * m->timeout_ns;
    }
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return s_text(m, conn, 405, "only GET /metrics is served\n");
    if (strcmp(url, "/metrics") != 0)
        return s_text(m, conn, 404, "not found: try /metrics\n");
    struct MHD_Response *r = s_exposition(m);
    if (!r)
        return s_text(m, conn, 500, "out of memory\n");
    s_count_code(m, 200);
    return MHD_queue_response(conn, 200, r);
}

/* Raise the soft RLIMIT_NOFILE so that max_conns connections fit next to
   the daemon's other descriptors, or lower max_conns to what fits. */
static void
s_fit_fds(metrics_t *m)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t need = (rlim_t)m->max_conns + FD_RESERVE;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            rl.rlim_cur = was;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        uint32_t fit = rl.rlim_cur > FD_RESERVE + 16 ? (uint32_t)(rl.rlim_cur - FD_RESERVE) : 16;
        log_warn("metrics: max_connections %" PRIu32 " does not fit the open-file limit %llu; "
                 "using %" PRIu32, m->max_conns, (unsigned long long)rl.rlim_cur, fit);
        m->max_conns = fit;
    }
}

int
metrics_init(metrics_t *m, const config_t *cfg, const metrics_view_t *view)
{
    const char *spec = cfg->metrics;
    memset(m, 0, sizeof *m);
    m->listen_fd = m->epoll_fd = -1;
    m->view = *view;
    m->view.metrics = m;
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
    m->max_conns = (uint32_t)cfg->metrics_max_conns;
    m->max_per_ip = (uint32_t)cfg->metrics_max_per_ip;
    m->timeout_ns = (int64_t)cfg->metrics_timeout_ms * 1000000;
    s_fit_fds(m);
    if (!(m->conns = calloc(m->max_conns, sizeof *m->conns))) {
        log_err("metrics: out of memory");
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, SOMAXCONN)) {
        log_err("metrics: cannot listen on %s:%ld: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    m->listen_fd = fd;
    /* libmicrohttpd's own inactivity timeout (whole seconds): a reader
       that stops reading the answer is cut before its deadline. */
    unsigned idle_s = (unsigned)((cfg->metrics_timeout_ms + 999) / 1000) + 1;
    m->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ERROR_LOG, 0, NULL, NULL, s_access, m,
        MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, m,     /* first, to catch every message */
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)m->max_conns,
        MHD_OPTION_CONNECTION_TIMEOUT, idle_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
        MHD_OPTION_NOTIFY_CONNECTION, s_notify_connection, m,
        MHD_OPTION_NOTIFY_COMPLETED, s_notify_completed, m,
        MHD_OPTION_END);
    const union MHD_DaemonInfo *di = m->mhd ? MHD_get_daemon_info(m->mhd, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_MHD};
    if (!di || (m->epoll_fd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        epoll_ctl(m->epoll_fd, EPOLL_CTL_ADD, di->epoll_fd, &ev) != 0) {
        log_err("metrics: cannot start the HTTP server (libmicrohttpd) on %s:%ld", host, port);
        metrics_destroy(m);
        return -1;
    }
    s_listen(m, true);
    if (!m->listening) {
        log_err("metrics: cannot poll %s:%ld: %s", host, port, strerror(errno));
        metrics_destroy(m);
        return -1;
    }
    m->tokens = RENDER_BURST;
    m->tokens_ns = now_mono_ns();
    if (ntohl(sa.sin_addr.s_addr) >> 24 != 127)
        log_warn("metrics: listening on %s, which is not a loopback address", host);
    log_info("metrics: serving http://%s:%ld/metrics (at most %" PRIu32 " connections, %" PRIu32
             " per address, %.1f s timeout)", host, port, m->max_conns, m->max_per_ip,
             (double)m->timeout_ns / 1e9);
    return 0;
}

void
metrics_destroy(metrics_t *m)
{
    if (m->last)
        MHD_destroy_response(m->last);
    m->last = NULL;
    if (m->mhd)
        MHD_stop_daemon(m->mhd);    /* closes the connections it has */
    m->mhd = NULL;
    for (uint32_t k = 0; m->conns && k < m->max_conns; k++)
        if (m->conns[k].state == MC_PENDING)
            close(m->conns[k].fd);
    free(m->conns);
    m->conns = NULL;
    if (m->epoll_fd >= 0)
        close(m->epoll_fd);
    if (m->listen_fd >= 0)
        close(m->listen_fd);
    m->listen_fd = m->epoll_fd = -1;
}

int
metrics_poll_items(metrics_t *m, void *items_v)
{
    zmq_pollitem_t *items = items_v;
    if (!m->mhd)
        return 0;
    items[0] = (zmq_pollitem_t){NULL, m->epoll_fd, ZMQ_POLLIN, 0};
    return 1;
}

long
metrics_timeout_ms(metrics_t *m, int64_t now)
{
    if (!m->mhd)
        return -1;
    long ms = -1;
    MHD_UNSIGNED_LONG_LONG t;
    if (MHD_get_timeout(m->mhd, &t) == MHD_YES)
        ms = t > 3600000 ? 3600000 : (long)t;
    if (m->nconns && m->next_sweep) {
        long sw = m->next_sweep <= now ? 0 : (long)((m->next_sweep - now + 999999) / 1000000);
        if (ms < 0 || sw < ms)
            ms = sw;
    }
    return ms;
}

void
metrics_handle(metrics_t *m, const void *items_v, int count)
{
    const zmq_pollitem_t *items = items_v;
    if (!m->mhd)
        return;
    bool run = false;
    if (count > 0 && (items[0].revents & ZMQ_POLLIN)) {
        struct epoll_event ev[64];
        int n = epoll_wait(m->epoll_fd, ev, 64, 0);
        bool accept = false;
        for (int k = 0; k < n; k++) {
            if (ev[k].data.u64 == TAG_MHD)
                run = true;
            else if (ev[k].data.u64 == TAG_LISTEN)
                accept = true;
            else if (ev[k].data.u64 < m->max_conns && m->conns[ev[k].data.u64].state == MC_PENDING)
                s_guard(m, &m->conns[ev[k].data.u64]);
        }
        if (accept)
            s_accept(m);
    }
    /* After the guard: connections it handed over are served this turn. */
    if (run || metrics_timeout_ms(m, now_mono_ns()) == 0)
        MHD_run(m->mhd);
    s_sweep(m, now_mono_ns());
}
