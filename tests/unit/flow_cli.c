/*  flow_cli: core/flow behind stdin/stdout, for tests/py/test_flow_networkx.py.

    Input: any number of records, each three little-endian int32 (L, n,
    cls) followed by L*n*n little-endian float32 capacities [L][n][n].
    Output: one line per record with flow_compute's values ("%.9g",
    space separated: n-1 of them with CLS, n without). Exits 0 at end of
    input, 2 on a malformed record or a failed computation.  */
#include "flow.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int
main(void)
{
    flow_work_t *w = flow_work_new();
    float *caps = NULL, *out = NULL;
    int rc = 0;
    for (;;) {
        int32_t hdr[3];
        size_t got = fread(hdr, sizeof *hdr, 3, stdin);
        if (got == 0 && feof(stdin))
            break;
        if (got != 3 || hdr[0] < 1 || hdr[0] > 1024 || hdr[1] < 1 || hdr[1] > 4096
            || hdr[2] < -1 || hdr[2] >= hdr[1]) {
            fprintf(stderr, "flow_cli: bad record header\n");
            rc = 2;
            break;
        }
        uint32_t L = (uint32_t)hdr[0], n = (uint32_t)hdr[1];
        size_t cnt = (size_t)L * n * n;
        free(caps);
        free(out);
        caps = malloc(cnt * sizeof *caps);
        out = malloc(n * sizeof *out);
        if (!w || !caps || !out || fread(caps, sizeof *caps, cnt, stdin) != cnt) {
            fprintf(stderr, "flow_cli: short record or out of memory\n");
            rc = 2;
            break;
        }
        if (flow_compute(w, L, n, hdr[2], caps, out)) {
            fprintf(stderr, "flow_cli: flow_compute failed\n");
            rc = 2;
            break;
        }
        uint32_t nf = hdr[2] >= 0 ? n - 1 : n;
        for (uint32_t k = 0; k < nf; k++)
            printf(k ? " %.9g" : "%.9g", out[k]);
        printf("\n");
    }
    free(caps);
    free(out);
    flow_work_destroy(&w);
    return rc;
}
