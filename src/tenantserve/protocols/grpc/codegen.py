"""Regenerate ``_generated/`` from the vendored ``proto/`` with grpcio-tools (a dev dependency).

    python -m tenantserve.protocols.grpc.codegen      # or: make grpc-code

protoc is run with ``proto/`` as its only include path, so the files register in protobuf's
descriptor pool as ``grpc_service.proto`` and ``model_config.proto``, byte for byte as
tritonclient's copies do: the two then share one pool in one process (a test process holds
both). protoc writes ``import model_config_pb2`` as a top-level import; it is rewritten to a
relative one, as tritonclient does for its own copy. ``tests/unit/protocols/grpc`` runs
:func:`generate` and compares its output with the checked-in files.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE / "proto"
GENERATED_DIR = HERE / "_generated"
PROTOS = ("grpc_service.proto", "model_config.proto")
# model_config.proto declares no service: its (empty) _pb2_grpc module is not kept.
KEPT = (
    "grpc_service_pb2.py",
    "grpc_service_pb2.pyi",
    "grpc_service_pb2_grpc.py",
    "model_config_pb2.py",
    "model_config_pb2.pyi",
)
_TOP_LEVEL_IMPORT = re.compile(r"^import (\w+_pb2) as ", re.MULTILINE)


def generate() -> dict[str, bytes]:
    """The generated files (name → content), as they are checked in.

    Raises:
        RuntimeError: protoc failed (its exit status says how).
    """
    from grpc_tools import protoc  # dev dependency: only regeneration needs it

    with tempfile.TemporaryDirectory() as out:
        include = str(Path(protoc.__file__).parent / "_proto")  # protobuf's well-known types
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_DIR}",
                f"-I{include}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                *(str(PROTO_DIR / name) for name in PROTOS),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc exited with {status}")
        return {name: _relative_imports((Path(out) / name).read_bytes()) for name in KEPT}


def _relative_imports(source: bytes) -> bytes:
    return _TOP_LEVEL_IMPORT.sub(r"from . import \1 as ", source.decode()).encode()


def main() -> None:
    for name, content in generate().items():
        (GENERATED_DIR / name).write_bytes(content)
        print(f"wrote {GENERATED_DIR / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
