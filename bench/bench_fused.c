/*  bench_fused: the daemon's per-trade work on the full and the fused
    form, in process (no sockets): decode the message, check the
    attention, explain the five methods (rollout, grad_rollout,
    first_layer, attn_mean, diag). CPU time per trade, median of 5 runs
    of about 0.5 s each, for tab32 full f32, fused f32 and fused f16.

      bench_fused [SECONDS]

    What the transport saves is measured by bench_xplain (workloads
    tab32-fused and tab32-fused-f16); this is the daemon's own share.  */
#include "bench_common.h"
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double
s_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0.5;
    xm_blas_single_thread();
    const char *names_all[] = {"tab32", "tab32-fused", "tab32-fused-f16", "tab32-f16"};
    const char **names = names_all;
    size_t nnames = 4;
    if (argc > 2) { names = (const char **)&argv[2]; nnames = 1; }
    wire_limits_t lim;
    wire_limits_default(&lim);
    lim.fused = true;
    xm_opts_t o = {.methods = XM_ALL_METHODS & ~XM_BIT(XM_FLOW)};
    printf("| workload | bytes/trade | CPU us/trade: decode + check + explain (median of 5) |\n|---|---|---|\n");
    for (size_t k = 0; k < nnames; k++) {
        const wl_t *w = wl_find(names[k]);
        wmsg_t m;
        wmsg_build(&m, w, "bench", 1);
        wire_decoder_t dec;
        wire_decoder_init(&dec, &lim);
        xm_work_t *work = xm_work_new();
        double runs[5];
        for (int r = 0; r < 5; r++) {
            long trades = 0;
            double t0 = s_cpu();
            while (s_cpu() - t0 < secs) {
                for (int rep = 0; rep < 64; rep++) {
                    wire_ingest_t in;
                    if (wire_decode_ingest(&dec, m.topic, m.topic_len, m.body.data, m.body.size, &in)) {
                        fprintf(stderr, "%s: %s\n", names[k], wire_detail(&dec));
                        return 1;
                    }
                    xm_result_t res;
                    xm_err_t rc;
                    if (in.fused) {
                        if (!wire_fused_trade_ok(&in, 0, 0.01f, NULL))
                            return 1;
                        xm_fused_t f = {.mean = in.fattn, .pos = in.fgrad,
                                        .importance = in.head_importance,
                                        .confidence = in.head_confidence, .ntargets = 1};
                        rc = xm_explain_fused(work, &o, &in.shape, in.dtype, &f, &res);
                    } else {
                        if (!wire_attn_rows_ok(&in.shape, in.dtype, in.attn, 0.01f, NULL))
                            return 1;
                        rc = xm_explain(work, &o, &in.shape, in.dtype, in.attn, in.grad, &res);
                    }
                    if (rc != XM_OK)
                        return 1;
                    trades++;
                }
            }
            runs[r] = (s_cpu() - t0) / trades * 1e6;
        }
        qsort(runs, 5, sizeof runs[0], s_cmp);
        printf("| %s | %zu | %.2f |\n", names[k], wl_trade_bytes(w), runs[2]);
        xm_work_destroy(&work);
        wire_decoder_destroy(&dec);
        msgpack_sbuffer_destroy(&m.body);
    }
    return 0;
}
