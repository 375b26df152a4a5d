/*  publish: the encoders of everything the daemon sends out, and the
    publisher that sends the four topics xpl/, glob/, drift/ and heads/.

    The publisher owns a reused msgpack_sbuffer, so a steady stream
    allocates nothing once the buffer has grown to the largest message.
    Sends never block: past a subscriber's high-water mark ZeroMQ drops
    (counted in stats as dropped). A publisher made with a sink instead
    of a socket hands every (topic, body) to the sink: that is how the
    unit tests capture what would go out.

    A query reply that carries the same fields as a topic is written by
    the same encoder (publish_enc_glob for glob/ and the global reply,
    publish_enc_window for drift/ and the drift reply).  */
#ifndef XPLD_PUBLISH_H
#define XPLD_PUBLISH_H

#include "global.h"
#include "models.h"
#include "stats.h"
#include "wire.h"
#include "xmath.h"

#include <msgpack.h>

/* Where a message goes instead of a socket; returns 0 when sent. */
typedef int (*publish_sink_fn)(void *arg, const void *topic, size_t tlen, const void *body,
                               size_t blen);

typedef struct publisher_t {
    void *sock;                 /* PUB socket, or NULL with a sink */
    publish_sink_fn sink;
    void *sink_arg;
    stats_t *stats;             /* published / dropped */
    msgpack_sbuffer buf;        /* encoder, reused */
    msgpack_packer pk;
} publisher_t;

/* Publish on `sock` (a ZeroMQ PUB socket, set later with publisher->sock
   if not known yet), or into `sink` when it is not NULL. */
void publisher_init(publisher_t *p, stats_t *stats, void *sock, publish_sink_fn sink,
                    void *sink_arg);
void publisher_destroy(publisher_t *p);

/* Send topic + body without blocking; counts published or dropped. */
void publish_send(publisher_t *p, const void *topic, size_t tlen, const void *body, size_t blen);

/* xpl/<model>: the explanation of trade `b` of an ingest message. */
void publish_xpl(publisher_t *p, model_t *md, const wire_ingest_t *in, uint32_t b,
                 const xm_result_t *res);

/* The same for one target of a trade explained for several: `target`
   is the class the message names (NULL: none). */
void publish_xpl_target(publisher_t *p, model_t *md, const wire_ingest_t *in, uint32_t b,
                        const int64_t *target, const xm_result_t *res);

/* drift/<model>: the windows a global_add closed. */
void publish_drift(publisher_t *p, const model_t *md, const global_closed_t *closed);

/* glob/<model> and heads/<model> of every model whose global state
   changed since it was last sent. */
void publish_changed(publisher_t *p, global_t *g, const models_t *models);

/* ---- encoders shared with the query replies ---------------------------- */

void enc_str(msgpack_packer *pk, const char *s);
void enc_strn(msgpack_packer *pk, const void *s, size_t len);
void enc_id(msgpack_packer *pk, const wire_id_t *id);
static inline void
enc_bool(msgpack_packer *pk, bool b)
{
    if (b)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}
/* "attr": map method -> array of float32, for the methods in `computed`. */
void enc_attr(msgpack_packer *pk, unsigned computed, const float *const attr[XM_NMETHODS],
              uint32_t nf);
void enc_features(msgpack_packer *pk, const schema_t *sc);

/* The groups of a grouped schema: a map of each group feature's name to
   its tokens' names, in feature order and token order. */
void enc_groups(msgpack_packer *pk, const schema_t *sc);

/* The fields of a glob/ body and of the global reply (PUBLISH_GLOB_FIELDS
   pairs): `mask` methods, all targets or one (`only_target`). Returns -1
   when out of memory. */
#define PUBLISH_GLOB_FIELDS 10
/* ...and two more in an aggregator: "shards" and "stale_shards". */
#define PUBLISH_GLOB_FIELDS_OF(g) (PUBLISH_GLOB_FIELDS + ((g)->nshards ? 2 : 0))
int publish_enc_glob(msgpack_packer *pk, const global_t *g, const model_t *md, const gepoch_t *e,
                     unsigned mask, const int64_t *only_target, uint64_t seq, int64_t ts);

/* The body of glob/<model>/<segment> and the global reply for one
   segment (PUBLISH_GLOB_SEG_FIELDS pairs): model, segment, seq, ts,
   epoch, features, count, half_life and methods (the segment's means,
   as in glob/; no targets: segments keep no per-class means). Returns -1
   when out of memory. */
#define PUBLISH_GLOB_SEG_FIELDS 9
int publish_enc_glob_seg(msgpack_packer *pk, const global_t *g, const model_t *md,
                         const gepoch_t *e, const gseg_t *sg, const char *label, unsigned mask,
                         uint64_t seq, int64_t ts);

/* The fields of a closed window shared by drift/ and the drift reply
   (PUBLISH_WINDOW_FIELDS pairs): window, reference, compared, spearman,
   ndcg, js, alert, verdict, moved; drift/ adds "trades" (window size)
   after "window" when `trades` is given. `sc` names the moved features
   (NULL: indices only). */
#define PUBLISH_WINDOW_FIELDS 9
void publish_enc_window(msgpack_packer *pk, const glast_t *l, const uint32_t *trades,
                        const schema_t *sc);

/* "verdict": the drift mode's judgement of a window, a map of mode,
   calibrating, z, cusum (per statistic, nil where not scored) and alerts
   (the statistics that alerted). */
void publish_enc_verdict(msgpack_packer *pk, const detect_verdict_t *v);

/* "moved": an array of n maps: feature (name, or nil without a schema),
   index, ref, cur, delta, ref_rank, rank, rank_up. */
void publish_enc_moved(msgpack_packer *pk, const detect_moved_t *m, uint32_t n,
                       const schema_t *sc);

/* The three rank statistics of a window, as map entries. */
void publish_enc_stats(msgpack_packer *pk, const drift_stat_t *spearman, const drift_stat_t *ndcg,
                       const drift_stat_t *js);

/* Spearman's rho of method m's global mean against its external
   reference, or nil. */
void publish_enc_agreement(msgpack_packer *pk, const gepoch_t *e, int m);

#endif
