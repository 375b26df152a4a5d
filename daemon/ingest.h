/*  ingest: one received ingest message from frames to published
    explanations. The stages go one way, each a file of its own concern:

        wire.c      decode the frames (wire_decode_ingest)
        models.c    find or add the model, apply its schema, track seq
        xmath.c     explain each trade (xm_explain)
        cache.c     keep it for the trade query (cache_put)
        publish.c   xpl/<model> (publish_xpl)
        global.c    aggregates and drift (global_add: state only; it
                    returns the windows it closed)
        publish.c   drift/<model> for those windows (publish_drift)

    No stage calls back into ingest or into a stage before it. Every
    rejection is counted by reason and logged (rate-limited) here.  */
#ifndef XPLD_INGEST_H
#define XPLD_INGEST_H

#include "cache.h"
#include "config.h"
#include "global.h"
#include "models.h"
#include "publish.h"
#include "stats.h"
#include "wire.h"
#include "xmath.h"

#include <stddef.h>
#include <stdint.h>

/* What ingest reads and writes (wired by server.c). */
typedef struct ingest_t {
    const config_t *cfg;        /* allow_models, attention check, flow_every, schema_rate */
    const xm_opts_t *opts;      /* explain options */
    wire_decoder_t *dec;
    xm_work_t *work;
    models_t *models;
    cache_t *cache;
    global_t *global;
    publisher_t *pub;
    stats_t *stats;
} ingest_t;

/* One received frame. */
typedef struct {
    const void *data;
    size_t size;
} ingest_frame_t;

/* Handle the `nframes` frames of one message received at `t_recv` (ns,
   monotonic). Never fails: bad input is counted and logged. */
void ingest_handle(ingest_t *g, const ingest_frame_t *frames, int nframes, int64_t t_recv);

/* Count and log a rejection. `md` may be NULL. */
void ingest_reject(stats_t *stats, model_t *md, xr_reason_t r, const char *model, size_t mlen,
                   const char *detail);

#endif
