"""Generated gRPC code for proto package llmpool.v1 (make protos)."""
