"""What every bench script reports: the device it ran on, and one JSON line printed and optionally saved."""

from __future__ import annotations

import json
import os
from typing import Any


def device_fields() -> dict[str, Any]:
    """Device kind, platform, device count and jax version of this process."""
    import jax

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    return {"device": kind, "platform": dev.platform, "devices": jax.device_count(), "jax": jax.__version__}


def emit(record: dict[str, Any], path: str | None = None) -> None:
    """Print ``record`` as one JSON line and, when ``path`` is given, write the same line there."""
    line = json.dumps(record)
    print(line)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(line + "\n")
