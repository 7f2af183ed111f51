import pytest

import cnnframe


@pytest.fixture
def one_thread():
    """Numerical checks run hundreds of tiny forwards; on a busy machine OpenMP fork/join on such
    tiny kernels can cost milliseconds each, so they run on one thread (the threaded kernels are
    exercised by the reference comparisons)."""
    with cnnframe.num_threads(1):
        yield
