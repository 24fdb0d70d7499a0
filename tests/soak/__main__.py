"""``python -m tests.soak``: the command line of the soak (scripts/soak runs it)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.soak.soak import Soak, log
from tests.soak.world import World


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/soak", description="The tierfs reliability soak (docs/reliability.md)."
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--readers", type=int, default=3, help="reader processes (default 3)")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--hidden-s", type=float, default=6.0, help="how long the store hides")
    parser.add_argument("--dir", type=Path, help="work directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--inject-corruption",
        action="store_true",
        help="flip bytes in the hot copies once, to show that the soak catches it",
    )
    parser.add_argument(
        "--web", help="serve the web API at this base URL (http://HOST:PORT), junk it too"
    )
    parser.add_argument(
        "--web-token-file", help="the web API's token file (default: the state dir's)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s soak: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("scripts/soak: needs root and /dev/fuse", file=sys.stderr)
        return 2
    base = args.dir or Path(tempfile.mkdtemp(prefix="tierfs-soak-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    world = World(base.resolve())
    log.info("soak for %.1f min in %s (seed %d)", args.minutes, world.base, args.seed)
    soak = Soak(world, args)
    try:
        soak.run()
    except Exception as exc:
        log.exception("the soak broke down")
        soak.fail("hangs", f"the soak broke down: {exc!r}")
    finally:
        leftover = world.cleanup(soak.mount)
        if leftover:
            soak.fail("hangs", f"mounts left behind: {leftover}")
    ok = soak.ok()
    for failure in soak.failures[:30]:
        log.error("failure: %s", failure)
    if ok and not args.keep:
        shutil.rmtree(world.base, ignore_errors=True)
    else:
        log.info("work directory kept: %s", world.base)
    print(json.dumps(soak.summary()), flush=True)
    return 0 if ok else 1


sys.exit(main())
