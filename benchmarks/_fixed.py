"""``lmlink batch`` with a fixed concurrency (the benchmark's hand-picked baseline).

    python benchmarks/_fixed.py batch IN -o OUT -c N ...

The command line's ``-c N`` is a ceiling the adaptive limit may come down from; a
hand-picked baseline must hold N throughout, so this wrapper gives the run a limiter whose
floor is its ceiling, then runs the ordinary command line.
"""

from __future__ import annotations

from typing import Any

from lmlink.batch import _runner
from lmlink.batch._limiter import AdaptiveLimiter
from lmlink.cli import main

_Runner = _runner.Runner


class FixedRunner(_Runner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        n = self.limiter.ceiling
        self.limiter = AdaptiveLimiter(n, floor=n, initial=n)


_runner.Runner = FixedRunner  # type: ignore[misc]

if __name__ == "__main__":
    main()
