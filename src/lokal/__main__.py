"""``python -m lokal`` is the ``lokal`` command."""

from __future__ import annotations

from lokal.cli import main

if __name__ == "__main__":
    main()
