#!/usr/bin/python3
r"""Regenerate the option documentation from the built binaries, so that it
can never drift from the option table (daemon/config.c) and xplainctl:

  systemd/xplaind.conf   the annotated example configuration (whole file)
  README.md              between <!-- options:begin --> and <!-- options:end -->,
                         and the unit's systemd-analyze security score between
                         <!-- security:begin --> and <!-- security:end -->
  man/xplaind.8          the .TH line and between .\" options:begin/end
  man/xplainctl.1        the .TH line and between .\" commands:begin/end

usage: scripts/gen-docs.sh [--check] [BUILD_DIR]
   (or /usr/bin/python3 scripts/gen_docs.py, which that script runs)
  BUILD_DIR   a configured and built tree (default: $XPL_BUILD_DIR, else
              build); its daemon/xplaind and client/xplainctl are run.
  --check     write nothing; print a diff and exit 1 when a file is out
              of date (tests/py/test_docs.py runs this).

Sources: `xplaind --help` (flag, section.key, default, reloadable, help
text of every option), `xplaind --print-config` (the effective values of
the service settings below), `xplainctl --help` and `xplainctl CMD --help`,
`systemd-analyze security --offline=true systemd/xplaind.service` (when
systemd-analyze is missing, the score in the README is left as it is).
An output line that cannot be parsed is an error, not a silent omission.
Every tool runs in one fixed environment (C.UTF-8, TERM=dumb, no colour),
whatever the caller's: systemd-analyze, for one, prints another face
without a UTF-8 locale and an emoji only on a capable terminal, so the
docs would otherwise depend on who generated or checked them.
"""
import difflib
import os
import re
import subprocess
import sys
import textwrap

# The settings systemd/xplaind.conf makes on top of the built-in defaults,
# so that the daemon runs as a system service: (section, key, value, why).
SERVICE_SETTINGS = [
    ("ingest", "bind", "tcp://127.0.0.1:5556",
     "models connect their publishers here (loopback only; see "
     "xplaind(8) for ipc:// endpoints under /run/xplaind)."),
    ("state", "dir", "/var/lib/xplaind",
     "the unit's StateDirectory=, writable by the service and nothing else."),
]


# Why each exposure systemd-analyze still reports for the unit is accepted.
EXPOSURE_NOTES = {
    "PrivateNetwork=": "the daemon's job is network I/O: ZeroMQ sockets and the metrics endpoint",
    "RestrictAddressFamilies=~AF_(INET|INET6)": "`tcp://` endpoints and the metrics endpoint",
    "RestrictAddressFamilies=~AF_UNIX": "`ipc://` endpoints and `sd_notify()`",
    "RestrictAddressFamilies=~AF_NETLINK": "ZeroMQ's `getifaddrs()` when it binds a `tcp://` endpoint",
    "IPAddressDeny=": "models and subscribers may be on other hosts; a drop-in can restrict it",
    "SystemCallFilter=~@resources": "`sched_setscheduler`, which every ZeroMQ I/O thread calls",
    "DeviceAllow=": "`char-rtc:r` comes with `ProtectClock=yes`",
    "RootDirectory=/RootImage=": "the daemon runs from the host's `/usr`, like any packaged service",
}


def die(msg):
    sys.stderr.write("gen-docs: %s\n" % msg)
    sys.exit(2)


# The one environment every tool runs in (see the top of this file).
TOOL_ENV = {"PATH": os.environ.get("PATH") or "/usr/bin:/bin", "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8", "TERM": "dumb", "NO_COLOR": "1", "SYSTEMD_COLORS": "0",
            "SYSTEMD_PAGER": "", "PAGER": "cat"}


def run(argv):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=TOOL_ENV,
                       encoding="utf-8")
    if p.returncode != 0:
        die("%s exited %d: %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p.stdout


# ---------------------------------------------------------------- parsing

def parse_xplaind_help(text):
    """General flags [(flag, arg, text)] and options [dict] of xplaind --help."""
    general, opts = [], []
    section, cur = None, None
    meta_re = re.compile(r"^\(([a-z0-9_]+)\.([a-z0-9_]+), default '(.*)'(, SIGHUP reloads)?\)$")
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\[([a-z0-9_]+)\]$", line)
        if m:
            section = m.group(1)
            continue
        if section is None:
            m = re.match(r"^  (--[a-z0-9-]+)(?: ([A-Z]+))?\s{2,}(\S.*)$", line)
            if m:
                general.append((m.group(1), m.group(2) or "", m.group(3)))
            continue        # the usage and description lines
        m = re.match(r"^  --([a-z0-9-]+)(\[=BOOL\]| [A-Z:]+)$", line)
        if m:
            if cur is not None and "key" not in cur:
                die("xplaind --help line %d: option --%s has no (section.key, default) line"
                    % (n, cur["flag"]))
            cur = {"flag": m.group(1), "arg": m.group(2),
                   "kind": "bool" if m.group(2) == "[=BOOL]" else "value",
                   "section": section, "help": []}
            opts.append(cur)
            continue
        if line.startswith("      ") and cur is not None and "key" not in cur:
            body = line.strip()
            m = meta_re.match(body)
            if m:
                if m.group(1) != section:
                    die("xplaind --help line %d: %s.%s listed under [%s]"
                        % (n, m.group(1), m.group(2), section))
                cur.update(key=m.group(2), default=m.group(3), reload=bool(m.group(4)),
                           help=" ".join(cur["help"]))
            else:
                cur["help"].append(body)
            continue
        die("xplaind --help line %d not understood: %r" % (n, line))
    if cur is not None and "key" not in cur:
        die("xplaind --help: option --%s has no (section.key, default) line" % cur["flag"])
    if not general or not opts:
        die("xplaind --help: no options found")
    return general, opts


def parse_print_config(text):
    """{(section, key): value} of xplaind --print-config."""
    values, section = {}, None
    for n, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith(";"):
            continue
        m = re.match(r"^\[([a-z0-9_]+)\]$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^([a-z0-9_]+) = ?(.*)$", line)
        if not m or section is None:
            die("xplaind --print-config line %d not understood: %r" % (n, line))
        values[(section, m.group(1))] = m.group(2)
    return values


def help_blocks(text):
    """Blank-line separated blocks of a --help text, as lists of lines."""
    blocks, cur = [], []
    for line in text.rstrip("\n").splitlines():
        if line.strip():
            cur.append(line.rstrip())
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


OPT_LINE = re.compile(r"^  (-[^ ].*?)(?:\s{2,}(\S.*))?$")


def parse_option_block(lines):
    """[(tag, text)] when every line is an option line or a continuation
    (deeper indented) of one; None otherwise."""
    items = []
    for line in lines:
        m = OPT_LINE.match(line)
        if m:
            items.append([m.group(1), m.group(2) or ""])
        elif items and re.match(r"^ {4,}\S", line):
            items[-1][1] = (items[-1][1] + " " + line.strip()).strip()
        else:
            return None
    return [tuple(i) for i in items]


def parse_xplainctl(ctl):
    main = run([ctl, "--help"])
    commands, common, exit_status = [], None, None
    for block in help_blocks(main):
        head = block[0]
        if head == "commands:":
            for line in block[1:]:
                m = re.match(r"^  ([a-z][a-z0-9-]*)\s+(\S.*)$", line)
                if not m:
                    die("xplainctl --help: command line not understood: %r" % line)
                commands.append((m.group(1), m.group(2)))
        elif head == "common options:":
            common = parse_option_block(block[1:])
            if common is None:
                die("xplainctl --help: common options not understood")
        elif head.startswith("exit status:"):
            exit_status = " ".join(l.strip() for l in block)[len("exit status:"):].strip()
    if not commands or common is None or exit_status is None:
        die("xplainctl --help: no commands, common options or exit status found")
    helps = {name: run([ctl, name, "--help"]) for name, _ in commands}
    return commands, common, exit_status, helps


# ---------------------------------------------------------------- roff

def roff_text(s):
    """Escape running text for roff: backslashes, option dashes and minus
    signs, and a leading control character."""
    s = s.replace("\\", "\\e")
    # Dashes of options and minus signs are \-; an option is never hyphenated.
    s = re.sub(r"(?<![A-Za-z0-9])-[-A-Za-z0-9_]*",
               lambda m: m.group(0).replace("-", "\\-"), s)
    s = re.sub(r"(?<![^ (\[])(?=\\-(?:\\-)?[a-z])", "\\\\%", s)
    if s.startswith((".", "'")):
        s = "\\&" + s
    return s


def roff_tag(tag):
    """An option tag such as '-k, --top K' with names bold and arguments italic."""
    out = []
    for tok in re.split(r"(\s+|,|\||\[|\]|\.\.\.)", tag):
        if not tok or re.match(r"^(\s+|,|\||\[|\]|\.\.\.)$", tok):
            out.append(tok)
        elif tok.startswith("-"):
            eq = tok.find("=")
            if eq > 0:
                out.append("\\fB%s\\fR=\\fI%s\\fR" % (roff_text(tok[:eq]), roff_text(tok[eq + 1:])))
            else:
                out.append("\\fB%s\\fR" % roff_text(tok))
        else:
            out.append("\\fI%s\\fR" % roff_text(tok))
    s = "".join(out)
    return "\\&" + s if s.startswith((".", "'")) else s


def roff_help_block(lines):
    """One block of an xplainctl command's --help as roff."""
    opts = parse_option_block(lines)
    if opts is not None:
        out = []
        for tag, text in opts:
            out += [".TP", roff_tag(tag), roff_text(text)]
        return out
    head, rest = lines[0], lines[1:]
    if head.endswith(":") and rest and all(l.startswith("  ") for l in rest):
        # "examples:" and the like: a heading over verbatim lines.
        out = [".PP", roff_text(head[0].upper() + head[1:]), ".PP", ".RS 4", ".nf"]
        out += [roff_text(l[2:]) for l in rest]
        return out + [".fi", ".RE"]
    return [".PP"] + [roff_text(l.strip()) for l in lines]


# ---------------------------------------------------------------- outputs

def sentence(text):
    """A help line as a sentence: capital first, full stop last. "this
    text" (of --help) says what it is."""
    if text == "this text":
        text = "print this help and exit"
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def default_text(o):
    return o["default"] if o["default"] != "" else ""


def gen_conf(opts, settings):
    w = lambda text: textwrap.wrap(text, 76, break_long_words=False, break_on_hyphens=False)
    out = [
        "; xplaind.conf: configuration of xplaind, the streaming explainer",
        "; daemon, as the systemd unit xplaind.service starts it",
        "; (xplaind --config /etc/xplaind/xplaind.conf).",
        ";",
        "; GENERATED by scripts/gen-docs.sh from the daemon's option table",
        "; (xplaind --help, xplaind --print-config): do not edit it in the source",
        "; tree; rerun scripts/gen-docs.sh after adding or changing an option.",
        ";",
        "; Every option is listed with its help text, its command-line flag, its",
        "; built-in default and whether SIGHUP applies it. A line \";key = value\"",
        "; shows the default and changes nothing: remove the ';' to change it.",
        "; Lines marked \"service setting\" are set: they differ from the built-in",
        "; defaults so that the daemon runs as a system service.",
        ";",
        "; A flag on the command line wins over this file. `systemctl reload",
        "; xplaind` checks this file (xplaind --check-config) and sends SIGHUP: the",
        "; options marked \"SIGHUP reloads\" take effect at once, the daemon logs the",
        "; others, which need `systemctl restart xplaind`. Lists are comma or",
        "; space separated; sizes take a K, M or G suffix (powers of 1024);",
        "; booleans are true/false, yes/no, on/off or 1/0.",
    ]
    section = None
    for o in opts:
        if o["section"] != section:
            section = o["section"]
            out += ["", "[%s]" % section]
        out.append("")
        out += ["; " + l for l in w(o["help"])]
        d = default_text(o)
        out.append("; flag --%s, default %s, %s" % (
            o["flag"], d if d else "empty",
            "SIGHUP reloads" if o["reload"] else "restart to change"))
        s = settings.get((o["section"], o["key"]))
        if s is None:
            out.append((";%s = %s" % (o["key"], d)).rstrip())
        else:
            value, why = s
            out += ["; " + l for l in w("service setting: " + why)]
            out.append("%s = %s" % (o["key"], value))
    return "\n".join(out) + "\n"


def md_cell(s):
    """Text for a markdown table cell: no table breaks, emphasis or HTML."""
    return (s.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")
            .replace("`", "\\`").replace("<", "&lt;"))


def gen_readme(general, opts):
    out = [
        "<!-- generated by scripts/gen-docs.sh from `xplaind --help`: do not edit -->",
        "",
        "| flag | meaning |",
        "|---|---|",
    ]
    for flag, arg, text in general:
        out.append("| `%s` | %s |" % ((flag + " " + arg).strip(), md_cell(sentence(text))))
    out += [
        "",
        "Every other option is both a flag and a key of the configuration file",
        "(`key` under `[section]`). *Reload*: yes when SIGHUP (`systemctl reload",
        "xplaind`) applies a change without a restart.",
        "",
        "| flag | config key | default | reload | description |",
        "|---|---|---|---|---|",
    ]
    for o in opts:
        arg = o["arg"]
        d = default_text(o)
        out.append("| `--%s%s` | `%s.%s` | %s | %s | %s |" % (
            o["flag"], arg, o["section"], o["key"], "`%s`" % d if d else "*(empty)*",
            "yes" if o["reload"] else "no", md_cell(o["help"])))
    return "\n".join(out)


def gen_man_options(general, opts):
    out = [".\\\" generated by scripts/gen-docs.sh from xplaind \\-\\-help: do not edit",
           ".SS \"Actions and the configuration file\""]
    for flag, arg, text in general:
        out += [".TP", roff_tag((flag + " " + arg).strip()), roff_text(sentence(text))]
    section = None
    for o in opts:
        if o["section"] != section:
            section = o["section"]
            out.append(".SS \"[%s]\"" % section)
        arg = o["arg"]
        out += [".TP", roff_tag("--" + o["flag"] + arg), roff_text(o["help"])]
        d = default_text(o)
        out += [".br",
                "Key \\fB%s.%s\\fR; default %s; %s." % (
                    roff_text(o["section"]), roff_text(o["key"]),
                    "\\fB%s\\fR" % roff_text(d) if d else "empty",
                    "SIGHUP reloads it" if o["reload"] else "a restart is needed to change it")]
    return "\n".join(out)


def gen_man_commands(commands, common, exit_status, helps):
    out = [".\\\" generated by scripts/gen-docs.sh from xplainctl \\-\\-help: do not edit",
           ".SH COMMANDS"]
    for name, summary in commands:
        out += [".TP", "\\fB%s\\fR" % roff_text(name), roff_text(sentence(summary))]
    for name, _ in commands:
        blocks = help_blocks(helps[name])
        if not blocks or not blocks[0][0].startswith("usage: xplainctl " + name):
            die("xplainctl %s --help does not start with its usage line" % name)
        usage = " ".join(l.strip() for l in blocks[0])[len("usage: "):]
        out += [".SS \"xplainctl %s\"" % name, ".PP", ".nh", ".ad l"]
        out.append("\\fBxplainctl %s\\fR%s" % (roff_text(name),
                   (" " + roff_tag(usage[len("xplainctl " + name):].strip())).rstrip()))
        out += [".ad", ".hy"]
        for block in blocks[1:]:
            if block[0] == "common options:":
                continue    # documented once, under COMMON OPTIONS
            out += roff_help_block(block)
    out.append(".SH \"COMMON OPTIONS\"")
    out.append("Every command accepts these, before or after the command name:")
    for tag, text in common:
        out += [".TP", roff_tag(tag), roff_text(sentence(text))]
    out += [".SH \"EXIT STATUS\"", roff_text(sentence(exit_status))]
    return "\n".join(out)


def gen_security(unit):
    """The unit's exposure, as systemd-analyze scores it: what remains and
    why, and the overall line, quoted exactly. None without systemd-analyze."""
    try:
        p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=TOOL_ENV,
                           encoding="utf-8")
    except FileNotFoundError:
        return None
    overall = [l for l in p.stdout.splitlines() if "Overall exposure level" in l]
    if p.returncode != 0 or len(overall) != 1:
        die("systemd-analyze security %s failed: %s" % (unit, p.stderr.strip() or p.stdout))
    out = ["<!-- generated by scripts/gen-docs.sh: do not edit -->", "",
           "| setting | systemd-analyze says | exposure | why it stays |", "|---|---|---|---|"]
    rows = []
    for line in p.stdout.splitlines():
        if not line.startswith("\u2717 "):
            continue
        cols = re.split(r"\s{2,}", line[2:].strip())
        if len(cols) != 3:
            die("systemd-analyze security: line not understood: %r" % line)
        rows.append(cols)
    for name, what, exposure in sorted(rows, key=lambda r: (-float(r[2]), r[0])):
        out.append("| `%s` | %s | %s | %s |" % (name.replace("|", "\\|"), md_cell(what), exposure,
                                               EXPOSURE_NOTES.get(name, "(no note yet)")))
    out += ["", "```", overall[0].strip(), "```"]
    return "\n".join(out)


def replace_between(text, begin, end, body, path):
    """Replace what lies between the marker lines `begin` and `end` (each a
    whole line, present exactly once)."""
    lines = text.split("\n")
    b = [k for k, l in enumerate(lines) if l == begin]
    e = [k for k, l in enumerate(lines) if l == end]
    if len(b) != 1 or len(e) != 1 or e[0] < b[0]:
        die("%s: want one line %r followed by one line %r" % (path, begin, end))
    return "\n".join(lines[:b[0] + 1] + body.split("\n") + lines[e[0]:])


def replace_th(text, th, path):
    new, n = re.subn(r"(?m)^\.TH .*$", lambda m: th, text, count=1)
    if n != 1:
        die("%s: no .TH line" % path)
    return new


def main(argv):
    check = False
    args = []
    for a in argv:
        if a == "--check":
            check = True
        elif a in ("-h", "--help"):
            sys.stdout.write("usage: scripts/gen-docs.sh [--check] [BUILD_DIR]\n")
            return 0
        else:
            args.append(a)
    if len(args) > 1:
        die("usage: scripts/gen-docs.sh [--check] [BUILD_DIR]")
    # BUILD_DIR is relative to where the script was started, not ROOT.
    build = os.path.join(CWD, args[0] if args else
                         os.environ.get("XPL_BUILD_DIR", os.path.join(ROOT, "build")))
    xplaind = os.path.join(build, "daemon", "xplaind")
    ctl = os.path.join(build, "client", "xplainctl")
    for exe in (xplaind, ctl):
        if not os.access(exe, os.X_OK):
            die("%s not found: build first (cmake --build %s)" % (exe, build))

    version = run([xplaind, "--version"]).split()[1]
    ctl_version = run([ctl, "--version"]).split()[1]
    general, opts = parse_xplaind_help(run([xplaind, "--help"]))
    known = {(o["section"], o["key"]): o for o in opts}
    flags = []
    for section, key, value, _ in SERVICE_SETTINGS:
        if (section, key) not in known:
            die("service setting %s.%s is not an option of xplaind" % (section, key))
        flags.append("--%s=%s" % (known[(section, key)]["flag"], value))
    # The effective values of the service settings, as the daemon reads them.
    effective = parse_print_config(run([xplaind, "--print-config"] + flags))
    if set(effective) != set(known):
        die("--print-config and --help list different options: %s"
            % sorted(set(effective) ^ set(known)))
    settings = {(s, k): (effective[(s, k)], why) for s, k, _, why in SERVICE_SETTINGS}
    commands, common, exit_status, helps = parse_xplainctl(ctl)

    outputs = {}
    outputs["systemd/xplaind.conf"] = gen_conf(opts, settings)
    with open("README.md", encoding="utf-8") as f:
        text = replace_between(f.read(), "<!-- options:begin -->", "<!-- options:end -->",
                               gen_readme(general, opts), "README.md")
    security = gen_security("systemd/xplaind.service")
    if security is None:
        sys.stderr.write("gen-docs: systemd-analyze not found (Debian package systemd): "
                         "the security score in README.md is not %s\n"
                         % ("checked" if check else "updated"))
    else:
        text = replace_between(text, "<!-- security:begin -->", "<!-- security:end -->",
                               security, "README.md")
    outputs["README.md"] = text
    with open("man/xplaind.8", encoding="utf-8") as f:
        text = replace_th(f.read(), '.TH XPLAIND 8 "" "xplaind %s" "System Manager\'s Manual"'
                          % version, "man/xplaind.8")
        outputs["man/xplaind.8"] = replace_between(
            text, '.\\" options:begin', '.\\" options:end',
            gen_man_options(general, opts), "man/xplaind.8")
    with open("man/xplainctl.1", encoding="utf-8") as f:
        text = replace_th(f.read(), '.TH XPLAINCTL 1 "" "xplainctl %s" "User Commands"'
                          % ctl_version, "man/xplainctl.1")
        outputs["man/xplainctl.1"] = replace_between(
            text, '.\\" commands:begin', '.\\" commands:end',
            gen_man_commands(commands, common, exit_status, helps), "man/xplainctl.1")

    stale = []
    for path, new in outputs.items():
        try:
            with open(path, encoding="utf-8") as f:
                old = f.read()
        except FileNotFoundError:
            old = ""
        if old == new:
            continue
        stale.append(path)
        if check:
            sys.stdout.buffer.write("".join(difflib.unified_diff(
                old.splitlines(True), new.splitlines(True), path,
                path + " (generated)")).encode("utf-8"))
            sys.stdout.flush()
        else:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(new)
            os.replace(path + ".tmp", path)
            print("gen-docs: wrote %s" % path)
    if check and stale:
        sys.stderr.write("gen-docs: out of date with %s: %s\n"
                         "gen-docs: run scripts/gen-docs.sh %s and commit the result\n"
                         % (build, ", ".join(stale), build))
        return 1
    if not stale:
        print("gen-docs: %s up to date" % ", ".join(outputs))
    return 0


# BUILD_DIR is taken relative to the caller's directory, the outputs
# relative to the source tree (this file's parent's parent).
ROOT, CWD = os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.getcwd()

if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main(sys.argv[1:]))
