"""What tests/conftest.py promises every test: its share of the cores."""

import os

import pytest


def test_each_worker_runs_torch_on_its_share_of_the_cores(user_thread_vars):
    if "OMP_NUM_THREADS" in user_thread_vars:
        pytest.skip("OMP_NUM_THREADS was exported: the user's value wins")
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = max(1, len(os.sched_getaffinity(0)) // workers)
    assert os.environ["OMP_NUM_THREADS"] == str(share)
    assert torch.get_num_threads() == share


def test_each_worker_fits_forests_on_its_share_of_the_cores(user_thread_vars):
    if "CONCEPTSEG_THREADS" in user_thread_vars:
        pytest.skip("CONCEPTSEG_THREADS was exported: the user's value wins")
    from conceptseg import threads

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    assert threads.budget() == max(1, len(os.sched_getaffinity(0)) // workers)
