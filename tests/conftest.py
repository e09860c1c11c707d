import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torchvision.*")

from pipeline_helpers import BUILDERS  # noqa: E402


@pytest.fixture(params=["wan", "hunyuan", "flux"])
def family(request):
    return request.param


@pytest.fixture
def pipe(family):
    return BUILDERS[family]()
