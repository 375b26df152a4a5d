/*  bench_xplain: transport and daemon benchmark.

    One run measures, side by side and in rotation, for each workload:
      sink     a null sink that receives the same messages and decodes only
               the msgpack header (the transport limit);
      xplaind  the real daemon (rollout, grad_rollout, first_layer,
               attn_mean, diag) from publish to published explanation,
               counted by a C subscriber of xpl/;
      python   bench/py_consumer.py: pyzmq + msgpack + numpy computing the
               same five methods per message.
    The publisher is this process: pre-encoded messages (seq, ts and ids
    patched in place), an XPUB socket with ZMQ_XPUB_NODROP so that at "max
    rate" it is throttled by the consumer instead of dropping, or paced at
    a given trade rate for the latency runs. `ts` is the wall clock at send
    time; consumers subtract it from their own wall clock on receipt (same
    machine, same clock).

    Subcommands:
      bench_xplain run [options]        the driver (see --help)
      bench_xplain sink EP HWM          null sink (spawned by run)
      bench_xplain sub EP HWM           xpl/ subscriber (spawned by run)

    Protocol between driver and consumers: warm-up messages carry ids below
    BASE; the consumer prints READY on its first message; measured trades
    have ids from BASE; a message with ids from END ends the run; the
    consumer prints one RESULT line.

    The parts, one concern to a file under bench/xplain/: driver.c (the
    run subcommand: options, repetitions, medians), run.c (one measured
    run), publisher.c (the ring of pre-encoded messages), child.c (the
    processes started), probe.c (/proc and the daemon's stats query),
    consumer.c (the sink and sub programs), report.c (tables and TARGET
    lines); bench_xplain.h between them.  */
#define _GNU_SOURCE
#include "xplain/bench_xplain.h"

#include <inttypes.h>
#include <unistd.h>

char bench_self[PATH_MAX];

int
main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", bench_self, sizeof bench_self - 1);
    if (n > 0)
        bench_self[n] = '\0';
    if (argc >= 2 && strcmp(argv[1], "sink") == 0)
        return cmd_consume(argc - 2, argv + 2, false);
    if (argc >= 2 && strcmp(argv[1], "sub") == 0)
        return cmd_consume(argc - 2, argv + 2, true);
    if (argc >= 2 && strcmp(argv[1], "run") == 0)
        return cmd_run(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "selftest") == 0) {
        /* The header walk on every workload's message. */
        for (size_t k = 0; k < N_WORKLOADS; k++) {
            wmsg_t m;
            wmsg_build(&m, &WORKLOADS[k], "bench", 1);
            wmsg_patch(&m, 7, 1234567, BASE + 5);
            int64_t ts = 0;
            uint64_t id0 = 0;
            uint32_t cnt = 0;
            int rc = consumer_header(m.body.data, m.body.size, &ts, &id0, &cnt);
            printf("%s: rc=%d ts=%" PRId64 " id0=%" PRIu64 " count=%u\n", WORKLOADS[k].name, rc,
                   ts, id0 - BASE, cnt);
            msgpack_sbuffer_destroy(&m.body);
        }
        return 0;
    }
    usage();
    return 2;
}
