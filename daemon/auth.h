/*  auth: CURVE encryption with authentication that fails closed.

    With security.curve on, every socket of the daemon (ingest, publish,
    query) is a CURVE server with the daemon's key pair, and a ZAP handler
    (RFC 27) running in the main loop admits a peer only when its public
    key is one of the certificates in security.clients_dir. libzmq admits
    any key when no ZAP handler is bound, so the handler is bound before
    any socket is, and the daemon refuses to start when it cannot be.
    An empty clients directory admits nobody. SIGHUP re-reads the
    directory, so a key is revoked by deleting its file and reloading.

    Refusals that happen before ZAP is asked (a peer without CURVE, a peer
    that encrypted for another server key, a broken handshake) are seen
    through a socket monitor on each CURVE socket, counted by kind and
    logged (rate-limited), as the ZAP refusals are. `refused` is the total
    of every kind, `incomplete` (the connection lost during the handshake)
    included: a plaintext peer is seen as `mechanism` or, when it hangs up
    on the mismatch before our side reads its greeting, as `incomplete`.  */
#ifndef XPLD_AUTH_H
#define XPLD_AUTH_H

#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTH_MONITORS 4

typedef struct {
    bool enabled;
    void *zap;                  /* REP on inproc://zeromq.zap.01 */
    char public_key[41];        /* daemon's, Z85 */
    char secret_key[41];
    uint8_t (*allowed)[32];     /* admitted client keys, binary */
    size_t nallowed;
    uint64_t admitted, refused;
    /* refused, by kind (AUTH_KIND_*) */
    uint64_t by_kind[5];
    void *zctx;
    int nmon;
    void *mon[AUTH_MONITORS];       /* PAIR ends of the socket monitors */
    const char *mon_what[AUTH_MONITORS];
} auth_t;

enum {
    AUTH_KIND_KEY,          /* public key not in clients_dir (ZAP) */
    AUTH_KIND_MECHANISM,    /* not a CURVE peer: plaintext or another mechanism */
    AUTH_KIND_CRYPTO,       /* HELLO does not decrypt: wrong server key, or forged */
    AUTH_KIND_PROTOCOL,     /* any other ZMTP/CURVE protocol error */
    AUTH_KIND_INCOMPLETE    /* connection lost during the handshake */
};

/* Names of the kinds as the stats counters auth_refused_<name> show them. */
extern const char *const auth_kind_names[5];

/* Set up from the configuration (nothing when security.curve is off).
   Returns 0, or -1 with the reason logged: the daemon must not start. */
int auth_init(auth_t *a, void *zctx, const config_t *cfg);

/* Make `sock` a CURVE server under the ZAP domain "xplaind" and watch its
   handshakes (no-op when off). Call before it binds or connects. `what`
   must be a string literal. Returns 0 or -1 (logged). */
int auth_apply(auth_t *a, void *sock, const char *what);

/* Poll items (zmq_pollitem_t) of the socket monitors into `items`;
   returns how many (at most AUTH_MONITORS). */
int auth_poll_items(const auth_t *a, void *items);

/* Count and log the handshake failures the monitors report. */
void auth_handle_monitors(auth_t *a, const void *items, int count);

/* Answer every pending ZAP request (call when the ZAP socket polls in). */
void auth_handle(auth_t *a);

/* Re-read security.clients_dir (SIGHUP). Keeps the old set on error. */
int auth_reload(auth_t *a, const config_t *cfg);

void auth_destroy(auth_t *a);

#endif
