"""``python -m neuropod``: the ``neuropod`` command, for environments where its script is not on PATH."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="neuropod")
