import os

# Tests run on the CPU whatever the machine has; the multi-device tests start their own processes.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The files that train whole runs in subprocesses go first: with the tests split over two
# processes a file at a time (scripts/test.sh), a long file started last would run alone at the end.
LONG_FILES = (
    "test_reliability.py",
    "test_multidevice.py",
    "test_fsdp.py",
    "test_train_nm.py",
    "test_init_from.py",
    "test_train.py",
)


def pytest_collection_modifyitems(config, items):
    """Orders the collected tests: `LONG_FILES` first, in that order, then the rest as found."""
    del config

    def rank(item):
        name = os.path.basename(str(item.path))
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # Stable: the order within a file stays the collection order.
