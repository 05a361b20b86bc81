"""`python -m aggregator [--host H] [--port P] [--data-dir D]`: the server without the rest of fedgrove's CLI."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aggregator.config import AggregatorSettings
from aggregator.database_errors import DatabaseRefused
from aggregator.security import WeakSecret
from aggregator.server import serve_forever


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aggregator", description=__doc__)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--data-dir", type=Path)
    arguments = parser.parse_args()
    overrides = {k: v for k, v in vars(arguments).items() if v is not None}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve_forever(AggregatorSettings(**overrides))
    except (WeakSecret, DatabaseRefused) as exc:  # one line saying why and what to do, not a traceback
        logging.getLogger("aggregator").error("not started: %s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
