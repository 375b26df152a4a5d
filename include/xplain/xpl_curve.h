/*  xpl_curve: CURVE keys for talking to an xplaind that runs with
    security.curve on (README, "Security (CURVE)").

    Such a daemon makes every socket a CURVE server and admits a peer only
    when its public key is one of the certificates in its clients_dir. A
    client then needs two things: its own key pair (a secret certificate,
    the FILE_secret that `xplainctl keygen FILE` writes; FILE goes into
    the daemon's clients_dir) and the daemon's public key (the daemon's
    public certificate, FILE of the `xplainctl keygen FILE` whose
    FILE_secret the daemon uses).

        xpl_curve_t *k = xpl_curve_load("/etc/xplain/me.key_secret",
                                        "/etc/xplain/server.key");
        xpl_client_t *c = xpl_client_new_curve("tcp://host:5558", k);
        xpl_sub_t *s = xpl_sub_new_curve("tcp://host:5557", "tcp://host:5558", k);
        xpl_curve_destroy(&k);          (the objects keep their own copy)

    Every class has a *_new_curve constructor (xpl_client_new_curve,
    xpl_sub_new_curve, xpl_view_new_curve, xpl_pub_new_bind_curve,
    xpl_pub_new_connect_curve) taking a key set, or NULL for a plain
    socket exactly like the constructor without _curve. The keys are
    copied: the key set may be destroyed as soon as the constructor
    returned. Secret keys are wiped from memory when their holder is
    destroyed.

    A daemon that refuses the key (not in clients_dir), or a wrong server
    key, does not fail the connection visibly: ZeroMQ just never completes
    the handshake, and calls time out as when the daemon is down. With
    CURVE on, the reason of such an XPL_ETIMEOUT (xpl_strerror) ends with
    a hint starting with "; CURVE: ", which says "the daemon refused this
    client's key" when the daemon answered the handshake with a refusal
    (ZAP status 400), or that no handshake completed otherwise. After a
    refusal, libzmq does not reconnect a socket that connected: xpl_client
    opens a new one on its next request (so a key admitted later, after
    the daemon's SIGHUP, works without a new client); a refused xpl_sub,
    xpl_view or connecting xpl_pub must be destroyed and created again. (A
    publisher that binds recovers by itself: the daemon, which connects
    to it, tries again.)

    Certificates are czmq's text format, as core/keys.h describes:
    `public-key = "<40 Z85 characters>"` and, in a secret certificate,
    `secret-key = "..."`.  */
#ifndef XPL_CURVE_H_INCLUDED
#define XPL_CURVE_H_INCLUDED

#include "xpl_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xpl_curve_t xpl_curve_t;

/* Length of a key in Z85 text (a 32-byte key); buffers hold one more
   byte for the terminating NUL. */
#define XPL_CURVE_KEY_LEN 40

/* Load this client's key pair from its secret certificate
   `client_secret_cert` and the daemon's public key from
   `server_public_cert` (its public certificate; only the public key is
   read). Caller owns the result (xpl_curve_destroy). NULL on error:
   XPL_ECERT when a file cannot be read, has no public key, has no secret
   key (client_secret_cert is a public certificate: give FILE_secret), has
   a malformed key, or when the public and secret keys of
   client_secret_cert do not belong together; XPL_EINVAL for a NULL path;
   XPL_EZMQ when this libzmq was built without CURVE. The reason names the
   file. */
XPL_EXPORT xpl_curve_t *xpl_curve_load(const char *client_secret_cert,
                                       const char *server_public_cert);

/* The same from raw keys: this client's secret key and the daemon's
   public key, each 40 characters of Z85 (the public key is derived from
   the secret one). NULL with XPL_EINVAL for a key that is not 40 Z85
   characters, XPL_EZMQ without CURVE support. */
XPL_EXPORT xpl_curve_t *xpl_curve_new(const char *client_secret_z85,
                                      const char *server_public_z85);

/* Wipe and free a key set and set *self_p to NULL; NULL-safe. */
XPL_EXPORT void xpl_curve_destroy(xpl_curve_t **self_p);

/* This client's public key (Z85), e.g. to log which key is in use, and
   the daemon's. Owned by the key set. */
XPL_EXPORT const char *xpl_curve_public_key(const xpl_curve_t *self);
XPL_EXPORT const char *xpl_curve_server_key(const xpl_curve_t *self);

/* A new key pair: 40 Z85 characters and a NUL into each buffer (of at
   least XPL_CURVE_KEY_LEN + 1 bytes). 0, or -1 with XPL_EZMQ (no CURVE
   support in libzmq). */
XPL_EXPORT int xpl_curve_keypair(char *public_z85, char *secret_z85);

/* Write a certificate pair, czmq style: `path` is the public certificate
   (mode 0644, for the daemon's clients_dir or for clients as the server
   key) and `path`_secret the secret one (mode 0600). An existing file at
   either path is an error (XPL_ECERT, nothing written) unless
   `overwrite`, which removes both first, so the new secret file is never
   more readable than 0600 whatever the old one was. On a failed write
   neither file is left behind. -1 with XPL_EINVAL for a key that is not
   40 Z85 characters or a public key that is not the secret one's, or
   XPL_ECERT naming the file and the system's reason. */
XPL_EXPORT int xpl_curve_save(const char *path, const char *public_z85, const char *secret_z85,
                              bool overwrite);

#ifdef __cplusplus
}
#endif

#endif
