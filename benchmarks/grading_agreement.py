"""Agreement of ``MathGrader`` with math-verify's own public test suite. Run by hand, with a checkout of
https://github.com/huggingface/Math-Verify (its ``tests/`` folder is read as data, never imported or executed):

    .venv/bin/python benchmarks/grading_agreement.py --tests ../Math-Verify/tests --out /tmp/agreement.json

Each ``@pytest.mark.parametrize`` table in those files whose columns include ``gold``, ``pred`` and an expected verdict
(``expected`` or ``result``) is one list of cases; the tables are read with ``ast.literal_eval`` (a case that is not a
literal, such as an f-string, is skipped and counted). Every case is graded as ``grade(response=pred, gold=gold)``
with each extraction mode, and also with math-verify's plain ``verify(parse(gold), parse(pred))`` in a worker
process, so that the table shows how far each mode is from math-verify itself. Some tables call math-verify with
non-default options (a 5-digit precision, ``strict=False``, LaTeX-only extraction): those cases are counted like the
others, which is why math-verify with its defaults does not reach 100 % either.

Agreement is reported on all cases and on the cases whose prediction holds a ``\\boxed{}`` (where the ``boxed`` mode
is meant to agree).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import platform
import time
from pathlib import Path

from nemo_igrpo.rewards.math_grader import MathGrader

_VERDICT_COLUMNS = ("expected", "result")


def _argnames(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [n.strip() for n in node.value.split(",")]
    if isinstance(node, (ast.List, ast.Tuple)) and all(isinstance(e, ast.Constant) for e in node.elts):
        return [str(e.value) for e in node.elts]
    return None


def read_cases(tests_dir: Path) -> tuple[list[dict], int]:
    """(cases, skipped): every literal (gold, pred, verdict) row of every parametrize table under ``tests_dir``."""
    cases, skipped = [], 0
    for path in sorted(tests_dir.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for dec in fn.decorator_list:
                if not (isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize"
                        and len(dec.args) >= 2):
                    continue
                names = _argnames(dec.args[0])
                verdict = next((c for c in _VERDICT_COLUMNS if names and c in names), None)
                if not names or "gold" not in names or "pred" not in names or verdict is None:
                    continue
                rows = dec.args[1].elts if isinstance(dec.args[1], (ast.List, ast.Tuple)) else []
                for row in rows:
                    try:
                        values = ast.literal_eval(row)
                    except ValueError:
                        skipped += 1
                        continue
                    rec = dict(zip(names, values))
                    cases.append({"file": path.name, "test": fn.name, "gold": rec["gold"], "pred": rec["pred"],
                                  "expected": int(rec[verdict])})
    return cases, skipped


def _grade(grader: MathGrader, cases: list[dict]) -> list[int]:
    return [int(r.score) for r in grader.grade([c["pred"] for c in cases], [c["gold"] for c in cases])]


def _math_verify_itself(cases: list[dict]) -> list[int]:
    """math-verify with its defaults, in this process (its signal.alarm timeouts work in a main thread)."""
    import logging

    from math_verify import parse, verify

    logging.disable(logging.WARNING)
    return [int(bool(verify(parse(c["gold"]), parse(c["pred"])))) for c in cases]


def _agreement(cases: list[dict], verdicts: list[int]) -> dict:
    boxed = [i for i, c in enumerate(cases) if "\\boxed" in c["pred"]]
    agree = [int(v == c["expected"]) for c, v in zip(cases, verdicts)]
    return {"all": round(sum(agree) / len(cases), 4), "boxed_pred": round(sum(agree[i] for i in boxed) / len(boxed), 4),
            "n_all": len(cases), "n_boxed_pred": len(boxed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", required=True, help="the tests/ folder of a Math-Verify checkout")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--out", default=None, help="JSON with every case and verdict")
    args = ap.parse_args()
    cases, skipped = read_cases(Path(args.tests))
    modes = ["boxed", "full"] if "extraction" in inspect.signature(MathGrader).parameters else [None]
    report: dict = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
                    "python": platform.python_version(), "cases": len(cases), "skipped_non_literal": skipped}
    for mode in modes:
        kwargs = {} if mode is None else {"extraction": mode}
        with MathGrader(num_workers=args.workers, timeout_s=args.timeout, **kwargs) as g:
            verdicts = _grade(g, cases)
        name = mode or "legacy"
        report[name] = _agreement(cases, verdicts)
        for c, v in zip(cases, verdicts):
            c[name] = v
    report["math_verify"] = _agreement(cases, _math_verify_itself(cases))
    for name in [m or "legacy" for m in modes] + ["math_verify"]:
        a = report[name]
        print(f"{name:>7}: all {a['all']:.1%} of {a['n_all']}, boxed predictions {a['boxed_pred']:.1%} "
              f"of {a['n_boxed_pred']}")
    print(f"skipped (not literal): {skipped}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"report": report, "cases": cases}, fh, indent=1)


if __name__ == "__main__":
    main()
