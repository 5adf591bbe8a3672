"""Protocol definitions (.proto) and the stubs generated from them.

The stubs in `generated/` register their descriptors in `POOL`, netc's own
descriptor pool, not in protobuf's default pool: Triton's .proto files are also
compiled into `tritonclient`, and two different builds of `grpc_service.proto`
in one pool fail at import ("duplicate file name"). With a pool of our own, the
server and the stock client live in one process (tests, notebooks, benchmarks).
Server reflection must be given `reflection_pool()`.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

POOL = descriptor_pool.DescriptorPool()


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """`POOL` plus the health and reflection services, for `enable_server_reflection`."""
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    for module in (health_pb2, reflection_pb2):
        try:
            POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            proto = descriptor_pb2.FileDescriptorProto()
            module.DESCRIPTOR.CopyToProto(proto)
            POOL.Add(proto)
    return POOL
