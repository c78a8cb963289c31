"""Old name of :mod:`benchmarks._harness` (kept so scripts written against it still import)."""

from benchmarks._harness import (  # noqa: F401
    REPO_ROOT,
    RESULTS_DIR,
    cpu_model,
    machine_info,
    quick_gflops,
    sha256_file,
    shared_root,
    usable_cores,
    write_results,
)
