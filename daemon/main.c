/*  xplaind: entry point. Loads the configuration, runs the server until
    SIGTERM or SIGINT, exits 0; exits 2 on a bad command line or
    configuration, 1 when it cannot start.  */
#include "config.h"
#include "log.h"
#include "server.h"

#include <string.h>

int
main(int argc, char **argv)
{
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
    server_destroy(&s);
    return status;
}
