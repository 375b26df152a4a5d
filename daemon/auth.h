/*  auth: CURVE encryption with authentication that fails closed.

    With security.curve on, every socket of the daemon (ingest, publish,
    query) is a CURVE server with the daemon's key pair, and a ZAP handler
    (RFC 27) running in the main loop admits a peer only when its public
    key is one of the certificates in security.clients_dir. libzmq admits
    any key when no ZAP handler is bound, so the handler is bound before
    any socket is, and the daemon refuses to start when it cannot be.
    An empty clients directory admits nobody. SIGHUP re-reads the
    directory, so a key is revoked by deleting its file and reloading.  */
#ifndef XPLD_AUTH_H
#define XPLD_AUTH_H

#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    bool enabled;
    void *zap;                  /* REP on inproc://zeromq.zap.01 */
    char public_key[41];        /* daemon's, Z85 */
    char secret_key[41];
    uint8_t (*allowed)[32];     /* admitted client keys, binary */
    size_t nallowed;
    uint64_t admitted, refused;
} auth_t;

/* Set up from the configuration (nothing when security.curve is off).
   Returns 0, or -1 with the reason logged: the daemon must not start. */
int auth_init(auth_t *a, void *zctx, const config_t *cfg);

/* Make `sock` a CURVE server under the ZAP domain "xplaind" (no-op when
   off). Returns 0 or -1 (logged). */
int auth_apply(const auth_t *a, void *sock, const char *what);

/* Answer every pending ZAP request (call when the ZAP socket polls in). */
void auth_handle(auth_t *a);

/* Re-read security.clients_dir (SIGHUP). Keeps the old set on error. */
int auth_reload(auth_t *a, const config_t *cfg);

void auth_destroy(auth_t *a);

#endif
