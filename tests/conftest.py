import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without a GPU, our Triton kernels run in Triton's CPU interpreter. Triton reads this when a
# kernel is decorated (module import), so it must be set before anything imports them.
if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
warnings.filterwarnings("ignore", message=".*torchvision.*")

from pipeline_helpers import BUILDERS  # noqa: E402


@pytest.fixture(params=list(BUILDERS))
def family(request):
    return request.param


@pytest.fixture
def pipe(family):
    return BUILDERS[family]()
