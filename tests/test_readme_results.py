"""The README's findings table is the committed report's numbers (tools/readme_results.py)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "readme_results.py"


def check(readme: Path, report: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme), "--report", str(report)],
                          capture_output=True, text=True)


def test_the_readme_states_the_committed_reports_numbers():
    result = check(REPO / "README.md", REPO / "docs" / "report")
    assert result.returncode == 0, result.stderr


def test_a_changed_report_makes_the_table_stale_until_it_is_rewritten(tmp_path):
    report, readme = tmp_path / "report", tmp_path / "README.md"
    shutil.copytree(REPO / "docs" / "report", report)
    shutil.copy(REPO / "README.md", readme)
    losses = pd.read_csv(report / "nope" / "final_losses.csv")
    losses.loc[1, "val_vs_baseline_mean"] += 0.5
    losses.to_csv(report / "nope" / "final_losses.csv", index=False)
    stale = check(readme, report)
    assert stale.returncode == 1 and "findings table differs" in stale.stderr
    subprocess.run([sys.executable, str(SCRIPT), "--readme", str(readme), "--report", str(report)], check=True)
    assert check(readme, report).returncode == 0
    shifted = f"{losses.loc[1, 'val_vs_baseline_mean']:+.3f} ± "
    assert shifted in readme.read_text() and shifted not in (REPO / "README.md").read_text()
