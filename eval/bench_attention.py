"""`python eval/bench_attention.py ...`: the benchmark in `diffsparse/bench/attention.py` (also `diffsparse bench attention`);
see its docstring (`--help`) for what it measures."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install

from diffsparse.bench.attention import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
