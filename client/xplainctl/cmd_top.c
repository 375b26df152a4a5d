/*  placeholder until proto/global.md exists */
#include "ctl.h"
int
cmd_top(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return ctl_error("top", CTL_FAIL, "not available yet");
}
