/*  libxplain and segments, against the real daemon (--segment-by desk):
    a view of one segment follows glob/<model>/<segment> by the Clone
    pattern while a view of the model overall, subscribed to the prefix
    glob/<model> that also matches the segments' topics, keeps the
    model's state only; xpl_client_global_segment answers with the
    segment's state and seq; the drift reply's alerts name their segment
    and what moved. Trades with tags are sent as raw ingest messages (a
    ZeroMQ PUB and msgpack-c), the contract of proto/ingest.md.  */
#include <xplain/xplain.h>

#include "support.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <msgpack.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

enum { L = 1, H = 2, N = 4, CLS = 3 };
static const char *const g_tokens[N] = {"f0", "f1", "f2", "CLS"};

static char g_dir[64], g_in[96], g_pub[96], g_query[96], g_log[96];
static pid_t g_pid;

static void
s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void
setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/xplseg-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    snprintf(g_in, sizeof g_in, "ipc://%s/in", g_dir);
    snprintf(g_pub, sizeof g_pub, "ipc://%s/pub", g_dir);
    snprintf(g_query, sizeof g_query, "ipc://%s/q", g_dir);
    snprintf(g_log, sizeof g_log, "%s/stderr.log", g_dir);
    g_pid = fork();
    cr_assert(g_pid >= 0);
    if (g_pid == 0) {
        int fd = open(g_log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(XPLAIND_PATH, XPLAIND_PATH, "--publish", g_pub, "--query", g_query,
              "--ingest-bind", g_in, "--segment-by", "desk", "--drift-window", "4",
              "--glob-interval-ms", "10", "--methods", "rollout", (char *)NULL);
        _exit(127);
    }
    xpl_client_t *c = xpl_client_new(g_query);
    cr_assert_not_null(c);
    xpl_client_set_timeout(c, 200);
    for (int i = 0; i < 150; i++) {
        if (xpl_client_ping(c, NULL, 0, NULL) == 0) {
            xpl_client_destroy(&c);
            return;
        }
        int status;
        cr_assert_eq(waitpid(g_pid, &status, WNOHANG), 0, "xplaind exited early (see %s)", g_log);
    }
    cr_assert_fail("xplaind did not answer ping (see %s)", g_log);
}

static void
teardown(void)
{
    if (g_pid > 0) {
        kill(g_pid, SIGTERM);
        int status = 0;
        for (int i = 0; i < 1000 && waitpid(g_pid, &status, WNOHANG) == 0; i++)
            s_sleep_ms(10);
        if (waitpid(g_pid, &status, WNOHANG) == 0) {
            kill(g_pid, SIGKILL);
            waitpid(g_pid, &status, 0);
        }
        g_pid = 0;
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", g_dir);
}

static void
s_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* One trade of model `model` and `desk` whose attention focuses on
   token `focus`. */
static void
s_send_model(void *sock, const char *model, uint64_t seq, uint64_t id, const char *desk, int focus)
{
    float attn[L * H * N * N];
    for (int r = 0; r < L * H * N; r++)
        for (int j = 0; j < N; j++)
            attn[r * N + j] = j == focus ? 0.7f : 0.1f;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 13);
    s_str(&pk, "v");
    msgpack_pack_uint8(&pk, 1);
    s_str(&pk, "model");
    s_str(&pk, model);
    s_str(&pk, "seq");
    msgpack_pack_uint64(&pk, seq);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    s_str(&pk, "ts");
    msgpack_pack_int64(&pk, (int64_t)now.tv_sec * 1000000000 + now.tv_nsec);
    s_str(&pk, "ids");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, id);
    s_str(&pk, "L");
    msgpack_pack_uint32(&pk, L);
    s_str(&pk, "H");
    msgpack_pack_uint32(&pk, H);
    s_str(&pk, "n");
    msgpack_pack_uint32(&pk, N);
    s_str(&pk, "dtype");
    s_str(&pk, "f32");
    s_str(&pk, "attn");
    msgpack_pack_bin(&pk, sizeof attn);
    msgpack_pack_bin_body(&pk, attn, sizeof attn);
    s_str(&pk, "cls");
    msgpack_pack_uint32(&pk, CLS);
    s_str(&pk, "tokens");
    msgpack_pack_array(&pk, N);
    for (int j = 0; j < N; j++)
        s_str(&pk, g_tokens[j]);
    s_str(&pk, "tags");
    msgpack_pack_map(&pk, 1);
    s_str(&pk, "desk");
    s_str(&pk, desk);
    char topic[80];
    int tlen = snprintf(topic, sizeof topic, "attn/%s", model);
    cr_assert_eq(zmq_send(sock, topic, (size_t)tlen, ZMQ_SNDMORE), tlen);
    cr_assert_eq(zmq_send(sock, sb.data, sb.size, 0), (int)sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static void
s_send(void *sock, uint64_t seq, uint64_t id, const char *desk, int focus)
{
    s_send_model(sock, "sg", seq, id, desk, focus);
}

static uint64_t
s_explained_of(xpl_client_t *c, const char *model)
{
    xpl_models_t *ms = xpl_client_models(c);
    cr_assert_not_null(ms, "%s", xpl_strerror());
    const xpl_model_info_t *m = xpl_models_find(ms, model);
    uint64_t n = m ? m->explained : 0;
    xpl_models_destroy(&ms);
    return n;
}

static uint64_t
s_explained(xpl_client_t *c)
{
    return s_explained_of(c, "sg");
}

static void
s_wait_explained(xpl_client_t *c, uint64_t n)
{
    for (int i = 0; i < 1000 && s_explained(c) < n; i++)
        s_sleep_ms(10);
    cr_assert_geq(s_explained(c), n, "the daemon to explain %llu trades", (unsigned long long)n);
}

/* The view's state once its trade count is `count` (a new reference). */
static xpl_global_t *
s_state_at(xpl_view_t *v, uint64_t count)
{
    for (int i = 0; i < 500; i++) {
        uint64_t ver = xpl_view_version(v);
        xpl_global_t *g = xpl_view_state(v);
        if (g && g->count == count)
            return g;
        xpl_global_destroy(&g);
        xpl_view_wait(v, ver, 20);
    }
    cr_assert_fail("the view to reach %llu trades", (unsigned long long)count);
    return NULL;
}

Test(client_segments, views_global_and_alerts, .init = setup, .fini = teardown, .timeout = 120)
{
    void *ctx = zmq_ctx_new();
    void *pub = zmq_socket(ctx, ZMQ_PUB);
    int hwm = 0;
    zmq_setsockopt(pub, ZMQ_SNDHWM, &hwm, sizeof hwm);
    cr_assert_eq(zmq_connect(pub, g_in), 0);
    xpl_client_t *c = xpl_client_new(g_query);
    cr_assert_not_null(c);
    /* Beat the slow joiner with another model's trades, so that every
       trade of sg counts. */
    for (uint64_t i = 0; i < 500 && s_explained_of(c, "probe") == 0; i++) {
        s_send_model(pub, "probe", i, i, "P", 0);
        s_sleep_ms(10);
    }
    cr_assert_gt(s_explained_of(c, "probe"), 0, "the daemon to explain a probe trade");
    uint64_t seq = 0, id = 0;
    for (; id < 3; id++)
        s_send(pub, seq++, id, "A", 0);
    uint64_t a_count = id;
    s_wait_explained(c, a_count);

    /* Desk B is not tracked yet: its view starts empty. */
    xpl_view_t *vb = xpl_view_new_segment(g_pub, g_query, "sg", "desk=B", 5000, NULL);
    cr_assert_not_null(vb, "%s", xpl_strerror());
    cr_assert_null(xpl_view_state(vb));
    xpl_view_t *va = xpl_view_new_segment(g_pub, g_query, "sg", "desk=A", 5000, NULL);
    cr_assert_not_null(va, "%s", xpl_strerror());
    xpl_view_t *all = xpl_view_new(g_pub, g_query, "sg", 5000);
    cr_assert_not_null(all, "%s", xpl_strerror());

    /* Desk B: a baseline window on token 0, then two windows on token 2
       (its drift alerts); desk A goes on as before. */
    for (int k = 0; k < 12; k++) {
        s_send(pub, seq++, id++, "B", k < 4 ? 0 : 2);
        s_send(pub, seq++, id++, "A", 0);
        a_count++;
    }
    s_wait_explained(c, id);

    xpl_global_t *g = s_state_at(vb, 12);
    cr_assert_str_eq(g->model, "sg");
    cr_assert_not_null(g->segment);
    cr_assert_str_eq(g->segment, "desk=B");
    cr_assert_eq(g->ntargets, 0);
    const xpl_method_state_t *ms = xpl_global_method(g, "rollout");
    cr_assert_not_null(ms);
    cr_assert_eq(ms->count, 12);
    xpl_global_t *q = xpl_client_global_segment(c, "sg", NULL, "desk=B");
    cr_assert_not_null(q, "%s", xpl_strerror());
    cr_assert_str_eq(q->segment, "desk=B");
    cr_assert_eq(q->count, 12);
    cr_assert_eq(q->seq, g->seq, "the reply is the state of the last glob/ of the segment");
    for (uint32_t k = 0; k < q->nfeat; k++)
        cr_assert_eq(xpl_global_method(q, "rollout")->mean[k], ms->mean[k]);
    xpl_global_destroy(&q);
    xpl_global_destroy(&g);

    g = s_state_at(va, a_count);
    cr_assert_str_eq(g->segment, "desk=A");
    xpl_global_destroy(&g);
    g = s_state_at(all, id);
    cr_assert_null(g->segment, "the overall view took a segment's state");
    xpl_global_destroy(&g);
    xpl_view_stats_t st;
    xpl_view_stats(all, &st);
    cr_assert_eq(st.restarts, 0, "segments' seqs taken for a restart");
    xpl_view_stats(vb, &st);
    cr_assert_eq(st.restarts, 0);

    cr_assert_null(xpl_client_global_segment(c, "sg", NULL, "desk=Z"));
    cr_assert_eq(xpl_errno(), XPL_ENOT_FOUND);

    /* The alerts of the drift reply: desk B's, with what moved. */
    xpl_drift_state_t *d = xpl_client_drift_segment(c, "sg", "rollout", "desk=B");
    cr_assert_not_null(d, "%s", xpl_strerror());
    cr_assert(d->nalerts >= 1, "desk B alerted");
    const xpl_alert_t *a = &d->alerts[d->nalerts - 1];
    cr_assert_str_eq(a->segment, "desk=B");
    cr_assert_str_eq(a->verdict.mode, "fixed");
    cr_assert(a->verdict.alerted[0] || a->verdict.alerted[1] || a->verdict.alerted[2]);
    cr_assert(a->verdict.nmoved >= 2);
    /* Token 0 lost its share to token 2. */
    bool f0 = false, f2 = false;
    for (uint32_t k = 0; k < 2; k++) {
        const xpl_moved_t *m = &a->verdict.moved[k];
        cr_assert_eq(m->rank_up, (int32_t)m->ref_rank - (int32_t)m->rank);
        if (strcmp(m->feature, "f0") == 0)
            f0 = m->delta < 0 && m->rank_up < 0;
        if (strcmp(m->feature, "f2") == 0)
            f2 = m->delta > 0 && m->rank_up > 0;
    }
    cr_assert(f0 && f2, "f0 and f2 moved most, in opposite directions");
    xpl_drift_state_destroy(&d);
    d = xpl_client_drift_segment(c, "sg", "rollout", "desk=A");
    cr_assert_not_null(d, "%s", xpl_strerror());
    cr_assert_eq(d->nalerts, 0, "desk A never alerted");
    xpl_drift_state_destroy(&d);

    xpl_view_destroy(&vb);
    xpl_view_destroy(&va);
    xpl_view_destroy(&all);
    xpl_client_destroy(&c);
    zmq_close(pub);
    zmq_ctx_term(ctx);
}
