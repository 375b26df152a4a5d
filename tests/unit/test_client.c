/*  libxplain against a running xplaind.

    Each test starts the real daemon (fork/exec of the built binary,
    XPLAIND_PATH) on ipc:// endpoints in a temporary directory, feeds it
    with the library's own publisher and reads it back with the library's
    query client and subscriber. Published numbers are checked against
    core/xmath computed here on the same tensors. Error paths use the
    daemon too (unknown model, unknown trade, stopped daemon), or small
    fake peers (a ROUTER that answers nonsense, a PUB that publishes
    malformed messages) for what a correct daemon never sends.  */
#include <xplain/xplain.h>

#include "half.h"
#include "mpr.h"
#include "support.h"
#include "xmath.h"

#include <criterion/criterion.h>
#include <msgpack.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

/* ---- a daemon per test ---------------------------------------------- */

typedef struct {
    pid_t pid;
    char dir[64];
    char in[128], pub[128], query[128], log[128];
} daemon_t;

static daemon_t g_d;

static void
s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Start xplaind with ingest bound at d->in (or connected to `connect`),
   extra flags appended; wait until it answers ping. */
static void
daemon_start_in(daemon_t *d, const char *connect, const char *const *extra)
{
    if (!d->dir[0]) {
        snprintf(d->dir, sizeof d->dir, "/tmp/xplc-XXXXXX");
        cr_assert_not_null(mkdtemp(d->dir));
    }
    snprintf(d->in, sizeof d->in, "ipc://%s/in", d->dir);
    snprintf(d->pub, sizeof d->pub, "ipc://%s/pub", d->dir);
    snprintf(d->query, sizeof d->query, "ipc://%s/q", d->dir);
    snprintf(d->log, sizeof d->log, "%s/stderr.log", d->dir);
    const char *argv[32];
    int argc = 0;
    argv[argc++] = XPLAIND_PATH;
    argv[argc++] = "--publish";
    argv[argc++] = d->pub;
    argv[argc++] = "--query";
    argv[argc++] = d->query;
    argv[argc++] = connect ? "--ingest-connect" : "--ingest-bind";
    argv[argc++] = connect ? connect : d->in;
    for (int i = 0; extra && extra[i] && argc < 31; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    d->pid = fork();
    cr_assert(d->pid >= 0);
    if (d->pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    xpl_client_t *c = xpl_client_new(d->query);
    cr_assert_not_null(c);
    xpl_client_set_timeout(c, 200);
    for (int i = 0; i < 150; i++) {
        if (xpl_client_ping(c, NULL, 0, NULL) == 0) {
            xpl_client_destroy(&c);
            return;
        }
        int status;
        cr_assert_eq(waitpid(d->pid, &status, WNOHANG), 0, "xplaind exited early (see %s)",
                     d->log);
    }
    cr_assert_fail("xplaind did not answer ping (see %s)", d->log);
}

static void
daemon_start(daemon_t *d, const char *const *extra)
{
    daemon_start_in(d, NULL, extra);
}

/* SIGTERM and wait; the daemon must exit 0. */
static void
daemon_stop(daemon_t *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 2000 && waitpid(d->pid, &status, WNOHANG) == 0; i++)
        s_sleep_ms(10);
    if (waitpid(d->pid, &status, WNOHANG) == 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, &status, 0);
        cr_assert_fail("xplaind did not stop on SIGTERM");
    }
    d->pid = 0;
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "xplaind exited with %d", status);
}

static void
daemon_cleanup(daemon_t *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        d->pid = 0;
    }
    if (d->dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", d->dir);
        d->dir[0] = '\0';
    }
}

static void
setup(void)
{
    memset(&g_d, 0, sizeof g_d);
    daemon_start(&g_d, NULL);
}

static void
teardown(void)
{
    daemon_stop(&g_d);
    daemon_cleanup(&g_d);
}

static void
setup_nodaemon(void)
{
    memset(&g_d, 0, sizeof g_d);
    snprintf(g_d.dir, sizeof g_d.dir, "/tmp/xplc-XXXXXX");
    cr_assert_not_null(mkdtemp(g_d.dir));
}

static void
teardown_nodaemon(void)
{
    daemon_cleanup(&g_d);
}

/* ---- trades --------------------------------------------------------- */

enum { TL = 2, TH = 3, TN = 5, TCLS = 4 };
static const char *const g_tokens[TN] = {"price", "size", "spread", "side", "CLS"};
#define TRADE_VALUES (TL * TH * TN * TN)

typedef struct {
    float attn[TRADE_VALUES];
    float grad[TRADE_VALUES];
} trade_t;

static void
make_trade(trade_t *t, uint64_t seed)
{
    rng_t r;
    rng_seed(&r, seed);
    double a[TRADE_VALUES], g[TRADE_VALUES];
    gen_attention(&r, a, TL * TH * TN, TN, 2.0);
    gen_gradient(&r, g, TRADE_VALUES, 1.0);
    for (int i = 0; i < TRADE_VALUES; i++) {
        t->attn[i] = (float)a[i];
        t->grad[i] = (float)g[i];
    }
}

/* The publisher, connected to the daemon's ingest and subscribed to. */
static xpl_pub_t *
pub_open(const daemon_t *d, const char *model)
{
    xpl_pub_t *p = xpl_pub_new_connect(d->in);
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_wait_subscriber(p, 5000), 0, "%s", xpl_strerror());
    if (model)
        cr_assert_eq(xpl_pub_set_schema(p, model, TL, TH, TN, TCLS, g_tokens), 0, "%s",
                     xpl_strerror());
    return p;
}

static void
send_trade(xpl_pub_t *p, const char *model, xpl_id_t id, const trade_t *t, bool grad)
{
    int64_t target = 1;
    double y = 0.75;
    xpl_batch_t b = {.model = model, .B = 1, .ids = &id, .dtype = XPL_F32, .attn = t->attn,
                     .grad = grad ? t->grad : NULL, .target = &target, .y = &y};
    cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
}

/* Wait until the daemon has explained `count` trades of `model`. */
static void
wait_explained(const daemon_t *d, const char *model, uint64_t count)
{
    xpl_client_t *c = xpl_client_new(d->query);
    for (int i = 0; i < 500; i++) {
        xpl_models_t *ms = xpl_client_models(c);
        cr_assert_not_null(ms, "%s", xpl_strerror());
        const xpl_model_info_t *m = xpl_models_find(ms, model);
        bool done = m && m->explained + m->rejected >= count;
        xpl_models_destroy(&ms);
        if (done) {
            xpl_client_destroy(&c);
            return;
        }
        s_sleep_ms(10);
    }
    cr_assert_fail("daemon did not explain %llu trades of %s", (unsigned long long)count, model);
}

/* Beat the slow joiner: publish throw-away trades of `model` until the
   subscriber sees one, then drain what is left. */
static void
sync_sub(xpl_pub_t *p, xpl_sub_t *s, const char *model)
{
    trade_t t;
    make_trade(&t, 99);
    for (int i = 0; i < 200; i++) {
        send_trade(p, model, xpl_id_str("sync"), &t, false);
        xpl_event_t *ev = xpl_sub_recv(s, 50);
        if (ev) {
            xpl_event_destroy(&ev);
            while ((ev = xpl_sub_recv(s, 100)))
                xpl_event_destroy(&ev);
            return;
        }
    }
    cr_assert_fail("subscriber never received from %s", model);
}

/* The daemon's methods computed here on the same tensors. */
static void
expect_attr(const xpl_explanation_t *e, xm_dtype_t dtype, const void *raw_attn,
            const void *raw_grad)
{
    xm_work_t *w = xm_work_new();
    xm_opts_t o = {XM_BIT(XM_ROLLOUT) | XM_BIT(XM_GRAD_ROLLOUT) | XM_BIT(XM_FIRST_LAYER)
                       | XM_BIT(XM_ATTN_MEAN),
                   XM_FUSE_MEAN, false};
    xm_shape_t sh = {TL, TH, TN, TCLS};
    xm_result_t r;
    cr_assert_eq(xm_explain(w, &o, &sh, dtype, raw_attn, raw_grad, &r), XM_OK);
    int checked = 0;
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(r.computed & XM_BIT(m)))
            continue;
        const xpl_attr_t *a = xpl_explanation_attr(e, xm_method_name((xm_method_t)m));
        cr_assert_not_null(a, "method %s missing", xm_method_name((xm_method_t)m));
        cr_assert_eq(a->count, TN - 1);
        for (uint32_t j = 0; j < a->count; j++)
            cr_expect(close_enough(a->values[j], r.attr[m][j], 1e-5, 1e-7),
                      "%s[%u]: got %.9g want %.9g", a->method, j, a->values[j], r.attr[m][j]);
        checked++;
    }
    cr_assert_eq((uint32_t)checked, e->nattr, "daemon sent %u methods, expected %d", e->nattr,
                 checked);
    xm_work_destroy(&w);
}

/* ---- errors and small utilities --------------------------------------- */

Test(client_errors, names_and_thread_local_state)
{
    cr_assert_str_eq(xpl_errno_name(XPL_ETIMEOUT), "timeout");
    cr_assert_str_eq(xpl_errno_name(XPL_EUNKNOWN_MODEL), "unknown_model");
    cr_assert_str_eq(xpl_errno_name(XPL_ENOT_FOUND), "not_found");
    cr_assert_str_eq(xpl_errno_name(999), "unknown");
    cr_assert_str_eq(xpl_errno_name(-1), "unknown");
    cr_assert_str_eq(xpl_version(), XPL_VERSION);
    cr_assert_eq(xpl_errno(), XPL_OK);
    cr_assert_str_eq(xpl_strerror(), "");
    cr_assert_null(xpl_client_new(NULL));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert(strlen(xpl_strerror()) > 0);
}

static void *
s_thread_error(void *arg)
{
    (void)arg;
    /* A fresh thread starts with no error, whatever its parent had. */
    int *ok = malloc(sizeof *ok);
    *ok = xpl_errno() == XPL_OK && xpl_strerror()[0] == '\0';
    xpl_pub_new_bind("not-an-endpoint");
    *ok = *ok && xpl_errno() == XPL_EINVAL;
    return ok;
}

Test(client_errors, per_thread)
{
    xpl_sub_new(NULL, NULL);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    char before[512];
    snprintf(before, sizeof before, "%s", xpl_strerror());
    pthread_t t;
    void *ok;
    pthread_create(&t, NULL, s_thread_error, NULL);
    pthread_join(t, &ok);
    cr_assert(*(int *)ok);
    free(ok);
    cr_assert_str_eq(xpl_strerror(), before, "another thread's error leaked into this one");
}

Test(client_json, renders_every_type)
{
    /* {"a": [1, -2, 1.5, true, nil], "b": bin "hi!", "c": "q\"\n", 7: 0.1f} */
    static const uint8_t mp[] = {0x84, 0xa1, 'a', 0x95, 0x01, 0xfe, 0xcb, 0x3f, 0xf8, 0, 0, 0,
                                 0,    0,    0,   0xc3, 0xc0, 0xa1, 'b', 0xc4, 0x03, 'h', 'i',
                                 '!',  0xa1, 'c', 0xa3, 'q',  '"',  '\n', 0x07, 0xca, 0x3d,
                                 0xcc, 0xcc, 0xcd};
    char *j = xpl_json_from_msgpack(mp, sizeof mp);
    cr_assert_not_null(j, "%s", xpl_strerror());
    cr_assert_str_eq(j, "{\"a\": [1, -2, 1.5, true, null], \"b\": \"aGkh\", "
                        "\"c\": \"q\\\"\\u000a\", \"7\": 0.1}");
    free(j);
    /* Non-finite floats are null; invalid UTF-8 is replaced. */
    static const uint8_t nan_utf[] = {0x92, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0, 0xa2, 0xff, 'x'};
    j = xpl_json_from_msgpack(nan_utf, sizeof nan_utf);
    cr_assert_str_eq(j, "[null, \"\\ufffdx\"]");
    free(j);
    /* Truncated, declared longer than present, trailing bytes, 0xc1. */
    static const uint8_t trunc[] = {0x92, 0x01};
    static const uint8_t huge[] = {0xdd, 0xff, 0x00, 0x00, 0x00};
    static const uint8_t trail[] = {0x01, 0x02};
    static const uint8_t bad[] = {0xc1};
    cr_assert_null(xpl_json_from_msgpack(trunc, sizeof trunc));
    cr_assert_eq(xpl_errno(), XPL_EPROTO);
    cr_assert_null(xpl_json_from_msgpack(huge, sizeof huge));
    cr_assert_null(xpl_json_from_msgpack(trail, sizeof trail));
    cr_assert_null(xpl_json_from_msgpack(bad, sizeof bad));
    cr_assert_null(xpl_json_from_msgpack(NULL, 3));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    /* Nesting deeper than 32 levels is refused, not recursed into. */
    uint8_t deep[40];
    memset(deep, 0x91, sizeof deep - 1);
    deep[sizeof deep - 1] = 0x01;
    cr_assert_null(xpl_json_from_msgpack(deep, sizeof deep));
    cr_assert_eq(xpl_errno(), XPL_EPROTO);
}

/* ---- query client ------------------------------------------------------ */

Test(client_query, ping_and_accessors, .init = setup, .fini = teardown)
{
    xpl_client_t *c = xpl_client_new(g_d.query);
    cr_assert_not_null(c);
    cr_assert_str_eq(xpl_client_endpoint(c), g_d.query);
    cr_assert_eq(xpl_client_timeout(c), XPL_CLIENT_TIMEOUT_MS);
    xpl_client_set_timeout(c, 1234);
    cr_assert_eq(xpl_client_timeout(c), 1234);
    xpl_client_set_timeout(c, 0);
    cr_assert_eq(xpl_client_timeout(c), -1, "0 or negative means wait forever");
    xpl_client_set_timeout(c, 2000);
    char version[32];
    double up = -1;
    cr_assert_eq(xpl_client_ping(c, version, sizeof version, &up), 0, "%s", xpl_strerror());
    cr_assert_str_eq(version, XPL_VERSION);
    cr_assert(up >= 0);
    cr_assert(xpl_client_rtt_us(c) > 0);
    /* A small buffer gets a truncated, terminated version. */
    char tiny[3];
    cr_assert_eq(xpl_client_ping(c, tiny, sizeof tiny, NULL), 0);
    cr_assert_eq(strlen(tiny), 2);
    xpl_client_destroy(&c);
    cr_assert_null(c);
    xpl_client_destroy(&c);
}

Test(client_query, bad_endpoint)
{
    cr_assert_null(xpl_client_new("nonsense://x"));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert(strstr(xpl_strerror(), "nonsense://x"), "%s", xpl_strerror());
    cr_assert_null(xpl_client_new(""));
}

Test(client_query, unreachable_daemon_times_out, .init = setup_nodaemon, .fini = teardown_nodaemon)
{
    char ep[160];
    snprintf(ep, sizeof ep, "ipc://%s/nobody", g_d.dir);
    xpl_client_t *c = xpl_client_new(ep);
    cr_assert_not_null(c, "creating a client needs no daemon");
    xpl_client_set_timeout(c, 150);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_assert_eq(xpl_client_ping(c, NULL, 0, NULL), -1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert(strstr(xpl_strerror(), "within 150 ms"), "%s", xpl_strerror());
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    cr_assert(ms >= 140 && ms < 2000, "waited %.0f ms", ms);
    cr_assert_null(xpl_client_models(c));
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert_null(xpl_client_schema(c, "m1"));
    cr_assert_null(xpl_client_stats(c));
    cr_assert_null(xpl_client_trade(c, "m1", xpl_id_uint(1), false));
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    xpl_client_destroy(&c);
}

/* A request that timed out while the daemon was stopped gets its reply
   later; that reply must be dropped, not taken for the next request's. */
Test(client_query, late_reply_is_not_misattributed, .init = setup, .fini = teardown)
{
    xpl_client_t *c = xpl_client_new(g_d.query);
    xpl_client_set_timeout(c, 200);
    cr_assert_eq(xpl_client_ping(c, NULL, 0, NULL), 0);
    kill(g_d.pid, SIGSTOP);
    cr_assert_eq(xpl_client_ping(c, NULL, 0, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    kill(g_d.pid, SIGCONT);
    /* The daemon answers in order: once it has answered another client,
       the late ping reply is on its way to ours. */
    xpl_client_t *other = xpl_client_new(g_d.query);
    xpl_client_set_timeout(other, 10000);
    cr_assert_eq(xpl_client_ping(other, NULL, 0, NULL), 0, "%s", xpl_strerror());
    xpl_client_destroy(&other);
    xpl_client_set_timeout(c, 3000);
    xpl_models_t *ms = xpl_client_models(c);
    cr_assert_not_null(ms, "%s", xpl_strerror());
    cr_assert_eq(ms->count, 0);
    xpl_models_destroy(&ms);
    xpl_client_destroy(&c);
}

Test(client_query, models_schema_stats, .init = setup, .fini = teardown)
{
    xpl_pub_t *p = pub_open(&g_d, "m1");
    cr_assert_eq(xpl_pub_set_schema(p, "m10", TL, TH, TN, -1, g_tokens), 0);
    trade_t t;
    make_trade(&t, 1);
    for (int i = 0; i < 3; i++)
        send_trade(p, "m1", xpl_id_uint((uint64_t)i), &t, true);
    send_trade(p, "m10", xpl_id_str("x"), &t, false);
    wait_explained(&g_d, "m1", 3);
    wait_explained(&g_d, "m10", 1);

    xpl_client_t *c = xpl_client_new(g_d.query);
    xpl_models_t *ms = xpl_client_models(c);
    cr_assert_not_null(ms, "%s", xpl_strerror());
    cr_assert_eq(ms->count, 2);
    const xpl_model_info_t *m1 = xpl_models_find(ms, "m1");
    cr_assert_not_null(m1);
    cr_assert_eq(m1->epoch, 1);
    cr_assert_eq(m1->L, TL);
    cr_assert_eq(m1->H, TH);
    cr_assert_eq(m1->n, TN);
    cr_assert_eq(m1->cls, TCLS);
    cr_assert_eq(m1->received, 3);
    cr_assert_eq(m1->trades, 3);
    cr_assert_eq(m1->explained, 3);
    cr_assert_eq(m1->rejected, 0);
    cr_assert_eq(m1->lost, 0);
    cr_assert_eq(m1->last_seq, 2);
    cr_assert(m1->last_ts > 0);
    cr_assert_eq(xpl_models_find(ms, "m10")->cls, -1);
    cr_assert_null(xpl_models_find(ms, "m2"));
    xpl_models_destroy(&ms);
    cr_assert_null(ms);

    xpl_schema_t *s = xpl_client_schema(c, "m1");
    cr_assert_not_null(s, "%s", xpl_strerror());
    cr_assert_str_eq(s->model, "m1");
    cr_assert_eq(s->epoch, 1);
    cr_assert_eq(s->n, TN);
    cr_assert_eq(s->cls, TCLS);
    cr_assert_eq(s->nfeat, TN - 1);
    for (int i = 0; i < TN; i++)
        cr_assert_str_eq(s->tokens[i], g_tokens[i]);
    for (int i = 0; i < TN - 1; i++)
        cr_assert_str_eq(s->features[i], g_tokens[i]);
    cr_assert_str_eq(s->dtype, "f32");
    /* Reference counting: the second reference keeps it alive. */
    xpl_schema_t *s2 = xpl_schema_ref(s);
    cr_assert_eq(s2, s);
    xpl_schema_destroy(&s);
    cr_assert_null(s);
    cr_assert_str_eq(s2->tokens[0], "price");
    xpl_schema_destroy(&s2);
    xpl_schema_t *s10 = xpl_client_schema(c, "m10");
    cr_assert_eq(s10->nfeat, TN);
    xpl_schema_destroy(&s10);

    /* A rejected message shows in stats under its reason. */
    trade_t bad = t;
    bad.attn[3] = NAN;
    send_trade(p, "m1", xpl_id_uint(99), &bad, false);
    wait_explained(&g_d, "m1", 4);
    xpl_stats_t *st = xpl_client_stats(c);
    cr_assert_not_null(st, "%s", xpl_strerror());
    cr_assert(st->uptime_s >= 0);
    cr_assert_eq(st->received, 5);
    cr_assert_eq(st->received_trades, 5);
    cr_assert_eq(st->explained, 4);
    cr_assert_eq(st->rejected, 1);
    cr_assert_eq(st->lost, 0);
    cr_assert(st->published >= 4);
    cr_assert(st->queries >= 1);
    uint64_t v;
    cr_assert_eq(xpl_stats_counter(st, "explained", &v), 0);
    cr_assert_eq(v, 4);
    cr_assert_eq(xpl_stats_counter(st, "no_such_counter", &v), -1);
    bool found = false;
    for (uint32_t i = 0; i < st->nreasons; i++)
        if (strcmp(st->rejected_by_reason[i].name, "nonfinite") == 0) {
            cr_assert_eq(st->rejected_by_reason[i].value, 1);
            found = true;
        }
    cr_assert(found, "every reason is listed, nonfinite included");
    cr_assert_eq(st->latency_us.count, 4);
    cr_assert(st->latency_us.p50 > 0 && st->latency_us.p50 <= st->latency_us.max);
    cr_assert(st->latency_us.p99 <= st->latency_us.max);
    cr_assert_eq(st->nmodels, 2);
    xpl_stats_destroy(&st);
    cr_assert_null(st);
    xpl_client_destroy(&c);
    xpl_pub_destroy(&p);
}

Test(client_query, unknown_model_and_trade, .init = setup, .fini = teardown)
{
    xpl_pub_t *p = pub_open(&g_d, "m1");
    trade_t t;
    make_trade(&t, 2);
    send_trade(p, "m1", xpl_id_str("t-1"), &t, false);
    wait_explained(&g_d, "m1", 1);
    xpl_client_t *c = xpl_client_new(g_d.query);
    cr_assert_null(xpl_client_schema(c, "m9"));
    cr_assert_eq(xpl_errno(), XPL_EUNKNOWN_MODEL);
    cr_assert(strstr(xpl_strerror(), "m9"), "%s", xpl_strerror());
    cr_assert_null(xpl_client_trade(c, "m9", xpl_id_str("t-1"), false));
    cr_assert_eq(xpl_errno(), XPL_EUNKNOWN_MODEL);
    cr_assert_null(xpl_client_trade(c, "m1", xpl_id_str("t-2"), false));
    cr_assert_eq(xpl_errno(), XPL_ENOT_FOUND);
    cr_assert_null(xpl_client_trade(c, "m1", xpl_id_uint(1), false), "ids are typed");
    cr_assert_eq(xpl_errno(), XPL_ENOT_FOUND);
    cr_assert_null(xpl_client_schema(c, NULL));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_client_trade(c, NULL, xpl_id_uint(1), false));
    cr_assert_null(xpl_client_trade(c, "m1", xpl_id_str(NULL), false));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    xpl_client_destroy(&c);
    xpl_pub_destroy(&p);
}

Test(client_query, trade_with_matrices, .init = setup, .fini = teardown)
{
    xpl_pub_t *p = pub_open(&g_d, "m1");
    trade_t t;
    make_trade(&t, 3);
    send_trade(p, "m1", xpl_id_uint(42), &t, true);
    send_trade(p, "m1", xpl_id_str("nograd"), &t, false);
    wait_explained(&g_d, "m1", 2);
    xpl_client_t *c = xpl_client_new(g_d.query);
    xpl_explanation_t *e = xpl_client_trade(c, "m1", xpl_id_uint(42), false);
    cr_assert_not_null(e, "%s", xpl_strerror());
    cr_assert_str_eq(e->model, "m1");
    cr_assert(!e->id.is_str);
    cr_assert_eq(e->id.u, 42);
    cr_assert_eq(e->epoch, 1);
    cr_assert(e->has_target && e->target == 1);
    cr_assert(e->has_y && e->y == 0.75);
    cr_assert_eq(e->n, TN);
    cr_assert_eq(e->cls, TCLS);
    cr_assert_eq(e->nfeat, TN - 1);
    cr_assert_str_eq(e->features[2], "spread");
    expect_attr(e, XM_F32, t.attn, t.grad);
    cr_assert_eq(e->nmatrices, 2);
    const xpl_matrix_t *R = xpl_explanation_matrix(e, "rollout");
    cr_assert_not_null(R);
    cr_assert_eq(R->n, TN);
    /* The readout of R (row cls without column cls) is the rollout vector. */
    const xpl_attr_t *ro = xpl_explanation_attr(e, "rollout");
    for (uint32_t j = 0, k = 0; j < TN; j++) {
        if (j == TCLS)
            continue;
        cr_expect(close_enough(R->values[TCLS * TN + j], ro->values[k], 1e-5, 1e-7));
        k++;
    }
    cr_assert_not_null(xpl_explanation_matrix(e, "grad_rollout"));
    cr_assert_null(xpl_explanation_matrix(e, "flow"));
    cr_assert_null(xpl_explanation_attr(e, "flow"));
    xpl_explanation_destroy(&e);
    cr_assert_null(e);

    e = xpl_client_trade(c, "m1", xpl_id_str("nograd"), true);
    cr_assert_not_null(e, "%s", xpl_strerror());
    cr_assert(e->id.is_str);
    cr_assert_str_eq(e->id.s, "nograd");
    cr_assert_eq(e->nmatrices, 1);
    cr_assert_null(xpl_explanation_attr(e, "grad_rollout"));
    const xpl_attr_t *fl = xpl_explanation_attr(e, "flow");
    cr_assert_not_null(fl, "flow computed on demand");
    cr_assert_eq(fl->count, TN - 1);
    xpl_explanation_destroy(&e);
    xpl_client_destroy(&c);
    xpl_pub_destroy(&p);
}

Test(client_query, raw_request, .init = setup, .fini = teardown)
{
    xpl_client_t *c = xpl_client_new(g_d.query);
    static const char ping[] = "\x82\xa1v\x01\xa2op\xa4ping";
    void *reply = NULL;
    size_t size = 0;
    cr_assert_eq(xpl_client_request(c, ping, sizeof ping - 1, &reply, &size), 0, "%s",
                 xpl_strerror());
    char *j = xpl_json_from_msgpack(reply, size);
    cr_assert(strstr(j, "\"ok\": true") && strstr(j, "\"version\""), "%s", j);
    free(j);
    free(reply);

    static const char frob[] = "\x82\xa1v\x01\xa2op\xa4" "frob";
    cr_assert_eq(xpl_client_request(c, frob, sizeof frob - 1, &reply, &size), -1);
    cr_assert_null(reply);
    cr_assert_eq(xpl_errno(), XPL_EUNKNOWN_OP);
    cr_assert(strstr(xpl_strerror(), "frob"), "%s", xpl_strerror());

    static const char notmap[] = "\x93\x01\x02\x03";
    cr_assert_eq(xpl_client_request(c, notmap, sizeof notmap - 1, &reply, &size), -1);
    cr_assert_eq(xpl_errno(), XPL_EBAD_REQUEST);
    static const char garbage[] = "\xc1\xc1";
    cr_assert_eq(xpl_client_request(c, garbage, 2, &reply, &size), -1);
    cr_assert_eq(xpl_errno(), XPL_EBAD_REQUEST);
    /* An argument of the wrong type. */
    static const char badarg[] = "\x83\xa1v\x01\xa2op\xa6schema\xa5model\x07";
    cr_assert_eq(xpl_client_request(c, badarg, sizeof badarg - 1, &reply, &size), -1);
    cr_assert_eq(xpl_errno(), XPL_EBAD_REQUEST);
    cr_assert_eq(xpl_client_request(c, ping, 0, &reply, &size), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    xpl_client_destroy(&c);
}

/* ---- a fake daemon that answers nonsense --------------------------------- */

typedef struct {
    void *ctx;
    char ep[160];
    const void *reply;
    size_t size;
    int mode;           /* 0: [env][reply]; 1: no delimiter; 2: two body frames */
    volatile int served;
} fake_router_t;

static void *
s_fake_router(void *arg)
{
    fake_router_t *f = arg;
    void *r = zmq_socket(f->ctx, ZMQ_ROUTER);
    /* The reply must go out before the socket closes: zmq_ctx_term
       (s_ask_fake) waits for it, rather than a guess of how long it takes. */
    int linger = 10000;
    zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger);
    zmq_bind(r, f->ep);
    zmq_pollitem_t it = {r, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 5000) > 0) {
        zmq_msg_t parts[4];
        int n = 0;
        for (bool more = true; more && n < 4; n++) {
            zmq_msg_init(&parts[n]);
            zmq_msg_recv(&parts[n], r, 0);
            more = zmq_msg_more(&parts[n]);
        }
        /* parts: identity, request id, empty, body */
        zmq_send(r, zmq_msg_data(&parts[0]), zmq_msg_size(&parts[0]), ZMQ_SNDMORE);
        zmq_send(r, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), ZMQ_SNDMORE);
        if (f->mode != 1)
            zmq_send(r, "", 0, ZMQ_SNDMORE);
        if (f->mode == 2)
            zmq_send(r, f->reply, f->size, ZMQ_SNDMORE);
        zmq_send(r, f->reply, f->size, 0);
        for (int i = 0; i < n; i++)
            zmq_msg_close(&parts[i]);
        f->served = 1;
    }
    zmq_close(r);
    return NULL;
}

/* Ask `op` of a fake daemon that answers `reply` (in `mode`); returns
   the error code. */
static int
s_ask_fake(const char *op, const void *reply, size_t size, int mode)
{
    fake_router_t f = {.reply = reply, .size = size, .mode = mode};
    f.ctx = zmq_ctx_new();
    snprintf(f.ep, sizeof f.ep, "ipc://%s/fake", g_d.dir);
    pthread_t th;
    pthread_create(&th, NULL, s_fake_router, &f);
    xpl_client_t *c = xpl_client_new(f.ep);
    xpl_client_set_timeout(c, 3000);
    int rc;
    if (strcmp(op, "ping") == 0)
        rc = xpl_client_ping(c, NULL, 0, NULL);
    else if (strcmp(op, "schema") == 0) {
        xpl_schema_t *s = xpl_client_schema(c, "m1");
        rc = s ? 0 : -1;
        xpl_schema_destroy(&s);
    } else if (strcmp(op, "stats") == 0) {
        xpl_stats_t *s = xpl_client_stats(c);
        rc = s ? 0 : -1;
        xpl_stats_destroy(&s);
    } else if (strcmp(op, "models") == 0) {
        xpl_models_t *s = xpl_client_models(c);
        rc = s ? 0 : -1;
        xpl_models_destroy(&s);
    } else {
        xpl_explanation_t *e = xpl_client_trade(c, "m1", xpl_id_uint(1), false);
        rc = e ? 0 : -1;
        xpl_explanation_destroy(&e);
    }
    int code = rc ? xpl_errno() : XPL_OK;
    xpl_client_destroy(&c);
    pthread_join(th, NULL);
    zmq_ctx_term(f.ctx);
    cr_assert(f.served);
    return code;
}

#define FAKE(op, bytes, mode) s_ask_fake(op, bytes, sizeof(bytes) - 1, mode)

Test(client_malformed, replies_that_break_the_contract, .init = setup_nodaemon,
     .fini = teardown_nodaemon)
{
    cr_assert_eq(FAKE("ping", "\x83\xa1v\x01\xa2ok\xc3\xa7version\xa3" "1.0", 0), XPL_OK);
    cr_assert_eq(FAKE("ping", "\xc1", 0), XPL_EPROTO);
    cr_assert(strstr(xpl_strerror(), "reply to 'ping'"), "%s", xpl_strerror());
    cr_assert_eq(FAKE("ping", "\x93\x01\x02\x03", 0), XPL_EPROTO);                 /* not a map */
    cr_assert_eq(FAKE("ping", "\x81\xa2ok\xc3", 0), XPL_EPROTO);                   /* no v */
    cr_assert_eq(FAKE("ping", "\x82\xa1v\x02\xa2ok\xc3", 0), XPL_EPROTO);          /* v 2 */
    cr_assert_eq(FAKE("ping", "\x81\xa1v\x01", 0), XPL_EPROTO);                    /* no ok */
    cr_assert_eq(FAKE("ping", "\x82\xa1v\x01\xa2ok\xc3", 0), XPL_EPROTO);          /* no version */
    cr_assert_eq(FAKE("ping", "\x82\xa1v\x01\xa2ok\xc3\x00", 0), XPL_EPROTO);      /* trailing */
    cr_assert_eq(FAKE("ping", "\x82\xa1v\x01\xa2ok\xc3", 1), XPL_EPROTO);          /* no delim */
    cr_assert(strstr(xpl_strerror(), "delimiter"), "%s", xpl_strerror());
    cr_assert_eq(FAKE("ping", "\x83\xa1v\x01\xa2ok\xc3\xa7version\xa1x", 2), XPL_EPROTO);
    cr_assert(strstr(xpl_strerror(), "more than one body frame"), "%s", xpl_strerror());
    /* ok: false with a code this library does not know, or none. */
    cr_assert_eq(FAKE("ping", "\x84\xa1v\x01\xa2ok\xc2\xa4" "code\xa3new\xa5" "error\xa4oops", 0),
                 XPL_ESERVER);
    cr_assert(strstr(xpl_strerror(), "oops"), "%s", xpl_strerror());
    cr_assert_eq(FAKE("ping", "\x82\xa1v\x01\xa2ok\xc2", 0), XPL_ESERVER);
    /* The daemon's out-of-memory code has its own errno. */
    cr_assert_eq(FAKE("ping", "\x84\xa1v\x01\xa2ok\xc2\xa4" "code\xa8internal\xa5" "error\xad"
                      "out of memory", 0), XPL_EINTERNAL);
    cr_assert_str_eq(xpl_errno_name(XPL_EINTERNAL), "internal");
    /* Results with missing or mistyped keys. */
    cr_assert_eq(FAKE("schema", "\x82\xa1v\x01\xa2ok\xc3", 0), XPL_EPROTO);
    cr_assert(strstr(xpl_strerror(), "'model'"), "%s", xpl_strerror());
    cr_assert_eq(FAKE("models", "\x83\xa1v\x01\xa2ok\xc3\xa6models\x01", 0), XPL_EPROTO);
    cr_assert_eq(FAKE("models", "\x83\xa1v\x01\xa2ok\xc3\xa6models\x91\x01", 0), XPL_EPROTO);
    cr_assert_eq(FAKE("models", "\x83\xa1v\x01\xa2ok\xc3\xa6models\x90", 0), XPL_OK);
    cr_assert_eq(FAKE("stats", "\x83\xa1v\x01\xa2ok\xc3\xa6models\x90", 0), XPL_EPROTO);
    cr_assert_eq(FAKE("trade", "\x83\xa1v\x01\xa2ok\xc3\xa5model\xa2m1", 0), XPL_EPROTO);
    /* A schema whose token count does not match n. */
    cr_assert_eq(FAKE("schema",
                      "\x8a\xa1v\x01\xa2ok\xc3\xa5model\xa2m1\xa5" "epoch\x01\xa1L\x01\xa1H\x01"
                      "\xa1n\x03\xa3" "cls\xff\xa6tokens\x92\xa1" "a\xa1" "b\xa8" "features\x92"
                      "\xa1" "a\xa1" "b",
                      0),
                 XPL_EPROTO);
    cr_assert(strstr(xpl_strerror(), "2 tokens for n = 3"), "%s", xpl_strerror());
}

/* ---- subscriber -------------------------------------------------------- */

Test(client_sub, explanations_with_features, .init = setup, .fini = teardown)
{
    xpl_pub_t *p = pub_open(&g_d, "m1");
    cr_assert_eq(xpl_pub_set_schema(p, "m10", TL, TH, TN, TCLS, g_tokens), 0);
    xpl_sub_t *s = xpl_sub_new(g_d.pub, g_d.query);
    cr_assert_not_null(s, "%s", xpl_strerror());
    cr_assert_not_null(xpl_sub_client(s));
    cr_assert_eq(xpl_sub_subscribe(s, XPL_KIND_XPL, "m1"), 0);
    sync_sub(p, s, "m1");

    trade_t t[3];
    for (int i = 0; i < 3; i++) {
        make_trade(&t[i], 10 + (uint64_t)i);
        send_trade(p, "m10", xpl_id_uint((uint64_t)i), &t[i], true);   /* filtered out */
        send_trade(p, "m1", xpl_id_uint((uint64_t)i), &t[i], true);
    }
    const xpl_schema_t *first = NULL;
    for (int i = 0; i < 3; i++) {
        xpl_event_t *ev = xpl_sub_recv(s, 5000);
        cr_assert_not_null(ev, "%s", xpl_strerror());
        cr_assert_eq(ev->kind, XPL_KIND_XPL);
        cr_assert_str_eq(ev->model, "m1", "m10 must not match a subscription to m1");
        xpl_explanation_t *e = ev->explanation;
        cr_assert_eq(ev->seq, e->seq);
        cr_assert_eq(e->id.u, (uint64_t)i);
        cr_assert_eq(e->epoch, 1);
        cr_assert(e->ts > 0);
        cr_assert_not_null(e->features, "features attached from the schema query");
        cr_assert_eq(e->nfeat, TN - 1);
        cr_assert_str_eq(e->features[3], "side");
        cr_assert_not_null(e->schema);
        if (!first)
            first = e->schema;
        else
            cr_assert_eq(e->schema, first, "one cached schema shared by reference");
        expect_attr(e, XM_F32, t[i].attn, t[i].grad);
        xpl_event_destroy(&ev);
        cr_assert_null(ev);
    }
    cr_assert_null(xpl_sub_recv(s, 200));
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert_eq(xpl_sub_lost(s), 0);
    cr_assert_eq(xpl_sub_malformed(s), 0);
    cr_assert_str_eq(xpl_sub_last_malformed(s), "");
    xpl_sub_destroy(&s);
    cr_assert_null(s);
    xpl_sub_destroy(&s);
    xpl_pub_destroy(&p);
}

Test(client_sub, every_model_no_features_and_taking_members, .init = setup, .fini = teardown)
{
    xpl_pub_t *p = pub_open(&g_d, "a");
    cr_assert_eq(xpl_pub_set_schema(p, "b", TL, TH, TN, TCLS, g_tokens), 0);
    xpl_sub_t *s = xpl_sub_new(g_d.pub, NULL);
    cr_assert_null(xpl_sub_client(s));
    cr_assert_eq(xpl_sub_subscribe(s, XPL_KIND_ALL, NULL), 0);
    sync_sub(p, s, "a");
    trade_t t;
    make_trade(&t, 5);
    send_trade(p, "a", xpl_id_str("1"), &t, false);
    send_trade(p, "b", xpl_id_str("2"), &t, false);
    xpl_explanation_t *kept = NULL;
    for (int i = 0; i < 2; i++) {
        xpl_event_t *ev = xpl_sub_recv(s, 5000);
        cr_assert_not_null(ev, "%s", xpl_strerror());
        cr_assert_str_eq(ev->model, i == 0 ? "a" : "b");
        cr_assert_null(ev->explanation->features, "no query endpoint: no names");
        cr_assert_null(ev->explanation->schema);
        if (i == 1) {
            kept = ev->explanation;     /* take it */
            ev->explanation = NULL;
        }
        xpl_event_destroy(&ev);
    }
    cr_assert_str_eq(kept->id.s, "2");
    cr_assert_not_null(xpl_explanation_attr(kept, "rollout"));
    xpl_explanation_destroy(&kept);
    xpl_sub_destroy(&s);
    xpl_pub_destroy(&p);
}

Test(client_sub, bad_arguments, .init = setup_nodaemon, .fini = teardown_nodaemon)
{
    cr_assert_null(xpl_sub_new(NULL, NULL));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_sub_new("nonsense://", NULL));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_sub_new("ipc:///tmp/x", "nonsense://"));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    char ep[160];
    snprintf(ep, sizeof ep, "ipc://%s/nobody", g_d.dir);
    xpl_sub_t *s = xpl_sub_new(ep, NULL);
    cr_assert_not_null(s);
    cr_assert_eq(xpl_sub_subscribe(s, 0, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_eq(xpl_sub_subscribe(s, 0x100, NULL), -1);
    cr_assert_eq(xpl_sub_subscribe(s, XPL_KIND_XPL, "bad name!"), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_sub_recv(s, 0));
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    xpl_sub_destroy(&s);
}

static volatile sig_atomic_t g_alarm;

static void
s_on_alarm(int sig)
{
    (void)sig;
    g_alarm = 1;
}

Test(client_sub, interrupted_by_a_signal, .init = setup_nodaemon, .fini = teardown_nodaemon)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    char ep[160];
    snprintf(ep, sizeof ep, "ipc://%s/nobody", g_d.dir);
    xpl_sub_t *s = xpl_sub_new(ep, NULL);
    xpl_sub_subscribe(s, XPL_KIND_XPL, NULL);
    alarm(1);
    cr_assert_null(xpl_sub_recv(s, -1));
    cr_assert_eq(xpl_errno(), XPL_EINTR);
    cr_assert(g_alarm);
    xpl_sub_destroy(&s);
}

/* A fake daemon PUB: messages a correct daemon never sends. */
static void
s_fake_send(void *pub, const char *topic, const void *body, size_t size)
{
    zmq_send(pub, topic, strlen(topic), ZMQ_SNDMORE);
    zmq_send(pub, body, size, 0);
}

static size_t
s_fake_xpl(uint8_t *buf, const char *model, uint64_t seq)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 7);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_str_with_body(&pk, "model", 5);
    msgpack_pack_str_with_body(&pk, model, strlen(model));
    msgpack_pack_str_with_body(&pk, "id", 2);
    msgpack_pack_uint64(&pk, seq);
    msgpack_pack_str_with_body(&pk, "seq", 3);
    msgpack_pack_uint64(&pk, seq);
    msgpack_pack_str_with_body(&pk, "ts", 2);
    msgpack_pack_int64(&pk, 1);
    msgpack_pack_str_with_body(&pk, "epoch", 5);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_str_with_body(&pk, "attr", 4);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str_with_body(&pk, "rollout", 7);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_float(&pk, 0.25f);
    msgpack_pack_double(&pk, 0.75);
    size_t n = sb.size;
    memcpy(buf, sb.data, n);
    msgpack_sbuffer_destroy(&sb);
    return n;
}

Test(client_sub, malformed_messages_and_lost_counting, .init = setup_nodaemon,
     .fini = teardown_nodaemon)
{
    void *ctx = zmq_ctx_new();
    void *pub = zmq_socket(ctx, ZMQ_PUB);
    char ep[160];
    snprintf(ep, sizeof ep, "ipc://%s/fakepub", g_d.dir);
    cr_assert_eq(zmq_bind(pub, ep), 0);
    xpl_sub_t *s = xpl_sub_new(ep, NULL);
    xpl_sub_subscribe(s, XPL_KIND_XPL, NULL);
    uint8_t good[256];
    xpl_event_t *ev = NULL;
    for (int i = 0; i < 200 && !ev; i++) {   /* slow joiner */
        s_fake_send(pub, "xpl/f", good, s_fake_xpl(good, "f", 0));
        ev = xpl_sub_recv(s, 20);
    }
    cr_assert_not_null(ev);
    cr_assert_eq(ev->explanation->attr[0].count, 2);
    cr_assert_float_eq(ev->explanation->attr[0].values[0], 0.25f, 0);
    cr_assert_float_eq(ev->explanation->attr[0].values[1], 0.75f, 0);
    xpl_event_destroy(&ev);
    while ((ev = xpl_sub_recv(s, 100)))
        xpl_event_destroy(&ev);
    uint64_t base = xpl_sub_malformed(s);

    s_fake_send(pub, "xpl/f", "\xc1", 1);                               /* not msgpack */
    s_fake_send(pub, "xpl/f", "\x81\xa1v\x02", 4);                      /* v 2 */
    s_fake_send(pub, "xpl/f", "\x81\xa1v\x01", 4);                      /* no keys */
    zmq_send(pub, "xpl/f", 5, 0);                                       /* one frame */
    s_fake_send(pub, "xpl/g", good, s_fake_xpl(good, "f", 1));          /* model differs */
    size_t n = s_fake_xpl(good, "f", 1);
    good[n - 9] = 0xdd;     /* the float64 0.75 becomes a header of a billion items */
    s_fake_send(pub, "xpl/f", good, n);
    s_fake_send(pub, "other/f", good, n);                               /* unknown topic */
    s_fake_send(pub, "xpl/f", good, s_fake_xpl(good, "f", 4));          /* seq 1-3 lost */
    ev = xpl_sub_recv(s, 3000);
    cr_assert_not_null(ev, "%s", xpl_strerror());
    cr_assert_eq(ev->seq, 4);
    xpl_event_destroy(&ev);
    cr_assert_eq(xpl_sub_malformed(s) - base, 6, "got %llu",
                 (unsigned long long)(xpl_sub_malformed(s) - base));
    cr_assert_neq(xpl_sub_last_malformed(s)[0], '\0');
    cr_assert_eq(xpl_sub_lost(s), 3);
    /* The daemon restarting (seq back to 0) is no loss. */
    s_fake_send(pub, "xpl/f", good, s_fake_xpl(good, "f", 0));
    s_fake_send(pub, "xpl/f", good, s_fake_xpl(good, "f", 1));
    for (int i = 0; i < 2; i++) {
        ev = xpl_sub_recv(s, 3000);
        cr_assert_not_null(ev);
        xpl_event_destroy(&ev);
    }
    cr_assert_eq(xpl_sub_lost(s), 3);
    xpl_sub_destroy(&s);
    zmq_close(pub);
    zmq_ctx_term(ctx);
}

/* ---- publisher --------------------------------------------------------- */

Test(client_pub, bad_arguments, .init = setup_nodaemon, .fini = teardown_nodaemon)
{
    cr_assert_null(xpl_pub_new_bind(NULL));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_pub_new_bind("nonsense://x"));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_pub_new_connect("nonsense://x"));
    xpl_pub_t *p = xpl_pub_new_bind("tcp://127.0.0.1:*");
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert(strncmp(xpl_pub_endpoint(p), "tcp://127.0.0.1:", 16) == 0);
    cr_assert_neq(strcmp(xpl_pub_endpoint(p), "tcp://127.0.0.1:*"), 0, "port resolved");
    const char *tok[2] = {"a", "b"}, *holey[2] = {"a", NULL};
    cr_assert_eq(xpl_pub_set_schema(p, "bad name", 1, 1, 2, -1, tok), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_eq(xpl_pub_set_schema(p, NULL, 1, 1, 2, -1, tok), -1);
    cr_assert_eq(xpl_pub_set_schema(p, "m", 0, 1, 2, -1, tok), -1);
    cr_assert_eq(xpl_pub_set_schema(p, "m", 1, 1, 2, 2, tok), -1);
    cr_assert_eq(xpl_pub_set_schema(p, "m", 1, 1, 2, -2, tok), -1);
    cr_assert_eq(xpl_pub_set_schema(p, "m", 1, 1, 2, -1, NULL), -1);
    cr_assert_eq(xpl_pub_set_schema(p, "m", 1, 1, 2, -1, holey), -1);
    cr_assert_eq(xpl_pub_set_wire_dtype(p, 7), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_eq(xpl_pub_set_wire_dtype(p, XPL_WIRE_AS_GIVEN), 0);
    float a[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    xpl_id_t id = xpl_id_uint(1), nullid = xpl_id_str(NULL);
    xpl_batch_t b = {.model = "m", .B = 1, .ids = &id, .dtype = XPL_F32, .attn = a};
    cr_assert_eq(xpl_pub_send(p, &b), -1, "no schema yet");
    cr_assert(strstr(xpl_strerror(), "no schema"), "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(p, "m", 1, 1, 2, -1, tok), 0);
    cr_assert_eq(xpl_pub_send(p, NULL), -1);
    b.B = 0;
    cr_assert_eq(xpl_pub_send(p, &b), -1);
    b.B = 1;
    b.attn = NULL;
    cr_assert_eq(xpl_pub_send(p, &b), -1);
    b.attn = a;
    b.dtype = (xpl_dtype_t)9;
    cr_assert_eq(xpl_pub_send(p, &b), -1);
    b.dtype = XPL_F32;
    b.ids = &nullid;
    cr_assert_eq(xpl_pub_send(p, &b), -1);
    b.ids = &id;
    cr_assert_eq(xpl_pub_next_seq(p, "m"), 0);
    cr_assert_eq(xpl_pub_send(p, &b), 0, "nobody listening is not an error");
    cr_assert_eq(xpl_pub_next_seq(p, "m"), 1);
    cr_assert_eq(xpl_pub_next_seq(p, "other"), 0);
    cr_assert_eq(xpl_pub_wait_subscriber(p, 50), -1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    xpl_pub_set_linger(p, 0);
    xpl_pub_destroy(&p);
    cr_assert_null(p);
    xpl_pub_destroy(&p);
}

/* Batches in f32, f16 and bf16 buffers, and f32 converted on the wire:
   the daemon's numbers equal xmath's on the values the wire carried. */
Test(client_pub, dtypes_and_batches, .init = setup, .fini = teardown)
{
    xpl_pub_t *p = pub_open(&g_d, "m1");
    xpl_sub_t *s = xpl_sub_new(g_d.pub, g_d.query);
    xpl_sub_subscribe(s, XPL_KIND_XPL, "m1");
    sync_sub(p, s, "m1");

    enum { B = 3 };
    trade_t t[B];
    float attn[B * TRADE_VALUES], grad[B * TRADE_VALUES];
    for (int b = 0; b < B; b++) {
        make_trade(&t[b], 100 + (uint64_t)b);
        memcpy(attn + b * TRADE_VALUES, t[b].attn, sizeof t[b].attn);
        memcpy(grad + b * TRADE_VALUES, t[b].grad, sizeof t[b].grad);
    }
    uint16_t a16[B * TRADE_VALUES], g16[B * TRADE_VALUES];
    xpl_id_t ids[B] = {xpl_id_str("b0"), xpl_id_str("b1"), xpl_id_str("b2")};
    int64_t target[B] = {0, 1, 2};
    double y[B] = {0.1, 0.2, 0.3};
    struct {
        xpl_dtype_t given;
        int wire;
        xm_dtype_t xm;
    } cases[] = {
        {XPL_F32, XPL_WIRE_AS_GIVEN, XM_F32}, {XPL_F16, XPL_WIRE_AS_GIVEN, XM_F16},
        {XPL_BF16, XPL_WIRE_AS_GIVEN, XM_BF16}, {XPL_F32, XPL_F16, XM_F16},
        {XPL_F32, XPL_BF16, XM_BF16}, {XPL_F16, XPL_F32, XM_F32}, {XPL_BF16, XPL_F16, XM_F16},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const void *ga = attn, *gg = grad;
        if (cases[c].given == XPL_F16) {
            half_f16_encode(a16, attn, B * TRADE_VALUES);
            half_f16_encode(g16, grad, B * TRADE_VALUES);
            ga = a16;
            gg = g16;
        } else if (cases[c].given == XPL_BF16) {
            half_bf16_encode(a16, attn, B * TRADE_VALUES);
            half_bf16_encode(g16, grad, B * TRADE_VALUES);
            ga = a16;
            gg = g16;
        }
        cr_assert_eq(xpl_pub_set_wire_dtype(p, cases[c].wire), 0);
        xpl_batch_t b = {.model = "m1", .B = B, .ids = ids, .dtype = cases[c].given,
                         .attn = ga, .grad = gg, .target = target, .y = y, .ts = 12345};
        cr_assert_eq(xpl_pub_send(p, &b), 0, "%s", xpl_strerror());
        for (int k = 0; k < B; k++) {
            xpl_event_t *ev = xpl_sub_recv(s, 5000);
            cr_assert_not_null(ev, "case %zu: %s", c, xpl_strerror());
            xpl_explanation_t *e = ev->explanation;
            cr_assert_str_eq(e->id.s, ids[k].s);
            cr_assert_eq(e->ts, 12345);
            cr_assert(e->has_target && e->target == target[k]);
            cr_assert(e->has_y && e->y == y[k]);
            /* What the wire carried for this trade, in the wire dtype. */
            float fa[TRADE_VALUES], fg[TRADE_VALUES];
            const float *srca = attn + k * TRADE_VALUES, *srcg = grad + k * TRADE_VALUES;
            if (cases[c].given != XPL_F32) {
                (cases[c].given == XPL_F16 ? half_f16_decode : half_bf16_decode)(
                    fa, a16 + k * TRADE_VALUES, TRADE_VALUES);
                (cases[c].given == XPL_F16 ? half_f16_decode : half_bf16_decode)(
                    fg, g16 + k * TRADE_VALUES, TRADE_VALUES);
                srca = fa;
                srcg = fg;
            }
            uint16_t wa[TRADE_VALUES], wg[TRADE_VALUES];
            const void *rawa = srca, *rawg = srcg;
            if (cases[c].xm == XM_F16) {
                half_f16_encode(wa, srca, TRADE_VALUES);
                half_f16_encode(wg, srcg, TRADE_VALUES);
                rawa = wa;
                rawg = wg;
            } else if (cases[c].xm == XM_BF16) {
                half_bf16_encode(wa, srca, TRADE_VALUES);
                half_bf16_encode(wg, srcg, TRADE_VALUES);
                rawa = wa;
                rawg = wg;
            }
            expect_attr(e, cases[c].xm, rawa, rawg);
            xpl_event_destroy(&ev);
        }
        xpl_schema_t *sc = xpl_client_schema(xpl_sub_client(s), "m1");
        cr_assert_str_eq(sc->dtype, cases[c].xm == XM_F32 ? "f32"
                                    : cases[c].xm == XM_F16 ? "f16" : "bf16");
        xpl_schema_destroy(&sc);
    }
    xpl_sub_destroy(&s);
    xpl_pub_destroy(&p);
}

/* A schema change is a new epoch; feature names follow it. */
Test(client_pub, schema_change_starts_an_epoch, .init = setup, .fini = teardown)
{
    xpl_pub_t *p = pub_open(&g_d, "m1");
    xpl_sub_t *s = xpl_sub_new(g_d.pub, g_d.query);
    xpl_sub_subscribe(s, XPL_KIND_XPL, "m1");
    sync_sub(p, s, "m1");
    cr_assert_eq(xpl_pub_set_schema(p, "m1", TL, TH, TN, TCLS, g_tokens), 0, "same: no-op");
    const char *renamed[TN] = {"px", "qty", "spread", "side", "CLS"};
    cr_assert_eq(xpl_pub_set_schema(p, "m1", TL, TH, TN, TCLS, renamed), 0);
    trade_t t;
    make_trade(&t, 7);
    send_trade(p, "m1", xpl_id_str("after"), &t, false);
    xpl_event_t *ev = xpl_sub_recv(s, 5000);
    cr_assert_not_null(ev, "%s", xpl_strerror());
    cr_assert_eq(ev->explanation->epoch, 2);
    cr_assert_not_null(ev->explanation->features);
    cr_assert_str_eq(ev->explanation->features[0], "px");
    xpl_event_destroy(&ev);
    xpl_sub_destroy(&s);
    xpl_pub_destroy(&p);
}

/* The daemon connects to a bound publisher; a daemon that (re)starts
   after the first message still learns the schema, because the XPUB sees
   its subscription and sends cls/tokens again. */
Test(client_pub, restarted_daemon_learns_schema, .init = setup_nodaemon,
     .fini = teardown_nodaemon)
{
    char ep[160];
    snprintf(ep, sizeof ep, "ipc://%s/model", g_d.dir);
    xpl_pub_t *p = xpl_pub_new_bind(ep);
    cr_assert_not_null(p, "%s", xpl_strerror());
    cr_assert_eq(xpl_pub_set_schema(p, "m1", TL, TH, TN, TCLS, g_tokens), 0);
    trade_t t;
    make_trade(&t, 8);
    for (int round = 0; round < 2; round++) {
        /* Wait for this daemon's subscription: in round 1 the stopped
           daemon's unsubscription may not have reached the publisher yet,
           so wait_subscriber could return on it and the trade be lost. */
        uint64_t before = xpl_pub_subscriptions(p);
        daemon_start_in(&g_d, ep, NULL);
        cr_assert_eq(xpl_pub_wait_subscriptions(p, before, 10000), 0,
                     "round %d: the daemon never subscribed: %s", round, xpl_strerror());
        uint64_t sent = 0;
        if (round == 0) {
            send_trade(p, "m1", xpl_id_uint(1), &t, false);
            sent++;
        }
        /* Round 1: a new daemon, and the schema went out in round 0. */
        send_trade(p, "m1", xpl_id_uint(2), &t, false);
        sent++;
        wait_explained(&g_d, "m1", sent);
        xpl_client_t *c = xpl_client_new(g_d.query);
        xpl_models_t *ms = xpl_client_models(c);
        cr_assert_eq(xpl_models_find(ms, "m1")->explained, sent, "round %d", round);
        xpl_models_destroy(&ms);
        xpl_client_destroy(&c);
        daemon_stop(&g_d);
    }
    xpl_pub_destroy(&p);
}

/* With schema_every, cls and tokens go out every k-th message. */
Test(client_pub, schema_every, .init = setup_nodaemon, .fini = teardown_nodaemon)
{
    char ep[160];
    snprintf(ep, sizeof ep, "ipc://%s/model", g_d.dir);
    xpl_pub_t *p = xpl_pub_new_bind(ep);
    const char *tok[2] = {"a", "b"};
    xpl_pub_set_schema(p, "m", 1, 1, 2, -1, tok);
    xpl_pub_set_schema_every(p, 3);
    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    zmq_connect(sub, ep);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "attn/", 5);
    cr_assert_eq(xpl_pub_wait_subscriber(p, 5000), 0);
    float a[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    xpl_id_t id = xpl_id_uint(1);
    xpl_batch_t b = {.model = "m", .B = 1, .ids = &id, .dtype = XPL_F32, .attn = a};
    int with_tokens[7];
    for (int i = 0; i < 7; i++) {
        cr_assert_eq(xpl_pub_send(p, &b), 0);
        char topic[16];
        int tl = zmq_recv(sub, topic, sizeof topic, 0);
        cr_assert_eq(tl, 6);
        cr_assert_eq(memcmp(topic, "attn/m", 6), 0);
        zmq_msg_t body;
        zmq_msg_init(&body);
        cr_assert(zmq_msg_recv(&body, sub, 0) > 0);
        /* Walk the body map with the bounded reader. */
        mpr_t r;
        mpr_obj_t o;
        mpr_init(&r, zmq_msg_data(&body), zmq_msg_size(&body));
        cr_assert_eq(mpr_next(&r, &o), MPR_OK);
        cr_assert_eq(o.type, MPR_MAP);
        with_tokens[i] = 0;
        uint32_t pairs = o.v.count;
        for (uint32_t k = 0; k < pairs; k++) {
            mpr_obj_t key;
            cr_assert_eq(mpr_next(&r, &key), MPR_OK);
            if (mpr_str_eq(&key, "tokens"))
                with_tokens[i] = 1;
            if (mpr_str_eq(&key, "seq")) {
                mpr_obj_t v;
                cr_assert_eq(mpr_next(&r, &v), MPR_OK);
                cr_assert_eq(v.v.u, (uint64_t)i);
                continue;
            }
            cr_assert_eq(mpr_skip(&r, 8), MPR_OK);
        }
        cr_assert_eq(mpr_left(&r), 0);
        zmq_msg_close(&body);
    }
    /* First message, then every third after it. */
    int want[7] = {1, 0, 0, 1, 0, 0, 1};
    for (int i = 0; i < 7; i++)
        cr_assert_eq(with_tokens[i], want[i], "message %d", i);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    xpl_pub_destroy(&p);
}

/* ---- global state, drift, heads ------------------------------------------ */

/* A trade whose attention focuses on token `focus` (every row), so that
   the attribution ranking is known and a change of focus is drift. */
static void
make_focused(trade_t *t, int focus, uint64_t seed)
{
    rng_t r;
    rng_seed(&r, seed);
    for (int i = 0; i < TRADE_VALUES; i++) {
        int j = i % TN;
        t->attn[i] = (float)((j == focus ? 0.8 : 0.2 / (TN - 1)) * (0.95 + 0.1 * rng_uniform(&r)));
        t->grad[i] = (float)(rng_normal(&r) * 0.1 + (j == focus ? 1.0 : 0.0));
    }
    for (int row = 0; row < TL * TH * TN; row++) {     /* rows sum to 1 */
        double s = 0;
        for (int j = 0; j < TN; j++)
            s += t->attn[row * TN + j];
        for (int j = 0; j < TN; j++)
            t->attn[row * TN + j] = (float)(t->attn[row * TN + j] / s);
    }
}

static const char *const g_flags_fast[] = {"--glob-interval-ms", "10", "--drift-window", "4",
                                           "--half-life", "3", NULL};

static void
setup_fast(void)
{
    memset(&g_d, 0, sizeof g_d);
    daemon_start(&g_d, g_flags_fast);
}

Test(client_global, global_matches_the_explanations, .init = setup_fast, .fini = teardown)
{
    xpl_pub_t *p = pub_open(&g_d, "m1");
    enum { NT = 6 };
    trade_t t[NT];
    xm_work_t *w = xm_work_new();
    xm_opts_t o = {XM_BIT(XM_ROLLOUT) | XM_BIT(XM_GRAD_ROLLOUT) | XM_BIT(XM_FIRST_LAYER)
                       | XM_BIT(XM_ATTN_MEAN),
                   XM_FUSE_MEAN, false};
    xm_shape_t sh = {TL, TH, TN, TCLS};
    double sum[TN - 1] = {0}, sq[TN - 1] = {0}, dec[TN - 1] = {0};
    const double alpha = 1 - pow(2, -1.0 / 3);
    for (int k = 0; k < NT; k++) {
        make_trade(&t[k], 200 + (uint64_t)k);
        send_trade(p, "m1", xpl_id_uint((uint64_t)k), &t[k], true);
        xm_result_t r;
        xm_explain(w, &o, &sh, XM_F32, t[k].attn, t[k].grad, &r);
        for (int j = 0; j < TN - 1; j++) {
            double x = r.attr[XM_ROLLOUT][j];
            sum[j] += x;
            sq[j] += x * x;
            dec[j] = k == 0 ? x : dec[j] + alpha * (x - dec[j]);
        }
    }
    xm_work_destroy(&w);
    wait_explained(&g_d, "m1", NT);

    xpl_client_t *c = xpl_client_new(g_d.query);
    xpl_global_t *g = xpl_client_global(c, "m1", NULL, NULL, NULL);
    cr_assert_not_null(g, "%s", xpl_strerror());
    cr_assert_str_eq(g->model, "m1");
    cr_assert_eq(g->epoch, 1);
    cr_assert_eq(g->count, NT);
    cr_assert_eq(g->nfeat, TN - 1);
    cr_assert_str_eq(g->features[0], "price");
    cr_assert_float_eq(g->half_life, 3.0, 0);
    cr_assert_eq(g->nmethods, 4);
    const xpl_method_state_t *m = xpl_global_method(g, "rollout");
    cr_assert_not_null(m);
    cr_assert_eq(m->count, NT);
    cr_assert_null(m->reference);
    cr_assert(isnan(m->reference_spearman));
    for (int j = 0; j < TN - 1; j++) {
        double mean = sum[j] / NT, sd = sqrt((sq[j] - NT * mean * mean) / (NT - 1));
        cr_expect(close_enough(m->mean[j], mean, 1e-6, 1e-9), "mean[%d] %g vs %g", j, m->mean[j],
                  mean);
        cr_expect(close_enough(m->std[j], sd, 1e-4, 1e-7), "std[%d] %g vs %g", j, m->std[j], sd);
        cr_expect(close_enough(m->decayed[j], dec[j], 1e-6, 1e-9), "decayed[%d]", j);
    }
    cr_assert_null(xpl_global_method(g, "flow"));
    cr_assert_eq(g->ntargets, 1, "every trade had target 1");
    const xpl_target_state_t *ts = xpl_global_target(g, 1);
    cr_assert_not_null(ts);
    cr_assert_eq(ts->nmethods, 4);
    cr_assert_eq(ts->methods[0].count, NT);
    cr_assert_null(xpl_global_target(g, 0));
    cr_assert_eq(g->untracked_targets, 0);
    xpl_global_t *g2 = xpl_global_ref(g);
    xpl_global_destroy(&g);
    cr_assert_null(g);
    cr_assert_eq(g2->count, NT);
    xpl_global_destroy(&g2);

    /* Restricted to a method and a target. */
    int64_t target = 1;
    uint64_t epoch = 1;
    g = xpl_client_global(c, "m1", "attn_mean", &target, &epoch);
    cr_assert_not_null(g, "%s", xpl_strerror());
    cr_assert_eq(g->nmethods, 1);
    cr_assert_str_eq(g->methods[0].method, "attn_mean");
    cr_assert_eq(g->ntargets, 1);
    xpl_global_destroy(&g);
    epoch = 9;
    cr_assert_null(xpl_client_global(c, "m1", NULL, NULL, &epoch));
    cr_assert_eq(xpl_errno(), XPL_ENOT_FOUND);
    cr_assert_null(xpl_client_global(c, "m1", "frob", NULL, NULL));
    cr_assert_eq(xpl_errno(), XPL_EBAD_ARGUMENT);
    cr_assert_null(xpl_client_global(c, "m1", "flow", NULL, NULL));
    cr_assert_eq(xpl_errno(), XPL_ENOT_FOUND);
    cr_assert_null(xpl_client_global(c, "m9", NULL, NULL, NULL));
    cr_assert_eq(xpl_errno(), XPL_EUNKNOWN_MODEL);
    cr_assert_null(xpl_client_global(c, NULL, NULL, NULL, NULL));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    xpl_client_destroy(&c);
    xpl_pub_destroy(&p);
}

Test(client_global, drift_alerts_baseline_reference, .init = setup_fast, .fini = teardown)
{
    xpl_pub_t *p = pub_open(&g_d, "m1");
    xpl_sub_t *s = xpl_sub_new(g_d.pub, NULL);
    cr_assert_eq(xpl_sub_subscribe(s, XPL_KIND_DRIFT | XPL_KIND_HEADS | XPL_KIND_GLOB, "m1"), 0);
    sync_sub(p, s, "m1");   /* heads/glob of the sync trades arrive within 10 ms */
    xpl_event_t *ev;
    while ((ev = xpl_sub_recv(s, 300)))
        xpl_event_destroy(&ev);
    /* The sync trades opened a window; fill it, then one window focused
       on token 0 (the baseline), then one on token 3: drift. */
    xpl_client_t *c = xpl_client_new(g_d.query);
    xpl_drift_state_t *d = xpl_client_drift(c, "m1", "rollout", NULL);
    cr_assert_not_null(d, "%s", xpl_strerror());
    uint64_t filled = d->methods[0].filled;
    xpl_drift_state_destroy(&d);
    trade_t t;
    uint64_t id = 1000;
    make_focused(&t, 0, 1);
    for (uint64_t k = filled ? filled : 4; k < 4; k++)
        send_trade(p, "m1", xpl_id_uint(id++), &t, true);
    for (int k = 0; k < 4; k++) {
        make_focused(&t, 0, (uint64_t)k);
        send_trade(p, "m1", xpl_id_uint(id++), &t, true);
    }
    xpl_client_baseline(c, "m1", XPL_BASELINE_RESET, NULL);
    for (int k = 0; k < 4; k++) {
        make_focused(&t, 0, 10 + (uint64_t)k);
        send_trade(p, "m1", xpl_id_uint(id++), &t, true);
    }
    for (int k = 0; k < 4; k++) {
        make_focused(&t, 3, 20 + (uint64_t)k);
        send_trade(p, "m1", xpl_id_uint(id++), &t, true);
    }
    int drift = 0, heads = 0, glob = 0, alerts = 0;
    for (int i = 0; i < 200 && (alerts == 0 || heads == 0 || glob == 0); i++) {
        ev = xpl_sub_recv(s, 2000);
        cr_assert_not_null(ev, "%s", xpl_strerror());
        if (ev->kind == XPL_KIND_DRIFT) {
            xpl_drift_t *dr = ev->drift;
            cr_assert_str_eq(dr->model, "m1");
            cr_assert_eq(dr->trades, 4);
            cr_assert_eq(dr->epoch, 1);
            cr_assert_not_null(dr->method);
            if (dr->window.compared && !isnan(dr->window.spearman))
                cr_assert(dr->window.spearman >= -1 && dr->window.spearman <= 1);
            if (!dr->window.compared)
                cr_assert(isnan(dr->window.spearman));
            alerts += dr->window.alert;
            drift++;
            ev->drift = NULL;   /* taken from the event, freed on its own */
            xpl_drift_destroy(&dr);
            cr_assert_null(dr);
        } else if (ev->kind == XPL_KIND_HEADS) {
            cr_assert_eq(ev->heads->L, TL);
            cr_assert_eq(ev->heads->H, TH);
            cr_assert(ev->heads->confidence_count > 0);
            for (int k = 0; k < TL * TH; k++)
                cr_assert(ev->heads->confidence[k] > 0 && ev->heads->confidence[k] <= 1.0 + 1e-9);
            heads++;
            xpl_heads_t *h = ev->heads;
            ev->heads = NULL;
            xpl_heads_destroy(&h);
            cr_assert_null(h);
        } else {
            cr_assert_eq(ev->kind, XPL_KIND_GLOB);
            cr_assert_eq(ev->seq, ev->global->seq);
            glob++;
        }
        xpl_event_destroy(&ev);
    }
    cr_assert(alerts > 0, "no drift alert after the focus moved (%d drift messages)", drift);

    d = xpl_client_drift(c, "m1", NULL, NULL);
    cr_assert_not_null(d, "%s", xpl_strerror());
    cr_assert_eq(d->window, 4);
    cr_assert_float_eq(d->rho_min, 0.8, 1e-12);
    cr_assert_float_eq(d->ndcg_min, 0.9, 1e-12);
    cr_assert_float_eq(d->js_max, 0.1, 1e-12);
    cr_assert_eq(d->ndcg_k, 10);
    cr_assert_eq(d->nmethods, 4);
    const xpl_drift_method_t *dm = xpl_drift_state_method(d, "rollout");
    cr_assert_not_null(dm);
    cr_assert(dm->has_last && dm->windows >= 3);
    cr_assert_str_eq(dm->reference, "baseline");
    cr_assert_null(xpl_drift_state_method(d, "flow"));
    cr_assert(d->alerts_total >= 1 && d->nalerts >= 1);
    cr_assert_str_eq(d->alerts[d->nalerts - 1].reference, "baseline");
    xpl_drift_state_destroy(&d);
    cr_assert_null(xpl_client_drift(c, "m9", NULL, NULL));
    cr_assert_eq(xpl_errno(), XPL_EUNKNOWN_MODEL);

    /* Pin, reset, reference. */
    cr_assert_eq(xpl_client_baseline(c, "m1", XPL_BASELINE_PIN, NULL), 4, "%s", xpl_strerror());
    d = xpl_client_drift(c, "m1", "rollout", NULL);
    cr_assert_str_eq(d->methods[0].reference, "pinned");
    xpl_drift_state_destroy(&d);
    cr_assert_eq(xpl_client_baseline(c, "m1", XPL_BASELINE_RESET, "rollout"), 1);
    cr_assert_eq(xpl_client_baseline(c, "m9", XPL_BASELINE_PIN, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_EUNKNOWN_MODEL);
    cr_assert_eq(xpl_client_baseline(c, "m1", (xpl_baseline_t)7, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);

    double ref[TN - 1] = {0.1, 0.2, 0.3, 0.4};
    double rho = 0;
    cr_assert_eq(xpl_client_reference(c, "m1", "rollout", ref, TN - 1, &rho), 0, "%s",
                 xpl_strerror());
    cr_assert(rho >= -1 && rho <= 1, "rho %g", rho);
    xpl_global_t *g = xpl_client_global(c, "m1", "rollout", NULL, NULL);
    const xpl_method_state_t *m = xpl_global_method(g, "rollout");
    cr_assert_not_null(m->reference);
    cr_assert_float_eq(m->reference[3], 0.4, 1e-12);
    cr_assert_float_eq(m->reference_spearman, rho, 1e-12);
    xpl_global_destroy(&g);
    d = xpl_client_drift(c, "m1", "rollout", NULL);
    cr_assert_str_eq(d->methods[0].reference, "external");
    xpl_drift_state_destroy(&d);
    cr_assert_eq(xpl_client_reference(c, "m1", "rollout", ref, TN - 2, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_EBAD_ARGUMENT);
    ref[1] = INFINITY;
    cr_assert_eq(xpl_client_reference(c, "m1", "rollout", ref, TN - 1, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_EBAD_ARGUMENT);
    cr_assert_eq(xpl_client_reference(c, "m1", "frob", ref, TN - 1, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_EBAD_ARGUMENT);
    cr_assert_eq(xpl_client_reference(c, "m1", NULL, ref, TN - 1, NULL), -1);
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    xpl_client_destroy(&c);
    xpl_sub_destroy(&s);
    xpl_pub_destroy(&p);
}

Test(client_malformed, global_drift_heads_messages, .init = setup_nodaemon,
     .fini = teardown_nodaemon)
{
    void *ctx = zmq_ctx_new();
    void *pub = zmq_socket(ctx, ZMQ_PUB);
    char ep[160];
    snprintf(ep, sizeof ep, "ipc://%s/fakepub", g_d.dir);
    cr_assert_eq(zmq_bind(pub, ep), 0);
    xpl_sub_t *s = xpl_sub_new(ep, NULL);
    xpl_sub_subscribe(s, XPL_KIND_ALL, "f");
    uint8_t good[256];
    xpl_event_t *ev = NULL;
    for (int i = 0; i < 200 && !ev; i++) {
        s_fake_send(pub, "xpl/f", good, s_fake_xpl(good, "f", 0));
        ev = xpl_sub_recv(s, 20);
    }
    cr_assert_not_null(ev);
    xpl_event_destroy(&ev);
    while ((ev = xpl_sub_recv(s, 100)))
        xpl_event_destroy(&ev);
    uint64_t base = xpl_sub_malformed(s);
    /* glob: mean of 2 values where features says 1; drift: no window;
       heads: L*H overflowing 32 bits; heads: rows of the wrong length. */
    static const char glob[] = "\x87\xa1v\x01\xa5model\xa1" "f\xa3seq\x01\xa2ts\x01\xa5" "epoch"
                               "\x01\xa5" "count\x01\xa7methods\x81\xa7rollout\x84\xa5" "count"
                               "\x01\xa4mean\x92\x01\x02\xa3std\x92\x00\x00\xa7" "decayed\x91\x00";
    static const char drift[] = "\x85\xa1v\x01\xa5model\xa1" "f\xa3seq\x01\xa5" "epoch\x01\xa6"
                                "method\xa7rollout";
    static const char heads_big[] = "\x86\xa1v\x01\xa5model\xa1" "f\xa3seq\x01\xa2ts\x01\xa1L"
                                    "\xce\xff\xff\xff\xff\xa1H\xce\xff\xff\xff\xff";
    static const char heads_row[] = "\x89\xa1v\x01\xa5model\xa1" "f\xa3seq\x01\xa2ts\x01\xa5"
                                    "epoch\x01\xa1L\x01\xa1H\x02\xaaimportance\x91\x91\x01\xaa"
                                    "confidence\x91\x92\x01\x01";
    s_fake_send(pub, "glob/f", glob, sizeof glob - 1);
    s_fake_send(pub, "drift/f", drift, sizeof drift - 1);
    s_fake_send(pub, "heads/f", heads_big, sizeof heads_big - 1);
    s_fake_send(pub, "heads/f", heads_row, sizeof heads_row - 1);
    s_fake_send(pub, "xpl/f", good, s_fake_xpl(good, "f", 1));
    ev = xpl_sub_recv(s, 3000);
    cr_assert_not_null(ev);
    cr_assert_eq(ev->kind, XPL_KIND_XPL);
    xpl_event_destroy(&ev);
    cr_assert_eq(xpl_sub_malformed(s) - base, 4, "%s", xpl_sub_last_malformed(s));
    xpl_sub_destroy(&s);
    zmq_close(pub);
    zmq_ctx_term(ctx);
}

/* ---- the Clone-pattern view ---------------------------------------------- */

Test(client_view, bad_arguments_and_unreachable, .init = setup_nodaemon,
     .fini = teardown_nodaemon)
{
    char sub[160], q[160];
    snprintf(sub, sizeof sub, "ipc://%s/p", g_d.dir);
    snprintf(q, sizeof q, "ipc://%s/q", g_d.dir);
    cr_assert_null(xpl_view_new(NULL, q, "m1", 100));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_view_new(sub, q, "bad name", 100));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_view_new(sub, q, "m1", 0));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_view_new("nonsense://", q, "m1", 100));
    cr_assert_eq(xpl_errno(), XPL_EINVAL);
    cr_assert_null(xpl_view_new(sub, q, "m1", 200));
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    cr_assert(strstr(xpl_strerror(), "is xplaind running?"), "%s", xpl_strerror());
}

Test(client_view, unknown_model_then_empty_then_filled, .init = setup_fast, .fini = teardown)
{
    cr_assert_null(xpl_view_new(g_d.pub, g_d.query, "m1", 2000));
    cr_assert_eq(xpl_errno(), XPL_EUNKNOWN_MODEL);
    /* A model with a schema but no global state yet: an empty view. */
    xpl_pub_t *p = pub_open(&g_d, "m1");
    trade_t t;
    make_trade(&t, 1);
    xpl_batch_t bad = {.model = "m1", .B = 1, .ids = (xpl_id_t[]){xpl_id_uint(0)},
                       .dtype = XPL_F32, .attn = t.attn};
    t.attn[0] = NAN;    /* the schema is learned, the trade rejected */
    cr_assert_eq(xpl_pub_send(p, &bad), 0);
    wait_explained(&g_d, "m1", 1);
    xpl_view_t *v = xpl_view_new(g_d.pub, g_d.query, "m1", 2000);
    cr_assert_not_null(v, "%s", xpl_strerror());
    cr_assert_null(xpl_view_state(v));
    cr_assert_eq(xpl_errno(), XPL_ENOT_FOUND);
    xpl_view_stats_t st;
    xpl_view_stats(v, &st);
    cr_assert_eq(st.version, 0);
    cr_assert_eq(st.age_ms, -1);
    cr_assert(st.synced);
    cr_assert_eq(xpl_view_wait(v, 0, 50), -1);
    cr_assert_eq(xpl_errno(), XPL_ETIMEOUT);
    make_trade(&t, 2);
    send_trade(p, "m1", xpl_id_uint(1), &t, true);
    cr_assert_eq(xpl_view_wait(v, 0, 5000), 0, "%s", xpl_strerror());
    xpl_global_t *g = xpl_view_state(v);
    cr_assert_not_null(g);
    cr_assert_eq(g->count, 1);
    xpl_view_stats(v, &st);
    cr_assert(st.version >= 1 && st.updates >= 1);
    cr_assert(st.age_ms >= 0);
    xpl_view_destroy(&v);
    cr_assert_null(v);
    xpl_view_destroy(&v);
    cr_assert_eq(g->count, 1, "a state outlives its view");
    xpl_global_destroy(&g);
    xpl_pub_destroy(&p);
}

/* Readers in several threads while trades stream in: every state a reader
   gets is whole (per-method counts agree with the state's count, every
   trade is in a target class) and never older than one it saw before;
   at the end the view equals a fresh snapshot. */
typedef struct {
    xpl_view_t *view;
    atomic_bool *done;
    uint64_t reads, max_count;
    int errors;
} reader_t;

static void *
s_reader(void *arg)
{
    reader_t *r = arg;
    uint64_t last_seq = 0, last_count = 0;
    while (!atomic_load(r->done)) {
        xpl_global_t *g = xpl_view_state(r->view);
        if (!g)
            continue;
        r->reads++;
        if (g->seq < last_seq || g->count < last_count)
            r->errors++;
        last_seq = g->seq;
        last_count = g->count;
        uint64_t in_targets = 0;
        for (uint32_t i = 0; i < g->ntargets; i++)
            in_targets += g->targets[i].methods[0].count;
        if (in_targets != g->count)
            r->errors++;
        for (uint32_t i = 0; i < g->nmethods; i++)
            if (strcmp(g->methods[i].method, "grad_rollout") && g->methods[i].count != g->count)
                r->errors++;
        r->max_count = g->count;
        xpl_global_destroy(&g);
    }
    return NULL;
}

Test(client_view, concurrent_updates, .init = setup_fast, .fini = teardown, .timeout = 120)
{
    xpl_pub_t *p = pub_open(&g_d, "m1");
    trade_t t;
    make_trade(&t, 1);
    send_trade(p, "m1", xpl_id_uint(0), &t, true);
    wait_explained(&g_d, "m1", 1);
    xpl_view_t *v = xpl_view_new(g_d.pub, g_d.query, "m1", 3000);
    cr_assert_not_null(v, "%s", xpl_strerror());
    atomic_bool done;
    atomic_init(&done, false);
    enum { NR = 3, NT = 400 };
    reader_t r[NR];
    pthread_t th[NR];
    for (int i = 0; i < NR; i++) {
        r[i] = (reader_t){.view = v, .done = &done};
        pthread_create(&th[i], NULL, s_reader, &r[i]);
    }
    for (int k = 1; k <= NT; k++) {
        int64_t target = k % 3;
        xpl_id_t id = xpl_id_uint((uint64_t)k);
        xpl_batch_t b = {.model = "m1", .B = 1, .ids = &id, .dtype = XPL_F32, .attn = t.attn,
                         .grad = k % 2 ? t.grad : NULL, .target = &target};
        cr_assert_eq(xpl_pub_send(p, &b), 0);
        if (k % 50 == 0)
            s_sleep_ms(20);     /* let several glob/ messages go out mid-stream */
    }
    wait_explained(&g_d, "m1", NT + 1);
    /* The last glob/ goes out within the publish interval. */
    xpl_global_t *g = NULL;
    for (int i = 0; i < 500; i++) {
        g = xpl_view_state(v);
        if (g && g->count == NT + 1)
            break;
        xpl_global_destroy(&g);
        xpl_view_wait(v, xpl_view_version(v), 100);
    }
    atomic_store(&done, true);
    for (int i = 0; i < NR; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(r[i].errors, 0, "reader %d saw %d torn or older states", i, r[i].errors);
        cr_expect(r[i].reads > 0);
    }
    cr_assert_not_null(g, "view never reached the final count");
    xpl_client_t *c = xpl_client_new(g_d.query);
    xpl_global_t *snap = xpl_client_global(c, "m1", NULL, NULL, NULL);
    cr_assert_not_null(snap, "%s", xpl_strerror());
    cr_assert_eq(snap->count, g->count);
    cr_assert_eq(snap->nmethods, g->nmethods);
    for (uint32_t i = 0; i < g->nmethods; i++) {
        const xpl_method_state_t *a = &g->methods[i], *b = xpl_global_method(snap, a->method);
        cr_assert_not_null(b);
        for (uint32_t j = 0; j < g->nfeat; j++)
            cr_assert_float_eq(a->mean[j], b->mean[j], 0, "%s[%u]", a->method, j);
    }
    xpl_view_stats_t st;
    xpl_view_stats(v, &st);
    cr_assert(st.snapshots >= 1);
    cr_assert(st.updates >= 2, "updates %llu", (unsigned long long)st.updates);
    cr_assert_eq(st.restarts, 0);
    xpl_global_destroy(&snap);
    xpl_global_destroy(&g);
    xpl_client_destroy(&c);
    xpl_view_destroy(&v);
    xpl_pub_destroy(&p);
}

/* The daemon restarts (fresh state, seq from 0): the view notices, takes a
   new snapshot, and shows the new daemon's state, never the old one's. */
Test(client_view, daemon_restart, .init = setup_fast, .fini = teardown, .timeout = 120)
{
    xpl_pub_t *p = pub_open(&g_d, "m1");
    trade_t t;
    make_trade(&t, 1);
    for (int k = 0; k < 20; k++)
        send_trade(p, "m1", xpl_id_uint((uint64_t)k), &t, true);
    wait_explained(&g_d, "m1", 20);
    xpl_view_t *v = xpl_view_new(g_d.pub, g_d.query, "m1", 2000);
    cr_assert_not_null(v, "%s", xpl_strerror());
    xpl_global_t *g = xpl_view_state(v);
    cr_assert_eq(g->count, 20);
    xpl_global_destroy(&g);

    daemon_stop(&g_d);
    xpl_pub_destroy(&p);
    daemon_start(&g_d, g_flags_fast);
    p = pub_open(&g_d, "m1");
    for (int k = 0; k < 3; k++)
        send_trade(p, "m1", xpl_id_uint((uint64_t)k), &t, true);
    wait_explained(&g_d, "m1", 3);
    for (int i = 0; i < 100; i++) {
        g = xpl_view_state(v);
        if (g && g->count == 3)
            break;
        xpl_global_destroy(&g);
        xpl_view_wait(v, xpl_view_version(v), 100);
    }
    cr_assert_not_null(g, "the view never showed the restarted daemon's state");
    cr_assert_eq(g->count, 3);
    xpl_global_destroy(&g);
    xpl_view_stats_t st;
    xpl_view_stats(v, &st);
    cr_assert(st.reconnects >= 1, "the new daemon is a new connection");
    cr_assert(st.snapshots >= 2);
    cr_assert(st.synced);
    xpl_view_destroy(&v);
    xpl_pub_destroy(&p);
}
