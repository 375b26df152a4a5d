/*  xplaind: entry point. Loads the configuration, runs the server until
    SIGTERM or SIGINT, exits 0; exits 2 on a bad command line or
    configuration, 1 when it cannot start.  */
#include "config.h"
#include "log.h"
#include "server.h"

#include <malloc.h>
#include <string.h>

int
main(int argc, char **argv)
{
    /* Ingest messages (up to max_msg_size) are allocated by ZeroMQ's I/O
       thread and freed here. With glibc's defaults every large message is
       mmap'ed or the heap top trimmed after each free, and the next message
       faults all its pages in again (bench: ~45% of the daemon's CPU per
       tab32 trade). Messages below 32 MiB come from the heap, and the heap
       is trimmed only when 16 MiB lie free at its top: never per message,
       but after a backlog (at most ingest.rcvhwm messages) has drained. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 16 << 20);

    server_t s;
    memset(&s, 0, sizeof s);
    cfg_action_t a = config_load(&s.cfg, argc, argv);
    if (a == CFG_EXIT_OK)
        return 0;
    if (a == CFG_EXIT_USAGE)
        return 2;
    s.argc = argc;
    s.argv = argv;
    int status = 1;
    if (server_init(&s) == 0)
        status = server_run(&s);
    s.status = status;
    server_destroy(&s);
    return status;
}
