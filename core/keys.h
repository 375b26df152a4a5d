/*  keys: CURVE key files (the czmq certificate text format).

    A public certificate holds a line `public-key = "<40 Z85 chars>"`; a
    secret certificate holds that and `secret-key = "<40 Z85 chars>"`,
    as czmq's zcert and `xplainctl keygen` write them:

        #   ZeroMQ CURVE Secret Certificate
        metadata
        curve
            public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
            secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"

    Keys are returned as their 40-character Z85 text (what ZeroMQ's
    ZMQ_CURVE_* socket options accept), NUL-terminated.  */
#ifndef XPL_KEYS_H
#define XPL_KEYS_H

#include <stddef.h>

#define KEY_Z85_LEN 40

/* Read a certificate. `public_key` (41 bytes) receives the public key;
   `secret_key` (41 bytes, may be NULL) the secret one, which must then be
   present. Returns 0, or -1 with a reason in `err`. */
int keys_load(const char *path, char *public_key, char *secret_key, char *err, size_t errlen);

/* Write a certificate pair: <path> (public) and <path>_secret (secret,
   mode 0600), czmq style. Returns 0, or -1 with a reason in `err`. */
int keys_save(const char *path, const char *public_key, const char *secret_key, char *err,
              size_t errlen);

/* True when `s` is 40 characters of the Z85 alphabet. */
int keys_z85_ok(const char *s);

#endif
