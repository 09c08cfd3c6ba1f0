"""Where the authors' AMR code is, for the parity tests: ../shared/public-amr beside the checkout (from /work/main
or from a worktree /work/wt/iN). Tests that need it skip with a reason when it is absent."""

from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
PUBLIC_AMR = next(
    (p / "shared" / "public-amr" for p in (_ROOT.parent, _ROOT.parent.parent) if (p / "shared" / "public-amr").exists()),
    _ROOT.parent / "shared" / "public-amr",
)
