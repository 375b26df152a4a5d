"""CURVE keys, for a daemon that runs with --curve (the README's "Security
(CURVE)").

Such a daemon makes every socket a CURVE server and admits only the public
keys whose certificates are in its clients_dir. Publisher, Subscriber,
Client and GlobalView then take two keyword arguments:

    curve_secret   this client's secret certificate (the FILE_secret that
                   `xplainctl keygen FILE` wrote; FILE goes into the
                   daemon's clients_dir), or its raw secret key (40 Z85
                   characters, str or bytes)
    server_public  the daemon's public certificate (FILE of the keygen whose
                   FILE_secret is the daemon's secret_key_file), or its raw
                   public key

    q = Client("tcp://host:5558", curve_secret="me.key_secret",
               server_public="server.key")

Both or neither. Certificates are czmq's text format, read the way the
daemon reads them (core/keys.c): the lines `public-key = "..."` and, in a
secret certificate, `secret-key = "..."`.

A daemon that does not admit the key never completes the handshake, so a
refused client just hears nothing: Client raises QueryTimeout, whose
message then ends with a "; CURVE: ..." hint saying whether the daemon
refused the key; Publisher.wait_subscriber returns False; Subscriber.recv
returns None.
"""
import itertools
from typing import Optional, Tuple
import os
import re

import zmq

from .errors import XplainError

Z85_CHARS = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")

_FIELD = re.compile(r'^\s*(public-key|secret-key)\s*=\s*"([^"]*)"')

HINT_REFUSED = ("; CURVE: the daemon refused this client's key (ZAP status %d): is its public "
                "certificate in the daemon's clients_dir?")
HINT_NONE = ("; CURVE: no handshake with the daemon completed: is the server key the daemon's, "
             "and this client's public certificate in its clients_dir?")


class CertificateError(XplainError, ValueError):
    """A CURVE certificate or key that cannot be used (unreadable file,
    malformed key, a public certificate where the secret one is needed)."""


def is_z85_key(value):
    """True when `value` (str or bytes) is 40 characters of Z85."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return False
    return isinstance(value, str) and len(value) == 40 and set(value) <= Z85_CHARS


def load_certificate(path: str) -> Tuple[bytes, Optional[bytes]]:
    """(public, secret) keys of a certificate file as Z85 bytes; secret is
    None in a public certificate. Raises CertificateError."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        raise CertificateError("cannot read %s: %s" % (path, e.strerror or e)) from None
    keys = {}
    for line in lines:
        m = _FIELD.match(line)
        if not m:
            continue
        if not is_z85_key(m.group(2)):
            raise CertificateError("%s: a key is not 40 Z85 characters" % path)
        keys[m.group(1)] = m.group(2).encode("ascii")
    if "public-key" not in keys:
        raise CertificateError("%s: no public-key line" % path)
    return keys["public-key"], keys.get("secret-key")


def _as_key_or_path(value, what):
    if isinstance(value, os.PathLike):
        return None, os.fspath(value)
    if isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if is_z85_key(value) and not os.path.exists(text):
            return text.encode("ascii"), None
        return None, text
    raise TypeError("%s must be a certificate path or a Z85 key, not %r" % (what, type(value)))


class Curve:
    """A client's CURVE keys: `public`, `secret` (its own, Z85 bytes) and
    `server` (the daemon's public key). See keys() to make one."""

    __slots__ = ("public", "secret", "server")

    def __init__(self, public, secret, server):
        self.public, self.secret, self.server = public, secret, server

    def apply(self, sock):
        """Make `sock` a CURVE client with these keys (before connect/bind)."""
        sock.curve_serverkey = self.server
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    def __repr__(self):
        return "Curve(public=%r, server=%r)" % (self.public.decode(), self.server.decode())


def keys(curve_secret=None, server_public=None):
    """A Curve from the keyword arguments the classes take, or None when
    both are None. curve_secret may also be a Curve (server_public is then
    not needed). Raises ValueError when only one is given,
    CertificateError for an unusable certificate or key."""
    if isinstance(curve_secret, Curve):
        return curve_secret
    if curve_secret is None and server_public is None:
        return None
    if curve_secret is None or server_public is None:
        raise ValueError("CURVE needs both curve_secret= (this client's secret certificate) "
                         "and server_public= (the daemon's public certificate)")
    if not zmq.has("curve"):
        raise XplainError("this libzmq was built without CURVE support")
    key, path = _as_key_or_path(curve_secret, "curve_secret")
    if key is not None:
        secret = key
        public = zmq.curve_public(secret)
    else:
        public, secret = load_certificate(path)
        if secret is None:
            raise CertificateError("client certificate %s has no secret key: it is a public "
                                   "certificate (give the FILE_secret that 'xplainctl keygen "
                                   "FILE' wrote)" % path)
        if zmq.curve_public(secret) != public:
            raise CertificateError("client certificate %s: its public key is not the one of "
                                   "its secret key" % path)
    key, path = _as_key_or_path(server_public, "server_public")
    server = key if key is not None else load_certificate(path)[0]
    return Curve(public, secret, server)


_monitors = itertools.count()


class HandshakeWatch:
    """Watches a CURVE client socket's handshakes (monitor events
    HANDSHAKE_SUCCEEDED and HANDSHAKE_FAILED_AUTH only: few, even when
    nobody reads them) for the hint of a timeout."""

    def __init__(self, ctx, sock):
        self._sock = sock
        addr = "inproc://xplain-handshakes-%d-%d" % (os.getpid(), next(_monitors))
        sock.monitor(addr, zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self._mon = ctx.socket(zmq.PAIR)
        self._mon.setsockopt(zmq.LINGER, 0)
        self._mon.setsockopt(zmq.RCVHWM, 0)
        self._mon.connect(addr)
        self.last, self.status = None, 0

    def _drain(self):
        while self._mon.poll(0):
            frames = self._mon.recv_multipart()
            if len(frames[0]) >= 6:
                event = int.from_bytes(frames[0][:2], "little")
                value = int.from_bytes(frames[0][2:6], "little")
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.last = "ok"
                elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    self.last, self.status = "refused", value

    def hint(self):
        """"" after a successful handshake, else the "; CURVE: ..." hint."""
        self._drain()
        if self.last == "ok":
            return ""
        if self.last == "refused":
            return HINT_REFUSED % self.status
        return HINT_NONE

    def close(self):
        # Stop the monitor before closing its reader: libzmq's end is a PAIR
        # whose sends would block an I/O thread without a peer.
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._mon.close(0)
