/*  fused_pub: libxplain's publisher sending trades fused, for
    test_e2e_fused.py.

    fused_pub EP MODEL B L H n FILE TARGETS
    FILE holds B*L*H*n*n float32 attention values, then as many gradient
    values; TARGETS is a comma list of B ints. Connects to EP (the
    daemon's ingest bind), sets the schema (tokens f0.. and CLS last),
    waits for the daemon, sends one fused message of the B trades (ids
    0..B-1), exits 0 after the send was queued and the socket lingered. */
#include <xplain/xplain.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
main(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr, "usage: fused_pub EP MODEL B L H n FILE TARGETS\n");
        return 2;
    }
    uint32_t B = (uint32_t)atoi(argv[3]), L = (uint32_t)atoi(argv[4]), H = (uint32_t)atoi(argv[5]);
    uint32_t n = (uint32_t)atoi(argv[6]);
    size_t cnt = (size_t)B * L * H * n * n;
    float *buf = malloc(2 * cnt * sizeof(float));
    int64_t *target = calloc(B, sizeof *target);
    xpl_id_t *ids = calloc(B, sizeof *ids);
    char **tok = calloc(n, sizeof *tok);
    FILE *f = fopen(argv[7], "rb");
    if (!buf || !target || !ids || !tok || !f || fread(buf, sizeof(float), 2 * cnt, f) != 2 * cnt) {
        fprintf(stderr, "fused_pub: cannot read %s\n", argv[7]);
        return 1;
    }
    fclose(f);
    char *p = argv[8];
    for (uint32_t b = 0; b < B; b++) {
        target[b] = strtol(p, &p, 10);
        if (*p == ',')
            p++;
        ids[b] = (xpl_id_t){false, b, NULL};
    }
    for (uint32_t j = 0; j < n; j++) {
        tok[j] = malloc(16);
        snprintf(tok[j], 16, j + 1 == n ? "CLS" : "f%u", j);
    }
    xpl_pub_t *pub = xpl_pub_new_connect(argv[1]);
    if (!pub || xpl_pub_set_schema(pub, argv[2], L, H, n, (int32_t)n - 1, (const char *const *)tok)
        || xpl_pub_set_fused(pub, true) || xpl_pub_wait_subscriber(pub, 20000)) {
        fprintf(stderr, "fused_pub: %s\n", xpl_strerror());
        return 1;
    }
    double y = 0.5;
    double *ys = malloc(B * sizeof *ys);
    for (uint32_t b = 0; b < B; b++)
        ys[b] = y;
    xpl_batch_t batch = {.model = argv[2], .B = B, .ids = ids, .dtype = XPL_F32, .attn = buf,
                         .grad = buf + cnt, .target = target, .y = ys};
    if (xpl_pub_send(pub, &batch)) {
        fprintf(stderr, "fused_pub: %s\n", xpl_strerror());
        return 1;
    }
    xpl_pub_destroy(&pub);
    for (uint32_t j = 0; j < n; j++)
        free(tok[j]);
    free(tok);
    free(buf);
    free(target);
    free(ids);
    free(ys);
    return 0;
}
