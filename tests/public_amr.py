"""Where the authors' AMR code is, for the parity tests: ../shared/public-amr beside the checkout (from /work/main
or from a worktree /work/wt/iN). Tests that need it skip with a reason when it is absent."""

from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [p / "shared" / "public-amr" for p in (_ROOT.parent, _ROOT.parent.parent)]
PUBLIC_AMR = next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[0])
