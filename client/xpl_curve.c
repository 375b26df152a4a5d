/*  xpl_curve: CURVE key sets, certificate files, and what a socket's
    handshakes said (for the hint of a timeout). See xpl_curve.h.  */
#include "xpl_private.h"
#include "keys.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

_Static_assert(XPL_CURVE_KEY_LEN == KEY_Z85_LEN, "one key length");

static int
s_no_curve(void)
{
    return xpl_fail(XPL_EZMQ, "this libzmq was built without CURVE support (zmq_has(\"curve\"))");
}

/* Zero memory the compiler must not optimise the write away from. */
static void
s_wipe(void *p, size_t n)
{
    explicit_bzero(p, n);
}

/* The public key that belongs to `secret` (both Z85) into `pub`. */
static int
s_derive_public(char *pub, const char *secret)
{
    if (zmq_curve_public(pub, secret))
        return -1;
    pub[KEY_Z85_LEN] = '\0';
    return 0;
}

static xpl_curve_t *
s_alloc(void)
{
    xpl_curve_t *self = calloc(1, sizeof *self);
    if (!self)
        return xpl_fail_null(XPL_ENOMEM, "out of memory");
    return self;
}

xpl_curve_t *
xpl_curve_load(const char *client_secret_cert, const char *server_public_cert)
{
    if (!client_secret_cert || !server_public_cert)
        return xpl_fail_null(XPL_EINVAL, "CURVE keys: both a client secret certificate and the "
                                         "server's public certificate are needed");
    if (!zmq_has("curve")) {
        s_no_curve();
        return NULL;
    }
    xpl_curve_t *self = s_alloc();
    if (!self)
        return NULL;
    char err[600], derived[KEY_Z85_LEN + 1];
    if (keys_load(client_secret_cert, self->public_key, self->secret_key, err, sizeof err)) {
        xpl_curve_destroy(&self);
        if (strstr(err, "no secret-key line"))
            return xpl_fail_null(XPL_ECERT, "client certificate %s has no secret key: it is a "
                                            "public certificate (give the FILE_secret that "
                                            "'xplainctl keygen FILE' wrote)", client_secret_cert);
        return xpl_fail_null(XPL_ECERT, "client certificate: %s", err);
    }
    if (s_derive_public(derived, self->secret_key) || strcmp(derived, self->public_key) != 0) {
        xpl_curve_destroy(&self);
        return xpl_fail_null(XPL_ECERT, "client certificate %s: its public key is not the one "
                                        "of its secret key", client_secret_cert);
    }
    s_wipe(derived, sizeof derived);
    if (keys_load(server_public_cert, self->server_key, NULL, err, sizeof err)) {
        xpl_curve_destroy(&self);
        return xpl_fail_null(XPL_ECERT, "server certificate: %s", err);
    }
    return self;
}

xpl_curve_t *
xpl_curve_new(const char *client_secret_z85, const char *server_public_z85)
{
    if (!client_secret_z85 || !keys_z85_ok(client_secret_z85))
        return xpl_fail_null(XPL_EINVAL, "CURVE keys: the client secret key is not 40 Z85 "
                                         "characters");
    if (!server_public_z85 || !keys_z85_ok(server_public_z85))
        return xpl_fail_null(XPL_EINVAL, "CURVE keys: the server public key is not 40 Z85 "
                                         "characters");
    if (!zmq_has("curve")) {
        s_no_curve();
        return NULL;
    }
    xpl_curve_t *self = s_alloc();
    if (!self)
        return NULL;
    memcpy(self->secret_key, client_secret_z85, KEY_Z85_LEN + 1);
    memcpy(self->server_key, server_public_z85, KEY_Z85_LEN + 1);
    if (s_derive_public(self->public_key, self->secret_key)) {
        xpl_curve_destroy(&self);
        return xpl_fail_null(XPL_EINVAL, "CURVE keys: no public key for this secret key: %s",
                             zmq_strerror(zmq_errno()));
    }
    return self;
}

xpl_curve_t *
xpl_curve_dup(const xpl_curve_t *curve)
{
    if (!curve)
        return NULL;
    xpl_curve_t *self = s_alloc();
    if (self)
        *self = *curve;
    return self;
}

void
xpl_curve_destroy(xpl_curve_t **self_p)
{
    assert(self_p);
    if (!*self_p)
        return;
    s_wipe(*self_p, sizeof **self_p);
    free(*self_p);
    *self_p = NULL;
}

const char *
xpl_curve_public_key(const xpl_curve_t *self)
{
    assert(self);
    return self->public_key;
}

const char *
xpl_curve_server_key(const xpl_curve_t *self)
{
    assert(self);
    return self->server_key;
}

int
xpl_curve_keypair(char *public_z85, char *secret_z85)
{
    assert(public_z85 && secret_z85);
    if (!zmq_has("curve"))
        return s_no_curve();
    if (zmq_curve_keypair(public_z85, secret_z85))
        return xpl_fail_zmq("zmq_curve_keypair");
    return 0;
}

/* Does anything (a file, a directory, a dangling symbolic link) exist at
   `path`? -1 with the error set when that cannot be told. */
static int
s_exists(const char *path)
{
    struct stat st;
    if (lstat(path, &st) == 0)
        return 1;
    if (errno == ENOENT)
        return 0;
    return xpl_fail(XPL_ECERT, "cannot write %s: %s", path, strerror(errno));
}

int
xpl_curve_save(const char *path, const char *public_z85, const char *secret_z85, bool overwrite)
{
    if (!path || !*path)
        return xpl_fail(XPL_EINVAL, "no certificate path given");
    if (!public_z85 || !keys_z85_ok(public_z85) || !secret_z85 || !keys_z85_ok(secret_z85))
        return xpl_fail(XPL_EINVAL, "a CURVE key is not 40 Z85 characters");
    char derived[KEY_Z85_LEN + 1];
    if (!zmq_has("curve"))
        return s_no_curve();
    int match = s_derive_public(derived, secret_z85) == 0 && strcmp(derived, public_z85) == 0;
    s_wipe(derived, sizeof derived);
    if (!match)
        return xpl_fail(XPL_EINVAL, "the public key is not the one of the secret key");
    char spath[4096];
    if (snprintf(spath, sizeof spath, "%s_secret", path) >= (int)sizeof spath)
        return xpl_fail(XPL_EINVAL, "certificate path too long");
    const char *paths[2] = {path, spath};
    for (int k = 0; k < 2; k++) {
        int e = s_exists(paths[k]);
        if (e < 0)
            return -1;
        if (e && !overwrite)
            return xpl_fail(XPL_ECERT, "%s exists: not overwritten", paths[k]);
        /* Remove rather than truncate: a new file gets the mode asked for
           (0600 for the secret), an old one would keep its own. */
        if (e && unlink(paths[k]))
            return xpl_fail(XPL_ECERT, "cannot replace %s: %s", paths[k], strerror(errno));
    }
    char err[600];
    if (keys_save(path, public_z85, secret_z85, err, sizeof err)) {
        unlink(path);
        unlink(spath);
        return xpl_fail(XPL_ECERT, "%s", err);
    }
    return 0;
}

/* ---- socket setup and handshake watching ------------------------------- */

int
xpl_curve_apply(void *ctx, void *sock, const xpl_curve_t *curve, xpl_hs_t *hs, const char *what)
{
    if (hs)
        memset(hs, 0, sizeof *hs);
    if (!curve)
        return 0;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, curve->server_key, KEY_Z85_LEN)
        || zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, curve->public_key, KEY_Z85_LEN)
        || zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, curve->secret_key, KEY_Z85_LEN)) {
        int e = zmq_errno();
        return xpl_fail(XPL_EZMQ, "%s socket: cannot set the CURVE keys: %s", what,
                        zmq_strerror(e));
    }
    if (!hs)
        return 0;
    hs->curve = true;
    /* Only the outcome of handshakes: a refusal comes once (libzmq does not
       reconnect after it) and a success once per connection, so the
       events stay few even when nobody reads them for a long time. */
    char ep[64];
    xpl_inproc_endpoint(ep, sizeof ep, "handshakes");
    int zero = 0;
    if (xpl_socket_monitor(sock, ep, ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)) {
        int e = zmq_errno();
        return xpl_fail(XPL_EZMQ, "%s socket: cannot watch its handshakes: %s", what,
                        zmq_strerror(e));
    }
    if (!(hs->mon = xpl_socket(ctx, ZMQ_PAIR))
        || zmq_setsockopt(hs->mon, ZMQ_LINGER, &zero, sizeof zero)
        /* Never let a full queue block the I/O thread that reports. */
        || zmq_setsockopt(hs->mon, ZMQ_RCVHWM, &zero, sizeof zero) || zmq_connect(hs->mon, ep)) {
        int e = zmq_errno();
        xpl_hs_close(hs, sock);
        return xpl_fail(XPL_EZMQ, "%s socket: cannot watch its handshakes: %s", what,
                        zmq_strerror(e));
    }
    return 0;
}

int
xpl_hs_event(void *monitor, long timeout_ms, int *status)
{
    zmq_pollitem_t it = {monitor, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return -1;
    zmq_msg_t ev, addr;
    zmq_msg_init(&ev);
    zmq_msg_init(&addr);
    uint16_t event = 0;
    uint32_t value = 0;
    if (zmq_msg_recv(&ev, monitor, 0) >= 0 && zmq_msg_size(&ev) >= 6) {
        memcpy(&event, zmq_msg_data(&ev), 2);
        memcpy(&value, (const char *)zmq_msg_data(&ev) + 2, 4);
    }
    if (zmq_msg_more(&ev))
        zmq_msg_recv(&addr, monitor, 0);
    zmq_msg_close(&ev);
    zmq_msg_close(&addr);
    if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
        return XPL_HS_OK;
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
        if (status)
            *status = (int)value;
        return XPL_HS_REFUSED;
    }
    return XPL_HS_NONE;
}

/* Read every pending event into hs->last. */
static void
s_drain(xpl_hs_t *hs)
{
    if (!hs->mon)
        return;
    int e, status = 0;
    while ((e = xpl_hs_event(hs->mon, 0, &status)) >= 0)
        if (e != XPL_HS_NONE) {
            hs->last = e;
            hs->status = status;
        }
}

bool
xpl_hs_refused(xpl_hs_t *hs)
{
    s_drain(hs);
    return hs->last == XPL_HS_REFUSED;
}

const char *
xpl_curve_hint(bool curve, int last, int status)
{
    static _Thread_local char buf[200];
    if (!curve || last == XPL_HS_OK)
        return "";
    if (last == XPL_HS_REFUSED) {
        snprintf(buf, sizeof buf, "; CURVE: the daemon refused this client's key (ZAP status "
                                  "%d): is its public certificate in the daemon's clients_dir?",
                 status);
        return buf;
    }
    return "; CURVE: no handshake with the daemon completed: is the server key the daemon's, "
           "and this client's public certificate in its clients_dir?";
}

const char *
xpl_hs_hint(xpl_hs_t *hs)
{
    s_drain(hs);
    return xpl_curve_hint(hs->curve, hs->last, hs->status);
}

void
xpl_hs_close(xpl_hs_t *hs, void *sock)
{
    /* Stop the monitor first: libzmq's end of it is a PAIR whose sends
       would block an I/O thread once this end is gone. */
    if (sock)
        zmq_socket_monitor(sock, NULL, 0);
    if (hs->mon)
        zmq_close(hs->mon);
    hs->mon = NULL;
}
