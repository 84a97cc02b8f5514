"""What produced a result: the software versions a run and the report record."""

from __future__ import annotations

import platform

from batchscale import __version__


def software_versions() -> dict:
    """The versions every training job records in its summary.json."""
    import numpy
    import pandas
    import torch

    return {
        "batchscale": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def report_software_versions() -> dict:
    """software_versions, plus the plotting and notebook packages the report is drawn with."""
    import matplotlib
    import papermill
    import seaborn

    versions = software_versions()
    versions.update(
        matplotlib=matplotlib.__version__, seaborn=seaborn.__version__, papermill=papermill.__version__
    )
    return versions
