"""Past one machine, simulated on this one with `torchrun` (gloo on 127.0.0.1): two nodes train as one node with as
many processes; a worker killed mid-run is restarted by torchrun (`--max-restarts`) and the run goes on from its last
checkpoint (`--resume auto`) to the weights of the uninterrupted run; a rank that does not see the run folder, or
reads another corpus, stops every rank with one line before any training."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from crammer.cli import main
from tests.conftest import REPO_ROOT
from tests.train.conftest import metrics

TOKENS = 64 * 16 * 24  # 24 steps of 16 sequences
TRAIN = ["--preset", "tiny", "--budget-tokens", str(TOKENS), "--resume", "auto", "batch.micro_batch=4",
         "batch.target=16", "checkpoint.every_steps=5", "eval.every_seconds=0"]
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "GLOO_SOCKET_IFNAME": "lo"}
# Run by torchrun in place of `-m crammer`: rank 1 gets RANK1_OUT / RANK1_DATA for --out / --data, as a node whose
# path names another folder than rank 0's would.
PER_RANK_PATHS = """
import os, sys
from crammer.cli import main
args = sys.argv[1:]
if os.environ["RANK"] == "1":
    for flag, variable in (("--out", "RANK1_OUT"), ("--data", "RANK1_DATA")):
        if variable in os.environ:
            args[args.index(flag) + 1] = os.environ[variable]
raise SystemExit(main(args))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nnodes: int, nproc: int, port: int, worker: list[str], restarts: int = 0, env=None) -> subprocess.Popen:
    """One torchrun agent (a node) with a c10d rendezvous on 127.0.0.1:`port`; its output goes to a pipe."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--local-addr=127.0.0.1",
           f"--max-restarts={restarts}", *worker]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def cram(*args) -> list[str]:
    return ["-m", "crammer", "pretrain", *map(str, args)]


def finish(agents: list[subprocess.Popen], timeout: float) -> list[str]:
    """Each agent's output once all have ended; past `timeout`, every agent and its workers (which torchrun starts
    in sessions of their own) are killed and the test fails."""
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for agent in agents:
            outputs.append(agent.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        kill_all(agents)
        pytest.fail(f"torchrun did not end within {timeout}s")
    return outputs


def kill_all(agents: list[subprocess.Popen]) -> None:
    for agent in agents:
        with_workers = [agent.pid, *workers(agent)]
        for pid in with_workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        agent.communicate()


def workers(agent: subprocess.Popen) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(agent.pid).children()]
    except psutil.NoSuchProcess:
        return []


def worker_of_rank(agent: subprocess.Popen, rank: int) -> int | None:
    """The pid of the agent's worker with global rank `rank` (read from its environment, which torchrun sets)."""
    for pid in workers(agent):
        try:
            if psutil.Process(pid).environ().get("RANK") == str(rank):
                return pid
        except psutil.NoSuchProcess:
            pass
    return None


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_node_two_processes(corpus, tmp_path_factory) -> Path:
    """The reference: one node, two processes, never interrupted."""
    run = tmp_path_factory.mktemp("one-node") / "run"
    out, = finish([torchrun(1, 2, free_port(), cram("--data", corpus, "--out", run, *TRAIN))], timeout=240)
    assert (run / "final" / "pretraining.json").is_file(), out[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_nodes_of_one_process_train_as_one_node_of_two(corpus, tmp_path, one_node_two_processes):
    run, port = tmp_path / "run", free_port()
    outputs = finish([torchrun(2, 1, port, ["--node-rank", str(node), *cram("--data", corpus, "--out", run, *TRAIN)])
                      for node in (0, 1)], timeout=240)
    assert (run / "final" / "pretraining.json").is_file(), "\n".join(o[-2000:] for o in outputs)
    summary, reference = (json.loads((r / "final" / "pretraining.json").read_text())
                          for r in (run, one_node_two_processes))
    assert summary["world_size"] == 2 and (summary["steps"], summary["tokens"]) == (reference["steps"], reference["tokens"])
    assert max_difference(weights(run), weights(one_node_two_processes)) <= 1e-6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_worker_is_restarted_and_the_run_ends_as_the_uninterrupted_one(corpus, tmp_path,
                                                                                 one_node_two_processes):
    """kill -9 of global rank 0 (it holds the run folder's lock and the process group's store) after the step-10
    checkpoint: torchrun restarts both workers, which go on from the newest checkpoint."""
    run = tmp_path / "run"
    agent = torchrun(1, 2, free_port(), cram("--data", corpus, "--out", run, *TRAIN), restarts=1)
    deadline, killed = time.monotonic() + 180, None
    try:
        while killed is None:
            assert agent.poll() is None and time.monotonic() < deadline, "the run ended or stalled before step 12"
            rows = metrics(run) if (run / "metrics.jsonl").is_file() else []
            if rows and rows[-1]["step"] >= 12:
                killed = worker_of_rank(agent, 0)
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
    except BaseException:
        kill_all([agent])
        raise
    out, = finish([agent], timeout=240)
    assert agent.returncode == 0, out[-3000:]
    assert out.count("cram: model 'tiny'") == 2  # the first group, and the restarted one
    resumed_at = int(out.split("cram: resuming from ")[1].split()[0].rsplit("step-", 1)[1])
    assert resumed_at >= 10 and resumed_at % 5 == 0
    # the rows the dead group wrote after the checkpoint were replaced
    assert [r["step"] for r in metrics(run)] == [r["step"] for r in metrics(one_node_two_processes)]
    assert max_difference(weights(run), weights(one_node_two_processes)) <= 1e-6


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_that_does_not_see_the_run_folder_stops_every_rank_before_training(corpus, tmp_path):
    """Rank 1's --out names another folder, as a node-local path would: one line naming its host, no traceback."""
    wrapper = tmp_path / "per_rank_paths.py"
    wrapper.write_text(PER_RANK_PATHS)
    run, elsewhere = tmp_path / "run", tmp_path / "node-local" / "run"
    env = {**ENV, "RANK1_OUT": str(elsewhere)}
    out, = finish([torchrun(1, 2, free_port(), [str(wrapper), "pretrain", "--data", str(corpus), "--out", str(run),
                                                 *TRAIN], env=env)], timeout=240)
    line = (f"cram: error: {socket.gethostname()} (rank 1): does not see the run folder {elsewhere} as rank 0 does; put "
            "RUN_DIR on storage all nodes share, e.g. NFS/Lustre")
    assert out.count(line + "\n") == 2, out[-3000:]  # each rank stops with it
    assert "crammer/" not in "".join(l for l in out.splitlines(True) if l.lstrip().startswith("File "))
    assert "cram: model" not in out and not (run / "metrics.jsonl").exists()
    assert not (elsewhere / "metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ranks_that_read_different_corpora_refuse_to_train(corpus, pydoc_corpus, tmp_path):
    wrapper = tmp_path / "per_rank_paths.py"
    wrapper.write_text(PER_RANK_PATHS)
    run = tmp_path / "run"
    env = {**ENV, "RANK1_DATA": str(pydoc_corpus)}
    out, = finish([torchrun(1, 2, free_port(), [str(wrapper), "pretrain", "--data", str(corpus), "--out", str(run),
                                                 *TRAIN], env=env)], timeout=240)
    host = socket.gethostname()
    line = (f"cram: error: {host} (rank 1) read another corpus at {pydoc_corpus} than {host} (rank 0) at {corpus} "
            "(recipe, input files or tokenizer differ); prepare it with the same command and inputs on every node, or "
            "put it on storage all nodes share")
    assert out.count(line + "\n") == 2, out[-3000:]
    assert "cram: model" not in out and not (run / "metrics.jsonl").exists()


def _sharing_worker(rank, port, folders, results):
    from crammer.train.distributed import Distributed, ranks_sharing

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="3",
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    job = Distributed.from_env()
    try:
        results[rank] = ranks_sharing(Path(folders[rank]), job, create=True)
    finally:
        job.close()


def test_the_ranks_that_see_one_folder_find_each_other(tmp_path):
    """Ranks 0 and 2 name one folder, rank 1 another: each group finds its members, so the lowest rank of each
    prepares a node-local corpus for the others (`cram run`)."""
    shared, local = tmp_path / "shared" / "data", tmp_path / "local" / "data"
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_sharing_worker, args=(free_port(), [str(shared), str(local), str(shared)], results), nprocs=3)
        assert dict(results) == {0: [0, 2], 1: [1], 2: [0, 2]}
    assert list(shared.iterdir()) == [] and list(local.iterdir()) == []  # the markers are gone


def test_resume_auto_starts_a_run_and_continues_it(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(corpus), "--out", str(run), "--preset", "tiny", "--budget-tokens", str(64 * 8 * 6),
            "batch.target=8", "checkpoint.every_steps=2"]
    assert main([*args, "--resume", "auto"]) == 0
    assert "no checkpoint in" in capsys.readouterr().err
    (run / "final").rename(tmp_path / "old-final")  # as if killed after its last checkpoint
    assert main([*args, "--resume", "auto"]) == 0
    err = capsys.readouterr().err
    assert f"cram: resuming from {run / 'checkpoints' / 'step-00000004'} (step 4," in err, err
    assert main([*args, "--resume", "optim.lr=1e-2"]) == 2  # after a bare --resume, the overrides still count
    assert "different config (optim)" in capsys.readouterr().err
