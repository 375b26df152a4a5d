/*  xpl_encode: small msgpack-c helpers shared by requests and ingest.  */
#include "xpl_private.h"

#include <string.h>

void
xpk_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void
xpk_key(msgpack_packer *pk, const char *key)
{
    xpk_str(pk, key);
}

void
xpk_id(msgpack_packer *pk, const xpl_id_t *id)
{
    if (id->is_str)
        xpk_str(pk, id->s);
    else
        msgpack_pack_uint64(pk, id->u);
}

bool
xpl_model_name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
              || c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}
