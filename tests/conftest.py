import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True, scope="session")
def _precision_cache(tmp_path_factory):
    """The measured-precision cache (vos.utils.precision) of the test session, not the user's."""
    os.environ["VOS_CACHE_DIR"] = str(tmp_path_factory.mktemp("vos_cache"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real data not available: {SHARED} is absent (it sits beside the repository in development)")
    return SHARED
