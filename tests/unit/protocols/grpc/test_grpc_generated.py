"""The checked-in gRPC code is what grpcio-tools makes of the vendored .proto files."""

from __future__ import annotations

import tritonclient.grpc.service_pb2 as triton_service

from tenantserve.protocols.grpc import codegen
from tenantserve.protocols.grpc._generated import grpc_service_pb2


def test_the_generated_code_is_regenerated_unchanged() -> None:
    generated = codegen.generate()
    assert sorted(generated) == sorted(codegen.KEPT)
    for name, content in generated.items():
        checked_in = (codegen.GENERATED_DIR / name).read_bytes()
        assert checked_in == content, f"{name} differs from protoc's output: run make grpc-code"


def test_the_service_is_the_one_tritonclient_speaks() -> None:
    # Byte-identical descriptors: the server and tritonclient share one process's pool (tests).
    ours = grpc_service_pb2.DESCRIPTOR
    assert ours.name == "grpc_service.proto"
    assert ours.serialized_pb == triton_service.DESCRIPTOR.serialized_pb
    service = ours.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
