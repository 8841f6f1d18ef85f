"""``python -m transferlab`` (and ``torchrun -m transferlab``) run the CLI."""

from transferlab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
