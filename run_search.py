"""Search UCRN hyperparameters with Ray Tune (Optuna TPE + ASHA); see search/driver.py.

    python run_search.py                      # small search on synthetic data, CPU, minutes
    python run_search.py --dataset mosei_senti --data-path DIR --num-samples 64 \\
        --max-epochs 40 --gpus-per-trial 0.25
    python run_search.py --retrain ray_results/ucrn-search --seeds 1111,1112,1113
"""

from typing import Any

from ucrn.errors import program


def main(argv: list[str] | None = None, **kw: Any) -> int:
    from search.driver import main as driver_main

    return driver_main(argv, **kw)


if __name__ == "__main__":
    program("search.driver:main")
