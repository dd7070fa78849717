"""What tests/conftest.py promises every test: its share of the cores, and one forest cache for the session."""

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


def test_the_session_shares_one_forest_cache_that_is_not_the_users():
    from conceptseg.routes import memo

    folder = os.environ[memo.CACHE_DIR_VAR]
    assert folder == os.environ["CONCEPTSEG_TEST_FOREST_CACHE_DIR"]
    # Under the first pytest process's private root (conftest's _ROOT): removed when the session ends.
    assert os.path.basename(os.path.dirname(folder)).startswith("conceptseg-tests-")
    assert memo.forest_cache_dir().startswith(folder + os.sep)
