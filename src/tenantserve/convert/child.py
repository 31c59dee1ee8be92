"""One conversion in a process of its own: ``python -m tenantserve.convert.child FOLDER FILE OUT``.

The server converts here rather than in itself: the frameworks (145 MB of RSS for
scikit-learn, skl2onnx and onnx) and whatever a converter leaves behind go away with the
process, and a converter that crashes fails one load, not the server. Writes ``model.onnx`` and
``conversion.json`` into OUT and exits 0; otherwise prints ``{"error": …, "missing_extra": …}``
on stdout and exits 3.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tenantserve.convert.registry import ONNX_FILE, REPORT_FILE
from tenantserve.errors import LoadFailed, MissingExtra

FAILED = 3


def main(argv: list[str]) -> int:
    folder, model_file, out = Path(argv[0]), argv[1], Path(argv[2])
    try:
        from tenantserve.convert.run import convert_artifact

        conversion = convert_artifact(folder, model_file)
    except ImportError as exc:  # onnx itself missing
        print(json.dumps({"error": f"missing: {exc.name or exc}", "missing_extra": True}))
        return FAILED
    except LoadFailed as exc:
        missing = isinstance(exc, MissingExtra)
        print(json.dumps({"error": str(exc), "missing_extra": missing}))
        return FAILED
    (out / ONNX_FILE).write_bytes(conversion.onnx)
    (out / REPORT_FILE).write_text(json.dumps(conversion.report(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    # One thread for the frameworks' own pools, as the server's sessions have.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1:]))
