"""netc's inference server: gRPC services, batching, model repository."""
