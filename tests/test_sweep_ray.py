"""The sweep's Ray backend on a real local Ray cluster gives the same results as RANK/WORLD_SIZE
sharding, and resumes the same way."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'textleak[ray]')")

from textleak.sweep import SweepSpec, completed, merge, result_files, run_sweep  # noqa: E402

from _defences_tiny import make_tiny_bert, write_tsv  # noqa: E402

SAME = ("method", "batch_size", "references", "recovered", "per_example")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of one CPU (the machine is shared), torch on one thread in every worker."""
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    folder = make_tiny_bert(tmp_path_factory.mktemp("tiny"))
    data = write_tsv(folder / "data.tsv")
    return SweepSpec(attacks=["dlg"], defences=["none", "noise:1e-2"], data=str(data), n=1, model=str(folder),
                     attack_options={"dlg": {"steps": 2}})


def test_ray_backend_matches_the_sharded_path(cluster, spec, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rank in (0, 1):
            run_sweep(spec, tmp_path / "sharded", rank=rank, world_size=2)
    finally:
        torch.set_num_threads(threads)
    summary = run_sweep(spec, tmp_path / "ray", backend="ray", rank=0, world_size=1)
    assert summary.ran == 2 and len(result_files(tmp_path / "ray")) == 1
    sharded, on_ray = completed(tmp_path / "sharded"), completed(tmp_path / "ray")
    assert set(sharded) == set(on_ray) == {u["key"] for u in spec.units()}
    for key, rec in sharded.items():
        assert {k: on_ray[key][k] for k in SAME} == {k: rec[k] for k in SAME}, key
        assert on_ray[key]["metrics"] == pytest.approx(rec["metrics"])
    assert [r["rouge1"] for r in merge(tmp_path / "ray")["table"]] == \
        pytest.approx([r["rouge1"] for r in merge(tmp_path / "sharded")["table"]])
    # resumes like the local path: nothing left to run, and an extension runs only the new units
    assert run_sweep(spec, tmp_path / "ray", backend="ray", rank=0, world_size=1).ran == 0
