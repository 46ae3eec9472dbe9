"""Pure conversions that the RPC tests do not pin down on their own."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import struct_pb2
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.service.convert import float_tensor, struct_to_dict


@pytest.mark.parametrize("data", [
    torch.tensor([0.5]),
    torch.randn(3, 5),
    torch.randn(300, 200),       # a multi-byte length prefix on the wire
    torch.randn(5, 3).t(),       # not contiguous
    torch.zeros(0),
    [[1.0, 2.0], [3.0, 4.0]],
])
def test_float_tensor_equals_the_plain_field_assignment(data):
    array = np.asarray(data, dtype=np.float32)
    expected = pb.FloatTensor(shape=array.shape, values=array.ravel().tolist())
    assert float_tensor(data) == expected
    assert pb.FloatTensor.FromString(float_tensor(data).SerializeToString()) == expected


def test_struct_numbers_that_are_whole_become_ints():
    struct = struct_pb2.Struct()
    struct.update({"n": 3, "x": 0.25, "nested": {"k": [1, 2.5]}, "flag": True, "none": None})
    assert struct_to_dict(struct) == {"n": 3, "x": 0.25, "nested": {"k": [1, 2.5]}, "flag": True, "none": None}
    assert isinstance(struct_to_dict(struct)["n"], int)
