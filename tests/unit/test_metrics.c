/*  Tests of daemon/metrics' exposition and daemon/stats' counter tables,
    without a server or a socket: a model, its global epoch and the
    counters are set up by hand, rendered, and the text is compared with
    the lines the Prometheus text format (0.0.4) wants for them: names,
    labels (escaped), values, one HELP and TYPE per family. The counter
    tables are checked for duplicates, and every row is looked for where
    the table says it goes: the stats reply, the metrics, the snapshot.
    The endpoint is tested on that same view, still without a server: a
    loopback socket, and this thread running the poll the main loop
    would. */
#include "auth.h"
#include "cache.h"
#include "log.h"
#include "metrics.h"
#include "stats.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

/* ---- fixture: one model "m1" with a current epoch --------------------------- */

typedef struct {
    stats_t stats;
    cache_t cache;
    auth_t auth;
    metrics_t http;
    models_t models;
    global_t global;
    model_t *md;
    metrics_view_t view;
} fx_t;

/* Tokens: CLS, then features whose names need escaping, and a repeat. */
static const char *const TOKENS[] = {"CLS", "a\"b", "c\\d", "e\nf", "a\"b"};
#define NTOK 5
#define NF 4

static void
fx_init(fx_t *f)
{
    memset(f, 0, sizeof *f);
    stats_init(&f->stats);
    cr_assert_eq(models_init(&f->models, 4), 0);
    global_params_t p = {.half_life = 100, .window = 10,
                         .drift = {.rho_min = 0.8, .ndcg_min = 0.9, .js_max = 0.1, .ndcg_k = 3},
                         .max_targets = 4, .alerts_kept = 4};
    cr_assert_eq(global_init(&f->global, 4, &p), 0);
    f->md = models_add(&f->models, "m1", 2);
    cr_assert_not_null(f->md);
    wire_sv_t tok[NTOK];
    for (int k = 0; k < NTOK; k++)
        tok[k] = (wire_sv_t){(const uint8_t *)TOKENS[k], (uint32_t)strlen(TOKENS[k])};
    xm_shape_t shape = {.L = 2, .H = 2, .n = NTOK, .cls = 0};
    cr_assert_eq(model_restore_schema(f->md, 1, &shape, tok, true), 0);
    cr_assert_eq(f->md->cur->nf, NF);

    /* The global state of epoch 1, rollout only, as global.c keeps it. */
    gmodel_t *gm = calloc(1, sizeof *gm);
    gepoch_t *e = calloc(1, sizeof *e);
    cr_assert(gm && e);
    f->global.models[f->md->index] = gm;
    gm->epochs[0] = e;
    gm->alerts_total = 3;
    e->epoch = 1;
    e->nf = NF;
    e->methods = XM_BIT(XM_ROLLOUT);
    cr_assert_eq(agg_init(&e->all[XM_ROLLOUT], NF, 100), 0);
    cr_assert_eq(drift_init(&e->drift[XM_ROLLOUT], NF, 10, &p.drift), 0);
    const float x[NF] = {0.5f, 0.25f, 0.125f, 0.0625f};
    cr_assert_eq(agg_update(&e->all[XM_ROLLOUT], x), 0);
    e->last[XM_ROLLOUT] = (glast_t){.valid = true, .compared = true, .alert = true, .ts = 2000000000,
                                    .spearman = {.defined = true, .value = 0.75},
                                    .js = {.defined = true, .alert = true, .value = 0.25}};

    f->cache.bytes = 4096;     /* the cache_bytes gauge */
    f->view = (metrics_view_t){.counters = {&f->stats, &f->cache, &f->auth},
                               .models = &f->models, .global = &f->global, .metrics = &f->http,
                               .top_features = 0};
}

static void
fx_fini(fx_t *f)
{
    global_destroy(&f->global);
    models_destroy(&f->models);
}

static char *
render(fx_t *f)
{
    size_t len;
    char *text = metrics_render_view(&f->view, &len);
    cr_assert_not_null(text);
    cr_assert_eq(strlen(text), len, "the exposition holds a NUL byte");
    return text;
}

/* Whether `line` is one whole line of `text`. */
static bool
has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)); p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

#define assert_line(text, line) \
    cr_assert(has_line(text, line), "missing line: %s\n--- exposition ---\n%s", line, text)

/* ---- the exposition ------------------------------------------------------------ */

Test(metrics, families_are_declared_once_with_help_and_type)
{
    fx_t f;
    fx_init(&f);
    char *text = render(&f);
    /* Every sample belongs to the family declared last (a histogram's
       _bucket, _sum, _count included); no family is declared twice. */
    char fam[128] = "", names[256][128];
    int nfam = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char name[128], type[32];
        if (sscanf(line, "# HELP %127s", name) == 1) {
            cr_assert_neq(strlen(line), strlen("# HELP ") + strlen(name), "empty HELP of %s", name);
            for (int k = 0; k < nfam; k++)
                cr_assert_str_neq(names[k], name, "family %s declared twice", name);
            cr_assert_lt(nfam, 256);
            strcpy(names[nfam++], name);
            strcpy(fam, name);
            continue;
        }
        if (sscanf(line, "# TYPE %127s %31s", name, type) == 2) {
            cr_assert_str_eq(name, fam, "TYPE of %s not right after its HELP", name);
            cr_assert(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                      strcmp(type, "histogram") == 0, "type %s", type);
            cr_assert(strcmp(type, "counter") != 0 || strstr(name, "_total"),
                      "counter %s does not end in _total", name);
            continue;
        }
        cr_assert_neq(line[0], '#', "stray comment: %s", line);
        size_t n = strcspn(line, "{ ");
        size_t fl = strlen(fam);
        cr_assert(n >= fl && strncmp(line, fam, fl) == 0 &&
                  (n == fl || strncmp(line + fl, "_bucket", n - fl) == 0 ||
                   strncmp(line + fl, "_sum", n - fl) == 0 || strncmp(line + fl, "_count", n - fl) == 0),
                  "sample outside its family %s: %s", fam, line);
    }
    cr_assert_gt(nfam, 40);
    free(text);
    fx_fini(&f);
}

Test(metrics, counters_have_their_values)
{
    fx_t f;
    fx_init(&f);
    f.stats.received = 7;
    f.stats.received_trades = 11;
    f.stats.dropped = 2;
    f.stats.rejected[XR_SIZE] = 5;
    f.stats.rejected_total = 5;
    f.auth.admitted = 13;
    f.auth.by_kind[2] = 4;
    f.md->received = 6;
    f.md->explained = 9;
    char *text = render(&f);
    assert_line(text, "# HELP xplaind_received_messages_total Ingest messages received.");
    assert_line(text, "# TYPE xplaind_received_messages_total counter");
    assert_line(text, "xplaind_received_messages_total 7");
    assert_line(text, "xplaind_received_trades_total 11");
    assert_line(text, "xplaind_dropped_messages_total 2");
    assert_line(text, "xplaind_rejected_total{reason=\"size\"} 5");
    assert_line(text, "xplaind_rejected_total{reason=\"frames\"} 0");
    cr_assert(!strstr(text, "reason=\"ok\""), "the non-reason XR_OK is exported");
    assert_line(text, "xplaind_auth_admitted_total 13");
    assert_line(text, "xplaind_auth_handshake_failures_total{kind=\"crypto\"} 4");
    assert_line(text, "xplaind_auth_handshake_failures_total{kind=\"key\"} 0");
    assert_line(text, "# TYPE xplaind_cache_bytes gauge");
    assert_line(text, "xplaind_cache_bytes 4096");
    assert_line(text, "xplaind_models 1");
    assert_line(text, "xplaind_model_received_messages_total{model=\"m1\"} 6");
    assert_line(text, "xplaind_model_explained_trades_total{model=\"m1\"} 9");
    assert_line(text, "xplaind_model_epoch{model=\"m1\"} 1");
    assert_line(text, "xplaind_model_drift_alerts_total{model=\"m1\"} 3");
    char build[128];
    snprintf(build, sizeof build, "xplaind_build_info{version=\"%s\"} 1", XPL_VERSION);
    assert_line(text, build);
    free(text);
    fx_fini(&f);
}

Test(metrics, latency_histogram_is_cumulative)
{
    fx_t f;
    fx_init(&f);
    stats_latency(&f.stats, 20000);         /* 20 us */
    stats_latency(&f.stats, 2000000);       /* 2 ms */
    stats_latency(&f.stats, 5000000000);    /* 5 s: past the last bound */
    char *text = render(&f);
    assert_line(text, "# TYPE xplaind_latency_seconds histogram");
    assert_line(text, "xplaind_latency_seconds_bucket{le=\"1e-05\"} 0");
    assert_line(text, "xplaind_latency_seconds_bucket{le=\"2.5e-05\"} 1");
    assert_line(text, "xplaind_latency_seconds_bucket{le=\"0.001\"} 1");
    assert_line(text, "xplaind_latency_seconds_bucket{le=\"0.0025\"} 2");
    assert_line(text, "xplaind_latency_seconds_bucket{le=\"1\"} 2");
    assert_line(text, "xplaind_latency_seconds_bucket{le=\"+Inf\"} 3");
    assert_line(text, "xplaind_latency_seconds_sum 5.00202");
    assert_line(text, "xplaind_latency_seconds_count 3");
    assert_line(text, "xplaind_event_latency_seconds_count 0");
    free(text);
    fx_fini(&f);
}

Test(metrics, drift_families_of_the_current_epoch)
{
    fx_t f;
    fx_init(&f);
    char *text = render(&f);
    assert_line(text, "xplaind_drift_threshold{threshold=\"rho_min\"} 0.80000000000000004");
    assert_line(text, "xplaind_drift_ndcg_k 3");
    assert_line(text, "xplaind_drift_window_trades 10");
    assert_line(text, "xplaind_drift_spearman_rho{model=\"m1\",method=\"rollout\"} 0.75");
    assert_line(text, "xplaind_drift_js_divergence{model=\"m1\",method=\"rollout\"} 0.25");
    /* undefined: no sample at all, not a 0 */
    cr_assert(!strstr(text, "xplaind_drift_ndcg{"), "an undefined nDCG was exported");
    assert_line(text, "xplaind_drift_alert{model=\"m1\",method=\"rollout\"} 1");
    assert_line(text, "xplaind_drift_windows_total{model=\"m1\",method=\"rollout\"} 0");
    assert_line(text, "xplaind_drift_last_window_timestamp_seconds{model=\"m1\",method=\"rollout\"} 2");
    assert_line(text, "xplaind_drift_reference{model=\"m1\",method=\"rollout\",reference=\"none\"} 1");
    assert_line(text, "xplaind_drift_reference{model=\"m1\",method=\"rollout\",reference=\"pinned\"} 0");
    assert_line(text, "xplaind_attribution_trades{model=\"m1\",method=\"rollout\"} 1");
    /* only the methods the epoch has */
    cr_assert(!strstr(text, "method=\"diag\""), "a method the epoch does not have was exported");
    free(text);
    fx_fini(&f);
}

Test(metrics, feature_labels_are_escaped_and_unique)
{
    fx_t f;
    fx_init(&f);
    char *text = render(&f);
    assert_line(text, "xplaind_attribution_mean{model=\"m1\",method=\"rollout\",feature=\"a\\\"b\"} 0.5");
    assert_line(text, "xplaind_attribution_mean{model=\"m1\",method=\"rollout\",feature=\"c\\\\d\"} 0.25");
    assert_line(text, "xplaind_attribution_mean{model=\"m1\",method=\"rollout\",feature=\"e\\nf\"} 0.125");
    /* the repeated name gets its index */
    assert_line(text, "xplaind_attribution_mean{model=\"m1\",method=\"rollout\",feature=\"a\\\"b#3\"} 0.0625");
    assert_line(text, "xplaind_attribution_decayed{model=\"m1\",method=\"rollout\",feature=\"a\\\"b\"} 0.5");
    free(text);
    fx_fini(&f);
}

Test(metrics, top_features_keeps_the_largest_in_feature_order)
{
    fx_t f;
    fx_init(&f);
    f.view.top_features = 2;
    char *text = render(&f);
    assert_line(text, "xplaind_attribution_mean{model=\"m1\",method=\"rollout\",feature=\"a\\\"b\"} 0.5");
    assert_line(text, "xplaind_attribution_mean{model=\"m1\",method=\"rollout\",feature=\"c\\\\d\"} 0.25");
    cr_assert(!strstr(text, "feature=\"e\\nf\""), "a third feature exported with top_features 2");
    cr_assert(!strstr(text, "#3"), "a fourth feature exported with top_features 2");
    free(text);
    fx_fini(&f);
}

Test(metrics, http_counters)
{
    fx_t f;
    fx_init(&f);
    f.http.requests[0] = 12;
    f.http.max_conns = 64;
    f.http.refused_per_ip = 3;
    char *text = render(&f);
    assert_line(text, "xplaind_metrics_requests_total{code=\"200\"} 12");
    assert_line(text, "xplaind_metrics_requests_total{code=\"431\"} 0");
    assert_line(text, "xplaind_metrics_connections_max 64");
    assert_line(text, "xplaind_metrics_connections_refused_total{reason=\"per_ip\"} 3");
    free(text);
    fx_fini(&f);
}

/* ---- the endpoint, without a server ---------------------------------------------- */

/* A free loopback TCP port: the kernel's pick for port 0, closed again. */
static int
free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
              getsockname(fd, (struct sockaddr *)&sa, &len) == 0, "no free port: %s", strerror(errno));
    close(fd);
    return ntohs(sa.sin_port);
}

/* Send `request` to the endpoint on `port` and run the endpoint's side
   the way the main loop does (its poll items, metrics_timeout_ms,
   metrics_handle) until the answer is complete: the endpoint closes the
   connection after it. Returns the whole answer (the caller frees). */
static char *
exchange(metrics_t *m, int port, const char *request)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0,
              "cannot connect to the endpoint on port %d: %s", port, strerror(errno));
    size_t n = strlen(request);
    cr_assert_eq(send(fd, request, n, MSG_NOSIGNAL), (ssize_t)n);
    cr_assert_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    int64_t deadline = now_mono_ns() + 10 * (int64_t)1000000000;
    for (;;) {
        cr_assert_lt(now_mono_ns(), deadline, "no complete answer to \"%.20s...\" within 10 s "
                     "(%zu bytes so far)", request, len);
        zmq_pollitem_t items[METRICS_POLL_ITEMS + 1];
        int ni = metrics_poll_items(m, items);
        items[ni] = (zmq_pollitem_t){NULL, fd, ZMQ_POLLIN, 0};
        long ms = metrics_timeout_ms(m, now_mono_ns());
        cr_assert_geq(zmq_poll(items, ni + 1, ms < 0 || ms > 100 ? 100 : ms), 0);
        metrics_handle(m, items, ni);
        ssize_t r = recv(fd, buf + len, cap - 1 - len, 0);
        if (r == 0)
            break;
        cr_assert(r > 0 || errno == EAGAIN || errno == EWOULDBLOCK, "recv: %s", strerror(errno));
        if (r > 0)
            len += (size_t)r;
        cr_assert_lt(len, cap - 1, "answer larger than %zu bytes", cap);
    }
    close(fd);
    buf[len] = '\0';
    return buf;
}

/* The status code of an HTTP answer, and where its body starts. */
static int
status_of(const char *answer, const char **body)
{
    int code = 0;
    cr_assert_eq(sscanf(answer, "HTTP/1.%*d %d", &code), 1, "not an HTTP answer: %.80s", answer);
    const char *end = strstr(answer, "\r\n\r\n");
    cr_assert_not_null(end, "no end of the header: %.200s", answer);
    *body = end + 4;
    return code;
}

Test(metrics, endpoint_serves_its_view_without_a_server)
{
    fx_t f;
    fx_init(&f);
    int port = free_port();
    char spec[32];
    snprintf(spec, sizeof spec, "127.0.0.1:%d", port);
    config_t cfg = {.metrics = spec, .metrics_max_conns = 8, .metrics_max_per_ip = 8,
                    .metrics_timeout_ms = 2000};
    f.view.metrics = NULL;  /* metrics_init points the view it keeps at the endpoint itself */
    cr_assert_eq(metrics_init(&f.http, &cfg, &f.view), 0);
    cr_assert_eq(f.http.view.metrics, &f.http, "the kept view does not count this endpoint");

    const char *body;
    char *ans = exchange(&f.http, port, "GET /metrics HTTP/1.0\r\n\r\n");
    cr_assert_eq(status_of(ans, &body), 200, "%.200s", ans);
    assert_line(body, "xplaind_cache_bytes 4096");
    assert_line(body, "xplaind_model_epoch{model=\"m1\"} 1");
    assert_line(body, "xplaind_model_drift_alerts_total{model=\"m1\"} 3");
    free(ans);

    /* The owners' state as it is at the scrape, not at metrics_init. */
    f.cache.bytes = 8192;
    f.http.tokens = 10;     /* a fresh rendering, not the last one shared */
    ans = exchange(&f.http, port, "GET /metrics HTTP/1.0\r\n\r\n");
    cr_assert_eq(status_of(ans, &body), 200, "%.200s", ans);
    assert_line(body, "xplaind_cache_bytes 8192");
    assert_line(body, "xplaind_metrics_requests_total{code=\"200\"} 1");
    free(ans);

    ans = exchange(&f.http, port, "GET /elsewhere HTTP/1.0\r\n\r\n");
    cr_assert_eq(status_of(ans, &body), 404, "%.200s", ans);
    free(ans);

    cr_assert_eq(f.http.requests[0], 2, "200s counted");
    cr_assert_eq(f.http.requests[2], 1, "404s counted");
    cr_assert_eq(f.http.renders, 2);
    metrics_destroy(&f.http);
    fx_fini(&f);
}

Test(metrics, endpoint_off_polls_nothing)
{
    fx_t f;
    fx_init(&f);
    char off[] = "";
    config_t cfg = {.metrics = off, .metrics_max_conns = 8, .metrics_max_per_ip = 8,
                    .metrics_timeout_ms = 2000};
    cr_assert_eq(metrics_init(&f.http, &cfg, &f.view), 0);
    zmq_pollitem_t items[METRICS_POLL_ITEMS];
    cr_assert_eq(metrics_poll_items(&f.http, items), 0);
    cr_assert_eq(metrics_timeout_ms(&f.http, now_mono_ns()), -1);
    metrics_handle(&f.http, items, 0);
    metrics_destroy(&f.http);
    fx_fini(&f);
}

/* ---- the counter tables ----------------------------------------------------------- */

/* The stats reply's counter keys, in the order clients see them
   (proto/examples/reply/stats.json). */
static const char *const STATS_KEYS[] = {
    "received", "received_trades", "explained", "published", "rejected", "lost", "restarts",
    "dropped", "queries", "query_errors", "query_dropped", "cache_too_big", "snapshots",
    "snapshot_errors", "auth_admitted", "auth_refused", "attention_warned", "query_too_large",
    "auth_refused_key", "auth_refused_mechanism", "auth_refused_crypto", "auth_refused_protocol",
    "auth_refused_incomplete"};
#define NKEYS (sizeof STATS_KEYS / sizeof *STATS_KEYS)

/* Give every counter of every row its own value: 1000 * (row + 1) + label. */
static void
fill_counters(fx_t *f)
{
    for (size_t r = 0; r < stats_ncounters; r++) {
        const stats_counter_t *c = &stats_counters[r];
        void *owner = c->src == STATS_SRC_STATS ? (void *)&f->stats
                      : c->src == STATS_SRC_CACHE ? (void *)&f->cache : (void *)&f->auth;
        uint64_t *p = (uint64_t *)((char *)owner + c->offset);
        for (int k = c->label ? c->first : 0; k < (c->label ? c->end : 1); k++)
            p[k] = 1000 * (r + 1) + (uint64_t)k;
    }
}

Test(counters, no_duplicates)
{
    char seen[64][64];
    int n = 0;
    for (size_t r = 0; r < stats_ncounters; r++) {
        const stats_counter_t *c = &stats_counters[r];
        cr_assert(c->name || c->metric, "row %zu goes nowhere", r);
        cr_assert(c->help && c->help[0], "row %zu has no help", r);
        cr_assert(!c->label || (c->label_name && c->first < c->end), "row %zu labels", r);
        for (size_t q = 0; q < r; q++) {
            const stats_counter_t *o = &stats_counters[q];
            cr_assert(!c->metric || !o->metric || strcmp(c->metric, o->metric),
                      "metric %s twice", c->metric);
            cr_assert(c->src != o->src || c->offset != o->offset, "rows %zu and %zu count the same", q, r);
        }
        for (int k = c->label ? c->first : 0; c->name && k < (c->label ? c->end : 1); k++) {
            cr_assert_lt(n, 64);
            if (c->label)
                snprintf(seen[n], sizeof seen[n], "%s_%s", c->name, c->label_name(k));
            else
                snprintf(seen[n], sizeof seen[n], "%s", c->name);
            for (int q = 0; q < n; q++)
                cr_assert_str_neq(seen[q], seen[n], "stats key %s twice", seen[n]);
            n++;
        }
    }
    for (size_t r = 0; r < stats_nmodel_counters; r++) {
        const stats_model_counter_t *c = &stats_model_counters[r];
        for (size_t q = 0; q < r; q++) {
            const stats_model_counter_t *o = &stats_model_counters[q];
            cr_assert(!c->name || !o->name || strcmp(c->name, o->name), "model key %s twice", c->name);
            cr_assert_str_neq(c->key, o->key, "snapshot key %s twice", c->key);
            cr_assert(!c->metric || !o->metric || strcmp(c->metric, o->metric), "%s twice", c->metric);
            cr_assert_neq(c->offset, o->offset, "model rows %zu and %zu count the same", q, r);
        }
        for (size_t q = 0; c->metric && q < stats_ncounters; q++)
            cr_assert(!stats_counters[q].metric || strcmp(stats_counters[q].metric, c->metric),
                      "%s is a daemon and a model family", c->metric);
    }
}

Test(counters, every_named_row_is_in_the_stats_reply_in_order)
{
    fx_t f;
    fx_init(&f);
    fill_counters(&f);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    stats_pack_counters(&pk, &f.view.counters);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    cr_assert_eq(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    cr_assert_eq(off, sb.size, "bytes after the map");
    const msgpack_object *o = &u.data;
    cr_assert_eq(o->type, MSGPACK_OBJECT_MAP);
    cr_assert_eq(o->via.map.size, NKEYS);
    /* the keys, in order, and each value is the one its row points at */
    size_t i = 0;
    for (size_t r = 0; r < stats_ncounters; r++) {
        const stats_counter_t *c = &stats_counters[r];
        for (int k = c->label ? c->first : 0; c->name && k < (c->label ? c->end : 1); k++, i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            cr_assert_eq(kv->key.type, MSGPACK_OBJECT_STR);
            cr_assert_eq(kv->key.via.str.size, strlen(STATS_KEYS[i]));
            cr_assert(memcmp(kv->key.via.str.ptr, STATS_KEYS[i], kv->key.via.str.size) == 0,
                      "key %zu is %.*s, not %s", i, (int)kv->key.via.str.size, kv->key.via.str.ptr,
                      STATS_KEYS[i]);
            cr_assert_eq(kv->val.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
            cr_assert_eq(kv->val.via.u64, 1000 * (r + 1) + (uint64_t)k, "value of %s", STATS_KEYS[i]);
        }
    }
    cr_assert_eq(i, NKEYS);
    /* the named ones that are plain fields, spot-checked against their owners */
    cr_assert_eq(o->via.map.ptr[4].val.via.u64, f.stats.rejected_total);
    cr_assert_eq(o->via.map.ptr[11].val.via.u64, f.cache.too_big);
    cr_assert_eq(o->via.map.ptr[20].val.via.u64, f.auth.by_kind[2]);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    fx_fini(&f);
}

Test(counters, every_metric_row_is_exported_with_its_value)
{
    fx_t f;
    fx_init(&f);
    fill_counters(&f);
    for (size_t r = 0; r < stats_nmodel_counters; r++)
        *(uint64_t *)((char *)f.md + stats_model_counters[r].offset) = 77 + r;
    char *text = render(&f);
    char line[256];
    for (size_t r = 0; r < stats_ncounters; r++) {
        const stats_counter_t *c = &stats_counters[r];
        if (!c->metric)
            continue;
        snprintf(line, sizeof line, "# HELP xplaind_%s %s", c->metric, c->help);
        assert_line(text, line);
        snprintf(line, sizeof line, "# TYPE xplaind_%s counter", c->metric);
        assert_line(text, line);
        for (int k = c->label ? c->first : 0; k < (c->label ? c->end : 1); k++) {
            if (c->label)
                snprintf(line, sizeof line, "xplaind_%s{%s=\"%s\"} %llu", c->metric, c->label,
                         c->label_name(k), (unsigned long long)(1000 * (r + 1) + (uint64_t)k));
            else
                snprintf(line, sizeof line, "xplaind_%s %llu", c->metric,
                         (unsigned long long)(1000 * (r + 1)));
            assert_line(text, line);
        }
    }
    for (size_t r = 0; r < stats_nmodel_counters; r++) {
        const stats_model_counter_t *c = &stats_model_counters[r];
        if (!c->metric)
            continue;
        snprintf(line, sizeof line, "# TYPE xplaind_%s counter", c->metric);
        assert_line(text, line);
        snprintf(line, sizeof line, "xplaind_%s{model=\"m1\"} %zu", c->metric, 77 + r);
        assert_line(text, line);
    }
    free(text);
    fx_fini(&f);
}

Test(counters, model_rows_in_the_model_entry_and_the_snapshot)
{
    fx_t f;
    fx_init(&f);
    for (size_t r = 0; r < stats_nmodel_counters; r++)
        *(uint64_t *)((char *)f.md + stats_model_counters[r].offset) = 500 + r;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    /* the model entry: the six counters the models/stats replies carry */
    static const char *const keys[] = {"received", "trades", "explained", "rejected", "lost", "restarts"};
    cr_assert_eq(stats_model_named(), 6);
    msgpack_pack_map(&pk, stats_model_named());
    stats_pack_model(&pk, f.md);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    cr_assert_eq(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    cr_assert_eq(off, sb.size);
    for (uint32_t k = 0; k < 6; k++) {
        const msgpack_object_kv *kv = &u.data.via.map.ptr[k];
        cr_assert(kv->key.via.str.size == strlen(keys[k]) &&
                  memcmp(kv->key.via.str.ptr, keys[k], strlen(keys[k])) == 0, "model key %u", k);
        cr_assert_eq(kv->val.via.u64, 500 + k);
    }

    /* the snapshot: every row, positionally, in the order older
       snapshots have them (received, trades, explained, rejected, lost,
       restarts, xpl_seq, flow_counter) */
    msgpack_sbuffer_clear(&sb);
    stats_model_save(&pk, f.md);
    const uint64_t want[] = {f.md->received, f.md->trades, f.md->explained, f.md->rejected,
                             f.md->lost, f.md->restarts, f.md->xpl_seq, f.md->flow_counter};
    cr_assert_eq(stats_nmodel_counters, 8);
    off = 0;
    for (size_t k = 0; k < 8; k++) {
        cr_assert_eq(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
        cr_assert_eq(u.data.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
        cr_assert_eq(u.data.via.u64, want[k], "snapshot position %zu", k);
    }
    cr_assert_eq(off, sb.size);
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    fx_fini(&f);
}

Test(counters, keyed_snapshot_round_trips_every_row)
{
    fx_t f;
    fx_init(&f);
    for (size_t r = 0; r < stats_nmodel_counters; r++)
        *(uint64_t *)((char *)f.md + stats_model_counters[r].offset) = 900 + r;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    stats_model_save_keyed(&pk, f.md);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    cr_assert_eq(msgpack_unpack_next(&u, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    cr_assert_eq(off, sb.size);
    cr_assert_eq(u.data.type, MSGPACK_OBJECT_MAP);
    cr_assert_eq(u.data.via.map.size, 8, "every row, the six of the replies and xpl_seq, flow_counter");
    /* read back into a blank model through the keys, as a loader does */
    model_t md;
    memset(&md, 0, sizeof md);
    for (uint32_t k = 0; k < u.data.via.map.size; k++) {
        const msgpack_object_kv *kv = &u.data.via.map.ptr[k];
        cr_assert_eq(kv->key.type, MSGPACK_OBJECT_STR);
        uint64_t *p = stats_model_counter_ptr(&md, kv->key.via.str.ptr, kv->key.via.str.size);
        cr_assert_not_null(p, "key %.*s unknown", (int)kv->key.via.str.size, kv->key.via.str.ptr);
        *p = kv->val.via.u64;
    }
    cr_assert_eq(md.received, f.md->received);
    cr_assert_eq(md.trades, f.md->trades);
    cr_assert_eq(md.explained, f.md->explained);
    cr_assert_eq(md.rejected, f.md->rejected);
    cr_assert_eq(md.lost, f.md->lost);
    cr_assert_eq(md.restarts, f.md->restarts);
    cr_assert_eq(md.xpl_seq, f.md->xpl_seq);
    cr_assert_eq(md.flow_counter, f.md->flow_counter);
    cr_assert_eq(md.flow_counter, 907);
    /* a counter this daemon does not keep, and a key's prefix, are not found */
    cr_assert_null(stats_model_counter_ptr(&md, "future", 6));
    cr_assert_null(stats_model_counter_ptr(&md, "receive", 7));
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&sb);
    fx_fini(&f);
}

Test(counters, an_absent_owner_reads_zero)
{
    fx_t f;
    fx_init(&f);
    fill_counters(&f);
    stats_view_t v = {&f.stats, NULL, NULL};
    for (size_t r = 0; r < stats_ncounters; r++) {
        const stats_counter_t *c = &stats_counters[r];
        uint64_t want = c->src == STATS_SRC_STATS ? 1000 * (r + 1) + (uint64_t)(c->label ? c->first : 0) : 0;
        cr_assert_eq(stats_counter_value(c, &v, c->label ? c->first : 0), want, "row %zu", r);
    }
    fx_fini(&f);
}

/* A reader of consecutive uint64 from a buffer, as state.c's. */
typedef struct {
    const uint64_t *v;
    size_t n, at;
} rd_t;

static int
rd_u64(void *p, uint64_t *out)
{
    rd_t *d = p;
    if (d->at == d->n)
        return -7;
    *out = d->v[d->at++];
    return 0;
}

Test(counters, snapshot_load_restores_every_row)
{
    model_t md;
    memset(&md, 0, sizeof md);
    uint64_t v[8] = {11, 12, 13, 14, 15, 16, 17, 18};
    rd_t d = {v, 8, 0};
    cr_assert_eq(stats_model_load(&md, rd_u64, &d), 0);
    cr_assert_eq(d.at, 8);
    cr_assert_eq(md.received, 11);
    cr_assert_eq(md.trades, 12);
    cr_assert_eq(md.explained, 13);
    cr_assert_eq(md.rejected, 14);
    cr_assert_eq(md.lost, 15);
    cr_assert_eq(md.restarts, 16);
    cr_assert_eq(md.xpl_seq, 17);
    cr_assert_eq(md.flow_counter, 18);
    /* a reader's failure is returned as it is */
    rd_t short_d = {v, 3, 0};
    cr_assert_eq(stats_model_load(&md, rd_u64, &short_d), -7);
}

/* ---- the rate-limit keys ----------------------------------------------------------- */

Test(log_keys, every_key_is_named_once)
{
    cr_assert_str_eq(log_key_name(LOGK_REJECTED + XR_SIZE), "ingest.rejected");
    cr_assert_gt(LOG_KEYS, LOGK_REJECTED + XR_NREASONS - 1);
    for (int k = LOGK_REJECTED + LOGK_REASONS; k < LOG_KEYS; k++) {
        const char *n = log_key_name((log_key_t)k);
        cr_assert(n && n[0], "key %d has no name", k);
        for (int q = LOGK_REJECTED + LOGK_REASONS; q < k; q++)
            cr_assert_str_neq(log_key_name((log_key_t)q), n, "keys %d and %d share a name", q, k);
    }
    cr_assert_null(log_key_name(LOG_KEYS));
}

/* An aggregator's shards: how many, and how many are stale; nothing of
   the kind in a daemon that aggregates nothing. */
Test(metrics, aggregator_shard_gauges)
{
    static fx_t f;
    fx_init(&f);
    char *text = render(&f);
    cr_assert_null(strstr(text, "xplaind_aggregate_"), "a daemon without shards:\n%s", text);
    free(text);
    f.global.nshards = 3;
    f.global.stale_mask = 1u << 1;
    text = render(&f);
    assert_line(text, "xplaind_aggregate_shards 3");
    assert_line(text, "xplaind_aggregate_shards_stale 1");
    free(text);
    fx_fini(&f);
}
