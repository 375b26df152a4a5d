/*  xpl_view: Clone pattern over glob/<model> and the `global` query.

    The thread owns its sockets (a subscriber and a query client); the
    lock guards only the published state and counters, so readers never
    wait for the network.  */
#include "xpl_private.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define S_POLL_MS 50            /* how often the thread looks at `stop` */
#define S_RETRY_MS 1000         /* between failed snapshots */

struct xpl_view_t {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* Under lock. */
    xpl_global_t *state;
    xpl_view_stats_t stats;
    int64_t visible_ms;         /* when `state` became visible */
    bool started;               /* the thread has finished starting */
    int start_code;             /* XPL_OK or why starting failed */
    char start_reason[512];
    /* Read by the thread. */
    atomic_bool stop;
    xpl_curve_t *curve;         /* NULL: plain sockets */
    int refused;                /* ZAP status of a refused handshake, 0: none */
    char *sub_ep, *query_ep;
    char model[65];
    char *segment;              /* NULL: the model overall */
    int timeout_ms;
};

/* Make `g` (owned, or NULL) the visible state. */
static void
s_publish(xpl_view_t *self, xpl_global_t *g, bool snapshot)
{
    pthread_mutex_lock(&self->lock);
    xpl_global_destroy(&self->state);
    self->state = g;
    self->stats.version++;
    if (snapshot)
        self->stats.snapshots++;
    else
        self->stats.updates++;
    self->visible_ms = xpl_now_ms();
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->lock);
}

static void
s_count(xpl_view_t *self, uint64_t *counter, uint64_t by)
{
    pthread_mutex_lock(&self->lock);
    *counter += by;
    pthread_mutex_unlock(&self->lock);
}

static void
s_set_synced(xpl_view_t *self, bool synced)
{
    pthread_mutex_lock(&self->lock);
    self->stats.synced = synced;
    pthread_mutex_unlock(&self->lock);
}

/* Report how starting went and wake xpl_view_new. */
static void
s_started(xpl_view_t *self, int code)
{
    pthread_mutex_lock(&self->lock);
    self->started = true;
    self->start_code = code;
    snprintf(self->start_reason, sizeof self->start_reason, "%s",
             code == XPL_OK ? "" : xpl_strerror());
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->lock);
}

/* Wait for the SUB's handshake with the daemon's PUB. */
static int
s_wait_handshake(xpl_view_t *self, void *monitor)
{
    int64_t deadline = xpl_now_ms() + self->timeout_ms;
    for (;;) {
        int64_t left = deadline - xpl_now_ms();
        if (left <= 0)
            return xpl_fail(XPL_ETIMEOUT, "view of '%s': no connection to %s within %d ms "
                                          "(is xplaind running?)%s",
                            self->model, self->sub_ep, self->timeout_ms,
                            xpl_curve_hint(self->curve != NULL,
                                           self->refused ? XPL_HS_REFUSED : XPL_HS_NONE,
                                           self->refused));
        if (atomic_load(&self->stop))
            return xpl_fail(XPL_EINTR, "view stopped while starting");
        int status = 0;
        int e = xpl_hs_event(monitor, left < S_POLL_MS ? (long)left : S_POLL_MS, &status);
        if (e == XPL_HS_OK)
            return 0;
        if (e == XPL_HS_REFUSED)
            self->refused = status;
    }
}

/* Take a snapshot. Returns 0 (state visible, or none), or -1. The
   snapshot replaces whatever is visible: it is the daemon's truth now, so
   a daemon that has no state for the model (restarted fresh) clears it. */
static int
s_snapshot(xpl_view_t *self, xpl_client_t *client)
{
    xpl_global_t *g = xpl_client_global_segment(client, self->model, NULL, self->segment);
    if (!g && xpl_errno() != XPL_ENOT_FOUND && xpl_errno() != XPL_EUNKNOWN_MODEL)
        return -1;
    pthread_mutex_lock(&self->lock);
    bool had = self->state != NULL;
    pthread_mutex_unlock(&self->lock);
    if (g || had)
        s_publish(self, g, true);
    return 0;
}

/* Apply one glob/ message (owned) by the Clone rules; returns true when a
   new snapshot is needed (daemon restart). */
static bool
s_apply(xpl_view_t *self, xpl_global_t *g)
{
    pthread_mutex_lock(&self->lock);
    const xpl_global_t *cur = self->state;
    uint64_t seq = cur ? cur->seq : 0;
    int64_t ts = cur ? cur->ts : 0;
    pthread_mutex_unlock(&self->lock);
    if (!cur || g->seq > seq) {
        if (cur && g->seq > seq + 1)
            s_count(self, &self->stats.gaps, g->seq - seq - 1);
        s_publish(self, g, false);
        return false;
    }
    /* At or below what we have: older news (queued before the snapshot,
       or late), unless it is newer in time, which means the daemon
       restarted and counts from 0 again. */
    bool restarted = g->seq < seq && g->ts > ts;
    s_count(self, restarted ? &self->stats.restarts : &self->stats.dropped, 1);
    xpl_global_destroy(&g);
    return restarted;
}

static bool
s_same_segment(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static void *
s_run(void *arg)
{
    xpl_view_t *self = arg;
    void *monitor = NULL;
    xpl_client_t *client = NULL;
    xpl_sub_t *sub = xpl_sub_new_monitored(
        self->sub_ep, self->curve, &monitor,
        ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
    if (!sub || xpl_sub_subscribe(sub, XPL_KIND_GLOB, self->model)
        || s_wait_handshake(self, monitor)
        || !(client = xpl_client_new_curve(self->query_ep, self->curve))) {
        s_started(self, xpl_errno());
        goto done;
    }
    xpl_client_set_timeout(client, self->timeout_ms);
    /* Subscribed and connected: now the snapshot. An unknown model or an
       unreachable daemon fails the start; afterwards they only mean
       "no state" or "not synced" until a later snapshot works. */
    xpl_clear_error();
    if (s_snapshot(self, client) || xpl_errno() == XPL_EUNKNOWN_MODEL) {
        s_started(self, xpl_errno() == XPL_OK ? XPL_EZMQ : xpl_errno());
        goto done;
    }
    s_set_synced(self, true);
    s_started(self, XPL_OK);

    bool need_snapshot = false;
    int64_t retry_at = 0;
    while (!atomic_load(&self->stop)) {
        /* A new connection to the daemon's PUB (it restarted, or the
           network came back): what was published meanwhile is lost, so
           snapshot again, now that the subscription is back in place. */
        int e;
        while ((e = xpl_hs_event(monitor, 0, NULL)) >= 0)
            if (e == XPL_HS_OK) {
                need_snapshot = true;
                retry_at = 0;
                s_count(self, &self->stats.reconnects, 1);
            } else if (e == XPL_HS_REFUSED) {
                /* The daemon no longer admits our key (revoked, then a
                   reconnect): nothing will come on this connection. */
                s_set_synced(self, false);
            }
        if (need_snapshot && xpl_now_ms() >= retry_at) {
            if (s_snapshot(self, client) == 0) {
                need_snapshot = false;
                s_set_synced(self, true);
            } else {
                retry_at = xpl_now_ms() + S_RETRY_MS;
                s_set_synced(self, false);
            }
        }
        xpl_event_t *ev = xpl_sub_recv(sub, S_POLL_MS);
        if (!ev)
            continue;
        xpl_global_t *g = ev->global;
        ev->global = NULL;
        xpl_event_destroy(&ev);
        /* The subscription glob/<model> also receives every
           glob/<model>/<segment>: apply only the state followed. */
        if (g && !s_same_segment(g->segment, self->segment)) {
            xpl_global_destroy(&g);
            continue;
        }
        if (g && s_apply(self, g))
            need_snapshot = true;
    }
done:
    xpl_sub_stop_monitor(sub);
    if (monitor)
        zmq_close(monitor);
    xpl_client_destroy(&client);
    xpl_sub_destroy(&sub);
    return NULL;
}

static void
s_free(xpl_view_t *self)
{
    xpl_global_destroy(&self->state);
    pthread_mutex_destroy(&self->lock);
    pthread_cond_destroy(&self->cond);
    free(self->sub_ep);
    free(self->query_ep);
    free(self->segment);
    xpl_curve_destroy(&self->curve);
    free(self);
}

xpl_view_t *
xpl_view_new(const char *sub_endpoint, const char *query_endpoint, const char *model,
             int timeout_ms)
{
    return xpl_view_new_curve(sub_endpoint, query_endpoint, model, timeout_ms, NULL);
}

xpl_view_t *
xpl_view_new_curve(const char *sub_endpoint, const char *query_endpoint, const char *model,
                   int timeout_ms, const xpl_curve_t *curve)
{
    return xpl_view_new_segment(sub_endpoint, query_endpoint, model, NULL, timeout_ms, curve);
}

xpl_view_t *
xpl_view_new_segment(const char *sub_endpoint, const char *query_endpoint, const char *model,
                     const char *segment, int timeout_ms, const xpl_curve_t *curve)
{
    if (!sub_endpoint || !query_endpoint)
        return xpl_fail_null(XPL_EINVAL, "view: publish and query endpoints are needed");
    if (!xpl_model_name_ok(model))
        return xpl_fail_null(XPL_EINVAL, "view: bad model name '%s'", model ? model : "(null)");
    if (timeout_ms <= 0)
        return xpl_fail_null(XPL_EINVAL, "view: timeout must be > 0 ms");
    xpl_view_t *self = calloc(1, sizeof *self);
    if (!self)
        return xpl_fail_null(XPL_ENOMEM, "out of memory");
    pthread_mutex_init(&self->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&self->cond, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&self->stop, false);
    self->sub_ep = strdup(sub_endpoint);
    self->query_ep = strdup(query_endpoint);
    snprintf(self->model, sizeof self->model, "%s", model);
    self->timeout_ms = timeout_ms;
    if (segment && segment[0])
        self->segment = strdup(segment);
    if (!self->sub_ep || !self->query_ep || (curve && !(self->curve = xpl_curve_dup(curve)))
        || (segment && segment[0] && !self->segment)) {
        s_free(self);
        return xpl_fail_null(XPL_ENOMEM, "out of memory");
    }
    if (pthread_create(&self->thread, NULL, s_run, self)) {
        s_free(self);
        return xpl_fail_null(XPL_ENOMEM, "view: cannot start a thread");
    }
    pthread_mutex_lock(&self->lock);
    while (!self->started)
        pthread_cond_wait(&self->cond, &self->lock);
    int code = self->start_code;
    char reason[sizeof self->start_reason];
    memcpy(reason, self->start_reason, sizeof reason);
    pthread_mutex_unlock(&self->lock);
    if (code != XPL_OK) {
        pthread_join(self->thread, NULL);
        s_free(self);
        return xpl_fail_null(code, "%s", reason);
    }
    return self;
}

void
xpl_view_destroy(xpl_view_t **self_p)
{
    assert(self_p);
    xpl_view_t *self = *self_p;
    if (!self)
        return;
    atomic_store(&self->stop, true);
    pthread_join(self->thread, NULL);
    s_free(self);
    *self_p = NULL;
}

xpl_global_t *
xpl_view_state(xpl_view_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->lock);
    xpl_global_t *g = self->state ? xpl_global_ref(self->state) : NULL;
    pthread_mutex_unlock(&self->lock);
    if (!g)
        return xpl_fail_null(XPL_ENOT_FOUND, "view of '%s': no global state yet", self->model);
    return g;
}

uint64_t
xpl_view_version(xpl_view_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->lock);
    uint64_t v = self->stats.version;
    pthread_mutex_unlock(&self->lock);
    return v;
}

int
xpl_view_wait(xpl_view_t *self, uint64_t version, int timeout_ms)
{
    assert(self);
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms >= 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    int rc = 0;
    pthread_mutex_lock(&self->lock);
    while (self->stats.version <= version && rc == 0)
        rc = timeout_ms < 0 ? pthread_cond_wait(&self->cond, &self->lock)
                            : pthread_cond_timedwait(&self->cond, &self->lock, &until);
    bool newer = self->stats.version > version;
    pthread_mutex_unlock(&self->lock);
    if (!newer)
        return xpl_fail(XPL_ETIMEOUT, "view of '%s': no new state within %d ms", self->model,
                        timeout_ms);
    return 0;
}

void
xpl_view_stats(xpl_view_t *self, xpl_view_stats_t *out)
{
    assert(self && out);
    pthread_mutex_lock(&self->lock);
    *out = self->stats;
    out->age_ms = self->state ? xpl_now_ms() - self->visible_ms : -1;
    pthread_mutex_unlock(&self->lock);
}
