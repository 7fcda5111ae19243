"""Every backend answers DatabaseBackend::Fetch the same way: duplicates, misses, order."""

import numpy as np
import pytest

from tf_hps.storage import Storage


@pytest.fixture(params=["hash_map", "redis_standalone", "redis_cluster", "rocks_db"])
def backend(request, tmp_path):
    if request.param == "hash_map":
        db = Storage("volatile_db", {"type": "hash_map", "num_partitions": 3})
    elif request.param == "rocks_db":
        db = Storage("persistent_db", {"type": "rocks_db", "path": str(tmp_path / "rdb")})
    else:
        server = request.getfixturevalue(request.param)
        db = Storage("volatile_db", {"type": "redis_cluster", "address": server.address, "num_partitions": 5})
    yield db
    db.close()


def test_duplicates_and_misses_are_answered_position_by_position(backend, request):
    table = f"hps_et.contract.{request.node.callspec.id}"
    backend.drop(table)
    rng = np.random.default_rng(11)
    keys = np.arange(-500, 500) * 7919
    values = rng.standard_normal((keys.size, 6)).astype(np.float32)
    backend.insert(table, keys, values)
    reference = dict(zip(keys.tolist(), values))
    probe = np.concatenate([rng.choice(keys, 3000), rng.integers(10**12, 10**12 + 50, 500)])
    rng.shuffle(probe)
    got, found = backend.fetch(table, probe, 6)
    assert found.tolist() == [int(k) in reference for k in probe]
    for i, k in enumerate(probe.tolist()):
        np.testing.assert_array_equal(got[i], reference[k] if k in reference else np.zeros(6, np.float32))
    backend.drop(table)
