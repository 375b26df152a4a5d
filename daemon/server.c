/*  server: sockets, the poll loop, signals and SIGHUP reload. See
    server.h.  */
#define _GNU_SOURCE
#include "aggregate.h"
#include "server.h"

#include "demo.h"
#include "log.h"
#include "notify.h"
#include "state.h"
#include "qjob.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

/* Messages handled per socket per poll round: enough to amortise the
   poll, few enough that queries are answered between ingest bursts. A
   query burst also ends after QUERY_TURN_NS of work, so that however
   costly the queries are, ingest gets its turn every few milliseconds. */
#define INGEST_BURST 256
#define QUERY_BURST 64
#define QUERY_TURN_NS 2000000
#define QUERY_MAX_FRAMES 18

static void
s_limits(const config_t *c, wire_limits_t *lim)
{
    lim->max_batch = (uint32_t)c->max_batch;
    lim->max_layers = (uint32_t)c->max_layers;
    lim->max_heads = (uint32_t)c->max_heads;
    lim->max_tokens = (uint32_t)c->max_tokens;
    lim->max_elems = c->max_elems;
    lim->max_str = (uint32_t)c->max_str;
    lim->max_targets = (uint32_t)c->max_targets_per_trade;
    lim->max_groups = (uint32_t)c->max_groups;
    lim->fused = true;      /* explained by xm_explain_fused, refused in ingest when the
                               options need every head */
}

static void
s_drift_opts(const config_t *c, drift_opts_t *o)
{
    o->rho_min = c->drift_rho_min;
    o->ndcg_min = c->drift_ndcg_min;
    o->ndcg_k = (uint32_t)c->drift_ndcg_k;
    o->js_max = c->drift_js_max;
}

static void
s_detect_opts(const config_t *c, detect_opts_t *o)
{
    detect_opts_default(o);
    o->mode = (detect_mode_t)c->drift_mode_id;
    o->calib_windows = (uint32_t)c->drift_calib_windows;
    o->multiple = c->drift_multiple;
    o->cusum_k = c->drift_cusum_k;
    o->cusum_h = c->drift_cusum_h;
    o->sd_floor = c->drift_sd_floor;
}

void
server_apply_options(server_t *s)
{
    drift_opts_t d;
    detect_opts_t dt;
    s_drift_opts(&s->cfg, &d);
    s_detect_opts(&s->cfg, &dt);
    global_set_drift(&s->global, &d, &dt, (uint32_t)s->cfg.drift_moved_k);
    s->opts.methods = s->cfg.method_set;
    s->opts.fusion = (xm_fusion_t)s->cfg.fusion_id;
    s->opts.grad_resnorm = s->cfg.grad_resnorm;
    s->opts.discard = s->cfg.discard;
    s->opts.discard_flow = s->cfg.discard_flow;
    s->opts.start_layer = (int32_t)s->cfg.start_layer;
    s_limits(&s->cfg, &s->dec.lim);
    log_set_level((log_level_t)s->cfg.log_level_id);
    log_set_rate((uint32_t)s->cfg.log_rate);
}

static int
s_setopt_int(void *sock, int opt, int value, const char *what)
{
    if (zmq_setsockopt(sock, opt, &value, sizeof value) == 0)
        return 0;
    log_err("cannot set %s: %s", what, zmq_strerror(errno));
    return -1;
}

static int
s_endpoint(void *sock, const char *ep, bool bind, const char *what)
{
    int rc = bind ? zmq_bind(sock, ep) : zmq_connect(sock, ep);
    if (rc == 0) {
        log_info("%s: %s %s", what, bind ? "bound to" : "connecting to", ep);
        return 0;
    }
    log_err("%s: cannot %s %s: %s", what, bind ? "bind" : "connect", ep, zmq_strerror(errno));
    return -1;
}

static int s_sigpipe[2] = {-1, -1};

static void
s_on_signal(int sig)
{
    int saved = errno;
    uint8_t b = (uint8_t)sig;
    if (write(s_sigpipe[1], &b, 1) < 0) {
        /* Pipe full: enough signals are already pending. */
    }
    errno = saved;
}

static int
s_signals_install(server_t *s)
{
    if (pipe2(s_sigpipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        log_err("cannot create the signal pipe: %s", strerror(errno));
        return -1;
    }
    s->sigfd = s_sigpipe[0];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL) || sigaction(SIGHUP, &sa, NULL)) {
        log_err("cannot install signal handlers: %s", strerror(errno));
        return -1;
    }
    /* A write past RLIMIT_FSIZE must fail with EFBIG (a snapshot error,
       reported), not kill the daemon. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    return 0;
}

void
server_wire(server_t *s)
{
    s->publisher.sock = s->pub;
    s->ingest = (ingest_t){.cfg = &s->cfg, .opts = &s->opts, .dec = &s->dec, .work = s->work,
                           .models = &s->models, .cache = &s->cache, .global = &s->global,
                           .pub = &s->publisher, .stats = &s->stats};
    s->query.models = &s->models;
    s->query.global = &s->global;
    s->query.cache = &s->cache;
    s->query.stats = &s->stats;
    s->query.auth = &s->auth;
    s->query.opts = &s->opts;
    s->query.pub = &s->publisher;
    s->query.worker = s->qworker;
    s->query.agg = s->agg;
}

int
server_init(server_t *s)
{
    config_t *c = &s->cfg;
    wire_limits_t lim;
    s_limits(c, &lim);
    wire_decoder_init(&s->dec, &lim);
    stats_init(&s->stats);
    publisher_init(&s->publisher, &s->stats, NULL, NULL, NULL);
    s->sigfd = -1;
    s->metrics.listen_fd = -1;

    /* Signals reach the loop through a self-pipe: a handler (run by
       whichever thread the kernel picks: OpenBLAS starts its threads
       before main, so masks cannot keep them out) writes the signal
       number, and the loop polls the pipe. */
    if (s_signals_install(s))
        return -1;
    xm_blas_single_thread();
    global_params_t gp = {.half_life = (double)c->half_life, .window = (uint32_t)c->drift_window,
                          .window_ns = c->drift_window_ns, .late_ns = c->drift_lateness_ns,
                          .decay_ns = c->decay_ns,
                          .max_targets = (uint32_t)c->max_targets,
                          .max_segments = c->segkeys.n ? (uint32_t)c->max_segments : 0,
                          .alerts_kept = (uint32_t)c->alerts_kept};
    s_drift_opts(c, &gp.drift);
    if (c->aggregate.count)
        gp.half_life = 0;   /* an aggregator's decayed means are by event time or none:
                               a decay by trades does not merge */
    s_detect_opts(c, &gp.detect);
    gp.moved_k = (uint32_t)c->drift_moved_k;
    if (!(s->work = xm_work_new()) || query_init(&s->query) ||
        models_init(&s->models, (uint32_t)c->max_models) ||
        global_init(&s->global, (uint32_t)c->max_models, &gp) ||
        cache_init(&s->cache, (uint32_t)c->cache_entries, (size_t)c->cache_mb << 20)) {
        log_err("out of memory at start");
        return -1;
    }
    server_apply_options(s);
    if (c->state_dir[0]) {
        if (mkdir(c->state_dir, 0700) != 0 && errno != EEXIST) {
            log_err("state: cannot create %s: %s", c->state_dir, strerror(errno));
            return -1;
        }
        state_load(&s->models, &s->global, c->state_dir);
    }
    server_wire(s);
    if (c->reference_file[0] &&
        global_load_references(&s->global, &s->models, c->reference_file) < 0)
        return -1;
    metrics_view_t mv = {.counters = {&s->stats, &s->cache, &s->auth}, .models = &s->models,
                         .global = &s->global, .top_features = (uint32_t)c->metrics_top_features};
    if (metrics_init(&s->metrics, c, &mv))
        return -1;

    if (!(s->zctx = zmq_ctx_new())) {
        log_err("cannot create the ZeroMQ context: %s", zmq_strerror(errno));
        return -1;
    }
    /* Two I/O threads: ingest connections on the first, query and publish
       on the second (ZMQ_AFFINITY below), so that reading large query
       requests never delays reading ingest messages. */
    zmq_ctx_set(s->zctx, ZMQ_IO_THREADS, 2);
    if (!(s->qworker = qworker_new()))
        return -1;
    server_wire(s);
    if (auth_init(&s->auth, s->zctx, c))
        return -1;
    s->sub = zmq_socket(s->zctx, ZMQ_SUB);
    /* An aggregator's PUB is an XPUB: it also forwards the shards' xpl/
       and sees the subscriptions to forward for them (aggregate.c). */
    s->pub = zmq_socket(s->zctx, c->aggregate.count ? ZMQ_XPUB : ZMQ_PUB);
    s->router = zmq_socket(s->zctx, ZMQ_ROUTER);
    server_wire(s);
    if (!s->sub || !s->pub || !s->router) {
        log_err("cannot create sockets: %s", zmq_strerror(errno));
        return -1;
    }
    /* No valid message has a frame larger than its largest valid body:
       bigger frames are refused by ZeroMQ at their header, before any
       memory is reserved for them. */
    uint64_t valid_max = wire_max_body(&lim);
    int64_t maxmsg = (int64_t)(c->max_msg_size ? c->max_msg_size : valid_max), qmax = 16 << 20;
    if (c->max_msg_size && c->max_msg_size < valid_max)
        log_notice("ingest: max-msg-size %llu is below the largest valid body for the tensor limits "
                   "(%llu bytes): larger valid messages drop their connection",
                   (unsigned long long)c->max_msg_size, (unsigned long long)valid_max);
    log_notice("ingest: frames up to %lld bytes, %llu message(s) queued per publisher: in-flight "
             "ingest memory up to %.0f MiB per connected publisher", (long long)maxmsg,
             (unsigned long long)c->ingest_rcvhwm,
             (double)(c->ingest_rcvhwm + 1) * (double)maxmsg / 1048576.0);
    /* A query client's requests wait 16 deep at most: ZeroMQ stops reading
       that connection meanwhile (nothing is dropped), so one connection
       holds at most 16 requests of qmax bytes. */
    uint64_t io_ingest = 1, io_other = 2;
    if (zmq_setsockopt(s->sub, ZMQ_AFFINITY, &io_ingest, sizeof io_ingest) ||
        zmq_setsockopt(s->router, ZMQ_AFFINITY, &io_other, sizeof io_other) ||
        zmq_setsockopt(s->pub, ZMQ_AFFINITY, &io_other, sizeof io_other) ||
        s_setopt_int(s->router, ZMQ_RCVHWM, 16, "query rcvhwm")) {
        log_err("cannot configure sockets: %s", zmq_strerror(errno));
        return -1;
    }
    /* A shard subscribes to its own share only: ZeroMQ filters at the
       publishers, and the prefix is stripped before ingest sees the topic
       (s_ingest_burst). Shard 0/1 is the whole stream on the plain topic,
       as publishers send it for one shard. An aggregator ingests nothing. */
    char sub_prefix[SHARD_PREFIX_MAX + 1] = "attn/";
    size_t sub_len = 5;
    if (c->shard_n > 1) {
        s->shard_prefix_len = shard_prefix(s->shard_prefix, sizeof s->shard_prefix, c->shard_k,
                                           c->shard_n);
        memcpy(sub_prefix, s->shard_prefix, s->shard_prefix_len + 1);
        sub_len = s->shard_prefix_len;
        log_notice("ingest: shard %u of %u: subscribed to %s only", c->shard_k, c->shard_n,
                   s->shard_prefix);
    }
    if (s_setopt_int(s->sub, ZMQ_RCVHWM, (int)c->ingest_rcvhwm, "ingest.rcvhwm") ||
        zmq_setsockopt(s->sub, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        (!c->aggregate.count && zmq_setsockopt(s->sub, ZMQ_SUBSCRIBE, sub_prefix, sub_len)) ||
        s_setopt_int(s->sub, ZMQ_LINGER, 0, "ingest linger") ||
        s_setopt_int(s->pub, ZMQ_SNDHWM, (int)c->publish_sndhwm, "publish.sndhwm") ||
        s_setopt_int(s->pub, ZMQ_LINGER, 100, "publish linger") ||
        zmq_setsockopt(s->router, ZMQ_MAXMSGSIZE, &qmax, sizeof qmax) ||
        s_setopt_int(s->router, ZMQ_LINGER, 100, "query linger") ||
        s_setopt_int(s->router, ZMQ_SNDHWM, 10000, "query sndhwm")) {
        log_err("cannot configure sockets: %s", zmq_strerror(errno));
        return -1;
    }
    if (auth_apply(&s->auth, s->sub, "ingest") || auth_apply(&s->auth, s->pub, "publish") ||
        auth_apply(&s->auth, s->router, "query"))
        return -1;
    if (s_endpoint(s->pub, c->publish, true, "publish") ||
        s_endpoint(s->router, c->query, true, "query"))
        return -1;
    for (int k = 0; k < c->ingest_bind.count; k++)
        if (s_endpoint(s->sub, c->ingest_bind.items[k], true, "ingest"))
            return -1;
    for (int k = 0; k < c->ingest_connect.count; k++)
        if (s_endpoint(s->sub, c->ingest_connect.items[k], false, "ingest"))
            return -1;
    if (c->aggregate.count) {
        if (!(s->agg = aggregate_new(s)))
            return -1;
        server_wire(s);
    }
    if (c->demo) {
        if (!(s->demo = demo_start(s->zctx, c->demo_rate, (uint32_t)c->demo_batch,
                                   c->demo_drift_every)))
            return -1;
        if (s_endpoint(s->sub, DEMO_ENDPOINT, false, "ingest"))
            return -1;
    }

    return 0;
}

static void
s_reload(server_t *s)
{
    config_t next;
    if (config_reload(&next, s->argc, s->argv)) {
        log_err("SIGHUP: configuration not reloaded (errors above); keeping the running one");
        return;
    }
    char rel[512], rst[512];
    config_diff(&s->cfg, &next, rel, sizeof rel, rst, sizeof rst);
    /* Certificates may change without the configuration changing. */
    auth_reload(&s->auth, &next);
    if (rst[0])
        log_warn("SIGHUP: cannot apply without a restart: %s (kept the running values)", rst);
    /* The reference file is read again on every SIGHUP: its contents may
       have changed while its name did not. */
    if (next.reference_file[0])
        global_load_references(&s->global, &s->models, next.reference_file);
    if (!rel[0]) {
        log_notice("SIGHUP: nothing to change");
        config_free(&next);
        return;
    }
    /* Swap in the reloadable values only: the rest keeps running as it
       was started. */
    config_take_reloadable(&s->cfg, &next);
    config_free(&next);
    server_apply_options(s);
    log_notice("SIGHUP: applied %s", rel);
}

static void
s_signals(server_t *s)
{
    uint8_t sig;
    while (read(s->sigfd, &sig, 1) == 1) {
        if (sig == SIGHUP) {
            s_reload(s);
        } else {
            log_notice("received %s, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            s->stop = true;
        }
    }
}

/* Receive one whole multipart message; keeps the first `keep` frames. */
static int
s_recv_multipart(void *sock, zmq_msg_t *parts, int keep, int *total)
{
    int n = 0;
    for (;;) {
        zmq_msg_t scratch, *m = n < keep ? &parts[n] : &scratch;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(m);
            for (int k = 0; k < n && k < keep; k++)
                zmq_msg_close(&parts[k]);
            return -1;
        }
        int more = zmq_msg_more(m);
        if (m == &scratch)
            zmq_msg_close(m);
        n++;
        if (!more)
            break;
    }
    *total = n;
    return 0;
}

static void
s_close_parts(zmq_msg_t *parts, int n, int keep)
{
    for (int k = 0; k < n && k < keep; k++)
        zmq_msg_close(&parts[k]);
}

/* Is a whole message waiting on the socket? */
static bool
s_readable(void *sock)
{
    int ev = 0;
    size_t len = sizeof ev;
    return zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &len) == 0 && (ev & ZMQ_POLLIN);
}

/* Ingest messages are large and short-lived, allocated by ZeroMQ's I/O
   thread in its own malloc arena; glibc trims only the main arena's top
   by itself. Once a backlog of many bytes has drained, hand the free
   pages of every arena back, so that memory goes back after a burst. */
#define TRIM_AFTER_BYTES (64u << 20)

static void
s_ingest_burst(server_t *s)
{
    /* Latency is measured from receipt by the socket, which libzmq does
       not timestamp. A message read now arrived after the socket was last
       seen empty (ingest_empty_ns), so latencies count from there: an
       upper bound that includes any time the loop spent elsewhere (a
       long query, a snapshot) while it waited. When the socket was empty
       as this turn began (server_run sets ingest_base_ns), the poll woke
       up for it, and the turn's start is its receipt. */
    const int64_t base = s->ingest_base_ns;
    for (int k = 0; k < INGEST_BURST; k++) {
        zmq_msg_t parts[3];
        int n;
        if (s_recv_multipart(s->sub, parts, 3, &n)) {
            s->ingest_empty_ns = now_mono_ns();
            if (s->ingest_bytes_untrimmed >= TRIM_AFTER_BYTES) {
                malloc_trim(0);
                s->ingest_bytes_untrimmed = 0;
            }
            return;
        }
        for (int i = 0; i < n && i < 3; i++)
            s->ingest_bytes_untrimmed += zmq_msg_size(&parts[i]);
        ingest_frame_t frames[3];
        for (int i = 0; i < n && i < 3; i++)
            frames[i] = (ingest_frame_t){zmq_msg_data(&parts[i]), zmq_msg_size(&parts[i])};
        size_t pl = s->shard_prefix_len;
        if (pl && n >= 1 && frames[0].size > pl && memcmp(frames[0].data, s->shard_prefix, pl) == 0)
            frames[0] = (ingest_frame_t){(const char *)frames[0].data + pl, frames[0].size - pl};
        ingest_handle(&s->ingest, frames, n, base);
        s_close_parts(parts, n, 3);
    }
}

/* Send one reply: the envelope frames, then the body. */
static void
s_query_send(server_t *s, int nenv, const void *const *env, const size_t *env_len,
             const void *body, size_t len)
{
    bool ok = true;
    for (int i = 0; i < nenv && ok; i++)
        ok = zmq_send(s->router, env[i], env_len[i], ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0;
    if (!ok || zmq_send(s->router, body, len, ZMQ_DONTWAIT) < 0)
        s->stats.query_dropped++;
}

static void
s_query_burst(server_t *s)
{
    int64_t t0 = now_mono_ns();
    for (int k = 0; k < QUERY_BURST && !qworker_busy(s->qworker); k++) {
        if (k > 0 && now_mono_ns() - t0 > QUERY_TURN_NS)
            return;     /* ingest's turn; the rest waits in the socket */
        zmq_msg_t parts[QUERY_MAX_FRAMES];
        int n;
        if (s_recv_multipart(s->router, parts, QUERY_MAX_FRAMES, &n))
            return;
        /* Envelope: the identity, then up to and including the first
           empty frame (REQ); DEALER clients may send no delimiter. */
        int env = 1;
        for (int i = 1; i < n && i < QUERY_MAX_FRAMES; i++)
            if (zmq_msg_size(&parts[i]) == 0) {
                env = i + 1;
                break;
            }
        if (n > QUERY_MAX_FRAMES || env > 16) {
            s->stats.query_dropped++;
            log_limited(LOGK_QUERY_DROPPED, LOG_WARN_, "query: dropped a request of %d frames", n);
            s_close_parts(parts, n, QUERY_MAX_FRAMES);
            continue;
        }
        s->query.env = parts;
        s->query.env_n = env;
        s->query.deferred = false;
        size_t blen = n - env == 1 ? zmq_msg_size(&parts[env]) : 0;
        if (n - env != 1) {
            query_reply_error(&s->query, "bad_request", "expected exactly one request frame after the envelope");
        } else if (blen > s->cfg.query_max_size) {
            /* Not parsed: walking a huge request is the cost to avoid. */
            char why[128];
            snprintf(why, sizeof why, "request of %zu bytes is larger than query.max_size (%llu bytes)",
                     blen, (unsigned long long)s->cfg.query_max_size);
            s->stats.query_too_large++;
            query_reply_error(&s->query, "bad_request", why);
        } else if (s->agg && aggregate_take_query(s->agg, parts, env, zmq_msg_data(&parts[env]),
                                                  blen)) {
            s_close_parts(parts, n, QUERY_MAX_FRAMES);
            continue;     /* the owning shard answers (aggregate.c) */
        } else {
            query_handle(&s->query, zmq_msg_data(&parts[env]), blen);
        }
        s->query.env = NULL;
        s->query.env_n = 0;
        if (!s->query.deferred) {
            const void *ev[QUERY_MAX_FRAMES];
            size_t el[QUERY_MAX_FRAMES];
            for (int i = 0; i < env; i++) {
                ev[i] = zmq_msg_data(&parts[i]);
                el[i] = zmq_msg_size(&parts[i]);
            }
            s_query_send(s, env, ev, el, s->query.buf.data, s->query.buf.size);
        }
        s_close_parts(parts, n, QUERY_MAX_FRAMES);
    }
}

/* A worker job finished: send its reply (or the error it met). */
static void
s_query_collect(server_t *s)
{
    qjob_t *j = qworker_collect(s->qworker);
    if (!j)
        return;
    const void *body = j->buf.data;
    size_t len = j->buf.size;
    if (j->failed) {
        s->stats.queries--;     /* counted again, as an error, below */
        query_reply_error(&s->query, "internal", "out of memory for the matrices or flow");
        body = s->query.buf.data;
        len = s->query.buf.size;
    }
    s_query_send(s, j->nenv, (const void *const *)j->env, j->env_len, body, len);
    qjob_free(j);
}

/* Milliseconds until `deadline` (monotonic ns), at least 0. */
static long
s_until(int64_t deadline, int64_t now)
{
    return deadline <= now ? 0 : (long)((deadline - now + 999999) / 1000000);
}

int
server_run(server_t *s)
{
    log_notice("xplaind %s running (methods %s, fusion %s)", XPL_VERSION, s->cfg.methods, s->cfg.fusion);
    int64_t now = now_mono_ns();
    int64_t next_glob = now + (int64_t)s->cfg.glob_interval_ms * 1000000;
    int64_t next_snap = now + (int64_t)s->cfg.snapshot_interval_s * 1000000000;
    uint64_t snap_gen = s->global.gen;
    const int64_t watchdog = notify_init();
    int64_t next_status = now, next_watchdog = now;
    uint64_t last_explained = s->stats.explained;
    s->ingest_empty_ns = now;
    notify_ready();
    while (!s->stop) {
        /* Fixed slots first, then the optional ZAP handler, handshake
           monitors and metrics. */
        zmq_pollitem_t items[5 + 1 + AUTH_MONITORS + METRICS_POLL_ITEMS + AGG_POLL_ITEMS] = {
            {s->sub, 0, ZMQ_POLLIN, 0},
            /* No new query while a worker job holds one: replies go out
               in request order. */
            {s->router, 0, (short)(qworker_busy(s->qworker) ? 0 : ZMQ_POLLIN), 0},
            {NULL, s->sigfd, ZMQ_POLLIN, 0},
            {NULL, qworker_fd(s->qworker), ZMQ_POLLIN, 0},
        };
        int nitems = 4, zap = -1;
        if (s->auth.zap) {
            zap = nitems;
            items[nitems++] = (zmq_pollitem_t){s->auth.zap, 0, ZMQ_POLLIN, 0};
        }
        int first_mon = nitems;
        int nmon = auth_poll_items(&s->auth, items + first_mon);
        nitems += nmon;
        int first_metrics = nitems;
        int nmetrics = metrics_poll_items(&s->metrics, items + first_metrics);
        nitems += nmetrics;
        int first_agg = nitems;
        if (s->agg)
            aggregate_poll_items(s->agg, items, &nitems);
        now = now_mono_ns();
        /* Empty now: whatever the poll wakes up for arrives after this. */
        bool ingest_was_empty = !s_readable(s->sub);
        if (ingest_was_empty)
            s->ingest_empty_ns = now;
        long timeout = s_until(next_glob, now);
        if (s->cfg.state_dir[0] && s_until(next_snap, now) < timeout)
            timeout = s_until(next_snap, now);
        if (watchdog && s_until(next_watchdog, now) < timeout)
            timeout = s_until(next_watchdog, now);
        long mt = metrics_timeout_ms(&s->metrics, now);
        if (mt >= 0 && mt < timeout)
            timeout = mt;
        int rc = zmq_poll(items, nitems, timeout);
        const int64_t turn = now_mono_ns();
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            log_err("poll failed: %s", zmq_strerror(errno));
            return 1;
        }
        if (zap >= 0 && (items[zap].revents & ZMQ_POLLIN))
            auth_handle(&s->auth);
        if (nmon)
            auth_handle_monitors(&s->auth, items + first_mon, nmon);
        if (items[2].revents & ZMQ_POLLIN)
            s_signals(s);
        if (items[0].revents & ZMQ_POLLIN) {
            s->ingest_base_ns = ingest_was_empty ? turn : s->ingest_empty_ns;
            s_ingest_burst(s);
        } else {
            s->ingest_empty_ns = turn;
        }
        if (items[3].revents & ZMQ_POLLIN)
            s_query_collect(s);
        if (items[1].revents & ZMQ_POLLIN)
            s_query_burst(s);
        if (nmetrics)
            metrics_handle(&s->metrics, items + first_metrics, nmetrics);
        if (s->agg)
            aggregate_handle(s->agg, items, first_agg);
        now = now_mono_ns();
        if (now >= next_glob) {
            if (s->agg)
                aggregate_rebuild(s->agg);
            publish_changed(&s->publisher, &s->global, &s->models);
            /* A shard's whole state, for its aggregator, every interval:
               also the heartbeat that tells the aggregator it is alive. */
            if (s->cfg.shard_n)
                astate_publish(&s->publisher, &s->global, &s->models, &s->stats, s->cfg.shard_k,
                               s->cfg.shard_n, NULL);
            next_glob = now + (int64_t)s->cfg.glob_interval_ms * 1000000;
        }
        if (s->cfg.state_dir[0] && now >= next_snap) {
            if (s->global.gen != snap_gen &&
                state_save(&s->models, &s->global, &s->stats, s->cfg.state_dir) == 0)
                snap_gen = s->global.gen;
            next_snap = now + (int64_t)s->cfg.snapshot_interval_s * 1000000000;
        }
        if (watchdog && now >= next_watchdog) {
            notify_watchdog();
            next_watchdog = now + watchdog;
        }
        if (now >= next_status) {
            double rate = (double)(s->stats.explained - last_explained) / 5.0;
            notify_status("%u model(s), %llu trades explained (%.0f/s), %llu rejected, %llu lost",
                          s->models.count, (unsigned long long)s->stats.explained, rate,
                          (unsigned long long)s->stats.rejected_total,
                          (unsigned long long)s->stats.lost);
            last_explained = s->stats.explained;
            next_status = now + 5000000000ll;
        }
    }
    notify_stopping();
    publish_changed(&s->publisher, &s->global, &s->models);
    int status = 0;
    if (s->cfg.state_dir[0]) {
        if (state_save(&s->models, &s->global, &s->stats, s->cfg.state_dir) == 0) {
            log_notice("state: snapshot written to %s", s->cfg.state_dir);
        } else {
            /* The stop is not clean: what was explained since the last good
               snapshot is lost. Say so to the service manager. */
            log_err("state: the final snapshot failed; stopping with status 1");
            status = 1;
        }
    }
    log_notice("stopped: %llu messages received, %llu trades explained, %llu rejected",
               (unsigned long long)s->stats.received, (unsigned long long)s->stats.explained,
               (unsigned long long)s->stats.rejected_total);
    return status;
}

/* libzmq 4.3 can abort ("Transport endpoint is not connected
   (src/zap_client.cpp:78)") while it tears down a CURVE server socket
   that connected out to its peer: the session that zmq_close terminates
   still lets its engine process the peer's handshake, finds its ZAP pipe
   closing and asserts, in ZeroMQ's I/O thread. Measured: about 1 stop in
   250 with a refused model publisher reconnecting (tests/e2e/test_e2e_curve.py,
   connect mode, on a loaded machine). The final snapshot is on disk and
   the last line logged by then, so while the sockets close, an abort ends
   the process with the status the stop had earned instead of a crash
   report and a failed unit. Only with CURVE on, and only for that window;
   the sanitizers report through exit codes (scripts/test.sh), not abort. */
static volatile sig_atomic_t s_teardown_status;

static void
s_teardown_abort(int sig)
{
    (void)sig;
    static const char msg[] = "<4>xplaind: ZeroMQ aborted while closing the CURVE sockets "
                              "(a libzmq 4.3 race at teardown); the state had been saved\n";
    if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
        /* nothing more to do */
    }
    _exit(s_teardown_status);
}

void
server_destroy(server_t *s)
{
    struct sigaction old_abrt;
    bool guard = s->auth.enabled;
    if (guard) {
        s_teardown_status = s->status;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = s_teardown_abort;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGABRT, &sa, &old_abrt);
    }
    demo_stop(&s->demo);
    qworker_destroy(&s->qworker);
    aggregate_destroy(&s->agg);
    if (s->sub) zmq_close(s->sub);
    if (s->pub) zmq_close(s->pub);
    if (s->router) zmq_close(s->router);
    auth_destroy(&s->auth);
    if (s->zctx) zmq_ctx_term(s->zctx);
    s->zctx = NULL;
    if (guard)
        sigaction(SIGABRT, &old_abrt, NULL);
    if (s_sigpipe[0] >= 0) {
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        close(s_sigpipe[0]);
        close(s_sigpipe[1]);
        s_sigpipe[0] = s_sigpipe[1] = -1;
    }
    wire_decoder_destroy(&s->dec);
    xm_work_destroy(&s->work);
    query_destroy(&s->query);
    metrics_destroy(&s->metrics);
    global_destroy(&s->global);
    models_destroy(&s->models);
    cache_destroy(&s->cache);
    publisher_destroy(&s->publisher);
    config_free(&s->cfg);
}
