/*  ref: independent float64 reference of MATH.md. See ref.h.  */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AT(X, l, h, i, j) X[((((size_t)(l) * H + (h)) * n + (i)) * n + (j))]

static void
fuse(int L, int H, int n, const double *A, int l, int how, double *F)
{
    (void)L;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double acc = AT(A, l, 0, i, j);
            for (int h = 1; h < H; h++) {
                double x = AT(A, l, h, i, j);
                if (how == REF_MEAN) acc += x;
                else if (how == REF_MAX) acc = x > acc ? x : acc;
                else acc = x < acc ? x : acc;
            }
            F[i * n + j] = how == REF_MEAN ? acc / H : acc;
        }
}

static void
matmul(int n, const double *X, const double *Y, double *Z)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < n; k++)
                s += X[i * n + k] * Y[k * n + j];
            Z[i * n + j] = s;
        }
}

static void
rownorm(int n, double *M)
{
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < n; j++)
            s += M[i * n + j];
        for (int j = 0; j < n; j++)
            M[i * n + j] = s != 0 ? M[i * n + j] / s : 0;
    }
}

void
ref_readout(int n, int cls, const double *M, double *out)
{
    int k = 0;
    for (int j = 0; j < n; j++) {
        if (j == cls)
            continue;
        if (cls >= 0) {
            out[k++] = M[cls * n + j];
        } else {
            double s = 0;
            for (int i = 0; i < n; i++)
                s += M[i * n + j];
            out[k++] = s / n;
        }
    }
}

void
ref_rollout_matrix(int L, int H, int n, const double *A, int fusion, double *R)
{
    double *F = malloc(sizeof(double) * n * n), *T = malloc(sizeof(double) * n * n);
    memset(R, 0, sizeof(double) * n * n);
    for (int i = 0; i < n; i++)
        R[i * n + i] = 1;
    for (int l = 0; l < L; l++) {
        fuse(L, H, n, A, l, fusion, F);
        for (int i = 0; i < n; i++)
            F[i * n + i] += 1;
        rownorm(n, F);
        matmul(n, F, R, T);     /* later layer on the left */
        memcpy(R, T, sizeof(double) * n * n);
    }
    free(F);
    free(T);
}

void
ref_rollout(int L, int H, int n, int cls, const double *A, int fusion, double *out)
{
    double *R = malloc(sizeof(double) * n * n);
    ref_rollout_matrix(L, H, n, A, fusion, R);
    ref_readout(n, cls, R, out);
    free(R);
}

void
ref_grad_rollout_matrix(int L, int H, int n, const double *A, const double *G, bool resnorm,
                        double *R)
{
    double *Ab = malloc(sizeof(double) * n * n), *T = malloc(sizeof(double) * n * n);
    memset(R, 0, sizeof(double) * n * n);
    for (int i = 0; i < n; i++)
        R[i * n + i] = 1;
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int h = 0; h < H; h++) {
                    double p = AT(G, l, h, i, j) * AT(A, l, h, i, j);
                    s += p > 0 ? p : 0;     /* clamp, then mean */
                }
                Ab[i * n + j] = s / H;
            }
        matmul(n, Ab, R, T);
        for (int k = 0; k < n * n; k++)
            R[k] += T[k];
    }
    if (resnorm) {
        for (int i = 0; i < n; i++)
            R[i * n + i] -= 1;
        rownorm(n, R);
        for (int i = 0; i < n; i++)
            R[i * n + i] += 1;
    }
    free(Ab);
    free(T);
}

void
ref_grad_rollout(int L, int H, int n, int cls, const double *A, const double *G, bool resnorm,
                 double *out)
{
    double *R = malloc(sizeof(double) * n * n);
    ref_grad_rollout_matrix(L, H, n, A, G, resnorm, R);
    ref_readout(n, cls, R, out);
    free(R);
}

void
ref_first_layer(int L, int H, int n, int cls, const double *A, int fusion, double *out)
{
    double *F = malloc(sizeof(double) * n * n);
    fuse(L, H, n, A, 0, fusion, F);
    ref_readout(n, cls, F, out);
    free(F);
}

void
ref_attn_mean(int L, int H, int n, int cls, const double *A, double *out)
{
    double *M = calloc((size_t)n * n, sizeof(double));
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    M[i * n + j] += AT(A, l, h, i, j) / (L * H);
    ref_readout(n, cls, M, out);
    free(M);
}

void
ref_diag(int L, int H, int n, int cls, const double *A, double *out)
{
    (void)L;
    int k = 0;
    for (int j = 0; j < n; j++) {
        if (j == cls)
            continue;
        double s = 0;
        for (int h = 0; h < H; h++)
            s += AT(A, 0, h, j, j);
        out[k++] = s / H;
    }
}

void
ref_head_stats(int L, int H, int n, const double *A, const double *G, double *imp, double *conf)
{
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++) {
            double s = 0, c = 0;
            for (int i = 0; i < n; i++) {
                double mx = -INFINITY;
                for (int j = 0; j < n; j++) {
                    if (G)
                        s += AT(A, l, h, i, j) * AT(G, l, h, i, j);
                    mx = AT(A, l, h, i, j) > mx ? AT(A, l, h, i, j) : mx;
                }
                c += mx;
            }
            if (imp)
                imp[l * H + h] = fabs(s);
            conf[l * H + h] = c / n;
        }
}

/* ---- variants ---------------------------------------------------------- */

void
ref_colsum(int L, int H, int n, int cls, const double *A, int fusion, double *out)
{
    double *F = malloc(sizeof(double) * n * n);
    fuse(L, H, n, A, 0, fusion, F);
    int k = 0;
    for (int j = 0; j < n; j++) {
        if (j == cls)
            continue;
        double s = 0;
        for (int i = 0; i < n; i++)
            s += F[i * n + j];
        out[k++] = s;
    }
    free(F);
}

void
ref_discard(int n, int cls, double rho, double *F)
{
    int m = cls >= 0 ? n - 1 : n;
    int k = (int)(rho * m);
    int *idx = malloc(sizeof(int) * n);
    for (int i = 0; i < n; i++) {
        double *row = F + (size_t)i * n;
        int c = 0;
        for (int j = 0; j < n; j++)
            if (j != cls)
                idx[c++] = j;
        /* insertion sort by (value, column): the first k go */
        for (int a = 1; a < c; a++) {
            int x = idx[a], b = a - 1;
            while (b >= 0 && (row[idx[b]] > row[x] || (row[idx[b]] == row[x] && idx[b] > x))) {
                idx[b + 1] = idx[b];
                b--;
            }
            idx[b + 1] = x;
        }
        for (int a = 0; a < k; a++)
            row[idx[a]] = 0;
    }
    free(idx);
}

static int
resolve_start(int L, int start)
{
    return start < 0 ? L + start : start;
}

void
ref_rollout_matrix_v(int L, int H, int n, int cls, const double *A, int fusion, double rho,
                     int start, double *R)
{
    double *F = malloc(sizeof(double) * n * n), *T = malloc(sizeof(double) * n * n);
    memset(R, 0, sizeof(double) * n * n);
    for (int i = 0; i < n; i++)
        R[i * n + i] = 1;
    for (int l = resolve_start(L, start); l < L; l++) {
        fuse(L, H, n, A, l, fusion, F);
        ref_discard(n, cls, rho, F);
        for (int i = 0; i < n; i++)
            F[i * n + i] += 1;
        rownorm(n, F);
        matmul(n, F, R, T);
        memcpy(R, T, sizeof(double) * n * n);
    }
    free(F);
    free(T);
}

void
ref_rollout_v(int L, int H, int n, int cls, const double *A, int fusion, double rho, int start,
              double *out)
{
    double *R = malloc(sizeof(double) * n * n);
    ref_rollout_matrix_v(L, H, n, cls, A, fusion, rho, start, R);
    ref_readout(n, cls, R, out);
    free(R);
}

void
ref_flow_capacities_v(int L, int H, int n, int cls, const double *A, double rho, double *C)
{
    for (int l = 0; l < L; l++) {
        double *F = C + (size_t)l * n * n;
        fuse(L, H, n, A, l, REF_MEAN, F);
        ref_discard(n, cls, rho, F);
        for (int i = 0; i < n; i++)
            F[i * n + i] += 1;
        rownorm(n, F);
    }
}

void
ref_grad_rollout_matrix_v(int L, int H, int n, const double *X, const double *G, bool clamp,
                          bool resnorm, int start, double *R)
{
    double *Ab = malloc(sizeof(double) * n * n), *T = malloc(sizeof(double) * n * n);
    memset(R, 0, sizeof(double) * n * n);
    for (int i = 0; i < n; i++)
        R[i * n + i] = 1;
    for (int l = resolve_start(L, start); l < L; l++) {
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int h = 0; h < H; h++) {
                    double p = AT(G, l, h, i, j) * AT(X, l, h, i, j);
                    s += clamp ? (p > 0 ? p : 0) : p;
                }
                Ab[i * n + j] = s / H;
            }
        matmul(n, Ab, R, T);
        for (int k = 0; k < n * n; k++)
            R[k] += T[k];
    }
    if (resnorm) {
        for (int i = 0; i < n; i++)
            R[i * n + i] -= 1;
        rownorm(n, R);
        for (int i = 0; i < n; i++)
            R[i * n + i] += 1;
    }
    free(Ab);
    free(T);
}

void
ref_grad_rollout_v(int L, int H, int n, int cls, const double *X, const double *G, bool clamp,
                   bool resnorm, int start, double *out)
{
    double *R = malloc(sizeof(double) * n * n);
    ref_grad_rollout_matrix_v(L, H, n, X, G, clamp, resnorm, start, R);
    ref_readout(n, cls, R, out);
    free(R);
}

void
ref_groups(int npos, const int *feat_of, int nfeat, const double *in, double *out)
{
    for (int f = 0; f < nfeat; f++)
        out[f] = 0;
    for (int k = 0; k < npos; k++)
        out[feat_of[k]] += in[k];
}

/* Average ranks (1-based), O(n^2) on purpose: obviously right. */
static void
ranks(const double *x, int n, double *r)
{
    for (int i = 0; i < n; i++) {
        int less = 0, equal = 0;
        for (int j = 0; j < n; j++) {
            if (x[j] < x[i]) less++;
            else if (x[j] == x[i]) equal++;
        }
        r[i] = less + (equal + 1) / 2.0;
    }
}

bool
ref_spearman(const double *a, const double *b, int n, double *rho)
{
    double *ra = malloc(sizeof(double) * n), *rb = malloc(sizeof(double) * n);
    ranks(a, n, ra);
    ranks(b, n, rb);
    /* Average ranks are exact halves: a constant vector has all ranks
       equal, and the mean rank is exactly (n + 1) / 2. */
    bool const_a = true, const_b = true;
    for (int i = 1; i < n; i++) {
        const_a = const_a && ra[i] == ra[0];
        const_b = const_b && rb[i] == rb[0];
    }
    double ma = (n + 1) / 2.0, mb = ma;
    double sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < n; i++) {
        sab += (ra[i] - ma) * (rb[i] - mb);
        saa += (ra[i] - ma) * (ra[i] - ma);
        sbb += (rb[i] - mb) * (rb[i] - mb);
    }
    free(ra);
    free(rb);
    if (n < 2 || const_a || const_b)
        return false;
    *rho = sab / sqrt(saa * sbb);
    return true;
}

bool
ref_ndcg(const double *cur, const double *ref, int n, int k, double *out)
{
    /* Selection by repeated scans: highest value first, lowest index on ties. */
    char *used = calloc(n, 1);
    double dcg = 0, idcg = 0;
    for (int pass = 0; pass < 2; pass++) {
        const double *key = pass == 0 ? cur : ref;
        memset(used, 0, n);
        for (int r = 0; r < k && r < n; r++) {
            int best = -1;
            for (int i = 0; i < n; i++)
                if (!used[i] && (best < 0 || key[i] > key[best]))
                    best = i;
            used[best] = 1;
            double gain = ref[best] > 0 ? ref[best] : 0;
            *(pass == 0 ? &dcg : &idcg) += gain / log2(r + 2.0);
        }
    }
    free(used);
    if (idcg == 0)
        return false;
    *out = dcg / idcg;
    return true;
}

double
ref_js(const double *a, const double *b, int n)
{
    double sa = 0, sb = 0, js = 0;
    for (int i = 0; i < n; i++) {
        sa += fabs(a[i]);
        sb += fabs(b[i]);
    }
    for (int i = 0; i < n; i++) {
        double p = fabs(a[i]) / sa, q = fabs(b[i]) / sb, m = (p + q) / 2;
        if (p > 0) js += 0.5 * p * log2(p / m);
        if (q > 0) js += 0.5 * q * log2(q / m);
    }
    return js;
}

/* Attention rows as probability distributions (see wire_attn_rows_ok): a
   plain float64 loop, row by row; returns the index of the first failing
   row of the L*H*n rows, or -1. Rows holding NaN or Inf pass. */
long
ref_attn_first_bad_row(int L, int H, int n, const double *A, double tol)
{
    for (long r = 0; r < (long)L * H * n; r++) {
        double sum = 0, mn = INFINITY;
        for (int j = 0; j < n; j++) {
            sum += A[r * n + j];
            if (A[r * n + j] < mn)
                mn = A[r * n + j];
        }
        if (!isfinite(sum))
            continue;
        if (mn >= -tol && (fabs(sum - 1) <= tol || fabs(sum) <= tol))
            continue;
        return r;
    }
    return -1;
}
