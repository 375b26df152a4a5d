/*  Tests of core/flow against an independent exact max-flow.

    The reference builds the whole layered graph of MATH.md explicitly
    ((L+1)*n nodes, every edge in an adjacency list, no reduction of the
    top or bottom layer) and runs Dinic's algorithm in fixed point: every
    float32 capacity is an integer multiple of 2^-S for the smallest
    exponent present, so scaled by 2^S it is an exact 192-bit integer and
    the max flow is computed with no rounding at all. It shares no code
    and no idea (bit sets, reductions, arc order) with core/flow.c, and
    being exact it also judges the library's floating point: results
    must agree to 1e-6 relative with no absolute slack.  */
#include "flow.h"
#include "support.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REL 1e-6

/* ---- 192-bit unsigned fixed point ------------------------------------- */

typedef struct {
    uint64_t w[3];      /* little-endian words */
} u192_t;

static u192_t
u_add(u192_t a, u192_t b)
{
    u192_t r;
    unsigned __int128 c = 0;
    for (int k = 0; k < 3; k++) {
        c += (unsigned __int128)a.w[k] + b.w[k];
        r.w[k] = (uint64_t)c;
        c >>= 64;
    }
    cr_assert(c == 0, "u192 overflow");
    return r;
}

static u192_t
u_sub(u192_t a, u192_t b)   /* a >= b */
{
    u192_t r;
    uint64_t borrow = 0;
    for (int k = 0; k < 3; k++) {
        uint64_t d = a.w[k] - b.w[k] - borrow;
        borrow = (a.w[k] < b.w[k]) || (a.w[k] - b.w[k] < borrow);
        r.w[k] = d;
    }
    cr_assert(borrow == 0, "u192 underflow");
    return r;
}

static int
u_cmp(u192_t a, u192_t b)
{
    for (int k = 2; k >= 0; k--)
        if (a.w[k] != b.w[k])
            return a.w[k] < b.w[k] ? -1 : 1;
    return 0;
}

static bool
u_pos(u192_t a)
{
    return (a.w[0] | a.w[1] | a.w[2]) != 0;
}

static u192_t
u_min(u192_t a, u192_t b)
{
    return u_cmp(a, b) <= 0 ? a : b;
}

/* c * 2^S for a positive finite float c with frexp exponent >= 24 - S */
static u192_t
u_from_float(float c, int S)
{
    int e;
    float fr = frexpf(c, &e);
    uint64_t mant = (uint64_t)ldexpf(fr, 24);   /* c = mant * 2^(e-24) */
    int sh = e - 24 + S;
    cr_assert(sh >= 0 && sh + 24 <= 190, "capacity out of fixed-point range");
    u192_t r = {{0, 0, 0}};
    int wi = sh / 64, bi = sh % 64;
    r.w[wi] = mant << bi;
    if (bi > 40 && wi < 2)
        r.w[wi + 1] = mant >> (64 - bi);
    return r;
}

static double
u_to_double(u192_t a, int S)
{
    return ldexp(ldexp((double)a.w[2], 128) + ldexp((double)a.w[1], 64) + (double)a.w[0], -S);
}

/* ---- reference: Dinic on the explicit graph, exact ---------------------- */

typedef struct {
    int to, next;
    u192_t res;
} redge_t;

typedef struct {
    int nv, ne;
    redge_t *e;
    int *head, *level, *it, *queue;
} rgraph_t;

static void
r_add(rgraph_t *g, int u, int v, u192_t c)
{
    g->e[g->ne] = (redge_t){v, g->head[u], c};
    g->head[u] = g->ne++;
    g->e[g->ne] = (redge_t){u, g->head[v], {{0, 0, 0}}};
    g->head[v] = g->ne++;
}

static bool
r_bfs(rgraph_t *g, int s, int t)
{
    for (int v = 0; v < g->nv; v++)
        g->level[v] = -1;
    int qh = 0, qt = 0;
    g->queue[qt++] = s;
    g->level[s] = 0;
    while (qh < qt) {
        int u = g->queue[qh++];
        for (int k = g->head[u]; k >= 0; k = g->e[k].next)
            if (u_pos(g->e[k].res) && g->level[g->e[k].to] < 0) {
                g->level[g->e[k].to] = g->level[u] + 1;
                g->queue[qt++] = g->e[k].to;
            }
    }
    return g->level[t] >= 0;
}

static u192_t
r_dfs(rgraph_t *g, int u, int t, u192_t lim)
{
    if (u == t)
        return lim;
    u192_t got = {{0, 0, 0}};
    for (; g->it[u] >= 0; g->it[u] = g->e[g->it[u]].next) {
        redge_t *e = &g->e[g->it[u]];
        if (!u_pos(e->res) || g->level[e->to] != g->level[u] + 1)
            continue;
        u192_t d = r_dfs(g, e->to, t, u_min(u_sub(lim, got), e->res));
        if (u_pos(d)) {
            e->res = u_sub(e->res, d);
            g->e[g->it[u] ^ 1].res = u_add(g->e[g->it[u] ^ 1].res, d);
            got = u_add(got, d);
            if (u_cmp(got, lim) == 0)
                return got;
        }
    }
    return got;
}

/* Exact max flow from (L, src) to (0, sink); capacities <= 0 are absent. */
static double
ref_maxflow(uint32_t L, uint32_t n, const float *C, uint32_t src, uint32_t sink)
{
    size_t cnt = (size_t)L * n * n;
    int emin = 1000;
    double total = 0;
    for (size_t k = 0; k < cnt; k++)
        if (C[k] > 0) {
            int e;
            frexpf(C[k], &e);
            emin = e < emin ? e : emin;
            total += C[k];
        }
    cr_assert(total < 1e6);
    int S = 24 - emin;
    rgraph_t g = {.nv = (int)((L + 1) * n)};
    g.e = malloc(2 * cnt * sizeof *g.e);
    g.head = malloc(g.nv * sizeof(int));
    g.level = malloc(g.nv * sizeof(int));
    g.it = malloc(g.nv * sizeof(int));
    g.queue = malloc(g.nv * sizeof(int));
    for (int v = 0; v < g.nv; v++)
        g.head[v] = -1;
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t j = 0; j < n; j++) {
                float c = C[(size_t)l * n * n + (size_t)i * n + j];
                if (c > 0)
                    r_add(&g, (int)((l + 1) * n + i), (int)(l * n + j), u_from_float(c, S));
            }
    int s = (int)(L * n + src), t = (int)sink;
    u192_t flow = {{0, 0, 0}}, inf = {{0, 0, (uint64_t)1 << 62}};
    while (r_bfs(&g, s, t)) {
        for (int v = 0; v < g.nv; v++)
            g.it[v] = g.head[v];
        u192_t d;
        while (u_pos(d = r_dfs(&g, s, t, inf)))
            flow = u_add(flow, d);
    }
    free(g.e); free(g.head); free(g.level); free(g.it); free(g.queue);
    return u_to_double(flow, S);
}

/* Expected flow_compute output: n-1 values, or the mean over sources. */
static void
ref_flow(uint32_t L, uint32_t n, int32_t cls, const float *C, double *out)
{
    for (uint32_t j = 0, k = 0; j < n; j++) {
        if ((int32_t)j == cls)
            continue;
        double v = 0;
        if (cls >= 0) {
            v = ref_maxflow(L, n, C, (uint32_t)cls, j);
        } else {
            for (uint32_t s = 0; s < n; s++)
                v += ref_maxflow(L, n, C, s, j);
            v /= n;
        }
        out[k++] = v;
    }
}

/* ---- inputs ------------------------------------------------------------- */

typedef enum { GEN_RANDOM, GEN_PEAKED, GEN_CAUSAL, GEN_STARVED } gen_t;

static const char *GEN_NAME[] = {"random", "peaked", "causal", "starved"};

/* Capacities Â_l = rownorm(I + mean_h A_l) as float, from H heads of
   softmax attention: logits scaled by ~1 (random) or ~8 (peaked); causal
   masks keys j > i (exact zeros); starved makes token n/2 get almost no
   attention anywhere (tiny flows, where relative accuracy is hardest). */
static void
make_caps(rng_t *r, gen_t gen, uint32_t L, uint32_t n, float *C)
{
    uint32_t H = 4;
    double *A = malloc((size_t)n * n * sizeof *A), *M = malloc((size_t)n * n * sizeof *M);
    double temp = gen == GEN_PEAKED || gen == GEN_STARVED ? 8.0 : 1.0;
    for (uint32_t l = 0; l < L; l++) {
        memset(M, 0, (size_t)n * n * sizeof *M);
        for (uint32_t h = 0; h < H; h++) {
            gen_attention(r, A, n, (int)n, temp * (0.5 + rng_uniform(r)));
            for (uint32_t i = 0; i < n; i++) {
                double s = 0;
                for (uint32_t j = 0; j < n; j++) {
                    double a = A[(size_t)i * n + j];
                    if (gen == GEN_CAUSAL && j > i)
                        a = 0;
                    if (gen == GEN_STARVED && j == n / 2 && i != j)
                        a *= 1e-12;
                    A[(size_t)i * n + j] = a;
                    s += a;
                }
                for (uint32_t j = 0; j < n; j++)
                    M[(size_t)i * n + j] += A[(size_t)i * n + j] / s / H;
            }
        }
        for (uint32_t i = 0; i < n; i++) {
            double s = 0;
            for (uint32_t j = 0; j < n; j++)
                s += M[(size_t)i * n + j] + (i == j);
            for (uint32_t j = 0; j < n; j++)
                C[(size_t)l * n * n + (size_t)i * n + j] = (float)((M[(size_t)i * n + j] + (i == j)) / s);
        }
    }
    free(A);
    free(M);
}

typedef struct {
    uint32_t L, n;
    int32_t cls;
    gen_t gen;
    uint64_t seed;
} case_t;

static size_t g_checked;    /* values compared, for the summary asserts */

/* Run one case through a (possibly shared) work area and compare every
   value with the exact reference. */
static void
check_case(flow_work_t *w, const case_t *c)
{
    rng_t r;
    rng_seed(&r, c->seed);
    size_t cnt = (size_t)c->L * c->n * c->n;
    float *C = malloc(cnt * sizeof *C), *got = malloc(c->n * sizeof *got);
    double *want = malloc(c->n * sizeof *want);
    make_caps(&r, c->gen, c->L, c->n, C);
    cr_assert_eq(flow_compute(w, c->L, c->n, c->cls, C, got), 0);
    ref_flow(c->L, c->n, c->cls, C, want);
    uint32_t nf = c->cls >= 0 ? c->n - 1 : c->n;
    for (uint32_t k = 0; k < nf; k++) {
        cr_assert(want[k] > 0 || c->gen == GEN_CAUSAL, "only masks cut tokens off entirely");
        cr_assert(close_enough(got[k], want[k], REL, 0.0),
                  "%s L=%u n=%u cls=%d seed=%llu: [%u] got %.9g want %.17g (rel %.3g)",
                  GEN_NAME[c->gen], c->L, c->n, c->cls, (unsigned long long)c->seed, k,
                  got[k], want[k], fabs(got[k] - want[k]) / want[k]);
        g_checked++;
    }
    free(C);
    free(got);
    free(want);
}

static int32_t
pick_cls(rng_t *r, uint32_t n, int which)
{
    switch (which) {
    case 0: return (int32_t)n - 1;
    case 1: return 0;
    default: return (int32_t)(rng_next(r) % n);
    }
}

/* ---- tests -------------------------------------------------------------- */

Test(flow, hand_computed_values)
{
    /* L = 1: the single edge (1, cls) -> (0, j) */
    const float one[4] = {0.75f, 0.25f, 0.5f, 0.5f};
    float out[4];
    flow_work_t *w = flow_work_new();
    cr_assert_eq(flow_compute(w, 1, 2, 1, one, out), 0);
    cr_assert_eq(out[0], 0.5f);
    cr_assert_eq(flow_compute(w, 1, 2, -1, one, out), 0);
    cr_assert_eq(out[0], 0.625f);
    cr_assert_eq(out[1], 0.375f);

    /* L = 2: disjoint two-edge paths, flow = sum_u min(a_u, b_u), with
       a = row 0 of layer 1 = (.5, .25, .25) and b = a column of layer 0 */
    const float two[2][9] = {
        {0.5f, 0.25f, 0.125f, 0.25f, 0.5f, 0.25f, 0.25f, 0.25f, 0.625f},
        {0.5f, 0.25f, 0.25f, 0.25f, 0.5f, 0.25f, 0.25f, 0.25f, 0.5f},
    };
    cr_assert_eq(flow_compute(w, 2, 3, 0, &two[0][0], out), 0);
    /* sink 1: min(.5,.25)+min(.25,.5)+min(.25,.25) = .75;
       sink 2: min(.5,.125)+min(.25,.25)+min(.25,.625) = .625 */
    cr_assert_eq(out[0], 0.75f);
    cr_assert_eq(out[1], 0.625f);

    /* L = 3, source (3,0), sink (0,1): (3,0) -> (2,0) carries 1, which
       splits .75 / .25 into (1,0) / (1,1); (1,0) -> (0,1) only takes .5,
       (1,1) -> (0,1) takes all .25. Max flow .75 */
    float three[3][4] = {
        {0.5f, 0.5f, 0.0f, 1.0f},     /* layer 0: Â_0 */
        {0.75f, 0.25f, 0.0f, 1.0f},   /* layer 1: Â_1 */
        {1.0f, 0.0f, 0.0f, 1.0f},     /* layer 2: source row 0 */
    };
    cr_assert_eq(flow_compute(w, 3, 2, 0, &three[0][0], out), 0);
    cr_assert_eq(out[0], 0.75f);
    flow_work_destroy(&w);
    cr_assert_null(w);
    flow_work_destroy(&w);  /* NULL-safe */
}

Test(flow, random_shapes_cls_positions)
{
    /* n 2..64 and L 1..12 drawn at random, CLS last, first and anywhere */
    rng_t r;
    rng_seed(&r, 601);
    flow_work_t *w = flow_work_new();
    g_checked = 0;
    for (int t = 0; t < 36; t++) {
        case_t c = {.L = 1 + (uint32_t)(rng_next(&r) % 12), .n = 2 + (uint32_t)(rng_next(&r) % 63),
                    .gen = GEN_RANDOM, .seed = 1000 + (uint64_t)t};
        c.cls = pick_cls(&r, c.n, t % 3);
        check_case(w, &c);
    }
    cr_assert_gt(g_checked, 36u * 10);
    flow_work_destroy(&w);
}

Test(flow, peaked_attention)
{
    rng_t r;
    rng_seed(&r, 602);
    flow_work_t *w = flow_work_new();
    for (int t = 0; t < 30; t++) {
        case_t c = {.L = 1 + (uint32_t)(rng_next(&r) % 12), .n = 2 + (uint32_t)(rng_next(&r) % 63),
                    .gen = GEN_PEAKED, .seed = 2000 + (uint64_t)t};
        c.cls = pick_cls(&r, c.n, t % 3);
        check_case(w, &c);
    }
    flow_work_destroy(&w);
}

Test(flow, extreme_shapes)
{
    /* the corners of the range, each with random and peaked attention */
    static const uint32_t shapes[][2] = {{2, 1}, {2, 2}, {2, 12}, {3, 3}, {64, 1}, {64, 2},
                                         {64, 3}, {64, 12}, {5, 12}, {33, 7}};
    flow_work_t *w = flow_work_new();
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int g = GEN_RANDOM; g <= GEN_PEAKED; g++) {
            case_t c = {.n = shapes[s][0], .L = shapes[s][1], .cls = (int32_t)shapes[s][0] - 1,
                        .gen = (gen_t)g, .seed = 3000 + s * 2 + (uint64_t)g};
            check_case(w, &c);
        }
    flow_work_destroy(&w);
}

Test(flow, without_cls_mean_over_sources)
{
    /* every top node a source in turn (n^2 reference max-flows per case) */
    static const uint32_t shapes[][2] = {{2, 1}, {2, 5}, {3, 12}, {7, 4}, {12, 3},
                                         {16, 6}, {24, 2}, {10, 12}, {64, 2}, {20, 4}};
    flow_work_t *w = flow_work_new();
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        case_t c = {.n = shapes[s][0], .L = shapes[s][1], .cls = -1,
                    .gen = s % 2 ? GEN_PEAKED : GEN_RANDOM, .seed = 4000 + s};
        check_case(w, &c);
    }
    flow_work_destroy(&w);
}

Test(flow, zeros_and_tiny_flows)
{
    /* causal masks give exact zero capacities (and flows that must route
       around them); a starved token gets flows down to ~1e-13 that must
       still be right to 1e-6 relative */
    flow_work_t *w = flow_work_new();
    static const uint32_t shapes[][2] = {{2, 3}, {8, 4}, {17, 6}, {32, 4}, {64, 5}, {40, 12}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int g = GEN_CAUSAL; g <= GEN_STARVED; g++)
            for (int which = 0; which < 2; which++) {
                rng_t r;
                rng_seed(&r, 5000 + s);
                case_t c = {.n = shapes[s][0], .L = shapes[s][1], .gen = (gen_t)g,
                            .seed = 5000 + s * 4 + (uint64_t)g * 2 + (uint64_t)which};
                c.cls = pick_cls(&r, c.n, which);
                check_case(w, &c);
            }
    /* the starved token's flow really is tiny (the case tests something) */
    rng_t r;
    rng_seed(&r, 77);
    float C[4 * 16 * 16], out[16];
    make_caps(&r, GEN_STARVED, 4, 16, C);
    cr_assert_eq(flow_compute(w, 4, 16, 0, C, out), 0);
    cr_assert_lt(out[8 - 1], 1e-9, "starved token flow %g", out[8 - 1]);
    double want = ref_maxflow(4, 16, C, 0, 8);
    cr_assert(close_enough(out[8 - 1], want, REL, 0.0), "%.9g vs %.17g", out[8 - 1], want);
    flow_work_destroy(&w);
}

Test(flow, mixed_magnitudes_terminate_exactly, .timeout = 120)
{
    /* General capacities (not row-normalised) mixing values near 1 with
       values near 2^-45..2^-70: sums of flows round, tiny cancels are
       absorbed by full edges. A residual arc must never be left with
       zero residual (the DFS would offer it nothing forever): this is
       the test that hung before that was guaranteed. */
    rng_t r;
    rng_seed(&r, 1234);
    flow_work_t *w = flow_work_new();
    float C[5 * 7 * 7], got[7];
    double want[7];
    for (int it = 0; it < 4000; it++) {
        uint32_t n = 2 + (uint32_t)(rng_next(&r) % 6), L = 3 + (uint32_t)(rng_next(&r) % 3);
        bool coarse = rng_next(&r) % 2;
        for (size_t k = 0; k < (size_t)L * n * n; k++) {
            double u = 0.5 + rng_uniform(&r) / 2, tiny = ldexp(u, -45 - (int)(rng_next(&r) % 25));
            if (coarse)
                C[k] = (float)(rng_next(&r) % 3 ? ldexp(1.0 + (double)(rng_next(&r) % 8) / 8,
                                                        -(int)(rng_next(&r) % 3))
                                                : tiny);
            else
                C[k] = rng_next(&r) % 3 == 0 ? 0.0f : (float)(rng_next(&r) % 2 ? u : tiny);
        }
        int32_t cls = (int32_t)(rng_next(&r) % (n + 1)) - 1;
        cr_assert_eq(flow_compute(w, L, n, cls, C, got), 0);
        ref_flow(L, n, cls, C, want);
        for (uint32_t k = 0; k < (cls >= 0 ? n - 1 : n); k++)
            cr_assert(close_enough(got[k], want[k], REL, 0.0), "it %d L=%u n=%u cls=%d [%u]: %.9g vs %.17g",
                      it, L, n, cls, k, got[k], want[k]);
    }
    flow_work_destroy(&w);
}

Test(flow, invalid_capacities_count_as_zero)
{
    rng_t r;
    rng_seed(&r, 700);
    uint32_t L = 4, n = 12;
    float C[4 * 12 * 12], D[4 * 12 * 12], a[12], b[12];
    make_caps(&r, GEN_RANDOM, L, n, C);
    memcpy(D, C, sizeof C);
    for (int k = 0; k < 40; k++) {
        size_t e = rng_next(&r) % (L * n * n);
        float bad = k % 4 == 0 ? NAN : k % 4 == 1 ? -0.25f : k % 4 == 2 ? INFINITY : -INFINITY;
        C[e] = bad;
        D[e] = 0.0f;
    }
    flow_work_t *w = flow_work_new();
    for (int32_t cls = -1; cls < 2; cls++) {
        cr_assert_eq(flow_compute(w, L, n, cls, C, a), 0);
        cr_assert_eq(flow_compute(w, L, n, cls, D, b), 0);
        for (uint32_t k = 0; k < (cls >= 0 ? n - 1 : n); k++) {
            cr_assert(isfinite(a[k]));
            cr_assert_eq(a[k], b[k], "cls %d [%u]: %g vs %g", cls, k, a[k], b[k]);
        }
    }
    double want = ref_maxflow(L, n, D, 1, 0);
    cr_assert(close_enough(b[0], want, REL, 0.0));
    flow_work_destroy(&w);
}

Test(flow, work_area_reuse_across_shapes)
{
    /* one work area through growing, shrinking and alternating shapes
       gives bit-identical results to a fresh work area per call */
    static const uint32_t shapes[][2] = {{8, 3}, {32, 4}, {5, 12}, {64, 2}, {8, 3},
                                         {70, 3}, {3, 2}, {32, 4}, {130, 2}, {16, 5}};
    flow_work_t *shared = flow_work_new();
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        uint32_t n = shapes[s][0], L = shapes[s][1];
        rng_t r;
        rng_seed(&r, 800 + s);
        float *C = malloc((size_t)L * n * n * sizeof *C), *a = malloc(n * sizeof *a),
              *b = malloc(n * sizeof *b);
        make_caps(&r, s % 2 ? GEN_PEAKED : GEN_RANDOM, L, n, C);
        for (int32_t cls = (int32_t)n - 1; cls >= (int32_t)n - 2; cls--) {
            flow_work_t *fresh = flow_work_new();
            cr_assert_eq(flow_compute(shared, L, n, cls, C, a), 0);
            cr_assert_eq(flow_compute(fresh, L, n, cls, C, b), 0);
            cr_assert_eq(memcmp(a, b, (n - 1) * sizeof *a), 0, "shape n=%u L=%u cls=%d", n, L, cls);
            flow_work_destroy(&fresh);
        }
        free(C);
        free(a);
        free(b);
    }
    flow_stats_t st;
    flow_work_stats(shared, &st);
    cr_assert_eq(st.trades, 2u * (sizeof shapes / sizeof *shapes));
    cr_assert_gt(st.phases, 0u);
    cr_assert_geq(st.visits, st.phases);
    flow_work_destroy(&shared);
}

Test(flow, allocates_only_when_the_shape_grows)
{
    /* the work area is the only allocation flow_compute makes: count it */
    rng_t r;
    rng_seed(&r, 990);
    static float C[12 * 48 * 48];
    float out[48];
    flow_work_t *w = flow_work_new();
    flow_stats_t st;
    make_caps(&r, GEN_PEAKED, 4, 32, C);
    cr_assert_eq(flow_compute(w, 4, 32, 31, C, out), 0);
    flow_work_stats(w, &st);
    cr_assert_eq(st.grows, 1u);
    for (int t = 0; t < 20; t++) {         /* same shape, other trades, no CLS */
        make_caps(&r, t % 2 ? GEN_PEAKED : GEN_RANDOM, 4, 32, C);
        cr_assert_eq(flow_compute(w, 4, 32, t % 3 ? 31 : -1, C, out), 0);
    }
    make_caps(&r, GEN_RANDOM, 3, 16, C);    /* smaller in both directions */
    cr_assert_eq(flow_compute(w, 3, 16, 0, C, out), 0);
    flow_work_stats(w, &st);
    cr_assert_eq(st.grows, 1u);
    make_caps(&r, GEN_RANDOM, 12, 48, C);   /* larger: grows once, then not */
    cr_assert_eq(flow_compute(w, 12, 48, 47, C, out), 0);
    cr_assert_eq(flow_compute(w, 12, 48, 47, C, out), 0);
    make_caps(&r, GEN_RANDOM, 4, 32, C);
    cr_assert_eq(flow_compute(w, 4, 32, 31, C, out), 0);
    flow_work_stats(w, &st);
    cr_assert_eq(st.grows, 2u);
    cr_assert_eq(st.trades, 25u);
    flow_work_destroy(&w);
}

Test(flow, wide_shapes_beyond_one_word)
{
    /* n > 64 uses several words per bit set */
    static const uint32_t shapes[][2] = {{65, 3}, {100, 4}, {129, 2}};
    flow_work_t *w = flow_work_new();
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        case_t c = {.n = shapes[s][0], .L = shapes[s][1], .cls = (int32_t)(s * 37 % shapes[s][0]),
                    .gen = s == 1 ? GEN_PEAKED : GEN_RANDOM, .seed = 900 + s};
        check_case(w, &c);
    }
    flow_work_destroy(&w);
}

Test(flow, counts_one_maxflow_per_pair)
{
    rng_t r;
    rng_seed(&r, 950);
    float C[3 * 10 * 10], out[10];
    make_caps(&r, GEN_RANDOM, 3, 10, C);
    flow_work_t *w = flow_work_new();
    flow_stats_t st;
    cr_assert_eq(flow_compute(w, 3, 10, 4, C, out), 0);
    flow_work_stats(w, &st);
    cr_assert_eq(st.maxflows, 9u);
    cr_assert_eq(flow_compute(w, 3, 10, -1, C, out), 0);
    flow_work_stats(w, &st);
    cr_assert_eq(st.maxflows, 9u + 100u);
    cr_assert_eq(st.trades, 2u);
    /* flows are at most what the source emits (its row sums to ~1) */
    for (int k = 0; k < 10; k++)
        cr_assert(out[k] > 0 && out[k] <= 1.0f + 1e-6f);
    flow_work_destroy(&w);
}
