"""build_info: what the kernels were compiled with and what they run with, for the info command."""
import cnnframe


def test_build_info_describes_this_build():
    b = cnnframe.build_info()
    assert b["version"] == cnnframe.__version__
    assert isinstance(b["openmp"], bool) and isinstance(b["microkernel"], bool)
    assert b["threads"] == cnnframe.get_num_threads() >= 1 and b["openmp_threads"] >= 1
    assert b["dynamic_threads"] == cnnframe.get_dynamic()
    assert all(len(lib) == 4 for lib in b["blas"])
