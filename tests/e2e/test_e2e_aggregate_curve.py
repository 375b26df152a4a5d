"""End to end: an aggregator with CURVE on every connection.

Keys are made with pyzmq (zmq.curve_keypair) and written as czmq
certificates, as tests/e2e/test_e2e_curve.py does. Two shards share one
server key pair; their clients_dir admits the model publisher and the
aggregator. The aggregator has its own key pair (security.secret_key_file):
the CURVE client key it uses towards the shards' state/, xpl/ and query
endpoints (aggregate.shard_keys names the shards' public certificate), and
its server key towards its own clients, which its clients_dir admits.

Checked: the aggregator counts the whole stream, forwards xpl/ and answers
a trade query of each shard, all to an admitted client over CURVE; an
aggregator whose key the shards do not admit is refused by them (counted
under auth_refused_key) and merges nothing.
"""
import os
import shutil
import sys
import tempfile
import time

import msgpack
import numpy as np
import zmq

from xpltest import SOURCE, Daemon, close_context, wait_until

sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
from xplain import Publisher, shard_of  # noqa: E402

NS = 2
T0 = 1_796_169_600 * 10 ** 9


def write_cert(path, public, secret=None):
    with open(path, "w") as f:
        f.write("#   ZeroMQ CURVE Certificate (test)\nmetadata\ncurve\n")
        f.write(f'    public-key = "{public.decode()}"\n')
        if secret:
            f.write(f'    secret-key = "{secret.decode()}"\n')


class Pair:
    """A key pair with its secret and public certificates in `root`."""

    def __init__(self, root, name):
        self.pub, self.sec = zmq.curve_keypair()
        self.secret_cert = os.path.join(root, f"{name}.key_secret")
        self.public_cert = os.path.join(root, f"{name}.key")
        write_cert(self.secret_cert, self.pub, self.sec)
        write_cert(self.public_cert, self.pub)


class FixedDaemon(Daemon):
    def __init__(self, eps, *args, **kw):
        self.fixed = eps
        extra = ["--publish", eps["pub"], "--query", eps["q"]]
        if "in" in eps:
            extra += ["--ingest-bind", eps["in"]]
        super().__init__(*args, *extra, **kw)

    def _wait_ready(self):
        self.ingest = self.fixed.get("in")
        self.publish, self.query_ep = self.fixed["pub"], self.fixed["q"]
        super()._wait_ready()


def admit(directory, *pairs):
    os.mkdir(directory)
    for p in pairs:
        shutil.copy(p.public_cert, directory)
    return directory


def test_aggregator_over_curve():
    tmp = tempfile.mkdtemp(prefix="xplaggc-")
    daemons = []
    ctx = zmq.Context()
    try:
        shard_k, agg_k, client_k, stranger_k = (Pair(tmp, n) for n in ("shard", "agg", "client",
                                                                       "stranger"))
        shard_clients = admit(os.path.join(tmp, "shard-clients"), client_k, agg_k)
        agg_clients = admit(os.path.join(tmp, "agg-clients"), client_k)
        ep = {k: {w: f"ipc://{tmp}/s{k}-{w}" for w in ("in", "pub", "q")} for k in range(NS)}
        for k in range(NS):
            daemons.append(FixedDaemon(ep[k], "--shard", f"{k}/{NS}", "--glob-interval-ms", "100",
                                       "--curve", "--secret-key-file", shard_k.secret_cert,
                                       "--clients-dir", shard_clients,
                                       curve=(client_k.pub, client_k.sec, shard_k.pub)))
        agg_args = ["--aggregate", ",".join(ep[k]["pub"] for k in range(NS)),
                    "--aggregate-query", ",".join(ep[k]["q"] for k in range(NS)),
                    "--aggregate-shard-key", shard_k.public_cert, "--glob-interval-ms", "100",
                    "--curve", "--clients-dir", agg_clients]
        agg = Daemon(*agg_args, "--secret-key-file", agg_k.secret_cert, ingest_bind=False,
                     curve=(client_k.pub, client_k.sec, agg_k.pub))
        daemons.append(agg)

        sub = ctx.socket(zmq.SUB)
        sub.curve_publickey, sub.curve_secretkey, sub.curve_serverkey = client_k.pub, client_k.sec, agg_k.pub
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(agg.publish)
        sub.subscribe(b"xpl/m1")

        pub = Publisher("m1", connect=[ep[k]["in"] for k in range(NS)], tokens=["CLS", "a", "b"],
                        cls=0, shards=NS, curve_secret=client_k.secret_cert,
                        server_public=shard_k.public_cert)
        assert pub.wait_subscriber(20), "the sharded publisher did not join over CURVE"
        rng = np.random.default_rng(3)
        got = set()
        sent = []

        # Until an explanation of every shard came through the aggregator's
        # xpl/ (its subscription goes upstream over CURVE), one trade per
        # shard per round.
        def through():
            while sub.poll(0):
                t, b = sub.recv_multipart()
                got.add(msgpack.unpackb(b)["id"])
            if {shard_of(t, NS) for t in got} == set(range(NS)):
                return True
            ids = [f"r{len(sent)}-{k}" for k in range(4)]
            a = rng.dirichlet(np.ones(3), size=(len(ids), 1, 1, 3)).astype(np.float32)
            pub.send(a, ids=ids, ts=T0 + len(sent) * 10 ** 6)
            sent.extend(ids)
            return False
        wait_until(through, 60, "explanations of both shards through the aggregator's xpl/ over CURVE")

        def agg_count():
            r = agg.query("global", model="m1")
            return r["count"] if r["ok"] else -1
        wait_until(lambda: agg_count() == len(sent), 30,
                   f"the aggregator to count the {len(sent)} trades sent, over CURVE")
        st = agg.stats()
        assert all(not s["stale"] and s["states"] > 0 for s in st["shards"]), st["shards"]
        for k in range(NS):
            tid = next(t for t in sent if shard_of(t, NS) == k)
            r = agg.query("trade", model="m1", id=tid)
            assert r["ok"] and r["id"] == tid, (k, r)

        # An aggregator the shards do not admit: refused (counted by the
        # shards), it learns nothing.
        before = sum(d.stats()["counters"]["auth_refused_key"] for d in daemons[:NS])
        stranger = Daemon(*agg_args, "--secret-key-file", stranger_k.secret_cert, ingest_bind=False,
                          curve=(client_k.pub, client_k.sec, stranger_k.pub))
        daemons.append(stranger)
        wait_until(lambda: sum(d.stats()["counters"]["auth_refused_key"] for d in daemons[:NS])
                   >= before + 2 * NS, 30, "the shards to refuse the stranger aggregator's key")
        ss = stranger.stats()
        assert all(s["shard"] is None and s["states"] == 0 for s in ss["shards"]), ss["shards"]
        assert stranger.query("global", model="m1")["ok"] is False
        pub.close()
    finally:
        close_context(ctx)
        for d in reversed(daemons):
            if d.proc.poll() is None:
                d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
