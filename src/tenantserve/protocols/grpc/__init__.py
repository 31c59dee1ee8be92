"""KServe Open Inference Protocol v2 over gRPC (Triton's GRPCInferenceService)."""
