"""``python -m apim_mi.emulator``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
