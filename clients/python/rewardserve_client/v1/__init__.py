"""Generated rewardserve.v1 code (``reward_service_pb2``, ``reward_service_pb2_grpc``).

The modules are imported here once so that every later import finds them already loaded.
"""
import warnings

# The committed gencode targets protobuf 6.31.1 so it imports on the oldest runtime we support;
# a protobuf 7 runtime accepts it but warns "Protobuf gencode version ... older" on import.
# That warning is expected and says nothing actionable to our users, so it alone is silenced.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Protobuf gencode version", category=UserWarning)
    from rewardserve_client.v1 import reward_service_pb2  # noqa: F401
    from rewardserve_client.v1 import reward_service_pb2_grpc  # noqa: F401
