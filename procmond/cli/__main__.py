"""``python -m procmond.cli``: the ``procmond`` command (the daemon tests start it this way)."""

from procmond.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
