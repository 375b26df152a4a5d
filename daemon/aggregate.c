/*  aggregate: the aggregator of shard daemons. See aggregate.h.  */
#include "aggregate.h"

#include "keys.h"
#include "log.h"
#include "server.h"
#include "shard.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define AGG_BURST 64
#define AGG_TRADE_TIMEOUT_NS (5 * 1000000000LL)
#define AGG_MAX_PENDING 1024
#define AGG_MAX_ENV 16

/* The last state of one model from one shard. */
typedef struct {
    char model[WIRE_MODEL_MAX + 1];
    uint32_t epoch;
    void *body;
    size_t len;
} astate_t;

typedef struct {
    const char *endpoint, *query_ep;
    void *sub;                  /* state/ from the shard's PUB */
    void *dealer;               /* its query ROUTER, for trade queries */
    int32_t k;                  /* shard index it reported, -1 before */
    uint32_t n;                 /* shard count it reported */
    uint64_t owns;              /* shards it covers (itself; an aggregator's) */
    bool has_rejected;          /* its daemon-wide rejections, last reported */
    uint64_t rejected_total, rejected[XR_NREASONS];
    bool seen, stale;
    int64_t last_ns;            /* monotonic time of its last state */
    uint64_t states;            /* state messages received */
    astate_t *st;
    uint32_t nst, capst;
} ashard_t;

/* A trade query waiting for its shard. */
typedef struct {
    uint64_t id;
    int shard;
    int64_t deadline;
    int nenv;
    zmq_msg_t env[AGG_MAX_ENV];
} apending_t;

/* The aggregator's own per-model bookkeeping (by model index). */
typedef struct {
    bool dirty;
    uint32_t epoch;                 /* epoch next_k belongs to */
    bool next_set[XM_NMETHODS];
    int64_t next_k[XM_NMETHODS];    /* next merged window to judge */
    unsigned has_bound;             /* methods with windows merged: */
    int64_t bound[XM_NMETHODS];     /* the lowest window not all shards closed */
    /* The same per segment (by index in the epoch), when kept. */
    unsigned *seg_next_set, *seg_has_bound;     /* [max_segments] method bits */
    int64_t *seg_next_k, *seg_bound;            /* [max_segments][XM_NMETHODS] */
} amodel_t;

struct aggregate_t {
    server_t *s;
    ashard_t shards[AGG_MAX_SHARDS];
    int nshards;
    void *xsub;
    amodel_t *models;
    astate_scratch_t scratch;
    astate_head_t *head;
    apending_t *pending[AGG_MAX_PENDING];
    uint32_t npending;
    uint64_t next_id;
    int first_item;
    uint32_t state_subs;        /* subscriptions on our XPUB that take state/ */
    /* counters (stats reply) */
    uint64_t merges, merge_errors, state_rejected, stale_events, trades_forwarded;
    /* Per-segment scratch of a rebuild (astate_merged_t), max_segments long. */
    int64_t *seg_close;
    unsigned *seg_windows;
    uint32_t *seg_had;
};

/* With CURVE on, the connections that follow are a CURVE client's: the
   aggregator's own key pair (security.secret_key_file), to a shard whose
   public key is `server` (Z85). */
static int
s_curve(aggregate_t *a, void *sock, const char *server, const char *what)
{
    const auth_t *au = &a->s->auth;
    if (!au->enabled)
        return 0;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server, KEY_Z85_LEN) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, au->public_key, KEY_Z85_LEN) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, au->secret_key, KEY_Z85_LEN)) {
        log_err("aggregate: cannot make the %s socket a CURVE client: %s", what,
                zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

static int
s_sock(aggregate_t *a, void **sock, int type, const char *ep, const char *server, const char *what)
{
    int zero = 0;
    *sock = zmq_socket(a->s->zctx, type);
    if (!*sock || zmq_setsockopt(*sock, ZMQ_LINGER, &zero, sizeof zero)) {
        log_err("aggregate: cannot create the %s socket: %s", what, zmq_strerror(zmq_errno()));
        return -1;
    }
    if (ep && s_curve(a, *sock, server, what))
        return -1;
    if (ep && zmq_connect(*sock, ep)) {
        log_err("aggregate: cannot connect %s to '%s': %s", what, ep, zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

aggregate_t *
aggregate_new(server_t *s)
{
    const config_t *c = &s->cfg;
    if (c->aggregate.count > AGG_MAX_SHARDS) {
        log_err("aggregate: at most %d shards", AGG_MAX_SHARDS);
        return NULL;
    }
    aggregate_t *a = calloc(1, sizeof *a);
    if (!a || !(a->models = calloc(c->max_models, sizeof *a->models)) ||
        !(a->head = malloc(sizeof *a->head))) {
        log_err("aggregate: out of memory");
        aggregate_destroy(&a);
        return NULL;
    }
    a->s = s;
    uint32_t ms = s->global.p.max_segments;
    if (ms && (!(a->seg_close = calloc((size_t)ms * XM_NMETHODS, sizeof *a->seg_close)) ||
               !(a->seg_windows = calloc(ms, sizeof *a->seg_windows)) ||
               !(a->seg_had = calloc(ms, sizeof *a->seg_had)))) {
        log_err("aggregate: out of memory");
        aggregate_destroy(&a);
        return NULL;
    }
    if (s_sock(a, &a->xsub, ZMQ_XSUB, NULL, NULL, "xpl forwarding"))
        goto fail;
    for (int i = 0; i < c->aggregate.count; i++) {
        ashard_t *sh = &a->shards[a->nshards++];
        sh->endpoint = c->aggregate.items[i];
        sh->query_ep = c->aggregate_query.items[i];
        sh->k = -1;
        /* Not heard from yet: it holds every window open (it may hold
           trades of any of them) until it sends a state, or until
           stale_ms from now makes it stale like a shard gone silent. */
        sh->last_ns = now_mono_ns();
        char server[KEY_Z85_LEN + 1] = "", err[512];
        if (s->auth.enabled) {
            const char *cert = c->aggregate_keys.items[c->aggregate_keys.count == 1 ? 0 : i];
            if (keys_load(cert, server, NULL, err, sizeof err)) {
                log_err("aggregate: the shard certificate of %s: %s", sh->endpoint, err);
                goto fail;
            }
        }
        if (s_sock(a, &sh->sub, ZMQ_SUB, sh->endpoint, server, "shard state") ||
            zmq_setsockopt(sh->sub, ZMQ_SUBSCRIBE, "state/", 6) ||
            s_sock(a, &sh->dealer, ZMQ_DEALER, sh->query_ep, server, "shard query"))
            goto fail;
        if (s_curve(a, a->xsub, server, "xpl forwarding") || zmq_connect(a->xsub, sh->endpoint)) {
            log_err("aggregate: cannot connect to '%s': %s", sh->endpoint, zmq_strerror(zmq_errno()));
            goto fail;
        }
    }
    log_notice("aggregate: aggregating %d shard(s); a shard is stale after %" PRIu64 " ms without state",
               a->nshards, c->aggregate_stale_ms);
    return a;
fail:
    aggregate_destroy(&a);
    return NULL;
}

static void
s_pending_free(apending_t *p)
{
    for (int i = 0; i < p->nenv; i++)
        zmq_msg_close(&p->env[i]);
    free(p);
}

void
aggregate_destroy(aggregate_t **ap)
{
    aggregate_t *a = *ap;
    if (!a)
        return;
    for (int i = 0; i < a->nshards; i++) {
        ashard_t *sh = &a->shards[i];
        if (sh->sub)
            zmq_close(sh->sub);
        if (sh->dealer)
            zmq_close(sh->dealer);
        for (uint32_t j = 0; j < sh->nst; j++)
            free(sh->st[j].body);
        free(sh->st);
    }
    if (a->xsub)
        zmq_close(a->xsub);
    for (uint32_t i = 0; i < a->npending; i++)
        s_pending_free(a->pending[i]);
    astate_scratch_destroy(&a->scratch);
    agg_heads_destroy(&a->scratch.heads);
    free(a->head);
    for (uint32_t m = 0; a->models && m < a->s->cfg.max_models; m++) {
        free(a->models[m].seg_next_set);
        free(a->models[m].seg_has_bound);
        free(a->models[m].seg_next_k);
        free(a->models[m].seg_bound);
    }
    free(a->models);
    free(a->seg_close);
    free(a->seg_windows);
    free(a->seg_had);
    free(a);
    *ap = NULL;
}

void
aggregate_poll_items(aggregate_t *a, zmq_pollitem_t *items, int *n)
{
    a->first_item = *n;
    for (int i = 0; i < a->nshards; i++) {
        items[(*n)++] = (zmq_pollitem_t){a->shards[i].sub, 0, ZMQ_POLLIN, 0};
        items[(*n)++] = (zmq_pollitem_t){a->shards[i].dealer, 0, ZMQ_POLLIN, 0};
    }
    items[(*n)++] = (zmq_pollitem_t){a->xsub, 0, ZMQ_POLLIN, 0};
    items[(*n)++] = (zmq_pollitem_t){a->s->pub, 0, ZMQ_POLLIN, 0};
}

/* ---- shard states ---------------------------------------------------------- */

static astate_t *
s_state_slot(ashard_t *sh, const char *model)
{
    for (uint32_t j = 0; j < sh->nst; j++)
        if (strcmp(sh->st[j].model, model) == 0)
            return &sh->st[j];
    if (sh->nst == sh->capst) {
        uint32_t cap = sh->capst ? 2 * sh->capst : 8;
        astate_t *g = realloc(sh->st, cap * sizeof *g);
        if (!g)
            return NULL;
        sh->st = g;
        sh->capst = cap;
    }
    astate_t *st = &sh->st[sh->nst++];
    memset(st, 0, sizeof *st);
    snprintf(st->model, sizeof st->model, "%s", model);
    return st;
}

/* The model of a state, its schema made current (a new model or epoch is
   installed as a daemon's ingest would). */
static model_t *
s_model(aggregate_t *a, const astate_head_t *h)
{
    models_t *ms = &a->s->models;
    model_t *md = models_find(ms, h->model, h->model_len);
    bool added = false;
    if (!md) {
        if (!(md = models_add(ms, h->model, h->model_len)))
            return NULL;
        added = true;
    }
    const schema_t *cur = md->cur;
    bool same = cur && cur->epoch == h->epoch && cur->shape.L == h->shape.L &&
                cur->shape.H == h->shape.H && cur->shape.n == h->shape.n &&
                cur->shape.cls == h->shape.cls;
    for (uint32_t t = 0; same && t < h->shape.n; t++)
        same = strlen(cur->tokens[t]) == h->tokens[t].len &&
               memcmp(cur->tokens[t], h->tokens[t].ptr, h->tokens[t].len) == 0;
    /* Feature groups are part of the schema: the records are over nf
       features. */
    same = same && cur->grouped == (h->groups != NULL) && cur->nf == h->nf;
    if (!same && (!cur || h->epoch >= cur->epoch)) {
        xm_group_def_t *defs = NULL;
        xm_str_t *toks = NULL;
        uint32_t ng = 0;
        int rc = 0;
        if (h->groups) {
            snap_rd_t d;
            snap_rd_init(&d, h->groups, h->groups_len);
            rc = model_groups_read(&d, h->shape.n, &defs, &toks, &ng);
        }
        rc = rc || model_restore_schema_groups(md, h->epoch, &h->shape, h->tokens, defs, ng, true);
        free(defs);
        free(toks);
        if (rc) {
            if (added)
                models_drop_last(ms, md);
            return NULL;
        }
    }
    if (added)
        log_info("aggregate: new model '%s'", md->name);
    return md;
}

static void
s_on_state(aggregate_t *a, int i, const void *body, size_t len)
{
    ashard_t *sh = &a->shards[i];
    astate_head_t *h = a->head;
    if (astate_peek(body, len, h)) {
        a->state_rejected++;
        log_limited(LOGK_AGGREGATE, LOG_WARN_, "aggregate: shard %s sent a state that does not "
                    "read as one", sh->endpoint);
        return;
    }
    if (sh->k >= 0 && ((uint32_t)sh->k != h->shard || sh->n != h->shards))
        log_warn("aggregate: %s now says it is shard %" PRIu32 "/%" PRIu32 " (was %d/%u)",
                 sh->endpoint, h->shard, h->shards, sh->k, sh->n);
    sh->k = (int32_t)h->shard;
    sh->n = h->shards;
    sh->owns = h->owns;
    if (h->has_rejected) {
        sh->has_rejected = true;
        sh->rejected_total = h->rejected_total;
        memcpy(sh->rejected, h->rejected, sizeof sh->rejected);
    }
    int64_t now = now_mono_ns();
    if (sh->stale) {
        if (sh->seen)
            log_notice("aggregate: shard %d/%u (%s) is back; its state replaces its last one",
                       sh->k, sh->n, sh->endpoint);
        else
            log_notice("aggregate: shard %d/%u (%s) is up, late: its state now counts", sh->k,
                       sh->n, sh->endpoint);
        sh->stale = false;
        for (uint32_t m = 0; m < a->s->models.count; m++)
            a->models[m].dirty = true;
    }
    sh->seen = true;
    sh->last_ns = now;
    sh->states++;
    model_t *md = s_model(a, h);
    if (md && md->cur->epoch == h->epoch && md->cur->nf != h->nf) {
        /* a state whose features are not its schema's (groups the
           aggregator could not take): merging it would misplace values */
        a->state_rejected++;
        log_limited(LOGK_AGGREGATE, LOG_WARN_, "aggregate: shard %s: model '%s' epoch %" PRIu32
                    " has %" PRIu32 " features in its state and %" PRIu32 " in its schema; "
                    "state not merged", sh->endpoint, h->model, h->epoch, h->nf, md->cur->nf);
        return;
    }
    astate_t *st = md ? s_state_slot(sh, h->model) : NULL;
    void *copy = st ? malloc(len) : NULL;
    if (!copy) {
        log_limited(LOGK_AGGREGATE, LOG_ERR_, "aggregate: out of memory (or the model table is "
                    "full) for model '%s'", h->model);
        return;
    }
    memcpy(copy, body, len);
    free(st->body);
    st->body = copy;
    st->len = len;
    st->epoch = h->epoch;
    a->models[md->index].dirty = true;
}

/* Forget the aggregates of epoch e (not its drift reference, windows judged
   and alerts): it is rebuilt from the shards' states. */
static void
s_reset_epoch(gepoch_t *e)
{
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(e->methods & XM_BIT(m)))
            continue;
        agg_reset(&e->all[m]);
        if (e->evd[m].sum)
            evdecay_reset(&e->evd[m]);
        if (e->evw[m].count)
            evwin_reset(&e->evw[m]);
        for (uint32_t c = 0; c < e->nclasses; c++) {
            agg_reset(&e->classes[c].agg[m]);
            if (e->classes[c].evd[m].sum)
                evdecay_reset(&e->classes[c].evd[m]);
        }
    }
    agg_reset(&e->heads.importance);
    agg_reset(&e->heads.confidence);
    e->count = 0;
    e->untracked = 0;
    e->segs.overflow = 0;
    for (uint32_t i = 0; e->seg && i < e->segs.n; i++) {
        gseg_t *sg = e->seg[i];
        for (int m = 0; sg && m < XM_NMETHODS; m++) {
            if (!(sg->methods & XM_BIT(m)))
                continue;
            agg_reset(&sg->all[m]);
            if (sg->evd[m].sum)
                evdecay_reset(&sg->evd[m]);
            if (sg->evw[m].count)
                evwin_reset(&sg->evw[m]);
        }
        if (sg)
            sg->count = 0;
    }
}

/* The per-segment bookkeeping of a model, made with its first segment. */
static int
s_model_segs(aggregate_t *a, amodel_t *am)
{
    uint32_t ms = a->s->global.p.max_segments;
    if (am->seg_next_k || !ms)
        return 0;
    am->seg_next_set = calloc(ms, sizeof *am->seg_next_set);
    am->seg_has_bound = calloc(ms, sizeof *am->seg_has_bound);
    am->seg_next_k = calloc((size_t)ms * XM_NMETHODS, sizeof *am->seg_next_k);
    am->seg_bound = calloc((size_t)ms * XM_NMETHODS, sizeof *am->seg_bound);
    if (!am->seg_next_set || !am->seg_has_bound || !am->seg_next_k || !am->seg_bound) {
        free(am->seg_next_set);
        free(am->seg_has_bound);
        free(am->seg_next_k);
        free(am->seg_bound);
        am->seg_next_set = am->seg_has_bound = NULL;
        am->seg_next_k = am->seg_bound = NULL;
        return -1;
    }
    return 0;
}

/* Judge the merged windows of method m below `bound` (overall: seg -1, or
   of segment seg) from *next_k on, as one daemon closes them. */
static void
s_close_below(aggregate_t *a, model_t *md, gepoch_t *e, int m, int seg, evwin_t *w,
              const glast_t *l, bool *next_set, int64_t *next_k, int64_t bound,
              global_closed_t *closed)
{
    global_t *g = &a->s->global;
    if (!*next_set) {
        /* After the last window judged before a restart (state.dir),
           else from the first window the shards still hold. */
        *next_k = l->valid ? (int64_t)l->window + 1 : INT64_MIN;
        *next_set = true;
    }
    evwin_view_t v;
    for (int64_t k = *next_k; evwin_next(w, k, &v) == 1 && v.k < bound; k = v.k + 1) {
        if (closed->n == GLOBAL_CLOSED_MAX) {
            publish_drift(&a->s->publisher, md, closed);
            closed->n = 0;
        }
        if (seg < 0)
            global_close_window(g, md, e, m, &v, closed);
        else
            global_close_window_seg(g, md, e, m, seg, &v, closed);
    }
    if (bound > *next_k)
        *next_k = bound;
}

static void
s_rebuild(aggregate_t *a, model_t *md)
{
    global_t *g = &a->s->global;
    amodel_t *am = &a->models[md->index];
    uint32_t epoch = md->cur ? md->cur->epoch : 0;
    gepoch_t *e = epoch ? global_epoch(g, md, epoch, true) : NULL;
    if (!e)
        return;
    uint32_t ms = g->p.max_segments;
    if (ms && s_model_segs(a, am)) {
        log_limited(LOGK_AGGREGATE, LOG_ERR_, "aggregate: out of memory for the segments of "
                    "model '%s'", md->name);
        return;
    }
    astate_merged_t out;
    int64_t own[AGG_MAX_SHARDS][XM_NMETHODS];
    uint32_t merged = 0;        /* fresh shards whose state was merged */
    bool absent = false;        /* a fresh shard has no state of this epoch yet */
    for (int tries = 0; tries < 2 * AGG_MAX_SHARDS; tries++) {
        s_reset_epoch(e);
        memset(&out, 0, sizeof out);
        for (int m = 0; m < XM_NMETHODS; m++)
            out.next_close[m] = INT64_MAX;
        if (ms) {
            for (size_t i = 0; i < (size_t)ms * XM_NMETHODS; i++)
                a->seg_close[i] = INT64_MAX;
            memset(a->seg_windows, 0, ms * sizeof *a->seg_windows);
            memset(a->seg_had, 0, ms * sizeof *a->seg_had);
            out.seg_close = a->seg_close;
            out.seg_windows = a->seg_windows;
            out.seg_had = a->seg_had;
        }
        merged = 0;
        absent = false;
        int bad = -1;
        for (int i = 0; i < a->nshards && bad < 0; i++) {
            ashard_t *sh = &a->shards[i];
            astate_t *st = NULL;
            for (uint32_t j = 0; j < sh->nst && !st; j++)
                if (strcmp(sh->st[j].model, md->name) == 0 && sh->st[j].body)
                    st = &sh->st[j];
            if (!st || st->epoch != epoch) {
                /* A shard not stale without this model's state yet (or
                   not heard from at all) may still hold trades of any
                   open window: close nothing. */
                if (!sh->stale)
                    absent = true;
                continue;
            }
            /* A stale shard's windows count, but do not hold back closing. */
            out.shard = i;
            out.fresh = !sh->stale;
            for (int m = 0; m < XM_NMETHODS; m++)
                out.own_close[m] = INT64_MAX;
            const char *why;
            if (astate_merge(st->body, st->len, g, e, &a->scratch, &out, &why)) {
                log_limited(LOGK_AGGREGATE, LOG_WARN_, "aggregate: the state of model '%s' from "
                            "%s does not merge (%s): left out", md->name, sh->endpoint, why);
                a->merge_errors++;
                free(st->body);
                st->body = NULL;
                bad = i;
                continue;
            }
            memcpy(own[i], out.own_close, sizeof own[i]);
            if (out.fresh)
                merged |= 1u << i;
        }
        if (bad < 0)
            break;
    }
    if (absent)
        for (int m = 0; m < XM_NMETHODS; m++)
            out.next_close[m] = INT64_MIN;
    a->merges++;
    md->received = out.received;
    md->trades = out.trades;
    md->explained = out.explained;
    md->rejected = out.rejected;
    md->lost = out.lost;
    md->restarts = out.restarts;
    md->last_ts = out.last_ts;

    /* Drift on the merged windows every fresh shard has closed. */
    if (am->epoch != epoch) {
        memset(am->next_set, 0, sizeof am->next_set);
        if (am->seg_next_set)
            memset(am->seg_next_set, 0, ms * sizeof *am->seg_next_set);
        am->epoch = epoch;
    }
    global_closed_t closed = {.epoch = epoch, .n = 0};
    am->has_bound = 0;
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(out.has_windows & XM_BIT(m)) || out.next_close[m] == INT64_MAX)
            continue;
        am->has_bound |= XM_BIT(m);
        am->bound[m] = out.next_close[m];
        if (out.next_close[m] == INT64_MIN)
            continue;
        s_close_below(a, md, e, m, -1, &e->evw[m], &e->last[m], &am->next_set[m], &am->next_k[m],
                      out.next_close[m], &closed);
    }
    /* Segments: a fresh shard that sent no such segment holds none of its
       trades below its own closed windows (a trade of it there would be
       late), so its model-wide bound applies. */
    for (uint32_t si = 0; ms && e->seg && si < e->segs.n; si++) {
        gseg_t *sg = e->seg[si];
        am->seg_has_bound[si] = 0;
        if (!sg)
            continue;
        for (int m = 0; m < XM_NMETHODS; m++) {
            if (!(a->seg_windows[si] & XM_BIT(m)))
                continue;
            int64_t *b = &a->seg_close[(size_t)si * XM_NMETHODS + m];
            for (int i = 0; i < a->nshards; i++)
                if ((merged >> i & 1) && !(a->seg_had[si] >> i & 1) && own[i][m] < *b)
                    *b = own[i][m];
            if (absent)
                *b = INT64_MIN;
            if (*b == INT64_MAX)
                continue;
            am->seg_has_bound[si] |= XM_BIT(m);
            am->seg_bound[(size_t)si * XM_NMETHODS + m] = *b;
            if (*b == INT64_MIN)
                continue;
            bool set = am->seg_next_set[si] >> m & 1;
            s_close_below(a, md, e, m, (int)si, &sg->evw[m], &sg->last[m], &set,
                          &am->seg_next_k[(size_t)si * XM_NMETHODS + m], *b, &closed);
            if (set)
                am->seg_next_set[si] |= XM_BIT(m);
        }
    }
    if (closed.n)
        publish_drift(&a->s->publisher, md, &closed);
    gmodel_t *gm = global_model(g, md);
    if (gm)
        gm->dirty = true;
    g->gen++;
}

uint64_t
aggregate_owns(const aggregate_t *a, uint32_t *n)
{
    uint64_t owns = 0;
    for (int i = 0; i < a->nshards; i++)
        if (a->shards[i].seen) {
            owns |= a->shards[i].owns;
            *n = a->shards[i].n;
        }
    return owns;
}

bool
aggregate_bound(const aggregate_t *a, uint32_t mi, int seg, int m, int64_t *bound)
{
    const amodel_t *am = &a->models[mi];
    if (seg < 0) {
        *bound = am->bound[m];
        return am->has_bound >> m & 1;
    }
    if (!am->seg_has_bound || !(am->seg_has_bound[seg] >> m & 1))
        return false;
    *bound = am->seg_bound[(size_t)seg * XM_NMETHODS + m];
    return true;
}

/* ---- trade queries ------------------------------------------------------- */

static void
s_reply(aggregate_t *a, apending_t *p, const void *body, size_t len)
{
    void *router = a->s->router;
    bool ok = true;
    for (int i = 0; i < p->nenv && ok; i++)
        ok = zmq_send(router, zmq_msg_data(&p->env[i]), zmq_msg_size(&p->env[i]),
                      ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0;
    if (!ok || zmq_send(router, body, len, ZMQ_DONTWAIT) < 0)
        a->s->stats.query_dropped++;
}

static void
s_reply_error(aggregate_t *a, apending_t *p, const char *code, const char *error)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    enc_str(&pk, "v");
    msgpack_pack_uint8(&pk, 1);
    enc_str(&pk, "ok");
    msgpack_pack_false(&pk);
    enc_str(&pk, "code");
    enc_str(&pk, code);
    enc_str(&pk, "error");
    enc_str(&pk, error);
    s_reply(a, p, sb.data, sb.size);
    a->s->stats.query_errors++;
    msgpack_sbuffer_destroy(&sb);
}

/* The trade op's model and id, when the request is one. */
static bool
s_trade_id(const void *body, size_t len, uint64_t *hash)
{
    mpr_t r;
    mpr_obj_t o, k, v;
    mpr_init(&r, body, len);
    if (mpr_next(&r, &o) || o.type != MPR_MAP)
        return false;
    bool trade = false, have_id = false;
    for (uint32_t i = 0; i < o.v.count; i++) {
        if (mpr_next(&r, &k) || k.type != MPR_STR)
            return false;
        if (mpr_str_eq(&k, "op")) {
            if (mpr_next(&r, &v) || v.type != MPR_STR)
                return false;
            trade = mpr_str_eq(&v, "trade");
        } else if (mpr_str_eq(&k, "id")) {
            if (mpr_next(&r, &v))
                return false;
            if (v.type == MPR_STR)
                *hash = shard_hash(v.v.raw.ptr, v.v.raw.len);
            else if (v.type == MPR_UINT)
                *hash = shard_hash_uint(v.v.u);
            else
                return false;
            have_id = true;
        } else if (mpr_skip(&r, 32))
            return false;
    }
    return trade && have_id;
}

bool
aggregate_take_query(aggregate_t *a, zmq_msg_t *env, int nenv, const void *body, size_t len)
{
    uint64_t h = 0;
    if (nenv > AGG_MAX_ENV || !s_trade_id(body, len, &h))
        return false;   /* answered here (malformed requests included) */
    uint32_t n = 0;
    for (int i = 0; i < a->nshards && !n; i++)
        n = a->shards[i].seen ? a->shards[i].n : 0;
    if (!n)
        return false;   /* no shard known yet: unknown_model, as a daemon with nothing */
    uint32_t k = shard_of(h, n);
    int owner = -1;
    /* The shard itself, or the aggregator that covers it. */
    for (int i = 0; i < a->nshards && owner < 0; i++) {
        const ashard_t *sh = &a->shards[i];
        if (sh->seen && (k < AGG_MAX_OWNS ? (sh->owns >> k & 1) != 0 : sh->k == (int32_t)k))
            owner = i;
    }
    apending_t *p = calloc(1, sizeof *p);
    if (!p)
        return false;
    p->nenv = nenv;
    for (int i = 0; i < nenv; i++) {
        zmq_msg_init(&p->env[i]);
        zmq_msg_copy(&p->env[i], &env[i]);
    }
    a->s->stats.queries++;
    if (owner < 0 || a->npending == AGG_MAX_PENDING) {
        char why[96];
        snprintf(why, sizeof why, owner < 0 ? "shard %u of %u has not reported yet"
                                            : "too many trade queries waiting for their shards", k, n);
        s_reply_error(a, p, "not_found", why);
        s_pending_free(p);
        return true;
    }
    p->id = ++a->next_id;
    p->shard = owner;
    p->deadline = now_mono_ns() + AGG_TRADE_TIMEOUT_NS;
    void *d = a->shards[owner].dealer;
    if (zmq_send(d, &p->id, sizeof p->id, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(d, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(d, body, len, ZMQ_DONTWAIT) < 0) {
        s_reply_error(a, p, "not_found", "the owning shard cannot be reached");
        s_pending_free(p);
        return true;
    }
    a->pending[a->npending++] = p;
    a->trades_forwarded++;
    return true;
}

static void
s_on_reply(aggregate_t *a, int i)
{
    for (int burst = 0; burst < AGG_BURST; burst++) {
        zmq_msg_t parts[3];
        int n = 0, more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, a->shards[i].dealer, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&m);
                for (int j = 0; j < n && j < 3; j++)
                    zmq_msg_close(&parts[j]);
                return;
            }
            more = zmq_msg_more(&m);
            if (n < 3)
                parts[n] = m;
            else
                zmq_msg_close(&m);
            n++;
        }
        uint64_t id = 0;
        if (n == 3 && zmq_msg_size(&parts[0]) == sizeof id)
            memcpy(&id, zmq_msg_data(&parts[0]), sizeof id);
        for (uint32_t j = 0; id && j < a->npending; j++)
            if (a->pending[j]->id == id) {
                s_reply(a, a->pending[j], zmq_msg_data(&parts[2]), zmq_msg_size(&parts[2]));
                s_pending_free(a->pending[j]);
                a->pending[j] = a->pending[--a->npending];
                break;
            }
        for (int j = 0; j < n && j < 3; j++)
            zmq_msg_close(&parts[j]);
    }
}

/* ---- xpl/ forwarding ------------------------------------------------------ */

/* Data from the shards (only xpl/ is subscribed upstream) to our XPUB. */
static void
s_forward_down(aggregate_t *a)
{
    for (int burst = 0; burst < 4 * AGG_BURST; burst++) {
        int more = 1;
        bool first = true;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, a->xsub, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&m);
                return;     /* parts of a message arrive together: only before one */
            }
            more = zmq_msg_more(&m);
            if (zmq_msg_send(&m, a->s->pub, (more ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&m);
                if (first)
                    a->s->stats.dropped++;
            }
            first = false;
        }
    }
}

/* Subscriptions our XPUB sees, sent upstream when they ask for xpl/: a
   subscription to "" (everything) or "x" subscribes xpl/ upstream, one
   to xpl/m1 goes as it is, one to glob/ stays here. */
static void
s_forward_up(aggregate_t *a)
{
    for (int burst = 0; burst < AGG_BURST; burst++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, a->s->pub, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        const uint8_t *d = zmq_msg_data(&m);
        size_t len = zmq_msg_size(&m);
        if (len >= 1 && (d[0] == 0 || d[0] == 1)) {
            size_t pl = len - 1;
            uint8_t up[1 + 4] = {d[0], 'x', 'p', 'l', '/'};
            if (pl <= 4 && memcmp(d + 1, "xpl/", pl) == 0)
                zmq_send(a->xsub, up, sizeof up, ZMQ_DONTWAIT);
            else if (pl > 4 && memcmp(d + 1, "xpl/", 4) == 0)
                zmq_send(a->xsub, d, len, ZMQ_DONTWAIT);
            /* Someone (an aggregator above) wants state/: "", "s", ...,
               "state/", "state/m1" (XPUB reports each topic's first
               subscription and its last unsubscription). */
            if ((pl <= 6 && memcmp(d + 1, "state/", pl) == 0) ||
                (pl > 6 && memcmp(d + 1, "state/", 6) == 0)) {
                if (d[0] == 1)
                    a->state_subs++;
                else if (a->state_subs)
                    a->state_subs--;
            }
        }
        zmq_msg_close(&m);
    }
}

/* ---- the loop's part ------------------------------------------------------ */

static void
s_recv_states(aggregate_t *a, int i)
{
    for (int burst = 0; burst < AGG_BURST; burst++) {
        zmq_msg_t t, b;
        zmq_msg_init(&t);
        zmq_msg_init(&b);
        if (zmq_msg_recv(&t, a->shards[i].sub, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&t);
            zmq_msg_close(&b);
            return;
        }
        bool two = zmq_msg_more(&t) && zmq_msg_recv(&b, a->shards[i].sub, ZMQ_DONTWAIT) >= 0 &&
                   !zmq_msg_more(&b);
        if (two)
            s_on_state(a, i, zmq_msg_data(&b), zmq_msg_size(&b));
        else
            a->state_rejected++;
        /* Drop the rest of a message of more than two frames. */
        while (zmq_msg_more(two ? &b : &t)) {
            zmq_msg_close(&b);
            zmq_msg_init(&b);
            if (zmq_msg_recv(&b, a->shards[i].sub, ZMQ_DONTWAIT) < 0)
                break;
        }
        zmq_msg_close(&t);
        zmq_msg_close(&b);
    }
}

static void
s_timers(aggregate_t *a)
{
    int64_t now = now_mono_ns();
    int64_t stale_ns = (int64_t)a->s->cfg.aggregate_stale_ms * 1000000;
    for (int i = 0; i < a->nshards; i++) {
        ashard_t *sh = &a->shards[i];
        if (sh->stale || now - sh->last_ns < stale_ns)
            continue;
        sh->stale = true;
        a->stale_events++;
        if (sh->seen)
            log_warn("aggregate: shard %d/%u (%s) is stale: no state for %" PRIu64 " ms; its last "
                     "state still counts", sh->k, sh->n, sh->endpoint, a->s->cfg.aggregate_stale_ms);
        else
            log_warn("aggregate: shard %s is stale: no state in the %" PRIu64 " ms since the "
                     "aggregator started; windows now close without it", sh->endpoint,
                     a->s->cfg.aggregate_stale_ms);
        for (uint32_t m = 0; m < a->s->models.count; m++)
            a->models[m].dirty = true;
    }
    a->s->global.stale_mask = 0;
    a->s->global.nshards = (uint32_t)a->nshards;
    for (int i = 0; i < a->nshards; i++)
        if (a->shards[i].stale)
            a->s->global.stale_mask |= 1u << i;
    for (uint32_t j = 0; j < a->npending;) {
        apending_t *p = a->pending[j];
        if (now < p->deadline) {
            j++;
            continue;
        }
        char why[96];
        snprintf(why, sizeof why, "shard %d/%u did not answer in time", a->shards[p->shard].k,
                 a->shards[p->shard].n);
        s_reply_error(a, p, "not_found", why);
        s_pending_free(p);
        a->pending[j] = a->pending[--a->npending];
    }
}

void
aggregate_handle(aggregate_t *a, const zmq_pollitem_t *items, int first)
{
    for (int i = 0; i < a->nshards; i++) {
        if (items[first + 2 * i].revents & ZMQ_POLLIN)
            s_recv_states(a, i);
        if (items[first + 2 * i + 1].revents & ZMQ_POLLIN)
            s_on_reply(a, i);
    }
    if (items[first + 2 * a->nshards].revents & ZMQ_POLLIN)
        s_forward_down(a);
    if (items[first + 2 * a->nshards + 1].revents & ZMQ_POLLIN)
        s_forward_up(a);
    s_timers(a);
}

void
aggregate_rebuild(aggregate_t *a)
{
    bool any = false;
    for (uint32_t m = 0; m < a->s->models.count; m++)
        if (a->models[m].dirty) {
            a->models[m].dirty = false;
            s_rebuild(a, a->s->models.items[m]);
            any = true;
        }
    stats_t *st = &a->s->stats;
    if (any) {
        /* The ingest counters of the stats reply and the metrics: the
           shards' sums, as one daemon fed the whole stream would count
           them. Rejections are daemon-wide (a message refused before its
           model is known counts too): each shard's last report, by reason. */
        st->received = st->received_trades = st->explained = st->lost = st->restarts = 0;
        st->rejected_total = 0;
        memset(st->rejected, 0, sizeof st->rejected);
        for (uint32_t m = 0; m < a->s->models.count; m++) {
            const model_t *md = a->s->models.items[m];
            st->received += md->received;
            st->received_trades += md->trades;
            st->explained += md->explained;
            st->lost += md->lost;
            st->restarts += md->restarts;
        }
        for (int i = 0; i < a->nshards; i++) {
            const ashard_t *sh = &a->shards[i];
            st->rejected_total += sh->rejected_total;
            for (int r = 0; r < XR_NREASONS; r++)
                st->rejected[r] += sh->rejected[r];
        }
    }
    /* The merged state, as a shard sends its own: for an aggregator of
       aggregators, and the heartbeat that says this one is alive; not
       even encoded while nobody subscribes to it. */
    if (a->state_subs)
        astate_publish(&a->s->publisher, &a->s->global, &a->s->models, st, 0, 0, a);
}

uint32_t
aggregate_stale_count(const aggregate_t *a)
{
    uint32_t n = 0;
    for (int i = 0; i < a->nshards; i++)
        n += a->shards[i].stale;
    return n;
}

void
aggregate_enc_shards(const aggregate_t *a, msgpack_packer *pk)
{
    int64_t now = now_mono_ns();
    msgpack_pack_array(pk, (size_t)a->nshards);
    for (int i = 0; i < a->nshards; i++) {
        const ashard_t *sh = &a->shards[i];
        msgpack_pack_map(pk, 6);
        enc_str(pk, "endpoint");
        enc_str(pk, sh->endpoint);
        enc_str(pk, "shard");
        if (sh->seen)
            msgpack_pack_int32(pk, sh->k);
        else
            msgpack_pack_nil(pk);
        enc_str(pk, "shards");
        msgpack_pack_uint32(pk, sh->n);
        enc_str(pk, "stale");
        enc_bool(pk, sh->stale || !sh->seen);
        enc_str(pk, "age_ms");
        if (sh->seen)
            msgpack_pack_double(pk, (double)(now - sh->last_ns) / 1e6);
        else
            msgpack_pack_nil(pk);
        enc_str(pk, "states");
        msgpack_pack_uint64(pk, sh->states);
    }
}
