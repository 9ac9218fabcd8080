"""Many generated sequences on Linux and on the simulator, outside pytest.

    nice -n 10 python -m tests.differential.soak -n 3000 --seed 17 --out soak.jsonl

(10-40 random steps per sequence by default, longer than the CI slice's 3-14.)

Each sequence (tests/differential/generator.py) runs on both backends with a
snapshot after every step (tests/differential/agreement.py: a disagreement
khugepaged may explain is rerun, not counted). Prints a tally every 100
sequences and at the end; every disagreement goes to ``--out`` as a JSON line
with the sequence as pasteable scenario data. Hypothesis only generates here
(no shrinking), so every sequence counts once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.backends import make_kernel

from .agreement import compare
from .generator import scenarios


def soak(n: int, seed_value: int, out_path: str | None, min_steps: int, max_steps: int, thp_every: int) -> Counter:
    tally: Counter = Counter()
    out = open(out_path, "a") if out_path else None
    started = time.monotonic()

    @seed(seed_value)
    @settings(max_examples=n, derandomize=False, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(scenario=scenarios(max_steps=max_steps, min_steps=min_steps, thp_every=thp_every))
    def one(scenario):
        tally["ran"] += 1
        try:
            result = compare(scenario, lambda: make_kernel("linux"), lambda: make_kernel("sim"))
        except Exception as exc:  # a runner or backend crash: recorded, the soak goes on
            tally["crashed"] += 1
            if out is not None:
                out.write(json.dumps({"crashed": repr(exc), "scenario": scenario.as_data()}) + "\n")
                out.flush()
            return
        tally["agreed" if result.agreed else "disagreed"] += 1
        if result.reruns:
            tally["rerun (khugepaged suspected)"] += 1
        if (result.reruns or not result.agreed) and out is not None:
            out.write(json.dumps({"agreed": result.agreed, "problems": result.problems, "reruns": result.reruns,
                                  "signs": result.signs, "scenario": scenario.as_data()}) + "\n")
            out.flush()
        if tally["ran"] % 100 == 0:
            print(f"{tally['ran']} ran, {tally['agreed']} agreed, {tally['disagreed']} disagreed, "
                  f"{tally['rerun (khugepaged suspected)']} rerun ({time.monotonic() - started:.0f}s)", flush=True)

    one()
    if out is not None:
        out.close()
    return tally


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="sequences to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="append disagreements and reruns here (JSON lines)")
    parser.add_argument("--min-steps", type=int, default=10, help="random steps per sequence, at least")
    parser.add_argument("--max-steps", type=int, default=40, help="random steps per sequence, at most")
    parser.add_argument("--thp-every", type=int, default=3, help="about one sequence in this many has THP regions")
    args = parser.parse_args(argv)
    tally = soak(args.n, args.seed, args.out, args.min_steps, args.max_steps, args.thp_every)
    print(dict(tally))
    return 0 if tally["disagreed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
