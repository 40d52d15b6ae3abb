"""`python -m crammer ...` (and so `torchrun -m crammer ...`) runs the `cram` command line."""

from crammer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
