"""The built-in dataset cache: runs started together generate an entry once and all find it."""

import threading
import time

from amr_fast.data import builtin


def test_runs_started_together_generate_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("AMR_FAST_CACHE", str(tmp_path))
    calls = []

    def slow_make_shards(name, src, root, subset=None, seed=0):  # what make_shards does, slowly: index last
        calls.append(name)
        root.mkdir(parents=True, exist_ok=True)
        time.sleep(0.3)
        (root / "index.json").write_text("{}")

    monkeypatch.setattr(builtin, "make_shards", slow_make_shards)
    roots = []
    threads = [
        threading.Thread(target=lambda: roots.append(builtin.resolve_data_root("builtin:spiral"))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["spiral"]  # one generation, the others waited and found its index
    assert len(set(roots)) == 1 and (roots[0] / "index.json").exists()
