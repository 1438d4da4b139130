"""HTML reports: one page per run (`thinktune report`) and one page comparing runs (`thinktune compare`).

Each page is a single file that works offline: the plots are inline SVG drawn by matplotlib, the styles inline,
no script or font from elsewhere.
"""

from thinktune.report.compare_runs import write_comparison
from thinktune.report.run_report import write_report

__all__ = ["write_comparison", "write_report"]
