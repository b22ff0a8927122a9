"""``python -m clip_text_spot COMMAND ...``: the ``clip-text-spot`` command (``clip_text_spot.cli``)."""

import sys

from clip_text_spot.cli import main

sys.exit(main())
