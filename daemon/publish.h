/*  publish: encoders for what the daemon sends out, and the PUB socket.

    The encoders write into a reused msgpack_sbuffer, so a steady stream
    allocates nothing once the buffer has grown to the largest message.
    Sends never block: past a subscriber's high-water mark ZeroMQ drops
    (see publish_send).  */
#ifndef XPLD_PUBLISH_H
#define XPLD_PUBLISH_H

#include "models.h"
#include "server.h"
#include "wire.h"
#include "xmath.h"

#include <msgpack.h>

/* Encode helpers shared with the query handler. */
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

/* Send topic + body on the PUB socket without blocking. Counts published
   or dropped in the server's stats. */
void publish_send(server_t *s, const void *topic, size_t tlen, const void *body, size_t blen);

/* Publish the explanation of trade `b` of an ingest message. */
void publish_xpl(server_t *s, model_t *md, const wire_ingest_t *in, uint32_t b,
                 const xm_result_t *res);

#endif
