/*  publish: xpl/ encoder and the PUB socket. See publish.h and
    proto/explanations.md.  */
#include "publish.h"

#include <string.h>
#include <zmq.h>

void
enc_strn(msgpack_packer *pk, const void *s, size_t len)
{
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

void
enc_str(msgpack_packer *pk, const char *s)
{
    enc_strn(pk, s, strlen(s));
}

void
enc_id(msgpack_packer *pk, const wire_id_t *id)
{
    if (id->is_str)
        enc_strn(pk, id->s.ptr, id->s.len);
    else
        msgpack_pack_uint64(pk, id->u);
}

void
enc_attr(msgpack_packer *pk, unsigned computed, const float *const attr[XM_NMETHODS], uint32_t nf)
{
    msgpack_pack_map(pk, (size_t)__builtin_popcount(computed));
    for (int m = 0; m < XM_NMETHODS; m++) {
        if (!(computed & XM_BIT(m)))
            continue;
        enc_str(pk, xm_method_name((xm_method_t)m));
        msgpack_pack_array(pk, nf);
        for (uint32_t k = 0; k < nf; k++)
            msgpack_pack_float(pk, attr[m][k]);
    }
}

void
enc_features(msgpack_packer *pk, const schema_t *sc)
{
    msgpack_pack_array(pk, sc->nf);
    for (uint32_t k = 0; k < sc->nf; k++)
        enc_str(pk, sc->features[k]);
}

void
publish_send(server_t *s, const void *topic, size_t tlen, const void *body, size_t blen)
{
    if (zmq_send(s->pub, topic, tlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(s->pub, body, blen, ZMQ_DONTWAIT) < 0) {
        s->stats.dropped++;
        return;
    }
    s->stats.published++;
}

void
publish_xpl(server_t *s, model_t *md, const wire_ingest_t *in, uint32_t b, const xm_result_t *res)
{
    msgpack_packer *pk = &s->ppk;
    s->pbuf.size = 0;
    msgpack_pack_map(pk, 7 + (in->target != NULL) + (in->y != NULL));
    enc_str(pk, "v");
    msgpack_pack_uint8(pk, 1);
    enc_str(pk, "model");
    enc_strn(pk, md->name, md->name_len);
    enc_str(pk, "id");
    enc_id(pk, &in->ids[b]);
    enc_str(pk, "seq");
    msgpack_pack_uint64(pk, md->xpl_seq++);
    enc_str(pk, "ts");
    msgpack_pack_int64(pk, in->ts);
    enc_str(pk, "epoch");
    msgpack_pack_uint32(pk, md->cur->epoch);
    if (in->target) {
        enc_str(pk, "target");
        msgpack_pack_int64(pk, in->target[b]);
    }
    if (in->y) {
        enc_str(pk, "y");
        msgpack_pack_double(pk, in->y[b]);
    }
    enc_str(pk, "attr");
    enc_attr(pk, res->computed, res->attr, xm_nfeat(&md->cur->shape));
    publish_send(s, md->topic_xpl, md->topic_xpl_len, s->pbuf.data, s->pbuf.size);
}
