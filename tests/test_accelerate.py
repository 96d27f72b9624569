"""Test ``steu-patch create`` spread over two CPU processes that ``torchrun`` starts (gloo backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _create_helpers import cached_classifier, single_label_rows, write_csv

from steu_patch.patch import ForgetPatch

DRIVER = """\
import sys

import torch

torch.set_num_threads(1)
from steu_patch_cli.main import cli

cli(sys.argv[1:], prog_name="steu-patch")
"""


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    """Run create with two processes once; return the completed process and the output directory."""
    model_dir = cached_classifier(tmp_path_factory, "single")
    work = tmp_path_factory.mktemp("distributed")
    data = write_csv(work / "notes.csv", single_label_rows(seed=3, per_class=60, counts={"cardio": 30}))
    driver = work / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    output = work / "out" / "patch"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
        "create", str(model_dir), "--data", str(data), "--forget-class", "cardio", "--top-k", "12", "--lr", "5e-3",
        "-o", str(output), "--json", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=work)
    return completed, output


def test_two_processes_succeed(distributed_run):
    completed, _ = distributed_run

    assert completed.returncode == 0, completed.stderr[-3000:]


def test_two_processes_print_once(distributed_run):
    completed, output = distributed_run

    assert completed.stdout.count("Wrote patch") == 1
    assert json.loads(completed.stdout.strip().splitlines()[-1])["output"] == str(output)


def test_two_processes_write_one_valid_patch(distributed_run):
    _, output = distributed_run
    patch = ForgetPatch.from_pretrained(output)

    assert [path.name for path in output.parent.iterdir()] == ["patch"]
    assert patch.manifest["method"]["num_processes"] == 2
    assert patch.manifest["metrics"]["after"]["forget_f1"] <= 0.05
