"""``python -m bench``: the load and latency benchmark (see bench/cli.py)."""

from .cli import main

if __name__ == "__main__":
    main()
