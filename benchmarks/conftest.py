from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="benchmarks need a CUDA GPU")
        here = Path(__file__).parent
        for item in items:
            if here in Path(item.path).parents:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def record_environment(benchmark):
    import triton

    benchmark.extra_info.update(
        gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
        cuda=torch.version.cuda,
    )
