"""Browser GUI on Slicer's views, for machines without 3D Slicer: ``cardiacaiseg gui``.

    cardiacaiseg gui [STUDY] [--labels FILE] [--data DIR] [--port N] [--host ADDR] [--browser]

Starts a local web app (trame + trame-slicer; loopback only unless ``--host`` says otherwise)
and prints its address. The page reads and writes only inside the data folder (``--data``;
default: the folder holding STUDY, else the current folder). Needs the ``gui`` extra
(``pip install -e ".[gui]"`` and ``pip install --no-deps slicer-layer-dm==2.0.0``). Stopped (Ctrl+C,
SIGTERM, ``--timeout``) with corrections not saved, it writes them into a new folder beside the
output folder (``<output folder>-unsaved-<time>``) and prints where.

Modules: ``sandbox`` (the data folder), ``session`` (page actions as plain calls), ``views``
(trame-slicer views), ``app`` (state and controls), ``ui`` (layout).
"""
import argparse
import os
import sys
from pathlib import Path

LOOPBACK = "127.0.0.1"
READY_PREFIX = "CardiacAISeg web GUI:"


def build_parser(prog="cardiacaiseg gui"):
    p = argparse.ArgumentParser(prog=prog, description="Browser GUI on Slicer's views (no 3D Slicer needed)")
    add_arguments(p)
    return p


def add_arguments(p):
    p.add_argument("study", nargs="?", help="a study to open at start (inside the data folder)")
    p.add_argument("--labels", help="its label map or contour folder (optional)")
    p.add_argument("--data", help="the only folder the page may read and write (default: the folder of STUDY, else the current folder)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default 0: a free port, printed at start)")
    p.add_argument("--host", default=LOOPBACK,
                   help=f"address to listen on (default {LOOPBACK}: this machine only; anything else exposes your data to the network)")
    p.add_argument("--browser", action="store_true", help="open the page in the system browser")
    p.add_argument("--timeout", type=int, default=0, help="stop after this many seconds without a connected page (0: never)")
    return p


def _data_folder(args):
    if args.data:
        return Path(args.data)
    if args.study:
        study = Path(args.study).expanduser().resolve()
        return study.parent
    return Path.cwd()


def run(args):
    """Start the server (blocks until it stops). Returns an exit status."""
    from ..errors import CardiacInputError
    from .session import env_rendering

    env_rendering()
    try:
        from .sandbox import DataFolder
        data = DataFolder(_data_folder(args))
    except CardiacInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        import trame  # noqa: F401
        import trame_slicer  # noqa: F401
    except ImportError as e:
        print(f"error: the web GUI needs trame-slicer ({e}); install it with: pip install -e \".[gui]\" && "
              "pip install --no-deps slicer-layer-dm==2.0.0", file=sys.stderr)
        return 2
    if args.host not in (LOOPBACK, "localhost", "::1"):
        print(f"warning: listening on {args.host}: other machines can reach this page and the data folder {data.root}",
              file=sys.stderr)

    from .app import CardiacWebApp

    app = CardiacWebApp(data)
    if args.study:
        # Paths on the command line are the user's, relative to their current folder.
        here = lambda p: str(Path(p).expanduser().absolute()) if p else None  # noqa: E731
        message = app.open_initial(here(args.study), here(args.labels))
        if message:
            print(f"error: {message}", file=sys.stderr)
    server = app.server
    from .app import LOOPBACK_NAMES, install_request_guard

    install_request_guard(server, loopback_only=args.host in LOOPBACK_NAMES)

    def ready(**_):
        print(f"{READY_PREFIX} http://{args.host}:{server.port}/  (data folder: {data.root})", flush=True)

    server.controller.on_server_ready.add(ready)
    argv = sys.argv
    sys.argv = argv[:1]          # trame parses sys.argv itself; our options are already applied
    try:
        # returns on Ctrl+C, SIGTERM (aiohttp's graceful exit) and --timeout
        server.start(port=args.port, host=args.host, open_browser=bool(args.browser), show_connection_info=False,
                     timeout=args.timeout, disable_logging=True)
    finally:
        sys.argv = argv
        # the page's corrections not saved lived only in this process: written beside the outputs
        app.keep_unsaved_edits(say=_say_at_stop)
    return 0


def _say_at_stop(text):
    print(text, file=sys.stderr if text.startswith("error:") else sys.stdout, flush=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
