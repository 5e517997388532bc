"""``lmlink batch`` with a fixed concurrency (the benchmark's hand-picked baseline).

    python benchmarks/_fixed.py batch IN -o OUT -c N ...

The command line's ``-c N`` is a ceiling the adaptive limit may come down from; a
hand-picked baseline must hold N throughout, so this wrapper gives every endpoint a limiter
whose floor is its ceiling, then runs the ordinary command line.
"""

from __future__ import annotations

from lmlink.batch import _pool
from lmlink.batch._limiter import AdaptiveLimiter
from lmlink.cli import main

_adaptive = _pool.new_limiter


def fixed_limiter(ceiling: int | None) -> AdaptiveLimiter:
    if ceiling is None:
        return _adaptive(None)
    return AdaptiveLimiter(ceiling, floor=ceiling, initial=ceiling)


_pool.new_limiter = fixed_limiter

if __name__ == "__main__":
    main()
